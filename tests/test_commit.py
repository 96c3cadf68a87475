"""jade/engine/commit.py: the group commit of real Engines on temp dirs (one write transaction
and one fsync per group; gate, decide, append, apply, commit, project, publish)."""

from __future__ import annotations

import concurrent.futures
import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lmdb
import numpy as np
import pytest

from jade import events as ev
from jade.core.decide import Command
from jade.engine import Engine, written_lsn
from jade.engine.commit import Replicated, Writer
from jade.errors import Conflict, NotFound, NotPrimary, ReadOnly
from jade.stores.data import DataStore
from tests.conftest import make_settings
from tests.test_apply import db_create, upsert, vec_delete
from wal.codec import Record, encode
from wal.log import LogError

Future = concurrent.futures.Future


def open_engine(tmp_path: Path, name: str = "data", **over: Any) -> Engine:
    base = tmp_path / name
    base.mkdir(exist_ok=True)
    e = Engine(make_settings(base, **over))
    e.open()
    return e


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    e = open_engine(tmp_path)
    yield e
    e.close()


def writer_of(e: Engine) -> Writer:
    assert e.writer is not None
    return e.writer


class Groups:
    """A group observer (``on_group``): what each group held, on which thread; it can also
    keep the writer thread inside one group (after its commit, before its publish)."""

    def __init__(self) -> None:
        self.sizes: list[tuple[int, int]] = []  # (requests, records) per group
        self.threads: set[str] = set()
        self.entered = threading.Event()
        self._gate: threading.Event | None = None

    def hold_next(self, gate: threading.Event) -> None:
        self.entered = threading.Event()
        self._gate = gate

    def __call__(self, requests: int, records: int, seconds: float) -> None:
        assert seconds >= 0
        self.sizes.append((requests, records))
        self.threads.add(threading.current_thread().name)
        gate, self._gate = self._gate, None
        if gate is not None:
            self.entered.set()
            gate.wait(30)


def observe(e: Engine) -> Groups:
    groups = Groups()
    e.group_observers.append(groups)
    return groups


def hold(writer: Writer, groups: Groups) -> tuple[threading.Event, Future[list[Record]]]:
    """Keep the writer thread busy inside a group (of an empty item: it writes nothing) until
    the returned event is set; what is submitted meanwhile queues up behind it."""
    gate = threading.Event()
    groups.hold_next(gate)
    fut = writer.submit(Replicated([]))
    assert groups.entered.wait(10)
    return gate, fut


class CountingEnv:
    """Stands in for the data file's ``lmdb.Environment``: counts write transactions (each
    commit of one is one fsync: the env syncs)."""

    def __init__(self, env: lmdb.Environment) -> None:
        self._env = env
        self.writes = 0

    def begin(self, **kw: Any) -> lmdb.Transaction:
        if kw.get("write"):
            self.writes += 1
        return self._env.begin(**kw)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._env, name)


def user(user_id: str) -> Command:
    return Command("auth.user.create", {"user_id": user_id, "username": user_id, "email": "",
                                        "password_hash": "x", "roles": ["user"]}, "admin")


def mode(m: str) -> Command:
    return Command("system.mode", {"mode": m}, "admin")


def ids_of(records: list[Record]) -> list[Any]:
    return [r.body.get("ids", r.body.get("db", r.type)) for r in records]


# -- one command ---------------------------------------------------------------------------------


def test_one_command_round_trip(engine: Engine) -> None:
    groups = observe(engine)
    (created,) = engine.submit_sync(db_create("d", dim=2))
    (rec,) = engine.submit_sync(
        upsert("d", [("a", [1, 0], {"k": 1}), ("b", [0, 1], None), ("c", [1, 1], None)]))
    assert (created.lsn, rec.lsn) == (1, 2)
    assert (rec.type, rec.actor) == ("vec.upsert", "alice")
    assert rec.body["ids"] == ["a", "b", "c"] and rec.body["labels"] == [0, 1, 2]
    assert engine.log.last_lsn == 2
    assert engine.log.read(0, verify=True) == [created, rec]
    # applied in the log's transaction, projected before the future resolved
    assert engine.store.applied_lsn() == 2
    a = engine.store.vector("d", "a")
    assert a is not None and a.metadata == {"k": 1}
    live = engine.indexes.get("d")
    assert live is not None and len(live) == 3 and live.meta[0] == {"k": 1}
    assert engine.indexes.applied_lsn == 2
    # the whole pipeline runs on the writer's thread, once per group
    assert groups.threads == {"wal-writer"}
    assert groups.sizes == [(1, 1), (1, 1)]
    stats = writer_of(engine).stats
    assert (stats.groups, stats.records, stats.last_group_size) == (2, 2, 1)


async def test_submit_async(engine: Engine) -> None:
    recs = await engine.submit(db_create("d", dim=2))
    assert [r.lsn for r in recs] == [1]
    assert written_lsn.get() == 1  # the X-LSN of the request
    with pytest.raises(NotFound):
        await engine.submit(upsert("nope", [("a", [1, 0], None)]))
    assert engine.log.last_lsn == 1
    cmd = upsert("d", [("a", [1, 0], None)])
    (rec,) = await writer_of(engine).submit_async(cmd, cmd.size)
    assert rec.lsn == 2 and engine.log.last_lsn == 2


# -- grouping ------------------------------------------------------------------------------------


def test_group_commit_really_groups(engine: Engine) -> None:
    engine.submit_sync(db_create("d", dim=2))
    groups = observe(engine)
    writer = writer_of(engine)
    assert engine.env is not None
    counting = CountingEnv(engine.env.env)
    engine.env.env = counting  # type: ignore[assignment]
    groups_before = writer.stats.groups
    threads, per_thread = 8, 25
    futures: dict[int, list[Future[list[Record]]]] = {}
    start = threading.Barrier(threads)
    try:
        gate, blocker = hold(writer, groups)

        def producer(t: int) -> None:
            start.wait()
            futures[t] = []
            for i in range(per_thread):
                cmd = upsert("d", [(f"t{t}-{i}", [1.0 + t, 1.0 + i], {"t": t})])
                futures[t].append(writer.submit(cmd, cmd.size))

        workers = [threading.Thread(target=producer, args=(t,)) for t in range(threads)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        gate.set()
        assert blocker.result(10) == []
        results = {t: [f.result(10) for f in fs] for t, fs in futures.items()}
    finally:
        engine.env.env = counting._env
    total = threads * per_thread
    lsns = sorted(recs[0].lsn for rs in results.values() for recs in rs)
    assert lsns == list(range(2, total + 2))  # consecutive, no gaps, none twice
    for t, rs in results.items():  # each producer's commands keep their submission order
        mine = [recs[0].lsn for recs in rs]
        assert mine == sorted(mine)
        assert [recs[0].body["ids"] for recs in rs] == [[f"t{t}-{i}"] for i in range(per_thread)]
    groups_used = writer.stats.groups - groups_before
    # everything queued behind the blocker needed far fewer groups than commands ...
    assert groups_used < total // 4, writer.stats
    assert max(requests for requests, _ in groups.sizes) > 1
    assert sum(requests for requests, _ in groups.sizes) == total + 1
    assert sum(records for _, records in groups.sizes) == total
    # ... and each group was one write transaction (one commit, one fsync)
    assert counting.writes == groups_used
    assert len(engine.log.read(0, verify=True)) == total + 1
    db = engine.store.database("d")
    assert db is not None and db["count"] == total
    live = engine.indexes.get("d")
    assert live is not None and len(live) == total


def test_group_bounds_are_respected(engine: Engine) -> None:
    writer_of(engine).close()  # the engine's own, replaced by one with small bounds
    groups = Groups()
    writer = Writer(engine, max_group=5, max_group_bytes=1000, on_group=groups)
    engine.writer = writer
    engine.submit_sync(db_create("s", dim=2))  # 8 bytes a vector
    engine.submit_sync(db_create("b", dim=100))  # 400 bytes a vector

    def queue(cmds: list[Command]) -> list[tuple[int, int]]:
        before = len(groups.sizes)
        gate, blocker = hold(writer, groups)
        futures = [writer.submit(c, c.size) for c in cmds]
        gate.set()
        for f in [blocker, *futures]:
            f.result(10)
        return groups.sizes[before:]

    def small(i: int) -> Command:
        return upsert("s", [(f"s{i}", [1.0, float(i)], None)])

    def big(i: int) -> Command:
        return upsert("b", [(f"b{i}", [float(i)] * 100, None)])

    assert small(0).size == 8 and big(0).size == 400
    # by count: 5 at most
    assert queue([small(i) for i in range(12)]) == [(1, 0), (5, 5), (5, 5), (2, 2)]
    # by bytes: 2 * 400 fit in 1000, 3 do not
    assert queue([big(i) for i in range(5)]) == [(1, 0), (2, 2), (2, 2), (1, 1)]
    # a command bigger than the byte bound still goes, alone
    huge = upsert("b", [(f"h{i}", [1.0] * 100, None) for i in range(10)])
    assert huge.size == 4000
    assert queue([small(20), huge, small(21)]) == [(1, 0), (1, 1), (1, 1), (1, 1)]
    assert engine.store.vector("b", "h9") is not None
    assert len(engine.log.read(0, verify=True)) == 2 + 12 + 5 + 3


# -- refusals and failures ----------------------------------------------------------------------


def test_refused_command_fails_alone(engine: Engine) -> None:
    engine.submit_sync(db_create("d", dim=2))
    groups = observe(engine)
    writer = writer_of(engine)
    gate, blocker = hold(writer, groups)
    cmds = [
        upsert("d", [("a", [1, 0], None)]),  # accepted
        upsert("nope", [("x", [1, 0], None)]),  # NotFound
        db_create("e", dim=3),  # accepted
        db_create("d", dim=2),  # Conflict
        upsert("e", [("z", [1, 2, 3], None)]),  # accepted: sees "e" created earlier in the group
        vec_delete("d", ["missing"]),  # NotFound
    ]
    futures = [writer.submit(c, c.size) for c in cmds]
    gate.set()
    blocker.result(10)
    with pytest.raises(NotFound):
        futures[1].result(10)
    with pytest.raises(Conflict):
        futures[3].result(10)
    with pytest.raises(NotFound):
        futures[5].result(10)
    a, c, e = futures[0].result(10), futures[2].result(10), futures[4].result(10)
    assert [r.lsn for r in a + c + e] == [2, 3, 4]  # no LSN was burnt on the refusals
    # they shared one group with the refused ones
    assert groups.sizes[-1] == (6, 3)
    assert writer_of(engine).stats.last_group_size == 6
    assert [r.type for r in engine.log.read(0, verify=True)] == [
        "db.create", "vec.upsert", "db.create", "vec.upsert"]
    assert engine.store.applied_lsn() == 4
    assert engine.store.vector("d", "a") is not None and engine.store.vector("e", "z") is not None
    assert engine.store.database("nope") is None
    for db_id in ("d", "e"):
        live = engine.indexes.get(db_id)
        assert live is not None and len(live) == 1


def test_a_failure_before_the_commit_aborts_the_whole_group(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine.submit_sync(db_create("d", dim=2))
    engine.submit_sync(upsert("d", [("before", [1, 0], None)]))
    tail = (engine.log.last_lsn, engine.log.last_checksum, engine.log.last_ts)
    real_apply = DataStore.apply

    def apply(self: DataStore, txn: Any, rec: Record, event: ev.Event) -> None:
        if isinstance(event, ev.VecUpsert) and "poison" in event.ids:
            raise RuntimeError("a bug in apply")
        real_apply(self, txn, rec, event)

    monkeypatch.setattr(DataStore, "apply", apply)
    groups = observe(engine)
    writer = writer_of(engine)
    gate, blocker = hold(writer, groups)
    cmds = [
        upsert("d", [("a", [0, 1], None)]),
        user("u"),  # opens the auth file's transaction of the group
        db_create("e", dim=2),
        upsert("e", [("e1", [1, 0], None)]),
        upsert("d", [("poison", [1, 1], None)]),
        mode("readonly"),
    ]
    futures = [writer.submit(c, c.size) for c in cmds]
    gate.set()
    assert blocker.result(10) == []  # the blocker's own group committed
    for f in futures:
        with pytest.raises(RuntimeError, match="a bug in apply"):
            f.result(10)
    # nothing of the failed group is durable, visible or remembered in the tail
    assert (engine.log.last_lsn, engine.log.last_checksum, engine.log.last_ts) == tail
    assert engine.log.get(3) is None
    assert [r.body.get("ids") for r in engine.log.read(0, verify=True)] == [None, ["before"]]
    assert engine.store.applied_lsn() == 2
    assert engine.store.vector("d", "a") is None and engine.store.database("e") is None
    assert engine.store.vector("e", "e1") is None and engine.indexes.get("e") is None
    assert engine.store.mode() == "readwrite" and engine.mode() == "readwrite"
    assert engine.auth.user("u") is None
    live = engine.indexes.get("d")
    assert live is not None and len(live) == 1 and engine.indexes.applied_lsn == 2
    assert groups.sizes == [(1, 0)]  # the failed group was never observed as committed
    # the writer goes on, continuing the chain right after the last committed record
    monkeypatch.undo()
    (nxt,) = engine.submit_sync(upsert("d", [("after", [1, 1], None)]))
    assert nxt.lsn == 3
    (u,) = engine.submit_sync(user("u"))  # the auth file was left clean too
    assert u.lsn == 4 and engine.auth.user("u") is not None
    assert [r.lsn for r in engine.log.read(0, verify=True)] == [1, 2, 3, 4]


def test_close_drains_the_queue(tmp_path: Path) -> None:
    e = open_engine(tmp_path, max_group_records=7)
    try:
        e.submit_sync(db_create("d", dim=2))
        groups = observe(e)
        writer = writer_of(e)
        assert writer.max_group == 7  # the setting
        gate, blocker = hold(writer, groups)
        futures = [writer.submit(upsert("d", [(f"q{i}", [1.0, i], None)])) for i in range(40)]
        closer = threading.Thread(target=writer.close)
        closer.start()
        time.sleep(0.05)
        assert closer.is_alive()  # close waits for the work in hand
        with pytest.raises(RuntimeError, match="stopped"):
            writer.submit(upsert("d", [("late", [1, 1], None)]))
        gate.set()
        closer.join(10)
        assert not closer.is_alive()
        assert all(f.done() for f in futures)
        assert [f.result()[0].lsn for f in futures] == list(range(2, 42))
        assert groups.sizes == [(1, 0), (7, 7), (7, 7), (7, 7), (7, 7), (7, 7), (5, 5)]
        assert e.log.last_lsn == 41
        assert len(e.log.read(0, verify=True)) == 41
        assert e.store.vector("d", "late") is None
        assert not writer._thread.is_alive()
        writer.close()  # closing twice is harmless
    finally:
        e.close()  # and a third time, by the engine


# -- records made elsewhere ------------------------------------------------------------------------


def test_replicated_records_are_appended_verbatim(tmp_path: Path) -> None:
    a = open_engine(tmp_path, "a")
    b = open_engine(tmp_path, "b")
    try:
        a.submit_sync(db_create("d", dim=2))
        for i in range(4):
            a.submit_sync(upsert("d", [(f"p{i}", [1.0, i], {"i": i})]))
        a.submit_sync(user("u"))
        a.submit_sync(Command("system.promote", {"epoch": 3}))
        a.submit_sync(upsert("d", [("p9", [9, 9], None)]))
        a.submit_sync(mode("readonly"))
        made = a.log.read(0)
        assert len(made) == 9 and made[-1].epoch == 3
        wb = writer_of(b)
        got = wb.submit(Replicated(made[:3])).result(10)
        assert got == made[:3]
        # a gap fails the item and (it is appended inside the group) the whole group
        groups = observe(b)
        gate, blocker = hold(wb, groups)
        fine, gap = wb.submit(Replicated(made[3:4])), wb.submit(Replicated(made[5:]))
        gate.set()
        blocker.result(10)
        for f in (fine, gap):
            with pytest.raises(LogError, match="expected LSN 5"):
                f.result(10)
        assert b.log.last_lsn == 3 and b.log.get(4) is None
        assert b.store.vector("d", "p2") is None
        # so does a record whose body fits no event type, before anything of it is written
        alien = encode(4, made[2].ts + 1, 1, "vec.teleport", "x", {"v": 2}, made[2].checksum)
        with pytest.raises(ev.EventError):
            wb.submit(Replicated([alien])).result(10)
        assert b.log.last_lsn == 3
        got = wb.submit(Replicated(made[3:])).result(10)
        assert got == made[3:]
        # the same bytes, so the same checksum chain and epochs ...
        assert b.log.read(0, verify=True) == made
        assert [r.encoded() for r in b.log.read(0)] == [r.encoded() for r in made]
        assert (b.log.epoch, b.log.last_checksum) == (3, a.log.last_checksum)
        # ... applied by the same projections
        assert b.store.applied_lsn() == 9
        assert b.store.databases() == a.store.databases()
        for vid in ("p0", "p3", "p9"):
            assert b.store.vector("d", vid) == a.store.vector("d", vid)
        assert b.mode() == "readonly"
        lb, la = b.indexes.get("d"), a.indexes.get("d")
        assert lb is not None and la is not None and len(lb) == len(la) == 5
        assert lb.meta == la.meta
        assert b.auth.user("u") == a.auth.user("u") is not None
    finally:
        a.close()
        b.close()


# -- observers ---------------------------------------------------------------------------------


def test_on_group_callback(engine: Engine) -> None:
    seen: list[tuple[int, int, float]] = []
    engine.group_observers.append(lambda *a: seen.append(a))
    engine.submit_sync(db_create("d", dim=2))
    assert len(seen) == 1
    assert seen[0][:2] == (1, 1)
    assert seen[0][2] >= 0
    assert seen[0][2] == writer_of(engine).stats.last_commit_seconds
    # requests and records of one group: a refused command is a request without a record
    groups = observe(engine)
    gate, blocker = hold(writer_of(engine), groups)
    futs = [writer_of(engine).submit(c) for c in (upsert("d", [("a", [1, 0], None)]),
                                                  upsert("nope", [("a", [1, 0], None)]),
                                                  mode("readonly"))]
    gate.set()
    blocker.result(10)
    for f in futs:
        f.exception(10)
    assert [s[:2] for s in seen] == [(1, 1), (1, 0), (3, 2)]


def test_a_failing_group_observer_does_not_wedge_the_log(
    engine: Engine, caplog: pytest.LogCaptureFixture
) -> None:
    def observer(*_: Any) -> None:
        raise RuntimeError("metrics bug")

    engine.group_observers.append(observer)
    with caplog.at_level(logging.ERROR, logger="jade.engine.commit"):
        first = engine.submit_sync(db_create("d", dim=2))
    assert [r.lsn for r in first] == [1]  # durable, so it is reported as done
    assert engine.log.last_lsn == 1  # and published
    assert any("group observer failed" in r.message for r in caplog.records)
    second = engine.submit_sync(upsert("d", [("a", [1, 0], None), ("b", [0, 1], None)]))
    assert [r.lsn for r in second] == [2]
    third = engine.submit_sync(upsert("d", [("c", [1, 1], None)]))
    assert [r.lsn for r in third] == [3]
    assert [r.type for r in engine.log.read(0, verify=True)] == [
        "db.create", "vec.upsert", "vec.upsert"]
    live = engine.indexes.get("d")
    assert live is not None and len(live) == 3


# -- the gate ----------------------------------------------------------------------------------


def test_readonly_is_gated_per_command_in_a_group(engine: Engine) -> None:
    engine.submit_sync(db_create("d", dim=2))
    engine.submit_sync(mode("readonly"))
    assert engine.mode() == "readonly"
    groups = observe(engine)
    writer = writer_of(engine)
    gate, blocker = hold(writer, groups)
    cmds = [
        upsert("d", [("x", [1, 0], None)]),  # ReadOnly
        Command("db.delete", {"db": "d"}),  # ReadOnly
        mode("readwrite"),  # readonly_ok: accepted
        upsert("d", [("y", [0, 1], None)]),  # accepted: the group's mode is readwrite now
        mode("readonly"),  # accepted
        upsert("d", [("z", [1, 1], None)]),  # ReadOnly again
    ]
    futures = [writer.submit(c, c.size) for c in cmds]
    gate.set()
    blocker.result(10)
    for i in (0, 1, 5):
        with pytest.raises(ReadOnly):
            futures[i].result(10)
    recs = [futures[i].result(10)[0] for i in (2, 3, 4)]
    assert [(r.lsn, r.type) for r in recs] == [
        (3, "system.mode"), (4, "vec.upsert"), (5, "system.mode")]
    assert groups.sizes == [(1, 0), (6, 3)]  # all of it one group
    assert engine.store.vector("d", "y") is not None
    assert engine.store.vector("d", "x") is None and engine.store.vector("d", "z") is None
    assert engine.store.database("d") is not None
    assert engine.mode() == "readonly"
    live = engine.indexes.get("d")
    assert live is not None and len(live) == 1


def test_a_replica_refuses_every_command_without_writing(tmp_path: Path) -> None:
    a = open_engine(tmp_path, "a")
    b = open_engine(tmp_path, "b", primary_url="http://primary.test:8080")
    try:
        a.submit_sync(db_create("d", dim=2))
        a.submit_sync(upsert("d", [("a", [1, 0], None)]))
        a.submit_sync(user("u"))
        b.role = "replica"
        cmds = [
            db_create("d", dim=2),
            upsert("d", [("a", [1, 0], None)]),
            vec_delete("d", ["a"]),
            Command("db.delete", {"db": "nope"}),
            mode("readonly"),  # readonly_ok types too
            Command("system.promote", {"epoch": 2}),
            user("v"),
            Command("auth.session.create", {"jti": "j", "user_id": "u", "expires_at": 1}),
            Command("vec.teleport", {}),
        ]
        for cmd in cmds:
            with pytest.raises(NotPrimary) as info:
                b.submit_sync(cmd)
            assert info.value.extra["primary"] == "http://primary.test:8080"
        assert b.log.last_lsn == 0 and b.store.applied_lsn() == 0
        assert b.store.databases() == [] and b.auth.user("v") is None
        # in one group with the primary's records: those are appended, the commands refused
        groups = observe(b)
        gate, blocker = hold(writer_of(b), groups)
        made = a.log.read(0)
        futs = [writer_of(b).submit(cmds[1]), writer_of(b).submit(Replicated(made)),
                writer_of(b).submit(cmds[4])]
        gate.set()
        blocker.result(10)
        for f in (futs[0], futs[2]):
            with pytest.raises(NotPrimary):
                f.result(10)
        assert futs[1].result(10) == made
        assert groups.sizes == [(1, 0), (3, 3)]
        assert [r.encoded() for r in b.log.read(0, verify=True)] == [r.encoded() for r in made]
        assert b.mode() == "readwrite" and b.auth.user("u") is not None
    finally:
        a.close()
        b.close()


# -- publish -----------------------------------------------------------------------------------


def test_the_tail_is_published_once_the_indexes_applied_the_group(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine.submit_sync(db_create("d", dim=2, kind="flat"))
    real = engine.indexes.apply_group
    during: list[tuple[int, int]] = []  # (published tail, the group's last LSN) while projecting

    def slow_apply_group(entries: list[tuple[Record, ev.Event]]) -> None:
        during.append((engine.log.last_lsn, entries[-1][0].lsn if entries else 0))
        time.sleep(0.2)  # a slow projection: nothing may publish the group meanwhile
        real(entries)

    monkeypatch.setattr(engine.indexes, "apply_group", slow_apply_group)
    seen: list[int] = []  # how many vectors a reader found once it saw the new tail
    stop = threading.Event()

    def reader() -> None:
        while not stop.is_set():
            if engine.log.last_lsn >= 2:
                live = engine.indexes.get("d")
                seen.append(len(live) if live is not None else -1)
                return
            time.sleep(0.001)

    th = threading.Thread(target=reader)
    th.start()
    try:
        fut = writer_of(engine).submit(
            upsert("d", [("a", [1, 0], None), ("b", [0, 1], None), ("c", [1, 1], None)]))
        (rec,) = fut.result(10)
        # as soon as the future resolves, a search finds the vectors
        live = engine.indexes.get("d")
        assert live is not None and len(live) == 3
        labels, _, _ = live.search(np.array([0.0, 1.0], dtype=np.float32), 1, None,
                                   exact_scan_max=100, cache_size=0)
        assert labels.tolist() == [rec.body["labels"][1]]
        th.join(10)
    finally:
        stop.set()
        th.join()
    assert during == [(1, 2)]  # projected before the tail moved past LSN 1
    assert seen == [3]  # a reader that saw LSN 2 published found all of the group indexed
