"""Point-in-time restore, the PostgreSQL way: an early base snapshot, a stream of changes, the
log archived and truncated behind it, then a restore to EVERY recorded point (by LSN and by
time) compared with an independent replay of the log up to that point.

The helpers at the top (state digest, oracle replay, recall) are shared by the other
``test_backup_*`` files.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pytest

from jade import events as ev
from jade.auth.store import AuthStore
from jade.backup import archive, snapshot
from jade.backup.jobs import Backups
from jade.backup.restore import RestoreError, restore, target_settings, window
from jade.backup.verify import verify_dir
from jade.core.decide import Command
from jade.engine import Engine
from jade.events import AUTH_TYPES
from jade.http.keys import BACKUPS, ENGINE, SCHEDULER
from jade.settings import Settings
from jade.stores.data import DataStore
from tests.conftest import cli_env, jade, make_settings
from tests.test_index_checkpoint import create_cmd, upsert_cmd
from tools.restore_cmd import parse_time
from wal.codec import Record, decode, pack, unpack
from wal.lmdbenv import Env
from wal.log import Log
from wal.seal import unseal

DIM = 16

# ----------------------------------------------------------------------------------------------
# shared helpers


def digest_envs(data_env: Env, auth_env: Env | None) -> dict[str, Any]:
    """Everything a restore must reproduce: per database its catalog entry and every vector
    (id -> float32 bytes, metadata); every user; every grant."""
    store = DataStore(data_env)
    dbs: dict[str, Any] = {}
    for db in store.databases():
        vecs = {}
        for chunk in store.scan(db["id"]):
            for v in chunk:
                vecs[v.id] = (v.label, bytes(v.values), v.metadata)
        dbs[db["id"]] = {"catalog": db, "vectors": vecs}
    users: dict[str, Any] = {}
    grants: dict[bytes, Any] = {}
    if auth_env is not None:
        auth = AuthStore(auth_env)
        users = {u["username"]: u for u in auth.users()}
        with auth_env.read() as txn:
            grants = {bytes(k): unpack(unseal(k, v)) for k, v in txn.cursor(db=auth.db["grants"])}
    return {"dbs": dbs, "users": users, "grants": grants}


def digest_dir(s: Settings) -> dict[str, Any]:
    denv = Env(s.db_path, readonly=True)
    aenv = Env(s.auth_db_path, readonly=True) if os.path.exists(s.auth_db_path) else None
    try:
        return digest_envs(denv, aenv)
    finally:
        denv.close()
        if aenv is not None:
            aenv.close()


def replay_digest(records: list[Record], upto: int) -> dict[str, Any]:
    """The oracle: records 1..upto applied one by one to fresh stores in a temp directory."""
    assert [r.lsn for r in records[:upto]] == list(range(1, upto + 1))
    with tempfile.TemporaryDirectory(prefix="jade-oracle-") as tmp:
        denv = Env(os.path.join(tmp, "data.db"))
        aenv = Env(os.path.join(tmp, "auth.db"))
        try:
            store, auth = DataStore(denv), AuthStore(aenv)
            for rec in records[:upto]:
                denv.write(lambda txn, rec=rec: store.apply(txn, rec, ev.of(rec)))
                if rec.type in AUTH_TYPES:
                    aenv.write(lambda txn, rec=rec: auth.apply(txn, rec, ev.of(rec)))
            return digest_envs(denv, aenv)
        finally:
            denv.close()
            aenv.close()


def all_records(s: Settings, live_log: Log | None = None) -> list[Record]:
    """The whole history read straight from the archive files and the live log (independent of
    ``archive.records``): msgpack segments decoded and chain-checked here."""
    out: list[Record] = []
    prev: bytes | None = None
    for seg in archive.segments(s.backup_dir):
        with open(seg.path, "rb") as fh:
            m = unpack(fh.read())
        if prev is None:
            prev = bytes(m["prev"])
        for raw in m["records"]:
            rec = decode(raw, prev)
            prev = rec.checksum
            if out and rec.lsn <= out[-1].lsn:
                continue
            out.append(rec)
    if live_log is not None:
        after = out[-1].lsn if out else live_log.first_lsn - 1
        out.extend(live_log.read(after, verify=True))
    return out


def rfc3339(ts_ns: int) -> str:
    """ts (ns) as RFC 3339 with microseconds, truncated (what a user would type)."""
    sec, ns = divmod(ts_ns, 1_000_000_000)
    return datetime.fromtimestamp(sec, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S") + f".{ns // 1000:06d}Z"


def vectors(rng: np.random.Generator, n: int, prefix: str) -> list[dict[str, Any]]:
    data = rng.standard_normal((n, DIM)).astype(np.float32)
    return [
        {
            "id": f"{prefix}{i}",
            "values": data[i].tolist(),
            "metadata": {"batch": prefix, "i": i, "even": i % 2 == 0, "tags": [prefix, str(i)]},
        }
        for i in range(n)
    ]


def recall_at_10(engine: Engine, db_id: str, queries: np.ndarray) -> float:
    """recall@10 of the served index against exact numpy over the stored vectors."""
    db = engine.store.database(db_id)
    assert db is not None
    stored = [v for chunk in engine.store.scan(db_id) for v in chunk]
    labels = np.array([v.label for v in stored], dtype=np.int64)
    data = np.stack([v.array() for v in stored]).astype(np.float32)
    live = engine.indexes.get(db_id)
    assert live is not None and len(live) == len(stored)
    if db["metric"] == "cosine":
        data = data / np.linalg.norm(data, axis=1, keepdims=True)
    hits = 0
    for q in queries:
        qq = q / np.linalg.norm(q) if db["metric"] == "cosine" else q
        if db["metric"] == "euclidean":
            truth = labels[np.argsort(((data - qq) ** 2).sum(axis=1))[:10]]
        else:
            truth = labels[np.argsort(-(data @ qq))[:10]]
        got, _, _ = live.search(q.astype(np.float32), 10, None, exact_scan_max=0, cache_size=0)
        hits += len(set(got.tolist()) & set(truth.tolist()))
    return hits / (10 * len(queries))


def open_engine(s: Settings) -> Engine:
    e = Engine(s)
    e.open()
    return e


async def marker(engine: Engine) -> tuple[int, int, str]:
    """(LSN, ts, RFC 3339 text) of a point between two batches: the text names a time after
    record LSN and before record LSN + 1."""
    await asyncio.sleep(0.003)
    lsn = engine.log.last_lsn
    now = time.time_ns()
    text = rfc3339(now)
    await asyncio.sleep(0.003)
    assert engine.log.last_lsn == lsn, "something wrote between batches"
    last = engine.log.get(lsn)
    assert last is not None and last.ts <= parse_time(text)
    return lsn, parse_time(text), text


# ----------------------------------------------------------------------------------------------


@pytest.fixture
def settings(tmp_path: Any) -> Settings:
    # the archive job exists (the test runs it); truncation: older than 1 s, never past the archive
    return make_settings(
        tmp_path,
        log_retention_seconds=1,
        archive_interval_seconds=3600,  # the job exists; the test runs it
        archive_segment_records=7,
        checkpoint_interval_seconds=0,
    )


async def test_restore_to_every_point_by_lsn_and_time(
    server: Any, settings: Settings, tmp_path: Any
) -> None:
    api, admin = server.user, server.admin
    engine: Engine = server.app[ENGINE]
    bk = server.app[BACKUPS]
    rng = np.random.default_rng(5)
    markers: list[tuple[int, int, str]] = []

    async def store(db: str, vecs: list[dict[str, Any]]) -> None:
        for i in range(0, len(vecs), 100):
            st, body = await api.post(
                f"/v1/databases/{db}/vectors/batch", {"vectors": vecs[i : i + 100]}
            )
            assert st == 201, body

    # batch 0: before the base snapshot (outside the window)
    main = await api.create_db(DIM)
    await store(main, vectors(rng, 200, "a"))
    markers.append(await marker(engine))
    snap1 = await asyncio.to_thread(bk.snapshot)
    assert snap1.lsn == markers[0][0]

    # batch 1: vectors, a user made by the admin
    await store(main, vectors(rng, 300, "b"))
    st, alice = await admin.post(
        "/v1/users", {"username": "alice", "password": "Alice_Pass123!", "roles": ["user"]}
    )
    assert st == 201, alice
    markers.append(await marker(engine))

    # batch 2: a second database, a grant, deletes and an update
    other = await api.create_db(DIM, name="other")
    await store(other, vectors(rng, 20, "o"))
    st, body = await api.post(
        f"/v1/databases/{main}/grants", {"user_id": alice["user_id"], "permission": "read"}
    )
    assert st == 201, body
    for i in range(0, 40, 3):
        st, body = await api.delete(f"/v1/databases/{main}/vectors/a{i}")
        assert st == 200, body
    st, body = await api.put(
        f"/v1/databases/{main}/vectors/b7", {"values": [0.5] * DIM, "metadata": {"updated": True}}
    )
    assert st == 200, body
    markers.append(await marker(engine))

    # everything so far becomes older than the retention (1 s)
    await asyncio.sleep(1.1)
    snap2 = await asyncio.to_thread(bk.snapshot)
    assert snap2.lsn == markers[2][0]

    # batch 3: drop the second database, more vectors, a role change, a third database
    st, body = await api.delete(f"/v1/databases/{other}")
    assert st == 200, body
    await store(main, vectors(rng, 300, "c"))
    st, body = await admin.put(f"/v1/users/{alice['user_id']}", {"roles": ["user", "admin"]})
    assert st == 200, body
    third = await api.create_db(DIM, name="third", metric="euclidean")
    await store(third, vectors(rng, 30, "t"))
    markers.append(await marker(engine))

    # batch 4: more deletes and metadata changes, the grant widened
    for i in range(1, 60, 4):
        st, body = await api.delete(f"/v1/databases/{main}/vectors/c{i}")
        assert st == 200, body
    await store(main, [{**v, "metadata": {"rewritten": True}} for v in vectors(rng, 50, "b")])
    st, body = await api.post(
        f"/v1/databases/{main}/grants", {"user_id": alice["user_id"], "permission": "write"}
    )
    assert st == 201, body
    markers.append(await marker(engine))

    history = engine.log.read(0, verify=True)  # the whole history, before any truncation
    assert [r.lsn for r in history] == list(range(1, engine.log.last_lsn + 1))

    # archive and truncate: the archive holds the log until it has run; then everything older
    # than the retention goes, past the oldest snapshot too (with the archive it makes the
    # window: the restores below start from snap1 and read the archive)
    assert bk.truncation_limit() == 0  # nothing archived yet: nothing may go
    result = await server.app[SCHEDULER].run("archive")
    assert result is not None, server.app[SCHEDULER].jobs["archive"].last_outcome
    assert result["segments"] and result["truncated"] >= snap2.lsn > snap1.lsn
    assert engine.log.first_lsn == result["truncated"] + 1
    assert archive.last_archived(settings.backup_dir) == markers[-1][0]
    assert archive.verify_all(settings.backup_dir) == []

    # batch 5: only in the live log
    await store(main, vectors(rng, 100, "d"))
    st, body = await admin.delete(f"/v1/users/{alice['user_id']}")
    assert st == 200, body
    markers.append(await marker(engine))
    # one more record, so the last marker's time lies between two records (its restore must
    # stop before this one)
    await store(main, vectors(rng, 1, "z"))
    history += engine.log.read(history[-1].lsn, verify=True)

    # the archive + live log carry exactly the history, byte for byte
    assert [r.encoded() for r in all_records(settings, engine.log)] == [
        r.encoded() for r in history
    ]
    queries = rng.standard_normal((50, DIM)).astype(np.float32)
    recall_before = recall_at_10(engine, main, queries)
    assert recall_before >= 0.95

    n = 0
    for lsn, ts, text in markers[1:]:
        want = replay_digest(history, lsn)
        assert parse_time(text) == ts
        for how, kw in (("lsn", {"lsn": lsn}), ("time", {"ts": ts})):
            target = str(tmp_path / f"r-{how}-{lsn}")
            res = await asyncio.to_thread(restore, settings, target, source_log=engine.log, **kw)
            assert res["target_lsn"] == lsn, (how, res)
            expected_snap = snap2 if lsn >= snap2.lsn else snap1
            assert res["snapshot"] == expected_snap.name
            assert res["replayed"] == lsn - expected_snap.lsn
            ts_settings = target_settings(settings, target)
            got = digest_dir(ts_settings)
            assert got == want, f"restore by {how} to LSN {lsn} differs from the replay"
            n += 1
        assert parse_time(res["target_time"]) >= history[lsn - 1].ts  # printed time reaches it
    assert n == 2 * (len(markers) - 1)
    # one restore per marker differs from its neighbours: the markers really are distinct states
    digests = [replay_digest(history, m[0]) for m in markers]
    assert all(a != b for a, b in zip(digests, digests[1:], strict=False))

    # the last restore: verify says ok, an engine on it searches as well as the original
    last_dir = str(tmp_path / f"r-time-{markers[-1][0]}")
    rep = await asyncio.to_thread(verify_dir, target_settings(settings, last_dir))
    assert rep.ok, rep.lines
    restored = await asyncio.to_thread(open_engine, target_settings(settings, last_dir))
    try:
        recall_after = recall_at_10(restored, main, queries)
    finally:
        restored.close()
    assert recall_after >= 0.95 and abs(recall_after - recall_before) <= 0.02

    # the archive alone (the server's directory lost) restores every archived point
    lost = replace(settings, db_path=str(tmp_path / "lost" / "jadevectordb.db"))
    for lsn, _, _ in markers[1:-1]:
        target = str(tmp_path / f"a-{lsn}")
        res = await asyncio.to_thread(restore, lost, target, lsn=lsn)
        assert res["target_lsn"] == lsn
        assert digest_dir(target_settings(settings, target)) == replay_digest(history, lsn)
    with pytest.raises(RestoreError, match="past the end"):
        await asyncio.to_thread(restore, lost, str(tmp_path / "a-end"), lsn=markers[-1][0])

    # outside the window: refused, nothing left behind
    before_lsn = snap1.lsn - 1
    before_ts = history[snap1.lsn - 2].ts
    for kw, msg in (
        ({"lsn": before_lsn}, "before the window"),
        ({"ts": before_ts}, "before the window"),
        ({"ts": markers[0][1] - 10_000_000_000}, "before the window"),
        ({"lsn": history[-1].lsn + 1}, "past the end"),
        ({"ts": time.time_ns() + 3_600_000_000_000}, "after what the live log is known to cover"),
    ):
        target = str(tmp_path / "outside")
        with pytest.raises(RestoreError, match=msg):
            await asyncio.to_thread(restore, settings, target, source_log=engine.log, **kw)
        assert not os.path.exists(target)

    # a non-empty target needs force; force replaces it; the source itself is never a target
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep.txt").write_text("precious")
    with pytest.raises(RestoreError, match="not empty"):
        await asyncio.to_thread(
            restore, settings, str(busy), lsn=markers[2][0], source_log=engine.log
        )
    assert (busy / "keep.txt").read_text() == "precious"
    res = await asyncio.to_thread(
        restore, settings, str(busy), lsn=markers[2][0], force=True, source_log=engine.log
    )
    assert not (busy / "keep.txt").exists()
    assert digest_dir(target_settings(settings, str(busy))) == replay_digest(history, markers[2][0])
    for victim in (settings.data_dir, os.path.dirname(settings.data_dir)):
        with pytest.raises(RestoreError, match="refusing to restore over the source"):
            await asyncio.to_thread(
                restore, settings, victim, lsn=markers[2][0], force=True, source_log=engine.log
            )
    assert os.path.exists(settings.db_path) and snapshot.listing(settings.backup_dir)

    # the window the restore works in
    w = await asyncio.to_thread(window, settings, engine.log)
    assert (w.earliest_lsn, w.latest_lsn, w.snapshots) == (snap1.lsn, history[-1].lsn, 2)
    assert w.archived_upto == markers[-2][0]

    # a snapshot of the truncated log: its data file starts where the server's log does now,
    # its auth file is brought to the same LSN; restoring from it replays nothing
    snap3 = await asyncio.to_thread(bk.snapshot)
    assert snap3.lsn == history[-1].lsn
    target = str(tmp_path / "from-truncated")
    res = await asyncio.to_thread(restore, settings, target, latest=True, source_log=engine.log)
    assert res["snapshot"] == snap3.name and res["replayed"] == 0
    ts3 = target_settings(settings, target)
    assert digest_dir(ts3) == replay_digest(history, snap3.lsn)
    rep = await asyncio.to_thread(verify_dir, ts3)
    assert rep.ok and rep.facts["first_lsn"] == engine.log.first_lsn, rep.lines


async def test_window_times_round_trip(server: Any, settings: Settings, tmp_path: Any) -> None:
    """The times the window prints are usable targets: earliest → the oldest snapshot's LSN,
    latest → the last record (microsecond rounding never pushes them outside)."""
    api, engine = server.user, server.app[ENGINE]
    db = await api.create_db(DIM)
    st, body = await api.post(f"/v1/databases/{db}/vectors", {"id": "x", "values": [1.0] * DIM})
    assert st == 201, body
    snap = await asyncio.to_thread(server.app[BACKUPS].snapshot)
    for i in range(5):
        st, body = await api.post(
            f"/v1/databases/{db}/vectors", {"id": f"y{i}", "values": [float(i)] * DIM}
        )
        assert st == 201, body
    st, w = await server.admin.get("/v1/admin/backup/window")
    assert st == 200, w
    assert w["earliest_lsn"] == snap.lsn and w["latest_lsn"] == engine.log.last_lsn
    for key, want in (("earliest_time", snap.lsn), ("latest_time", engine.log.last_lsn)):
        target = str(tmp_path / key)
        res = await asyncio.to_thread(
            restore, settings, target, ts=parse_time(w[key]), source_log=engine.log
        )
        assert res["target_lsn"] == want, (key, w, res)
    # the upper bound of a time target: the live log, read when the window was asked for
    assert w["latest_restorable_by"] == "live log"
    assert parse_time(w["latest_restorable_time"]) >= engine.log.last_ts
    res = await asyncio.to_thread(
        restore,
        settings,
        str(tmp_path / "restorable"),
        ts=parse_time(w["latest_restorable_time"]),
        source_log=engine.log,
    )
    assert res["target_lsn"] == engine.log.last_lsn, (w, res)
    # a restore's own printed target time leads back to the same LSN
    res2 = await asyncio.to_thread(
        restore,
        settings,
        str(tmp_path / "again"),
        ts=parse_time(res["target_time"]),
        source_log=engine.log,
    )
    assert res2["target_lsn"] == res["target_lsn"]
    shutil.rmtree(str(tmp_path / "again"))


def test_truncation_stops_at_the_oldest_index_checkpoint(settings: Settings) -> None:
    """A database written since its checkpoint holds the log back to that checkpoint's LSN, so
    a restart replays the tail instead of rebuilding the index from the store."""

    def upsert(db_id: str, vecs: list[dict[str, Any]]) -> None:
        engine.submit_sync(
            Command(
                "vec.upsert",
                {
                    "db": db_id,
                    "ids": [v["id"] for v in vecs],
                    "values": np.array([v["values"] for v in vecs], dtype="<f4").tobytes(),
                    "metadata": [v["metadata"] for v in vecs],
                    "must_exist": False,
                },
            )
        )

    rng = np.random.default_rng(3)
    engine = open_engine(settings)
    try:
        for db_id in ("busy", "idle"):
            engine.submit_sync(create_cmd(db_id, "hnsw", dim=DIM))
            upsert(db_id, vectors(rng, 50, "a"))
        engine.indexes.checkpoint()
        held = engine.log.last_lsn  # both checkpoints cover this
        for batch in ("b", "c", "d"):  # "busy" is dirty: its checkpoint stays at held
            upsert("busy", vectors(rng, 20, batch))
        assert engine.env is not None and engine.auth_env is not None
        snap = snapshot.create(engine.env, engine.auth_env, settings.index_dir, settings.backup_dir)
        assert snap.lsn == engine.log.last_lsn == held + 3
        upsert("busy", vectors(rng, 20, "e"))  # the log keeps its last record: one past snap
        time.sleep(1.1)  # every record is older than the retention (1 s)
        bk = Backups(engine)
        assert engine.indexes.oldest_checkpoint_lsn() == held
        result = bk.archive_and_truncate()
        # retention, the snapshot and the archive would allow up to snap.lsn
        assert result["segments"] and archive.last_archived(settings.backup_dir) == snap.lsn + 1
        assert result["truncated"] == held and engine.log.first_lsn == held + 1
    finally:
        engine.close(checkpoint=False)  # as after a kill
    engine = open_engine(settings)
    try:
        assert engine.report.index == {"loaded": 2, "rebuilt": 0, "replayed_records": 4}
        engine.indexes.checkpoint()  # both move past the snapshot
        bk = Backups(engine)
        assert engine.indexes.oldest_checkpoint_lsn() == engine.log.last_lsn == snap.lsn + 1
        # nothing holds the log now (archiving is on: not the snapshot); it keeps its last record
        assert bk.truncation_limit() == engine.log.last_lsn == snap.lsn + 1
        assert bk.archive_and_truncate()["truncated"] == snap.lsn - held
        assert engine.log.first_lsn == snap.lsn + 1
    finally:
        engine.close()


# ----------------------------------------------------------------------------------------------
# the upper bound of a time target: what the sources read are known to cover


def upsert_sync(engine: Engine, db_id: str, vecs: list[dict[str, Any]]) -> int:
    """One upsert record through the engine's writer; its LSN."""
    engine.submit_sync(upsert_cmd(db_id, [(v["id"], v["values"], v["metadata"]) for v in vecs]))
    return engine.log.last_lsn


def jade_cli(s: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    """``jade ARGS`` as an operator runs it, on the data directory of ``s``."""
    return jade(cli_env(s), *args)


def one_line_failure(r: subprocess.CompletedProcess[str], *wanted: str) -> str:
    """A refused restore: exit 1, one line on stderr naming every ``wanted`` piece, no
    traceback."""
    assert r.returncode == 1, (r.returncode, r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    for w in wanted:
        assert w in lines[0], (w, lines[0])
    return lines[0]


def small_history(settings: Settings) -> tuple[Engine, snapshot.SnapshotInfo]:
    """An engine on ``settings`` (closed by the caller): a database, 20 vectors, a snapshot,
    5 more vectors, then the vector "last" (the last record)."""
    rng = np.random.default_rng(11)
    engine = open_engine(settings)
    engine.submit_sync(create_cmd("main", "flat", dim=DIM))
    upsert_sync(engine, "main", vectors(rng, 20, "a"))
    assert engine.env is not None and engine.auth_env is not None
    snap = snapshot.create(engine.env, engine.auth_env, settings.index_dir, settings.backup_dir)
    upsert_sync(engine, "main", vectors(rng, 5, "b"))
    upsert_sync(engine, "main", [{"id": "last", "values": [0.25] * DIM, "metadata": {}}])
    return engine, snap


def test_a_time_after_the_last_record_restores_from_the_live_log(
    settings: Settings, tmp_path: Any
) -> None:
    """The live log read now covers up to now: a time after its last record (and before the
    moment of reading) is the state after that record, beside a server and offline."""
    engine, snap = small_history(settings)
    try:
        last = engine.log.get(engine.log.last_lsn)
        assert last is not None
        time.sleep(0.01)
        text = rfc3339(time.time_ns())  # after the last record ...
        time.sleep(0.01)  # ... and before the restore reads the log
        t = parse_time(text)
        assert last.ts < t < time.time_ns()
        history = engine.log.read(0, verify=True)
        want = replay_digest(history, last.lsn)
        # beside the server: its open log
        beside = str(tmp_path / "beside")
        res = restore(settings, beside, ts=t, source_log=engine.log)
        assert (res["target_lsn"], res["snapshot"]) == (last.lsn, snap.name), res
        assert res["replayed"] == last.lsn - snap.lsn
        got = digest_dir(target_settings(settings, beside))
        assert got["dbs"]["main"]["vectors"]["last"][1] == np.full(DIM, 0.25, "<f4").tobytes()
        assert got == want
        # the window offers that time too: its upper bound is at least the moment it was read
        w = window(settings, engine.log)
        assert parse_time(w.json()["latest_restorable_time"]) >= t
        assert w.json()["latest_restorable_by"] == "live log"
    finally:
        engine.close()
    # offline, through the command line
    r = jade_cli(
        settings, "restore", "--to-time", text, "--target", str(tmp_path / "off"), "--json"
    )
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["ok"] is True and out["target_lsn"] == last.lsn, out
    assert digest_dir(target_settings(settings, str(tmp_path / "off"))) == want


def test_a_time_no_source_covers_is_refused_naming_the_bound(
    settings: Settings, tmp_path: Any
) -> None:
    """Far in the future (after the moment the live log is read) or before the oldest
    snapshot: exit 1, one line naming the bound, nothing left behind."""
    engine, snap = small_history(settings)
    first = engine.log.get(1)
    assert first is not None and first.ts < snap.ts
    engine.close()
    future = rfc3339(time.time_ns() + 3_600_000_000_000)
    early = rfc3339(first.ts)
    targets = {k: str(tmp_path / k) for k in ("future", "early")}
    r = jade_cli(settings, "restore", "--to-time", future, "--target", targets["future"])
    line = one_line_failure(
        r, f"time {future}", "after what the live log is known to cover (read at ", "unknown"
    )
    read_at = parse_time(line.split("(read at ")[1].split(")")[0])
    assert parse_time(future) > read_at > snap.ts
    r = jade_cli(settings, "restore", "--to-time", early, "--target", targets["early"], "--json")
    one_line_failure(r, f"time {early}", "before the oldest snapshot", snap.name)
    assert json.loads(r.stdout)["ok"] is False
    assert not any(os.path.exists(p) for p in targets.values())
    # in process: the same refusals
    with pytest.raises(RestoreError, match=r"after what the live log is known to cover"):
        restore(settings, targets["future"], ts=parse_time(future))
    with pytest.raises(RestoreError, match=r"before the oldest snapshot"):
        restore(settings, targets["early"], ts=parse_time(early))
    # a source that cannot be read at all is one line too, never a traceback
    with open(settings.db_path, "wb") as fh:
        fh.write(b"not an LMDB file\n" * 256)
    r = jade_cli(settings, "restore", "--latest", "--target", str(tmp_path / "garbage"))
    one_line_failure(r, "jade: restore failed:", settings.db_path)


def segment_map(seg: archive.Segment) -> dict[str, Any]:
    with open(seg.path, "rb") as fh:
        return dict(unpack(fh.read()))


def test_an_archive_covers_up_to_its_seal(settings: Settings, tmp_path: Any) -> None:
    """Archive only (the live log lost): a time after the last archived record is the state
    after it while the archive is known complete (sealed) at that time; after the seal it is
    refused, naming the seal. A segment written before seals were recorded covers up to its
    last record."""
    engine, _ = small_history(settings)
    try:
        last = engine.log.get(engine.log.last_lsn)
        assert last is not None
        time.sleep(0.01)
        between = time.time_ns()  # after the last record, before the seal
        time.sleep(0.01)
        (seg,) = archive.archive_new(engine.log, settings.backup_dir, 1000)
        time.sleep(0.01)
        after_seal = time.time_ns()  # after the seal ...
        time.sleep(0.01)
        assert archive.archive_new(engine.log, settings.backup_dir, 1000) == []  # idle: no seal
        time.sleep(0.01)
        late = upsert_sync(engine, "main", [{"id": "late", "values": [1.0] * DIM, "metadata": {}}])
        history = engine.log.read(0, verify=True)  # ... and before a record only the log holds
    finally:
        engine.close()
    lost = replace(settings, db_path=str(tmp_path / "lost" / "jadevectordb.db"))

    def at(ts: int, name: str, src: Settings = lost) -> dict[str, Any]:
        target = str(tmp_path / name)
        res = restore(src, target, ts=ts)
        assert digest_dir(target_settings(settings, target)) == replay_digest(
            history, res["target_lsn"]
        )
        return res

    def refused(ts: int, *wanted: str) -> str:
        target = str(tmp_path / "refused")
        with pytest.raises(RestoreError) as err:
            restore(lost, target, ts=ts)
        assert not os.path.exists(target)
        msg = str(err.value)
        for w in wanted:
            assert w in msg, (w, msg)
        return msg

    assert at(between, "between")["target_lsn"] == last.lsn
    sealed = segment_map(seg)["sealed_ts"]  # when it was written
    assert between < sealed < after_seal
    w = window(lost).json()
    assert (w["latest_lsn"], w["latest_restorable_by"]) == (last.lsn, "archive")
    bound = parse_time(w["latest_restorable_time"])
    assert bound == sealed // 1000 * 1000 and between < bound
    assert at(bound, "bound")["target_lsn"] == last.lsn  # the window's bound is a target
    head = "after what the archive is known to cover (sealed at "
    refused(bound + 1000, head, w["latest_restorable_time"] + "): the state at ", "unknown")
    refused(after_seal, head, w["latest_restorable_time"])
    refused(time.time_ns() + 3_600_000_000_000, head)
    # the live log read as well covers up to now: the same time is the state before "late"
    assert at(after_seal, "with-live", settings)["target_lsn"] == last.lsn
    assert at(time.time_ns(), "now", settings)["target_lsn"] == late
    # ... but not an empty log in the lost one's place (a new server): it is not the archive's
    empty = Env(lost.db_path)
    assert Log(empty).last_lsn == 0
    empty.close()
    refused(after_seal, head)
    os.remove(lost.db_path)
    os.remove(lost.db_path + "-lock")

    # a segment from before seals were recorded: known complete up to its last record only
    m = segment_map(seg)
    del m["sealed_ts"]
    data = pack(m)
    sha16 = hashlib.sha256(data).hexdigest()[:16]
    os.remove(seg.path)
    name = f"seg-{seg.first:016d}-{seg.last:016d}-{sha16}.wal"
    with open(os.path.join(os.path.dirname(seg.path), name), "wb") as fh:
        fh.write(data)
    assert archive.verify_all(settings.backup_dir) == []
    refused(between, "after what the archive is known to cover (its last record, at ", "no seal")
    assert at(last.ts, "last")["target_lsn"] == last.lsn
