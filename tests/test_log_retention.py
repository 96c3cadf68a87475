"""Log retention (issue 14, item 5): the log is trimmed by default, PostgreSQL's way — it keeps
the records of the window (``backup.log_retention_seconds``, an hour) and whatever a holder
still needs: the archive (when on), the oldest snapshot (when archiving is off), a registered
replica (for at most ``replication.max_hold_seconds``), the oldest index checkpoint, the auth
store. Each holder holds the log and lets it go; a restart after trimming replays the indexes
from their checkpoints and the auth store; a replica behind the trimmed point is told to re-seed.

Instead of waiting an hour, the tests move the clock of the window (``Backups.now_ns``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest

from jade import faults
from jade import settings as settings_mod
from jade.backup import archive, jobs, snapshot
from jade.backup.jobs import Backups
from jade.backup.verify import verify_dir
from jade.core.decide import Command
from jade.engine import Engine
from jade.http.app import build_app
from jade.http.jobs import add_jobs
from jade.http.keys import BACKUPS, ENGINE, SCHEDULER
from jade.http.replication_state import Replicas
from jade.settings import Settings
from tests.conftest import Server, make_settings
from tests.test_index_checkpoint import create_cmd, upsert_cmd
from wal.stream import length, parse

DIM = 8
HOUR_NS = 3600 * 1_000_000_000
DAY_NS = 24 * HOUR_NS


@pytest.fixture(autouse=True)
def _no_faults() -> Iterator[None]:
    yield
    faults.disarm()


def later(ns: int) -> Callable[[], int]:
    """A clock ``ns`` ahead of the wall clock."""
    return lambda: time.time_ns() + ns


def load(tmp_path: Path, env: str, **over: Any) -> Settings:
    """The built-in defaults of ``env`` (no config file), in ``tmp_path``."""
    environ = {
        "JADEVECTORDB_ENV": env,
        "JADEVECTORDB_DATA_DIR": str(tmp_path / "data"),
        "JADEVECTORDB_CONFIG_DIR": str(tmp_path / "no-config"),
        "JADEVECTORDB_LOG_DIR": str(tmp_path / "logs"),
        "JWT_SECRET": "x" * 40,
    }
    return settings_mod.load(environ, **over)


def open_engine(s: Settings) -> Engine:
    e = Engine(s)
    e.open()
    return e


def crash(e: Engine) -> None:
    """Close as a kill would leave it: no checkpoint at the end."""
    e.close(checkpoint=False)


_rng = np.random.default_rng(14)


def write(e: Engine, db: str = "d", n: int = 10, prefix: str = "v") -> None:
    items = [(f"{prefix}{i}", _rng.normal(size=DIM).tolist(), {"i": i}) for i in range(n)]
    e.submit_sync(upsert_cmd(db, items))


def make_user(e: Engine, name: str) -> None:
    e.submit_sync(Command("auth.user.create", {"user_id": name, "username": name, "email": "",
                                               "password_hash": "x", "roles": ["user"]}))


def usernames(e: Engine) -> set[str]:
    return {u["username"] for u in e.auth.users()}


def status(bk: Backups) -> dict[str, Any]:
    return bk.retention_status()


# -- the defaults ------------------------------------------------------------------------------


@pytest.mark.parametrize("env", ["development", "production"])
async def test_default_settings_trim_the_log_and_a_restart_replays(
    tmp_path: Path, env: str
) -> None:
    s = load(tmp_path, env)
    assert s.log_retention_seconds == 3600 and s.replica_max_hold_seconds == 86400
    assert s.archive_interval_seconds > 0  # archiving is on by default: its job trims
    e = open_engine(s)
    app = build_app(s, engine=e)  # the server's jobs, as the scheduler runs them
    add_jobs(app, app[SCHEDULER])
    sched, bk = app[SCHEDULER], app[BACKUPS]
    try:
        e.submit_sync(create_cmd("d", "hnsw", dim=DIM))
        write(e, n=40)
        snap = await asyncio.to_thread(bk.snapshot)
        make_user(e, "alice")
        await sched.run("index_checkpoint")
        covered = e.log.last_lsn
        assert e.indexes.oldest_checkpoint_lsn() == covered
        write(e, n=5, prefix="w")  # after the checkpoint: the index holds these

        # within the window nothing goes
        result = await sched.run("archive")
        assert result == {"segments": result["segments"], "truncated": 0}, result
        st = status(bk)
        assert st["binding"] == ["window"] and st["limit_lsn"] == 0, st

        # an hour later the records older than the window go, past the snapshot (archiving is
        # on), up to the oldest index checkpoint
        bk.now_ns = later(HOUR_NS + 10**9)
        st = status(bk)
        assert st["holders"]["snapshots"]["lsn"] is None, st
        assert st["binding"] == ["index_checkpoints"] and st["limit_lsn"] == covered, st
        result = await sched.run("archive")
        assert result is not None, sched.jobs["archive"].last_outcome
        assert result["truncated"] == covered and e.log.first_lsn == covered + 1
        assert e.log.first_lsn > snap.lsn + 1
        assert archive.last_archived(s.backup_dir) == e.log.last_lsn

        # more after the trim: index records and an auth change, replayed at the restart
        write(e, n=5, prefix="x")
        make_user(e, "bob")
        tail = 2  # the two upserts after the checkpoint
    finally:
        crash(e)
    e = open_engine(s)
    try:
        assert e.log.first_lsn == covered + 1
        assert e.report.index == {"loaded": 1, "rebuilt": 0, "replayed_records": tail}
        assert usernames(e) >= {"alice", "bob"}
        live = e.indexes.get("d")
        assert live is not None and len(live) == 50
        assert e.store.database("d")["count"] == 50  # type: ignore[index]
    finally:
        e.close()
    rep = await asyncio.to_thread(verify_dir, s)
    assert rep.ok, rep.lines


async def test_with_archiving_off_a_job_still_trims_the_log(tmp_path: Path) -> None:
    s = load(tmp_path, "development", archive_interval_seconds=0)
    e = open_engine(s)
    app = build_app(s, engine=e)
    add_jobs(app, app[SCHEDULER])
    sched, bk = app[SCHEDULER], app[BACKUPS]
    try:
        assert "archive" not in sched.jobs and "log_truncate" in sched.jobs
        e.submit_sync(create_cmd("d", "hnsw", dim=DIM))
        write(e, n=20)
        await sched.run("index_checkpoint")
        write(e, n=1, prefix="z")
        bk.now_ns = later(HOUR_NS + 10**9)
        st = status(bk)
        assert st["archiving"] is False and st["holders"]["archive"]["lsn"] is None, st
        # development: no scheduled snapshot, so no snapshot holds the log
        assert st["holders"]["snapshots"] == {
            "lsn": None, "why": "archiving is off and there is no snapshot"}, st
        result = await sched.run("log_truncate")
        assert result is not None, sched.jobs["log_truncate"].last_outcome
        # up to the checkpoint (LSN 2), and the log keeps its last record anyway
        assert result["truncated"] == 2 and e.log.first_lsn == e.log.last_lsn == 3
    finally:
        e.close()


# -- each holder holds the log and lets it go --------------------------------------------------


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    e = open_engine(make_settings(tmp_path))  # the development defaults
    e.submit_sync(create_cmd("d", "hnsw", dim=DIM))
    for k in range(5):
        write(e, n=4, prefix=f"f{k}")
    assert e.log.last_lsn == 6
    yield e
    e.close()


def trim(bk: Backups) -> int:
    """The archive job (archiving is on in these tests): archive, then trim. Records removed."""
    return int(bk.archive_and_truncate()["truncated"])


def test_the_archive_holds_what_it_has_not_archived(engine: Engine) -> None:
    bk = Backups(engine)
    engine.indexes.checkpoint()
    write(engine, n=3, prefix="late")
    engine.indexes.checkpoint()
    bk.now_ns = later(HOUR_NS + 10**9)
    assert bk.truncation_limit() == 0  # nothing archived yet
    assert trim(bk) == engine.log.last_lsn - 1  # archived: the log goes (but its last record)
    assert engine.log.first_lsn == engine.log.last_lsn == 7
    st = status(bk)
    assert st["holders"]["archive"]["lsn"] == 7 and st["first_lsn"] == 7, st
    assert st["last_truncation"]["removed"] == 6, st
    # a record the archive has not seen holds the log (status, before the job runs)
    write(engine, n=1, prefix="later")
    engine.indexes.checkpoint()
    st = status(bk)
    assert st["binding"] == ["archive"] and st["limit_lsn"] == 7, st


def test_a_replica_holds_what_it_has_not_applied_for_at_most_a_day(engine: Engine) -> None:
    bk = Backups(engine)
    bk.replicas = reps = Replicas()
    engine.indexes.checkpoint()
    r1 = reps.get("r1", "10.0.0.1", "u")
    r1.applied_lsn = 2
    bk.now_ns = later(HOUR_NS + 10**9)
    assert trim(bk) == 2 and engine.log.first_lsn == 3  # the replica holds the rest
    st = status(bk)
    assert st["binding"] == ["replicas"] and st["limit_lsn"] == 2, st
    assert st["replicas"] == [{"replica_id": "r1", "applied_lsn": 2, "holds_lsn": 2,
                               "why": "the records after its applied LSN 2"}]
    r1.applied_lsn = engine.log.last_lsn  # caught up: the log goes (but its last record)
    assert trim(bk) == engine.log.last_lsn - 3

    # one that stops holds the log for a day (replication.max_hold_seconds), not longer
    stuck = engine.log.first_lsn - 1
    r1.applied_lsn = stuck
    write(engine, n=2, prefix="a")
    write(engine, n=2, prefix="b")
    engine.indexes.checkpoint()
    assert trim(bk) == 0
    bk.now_ns = later(DAY_NS + 10**9)
    row = status(bk)["replicas"][0]
    assert row["holds_lsn"] == engine.log.last_lsn and "re-seeds" in row["why"], row
    assert trim(bk) == engine.log.last_lsn - stuck - 1
    # now behind the log's first record: it holds nothing and must re-seed
    st = status(bk)
    row = st["replicas"][0]
    assert row["holds_lsn"] is None and "must re-seed" in row["why"], st
    assert st["holders"]["replicas"]["lsn"] is None, st


def test_an_old_index_checkpoint_holds_the_log_until_the_next_one(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(jobs, "TRUNCATE_CHUNK", 2)  # several jobs of the writer, one result
    bk = Backups(engine)
    engine.indexes.checkpoint()
    covered = engine.log.last_lsn
    write(engine, n=4, prefix="dirty")
    write(engine, n=4, prefix="dirtier")
    bk.now_ns = later(HOUR_NS + 10**9)
    assert trim(bk) == covered and engine.log.first_lsn == covered + 1
    st = status(bk)
    assert st["binding"] == ["index_checkpoints"] and st["limit_lsn"] == covered, st
    engine.indexes.checkpoint()
    assert trim(bk) == 1  # all but the last record
    assert engine.log.first_lsn == engine.log.last_lsn


def test_with_archiving_off_the_oldest_snapshot_holds_the_log(tmp_path: Path) -> None:
    e = open_engine(make_settings(tmp_path, archive_interval_seconds=0))
    try:
        bk = Backups(e)
        e.submit_sync(create_cmd("d", "hnsw", dim=DIM))
        write(e, n=10)
        old = bk.snapshot()
        write(e, n=10, prefix="b")
        new = bk.snapshot()
        write(e, n=1, prefix="c")
        bk.now_ns = later(HOUR_NS + 10**9)
        assert bk.truncation_limit() == old.lsn
        st = status(bk)
        assert st["binding"] == ["snapshots"] and old.name in st["holders"]["snapshots"]["why"]
        assert bk.truncate()["truncated"] == old.lsn
        snapshot.delete(e.settings.backup_dir, old.name)
        assert bk.truncation_limit() == new.lsn
        assert bk.truncate()["truncated"] == new.lsn - old.lsn
    finally:
        e.close()


def test_archiving_switched_on_after_a_trim_goes_on_from_the_first_record(
    tmp_path: Path,
) -> None:
    """A log trimmed while archiving was off (or a directory that began from a snapshot of a
    trimmed log: a replica, a restore) is archived from its first record on; before, every
    archive run failed (and, the archive holding the log, nothing was trimmed any more)."""
    s = make_settings(tmp_path, archive_interval_seconds=0)
    e = open_engine(s)
    try:
        bk = Backups(e)
        e.submit_sync(create_cmd("d", "hnsw", dim=DIM))
        write(e, n=4)
        archive.archive_new(e.log, s.backup_dir, 1000)  # archived once, then switched off
        write(e, n=4, prefix="b")
        write(e, n=4, prefix="c")
        e.indexes.checkpoint()
        bk.now_ns = later(HOUR_NS + 10**9)
        assert bk.truncate()["truncated"] == 3 and e.log.first_lsn == 4
        bk.settings = replace(s, archive_interval_seconds=60)  # switched on again
        result = bk.archive_and_truncate()
        [seg] = result["segments"]
        assert seg.startswith(f"seg-{4:016d}-{4:016d}-"), seg
        assert archive.last_archived(s.backup_dir) == e.log.last_lsn == 4
        # the gap is named: no restore across it
        assert f"{seg}: gap after LSN 2" in archive.verify_all(s.backup_dir)
        write(e, n=1, prefix="d")
        assert bk.archive_and_truncate()["truncated"] == 1  # archived, so trimmed again
    finally:
        e.close()


def test_the_auth_store_holds_what_it_has_not_folded(engine: Engine) -> None:
    bk = Backups(engine)
    make_user(engine, "alice")
    faults.arm("auth.commit")  # its file's commit fails: the auth store is behind the log
    faults.arm("auth.replay", times=10**6)  # and cannot catch up yet
    make_user(engine, "bob")
    folded = engine.log.last_lsn - 1
    write(engine, n=3, prefix="more")
    engine.indexes.checkpoint()
    bk.now_ns = later(HOUR_NS + 10**9)
    assert trim(bk) == folded and engine.log.first_lsn == folded + 1
    st = status(bk)
    assert st["binding"] == ["auth_store"] and st["limit_lsn"] == folded, st
    assert "behind the log" in st["holders"]["auth_store"]["why"]
    faults.disarm()
    deadline = time.monotonic() + 5  # the writer catches it up while idle
    while engine.projections_behind():
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert "bob" in usernames(engine)
    assert trim(bk) == engine.log.last_lsn - folded - 1


def test_retention_status_shows_the_rule_and_the_settings(engine: Engine) -> None:
    bk = Backups(engine)
    st = status(bk)
    assert "PostgreSQL" in st["rule"] and "max_slot_wal_keep_size" in st["rule"]
    assert st["settings"] == {
        "backup.log_retention_seconds": 3600,
        "replication.max_hold_seconds": 86400,
        "backup.archive_interval_seconds": 60,
        "backup.snapshot_interval_seconds": 0,
        "index.checkpoint_interval_seconds": 300,
    }
    assert set(st["holders"]) == {"window", "archive", "snapshots", "replicas",
                                  "index_checkpoints", "auth_store"}
    assert (st["first_lsn"], st["last_lsn"], st["records"]) == (1, 6, 6)
    assert st["removable"] == 0 and st["data_file_bytes"] > 0
    assert st["holders"]["window"] == {"lsn": 0, "why": "the records of the last 3600 s"}


# -- over HTTP ---------------------------------------------------------------------------------


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return make_settings(tmp_path, archive_interval_seconds=0)


async def frames(api: Any, after: int, replica_id: str) -> list[dict[str, Any]]:
    """The first two frames of the replication stream after ``after`` (fewer if it ends)."""
    out: list[dict[str, Any]] = []
    async with api.session.get(api.base + "/v1/replication/stream",
                               params={"after": str(after), "replica_id": replica_id},
                               headers=api.headers) as resp:
        assert resp.status == 200, await resp.text()
        while len(out) < 2:
            try:
                header = await resp.content.readexactly(4)
            except (aiohttp.ClientPayloadError, asyncio.IncompleteReadError):
                break
            out.append(parse(await resp.content.readexactly(length(header))))
    return out


async def test_a_replica_behind_the_trimmed_point_is_told_to_reseed(server: Server) -> None:
    admin, app = server.admin, server.app
    e: Engine = app[ENGINE]
    st, db = await admin.post("/v1/databases", {"name": "r", "vectorDimension": DIM})
    assert st == 201, db
    for i in range(5):
        st, body = await admin.post(f"/v1/databases/{db['databaseId']}/vectors",
                                    {"id": f"v{i}", "values": [float(i)] * DIM})
        assert st == 201, body
    st, body = await admin.post("/v1/replication/ack?replica_id=late", {"applied_lsn": 1})
    assert st == 200, body
    sched, bk = app[SCHEDULER], app[BACKUPS]
    await sched.run("index_checkpoint")
    bk.now_ns = later(HOUR_NS + 10**9)
    assert (await sched.run("log_truncate"))["truncated"] == 1  # "late" holds the rest
    bk.now_ns = later(DAY_NS + 10**9)  # a day later it no longer does
    result = await sched.run("log_truncate")
    assert result is not None and result["truncated"] > 0, sched.jobs["log_truncate"].last_outcome
    first = e.log.first_lsn
    assert first > 2
    got = await frames(admin, 1, "late")
    assert got[0]["t"] == "hello" and got[0]["first_lsn"] == first, got
    assert got[1] == {"t": "reseed", "first_lsn": first,
                      "reason": f"records after 1 were truncated (log starts at {first})"}, got
    row = bk.retention_status()["replicas"][0]
    assert row["replica_id"] == "late" and row["holds_lsn"] is None, row
    assert "must re-seed" in row["why"]


async def test_status_shows_the_retention(server: Server) -> None:
    """Fails until ``/status`` carries ``"retention": backups.retention_status()``."""
    st, body = await server.user.get("/status")
    assert st == 200, body
    ret = body["retention"]
    assert ret["binding"] and ret["limit_lsn"] >= 0 and "PostgreSQL" in ret["rule"]
    assert ret["first_lsn"] == body["log"]["first_lsn"]
    assert ret["settings"]["backup.log_retention_seconds"] == 3600
