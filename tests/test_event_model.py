"""The event model: typed events with defaults decided before the append, logs of the previous
release upgraded on read, and projections that never skip a committed record.

Failures are injected at named points (``jade.faults``) on the real commit path: the log's
commit succeeds, then the auth file's commit or an index fold fails, as a full disk or a bug
would make them.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import tarfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from jade import events as ev
from jade import faults
from jade.backup.verify import verify_dir
from jade.core.decide import Command
from jade.engine import Engine
from jade.engine.commit import Replicated
from jade.http.databases import new_index
from jade.http.keys import ENGINE
from jade.settings import Settings
from tests.conftest import Server, make_settings, running_server
from tests.test_apply import upsert

FIXTURE = Path(__file__).parent / "fixtures" / "v1-log.tar.gz"


@pytest.fixture(autouse=True)
def _no_faults() -> Any:
    yield
    faults.disarm()


def _settings(tmp_path: Path, name: str = "data", **over: Any) -> Settings:
    base = tmp_path / name
    base.mkdir(exist_ok=True)
    return make_settings(base, **over)


def _open(s: Settings) -> Engine:
    e = Engine(s)
    e.open()
    return e


def _create(e: Engine, db_id: str, dim: int = 4, kind: str = "hnsw",
            params: dict[str, int] | None = None) -> None:
    e.submit_sync(Command("db.create", {
        "db": db_id, "name": db_id, "description": "", "dimension": dim, "metric": "euclidean",
        "index_type": kind.upper(), "index": new_index(kind.upper(), kind, params or {}),
        "extra": {}}, "t"))


def _vectors(n: int, dim: int, seed: int = 0) -> list[tuple[str, list[float], Any]]:
    rng = np.random.default_rng(seed)
    return [(f"v{seed}-{i}", rng.standard_normal(dim).tolist(), {"i": i}) for i in range(n)]


# -- defaults are decided once, before the append ----------------------------------------------


def test_index_parameters_are_in_the_record(tmp_path: Path) -> None:
    e = _open(_settings(tmp_path, hnsw_m=12, hnsw_ef_construction=90, hnsw_ef_search=33))
    try:
        _create(e, "d")
        (rec,) = e.log.read(0)
        assert rec.body["index"]["parameters"] == {"M": 12, "efConstruction": 90,
                                                   "efSearch": 33}
        assert rec.body["v"] == ev.SCHEMA
    finally:
        e.close()


@pytest.mark.parametrize("checkpoint", [True, False])
def test_restart_with_other_defaults_keeps_the_index(tmp_path: Path, checkpoint: bool) -> None:
    e = _open(_settings(tmp_path))
    _create(e, "d", dim=4)
    e.submit_sync(upsert("d", _vectors(50, 4)))
    e.close(checkpoint=checkpoint)
    if not checkpoint:
        shutil.rmtree(e.settings.index_dir, ignore_errors=True)  # rebuilt from the store
    e2 = _open(_settings(tmp_path, hnsw_m=40, hnsw_ef_construction=50, hnsw_ef_search=7))
    try:
        live = e2.indexes.get("d")
        assert live is not None
        assert (live.spec.m, live.spec.ef_construction, live.spec.ef_search) == (16, 200, 64)
        assert e2.report.index["rebuilt"] == (0 if checkpoint else 1)
        assert len(live) == 50
    finally:
        e2.close()


def test_replica_with_other_defaults_builds_the_same_index(tmp_path: Path) -> None:
    a = _open(_settings(tmp_path, "a"))
    b = _open(_settings(tmp_path, "b", hnsw_m=8, hnsw_ef_construction=40, hnsw_ef_search=5))
    try:
        _create(a, "d", dim=3)
        _create(a, "f", dim=3, kind="flat")
        a.submit_sync(upsert("d", _vectors(20, 3)))
        a.submit_sync(Command("index.create", {"db": "f", "index": new_index("HNSW", "hnsw", {
            "M": 6})}, "t"))
        b.writer.submit(Replicated(a.log.read(0))).result()  # type: ignore[union-attr]
        for db_id in ("d", "f"):
            la, lb = a.indexes.get(db_id), b.indexes.get(db_id)
            assert la is not None and lb is not None
            assert la.spec == lb.spec and la.indexes == lb.indexes
        assert b.indexes.get("f").spec.m == 6  # type: ignore[union-attr]
        assert b.indexes.get("f").spec.ef_construction == 200  # type: ignore[union-attr]
    finally:
        a.close()
        b.close()


# -- logs written by the previous release -----------------------------------------------------


def test_a_log_of_the_previous_release_opens_and_upgrades(tmp_path: Path) -> None:
    data = tmp_path / "v1"
    data.mkdir()
    with tarfile.open(FIXTURE) as tar:
        tar.extractall(data, filter="data")
    # other defaults than the release that wrote it: the indexes must not follow them
    s = make_settings(tmp_path, data_dir=str(data), db_path=str(data / "jadevectordb.db"),
                      auth_db_path=str(data / "jadevectordb_auth.db"),
                      index_dir=str(data / "indexes"), hnsw_m=48, hnsw_ef_search=9)
    e = _open(s)
    try:
        for rec in e.log.iterate(0):
            assert "v" not in rec.body  # schema 1 on disk, unchanged
            ev.of(rec)  # every record reads as its event
        # format 2 checkpoints predate the folded state: rebuilt once, from the store
        assert e.report.index == {"loaded": 0, "rebuilt": 2, "replayed_records": 0}
        h, f = e.indexes.get("hnswdb"), e.indexes.get("flatdb")
        assert h is not None and f is not None
        assert (h.spec.kind, h.spec.m, h.spec.ef_construction, h.spec.ef_search) == (
            "hnsw", 16, 200, 80)
        assert (f.spec.kind, f.spec.m, f.spec.ef_construction, f.spec.ef_search) == (
            "hnsw", 8, 200, 64)
        assert len(h) == 35 and len(f) == 35
        v7 = e.store.vector("hnswdb", "v7")
        assert v7 is not None and v7.metadata == {"cat": "updated"}
        assert e.auth.key("k1")["is_active"] is False  # type: ignore[index]
        assert e.auth.key("k2")["is_active"] is True  # type: ignore[index]
        assert e.auth.user("u2")["locked_until"] == 4102444800000  # type: ignore[index]
        assert e.auth.grant("hnswdb", "u2") == "read"
        assert e.mode() == "readwrite"
        # new records are schema 2 beside the old ones
        e.submit_sync(upsert("hnswdb", _vectors(3, 8, seed=9)))
        assert e.log.read(e.log.last_lsn - 1)[0].body["v"] == ev.SCHEMA
    finally:
        e.close()
    e = _open(s)
    try:
        assert e.report.index["loaded"] == 2  # format 3 now
        assert len(e.indexes.get("hnswdb")) == 38  # type: ignore[arg-type]
    finally:
        e.close()
    report = verify_dir(s)
    assert report.ok, report.lines


# -- a failed auth-file commit is repaired from the log, never skipped ------------------------


def _key_active(e: Engine, key_id: str) -> bool:
    key = e.auth.key(key_id)
    return bool(key and key["is_active"])


def _make_user_and_key(e: Engine, key_id: str) -> None:
    e.submit_sync(Command("auth.user.create", {"user_id": "u", "username": "u", "email": "",
                                               "password_hash": "x", "roles": ["user"]}))
    e.submit_sync(Command("auth.key.create", {"user_id": "u", "key_id": key_id,
                                              "hash": "h" + key_id, "key_prefix": "p",
                                              "permissions": []}))


def _wait(pred: Any, timeout: float = 5.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(0.05)
    return pred()


def test_a_failed_auth_commit_is_caught_up_from_the_log(tmp_path: Path) -> None:
    e = _open(_settings(tmp_path))
    try:
        _create(e, "d", dim=2)
        _make_user_and_key(e, "k1")
        # the auth file's commit fails after the log's, and so does the first catch-up
        faults.arm("auth.commit")
        faults.arm("auth.replay")
        futs = [e.writer.submit(c) for c in (  # type: ignore[union-attr]
            Command("auth.key.revoke", {"key_id": "k1"}),
            upsert("d", [("a", [1.0, 0.0], None), ("b", [0.0, 1.0], None)]),
        )]
        for f in futs:
            f.result()  # acknowledged: the log holds them
        assert "auth" in e.projections_behind()
        assert e.projection_failures()["auth"] == 1
        # the vectors of the same group reached the index all the same
        assert len(e.indexes.get("d")) == 2  # type: ignore[arg-type]
        # while behind, auth changes are refused (never applied out of order) ...
        with pytest.raises(Exception, match="behind the log"):
            e.submit_sync(Command("auth.key.revoke", {"key_id": "k1"}))
        # ... other writes go on
        e.submit_sync(upsert("d", [("c", [1.0, 1.0], None)]))
        # the writer retries while idle: the revocation lands
        assert _wait(lambda: not e.projections_behind())
        assert not _key_active(e, "k1")
        e.submit_sync(Command("auth.key.revoke", {"key_id": "k1"}))
    finally:
        e.close()
    _assert_auth_equals_replay(e.settings, tmp_path)


def test_an_auth_store_behind_at_a_crash_is_caught_up_on_start(tmp_path: Path) -> None:
    e = _open(_settings(tmp_path))
    _make_user_and_key(e, "k1")
    faults.arm("auth.commit")
    faults.arm("auth.replay", times=1000)  # no catch-up before the "crash"
    _create(e, "d", dim=2)
    e.submit_sync(Command("auth.key.revoke", {"key_id": "k1"}))
    for i in range(5):  # later groups commit; the auth store must not jump over the gap
        e.submit_sync(upsert("d", [(f"v{i}", [1.0, float(i)], None)]))
    # a replica's group with auth records while behind: appended, folded later in order
    user = Command("auth.user.create", {"user_id": "x", "username": "x", "password_hash": "x",
                                        "roles": ["user"]})
    with pytest.raises(Exception, match="behind the log"):
        e.submit_sync(user)
    assert _key_active(e, "k1")  # not applied yet
    _crash(e)
    faults.disarm()
    e2 = _open(e.settings)
    try:
        assert e2.report.auth_replayed >= 7
        assert not _key_active(e2, "k1")
        e2.submit_sync(user)  # level again: auth changes are accepted
    finally:
        e2.close()
    _assert_auth_equals_replay(e.settings, tmp_path)


def _crash(e: Engine) -> None:
    """Leave the engine as a kill would: its thread stops, nothing more is written."""
    assert e.writer is not None and e.env is not None and e.auth_env is not None
    e.writer.close()
    e.writer = None
    e.auth_env.close()
    e.env.close()
    e.auth_env = e.env = None
    e._release()


def _assert_auth_equals_replay(s: Settings, tmp_path: Path) -> None:
    report = verify_dir(s)
    assert report.ok, report.lines
    assert any("auth store equals the replay" in line for line in report.lines), report.lines


# -- a failed index apply surfaces and repairs ------------------------------------------------


def test_an_index_apply_failure_is_rebuilt_from_the_store(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    e = _open(_settings(tmp_path))
    try:
        _create(e, "d", dim=2)
        e.submit_sync(upsert("d", [("a", [1.0, 0.0], None)]))
        faults.arm("index.apply")
        with caplog.at_level(logging.WARNING):
            e.submit_sync(upsert("d", [("b", [0.0, 1.0], {"k": 1}), ("c", [1.0, 1.0], None)]))
        assert e.projection_failures()["index"] == 1
        assert any("could not apply a committed record" in r.message for r in caplog.records)
        assert any("rebuilt from the store" in r.message for r in caplog.records)
        live = e.indexes.get("d")
        assert live is not None and len(live) == 3 and live.meta[1] == {"k": 1}
        assert not e.projections_behind()
    finally:
        e.close()


async def test_a_diverged_index_is_not_served_until_repaired(tmp_path: Path) -> None:
    async with running_server(_settings(tmp_path)) as srv:
        await _diverged_index_round(srv)


async def _diverged_index_round(srv: Server) -> None:
    api = srv.user
    db = await api.create_db(dim=2, indexType="FLAT")
    st, _ = await api.post(f"/v1/databases/{db}/vectors", {"id": "a", "values": [1, 0]})
    assert st in (200, 201)
    faults.arm("index.apply")
    faults.arm("index.rebuild", times=10**6)  # every repair fails until disarmed
    st, _ = await api.post(f"/v1/databases/{db}/vectors", {"id": "b", "values": [0, 1]})
    assert st in (200, 201)  # durable: acknowledged
    st, body = await srv.anon.get("/health/db")
    assert st == 503 and body["checks"]["vector_db"]["healthy"] is False, body
    assert body["checks"]["vector_db"]["status"].startswith(f"index {db} not served"), body
    st, body = await api.post(f"/v1/databases/{db}/search", {"queryVector": [0, 1], "topK": 2})
    assert st == 503, body  # never a silently diverged answer
    st, text = await srv.anon.get("/metrics")
    assert 'jadevectordb_projection_apply_failures_total{projection="index"} 1.0' in text
    assert "jadevectordb_projections_behind 1.0" in text
    engine = srv.app[ENGINE]
    st, _ = await api.post(f"/v1/databases/{db}/vectors", {"id": "c", "values": [1, 1]})
    assert st in (200, 201)  # writes go on; the repair at this group fails again
    assert "index " + db in engine.projections_behind()
    faults.disarm("index.rebuild")  # the cause is gone: the idle writer repairs it, no write
    for _ in range(100):
        if not engine.projections_behind():
            break
        await asyncio.sleep(0.05)
    assert not engine.projections_behind()
    st, body = await srv.anon.get("/health/db")
    assert st == 200, body
    st, body = await api.post(f"/v1/databases/{db}/search", {"queryVector": [0, 1], "topK": 1})
    assert st == 200 and body["results"][0]["vectorId"] == "b", body
    st, body = await api.get(f"/v1/databases/{db}")
    assert body["stats"]["indexedVectors"] == 3, body


def test_a_replayed_group_that_fails_an_index_is_rebuilt(tmp_path: Path) -> None:
    """A replica or restore applies hundreds of records as one group: a failure in the middle
    of it must not leave the rest of the group out of the index."""
    a = _open(_settings(tmp_path, "a"))
    b = _open(_settings(tmp_path, "b"))
    try:
        _create(a, "d", dim=2)
        for i in range(20):
            a.submit_sync(upsert("d", [(f"v{i}", [float(i), 1.0], None)]))
        faults.arm("index.apply")
        b.writer.submit(Replicated(a.log.read(0))).result()  # type: ignore[union-attr]
        assert len(b.indexes.get("d")) == 20  # type: ignore[arg-type]
        assert b.indexes.applied_lsn == a.log.last_lsn
    finally:
        a.close()
        b.close()


def test_faults_are_inert_unless_armed() -> None:
    faults.hit("index.apply")  # nothing armed: nothing happens
    faults.arm("x", times=2)
    for _ in range(2):
        with pytest.raises(faults.FaultInjected):
            faults.hit("x")
    faults.hit("x")
    assert not os.environ.get("JADEVECTORDB_FAULTS")


# -- a dimension history over a checkpoint, ended by SIGKILL ----------------------------------

_KILLED_HISTORY = r"""
import os, signal, sys
import numpy as np
from jade.core.decide import Command
from jade.engine import Engine
from jade.http.databases import new_index
from tests.conftest import make_settings
from tests.test_apply import upsert, vec_delete
from pathlib import Path

e = Engine(make_settings(Path(sys.argv[1])))
e.open()
run = e.submit_sync
run(Command("db.create", {"db": "d", "name": "d", "description": "", "dimension": 3,
    "metric": "euclidean", "index_type": "HNSW", "index": new_index("HNSW", "hnsw", {}),
    "extra": {}}))
run(upsert("d", [("a", [1.0, 0.0, 0.0], None), ("b", [0.0, 1.0, 0.0], None)]))
e.indexes.checkpoint()
run(vec_delete("d", ["a", "b"]))
run(Command("db.update", {"db": "d", "changes": {"dimension": 4}}))
run(upsert("d", [("c", [1.0, 2.0, 3.0, 4.0], None)]))
run(vec_delete("d", ["c"]))
run(Command("db.update", {"db": "d", "changes": {"dimension": 3}}))
run(upsert("d", [("e", [3.0, 2.0, 1.0], {"k": "v"})]))
print("done", flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_a_dimension_history_over_a_checkpoint_survives_sigkill(tmp_path: Path) -> None:
    import subprocess
    import sys

    root = Path(__file__).resolve().parent.parent
    p = subprocess.run([sys.executable, "-c", _KILLED_HISTORY, str(tmp_path)], cwd=root,
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == -9 and "done" in p.stdout, p.stderr
    e = _open(make_settings(tmp_path))
    try:
        assert e.report.unclean
        assert e.report.index["loaded"] == 1 and e.report.index["replayed_records"] == 6
        live = e.indexes.get("d")
        assert live is not None and live.dim == 3 and len(live) == 1
        assert live.meta == {3: {"k": "v"}}  # labels a 0, b 1, c 2, e 3
        labels, _ = live.index.search(np.array([3.0, 2.0, 1.0], dtype=np.float32), 1)
        assert labels.tolist() == [3]
    finally:
        e.close()
    report = verify_dir(e.settings)
    assert report.ok, report.lines


def test_a_failure_the_index_step_could_not_contain_is_repaired(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A bug escaping the index fold after a commit is neither lost nor fatal: the group's
    databases are taken out of service and rebuilt from the store."""
    from jade.indexes.projection import IndexProjection

    e = _open(_settings(tmp_path))
    try:
        _create(e, "d", dim=2)
        real = IndexProjection.apply_group
        calls = {"n": 0}

        def once(self: IndexProjection, entries: Any) -> None:
            calls["n"] += 1
            if calls["n"] == 1:
                raise RuntimeError("a bug in the fold")
            real(self, entries)

        monkeypatch.setattr(IndexProjection, "apply_group", once)
        e.submit_sync(upsert("d", [("a", [1.0, 0.0], None)]))  # acknowledged: it is durable
        assert "index d" in e.projections_behind() or len(e.indexes.get("d") or []) == 1
        assert _wait(lambda: not e.projections_behind())
        assert len(e.indexes.get("d")) == 1  # type: ignore[arg-type]
        assert e.projection_failures()["index"] == 1
    finally:
        e.close()
