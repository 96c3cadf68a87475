"""wal/writer.py: group commit over a real LMDB env (one write transaction per group)."""

from __future__ import annotations

import concurrent.futures
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lmdb
import pytest

from wal.codec import Record, lsn_key, pack, unpack
from wal.lmdbenv import Env
from wal.log import Log
from wal.writer import Draft, Replicated, Writer


@dataclass
class Item:
    """What the test handler understands: ``n`` records named ``name``, optionally blocking in
    ``prepare`` until ``gate`` is set, refusing in ``prepare``, or poisoning ``apply``."""

    name: str
    n: int = 1
    gate: threading.Event | None = None
    entered: threading.Event = field(default_factory=threading.Event)
    refuse: bool = False
    poison: bool = False


class Handler:
    def __init__(self, env: Env, log: Log) -> None:
        self.env = env
        self.log = log
        self.side = env.db(b"side")
        self.after: list[list[Record]] = []
        self.visible_in_after: list[bool] = []
        self.after_thread: set[str] = set()

    def prepare(self, txn: lmdb.Transaction, item: Item) -> list[Draft]:
        item.entered.set()
        if item.gate is not None:
            assert item.gate.wait(30)
        if item.refuse:
            raise ValueError(f"refused {item.name}")
        return [
            Draft("test", "tester", {"name": item.name, "k": k, "poison": item.poison})
            for k in range(item.n)
        ]

    def apply_in_txn(self, txn: lmdb.Transaction, record: Record) -> None:
        if record.body.get("poison"):
            raise RuntimeError("a bug in apply")
        txn.put(lsn_key(record.lsn), pack(record.body["name"]), db=self.side)

    def after_commit(self, records: list[Record]) -> None:
        self.after_thread.add(threading.current_thread().name)
        if not records:
            return
        self.after.append(list(records))
        # after_commit runs after the commit: a fresh reader sees the whole group
        with self.env.read() as txn:
            self.visible_in_after.append(
                all(txn.get(lsn_key(r.lsn), db=self.side) is not None for r in records)
            )


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    e = Env(str(tmp_path / "w.db"), map_size=8 << 20)
    yield e
    e.close()


@pytest.fixture
def parts(env: Env) -> Iterator[tuple[Log, Handler, Writer]]:
    log = Log(env)
    handler = Handler(env, log)
    writer = Writer(log, handler)
    yield log, handler, writer
    writer.close()


def side_table(env: Env, handler: Handler) -> dict[int, str]:
    with env.read() as txn:
        return {int.from_bytes(k, "big"): unpack(v) for k, v in txn.cursor(db=handler.side)}


def hold(writer: Writer) -> tuple[threading.Event, concurrent.futures.Future[list[Record]]]:
    """Keep the writer thread busy inside a group until the returned event is set."""
    gate = threading.Event()
    blocker = Item("blocker", gate=gate)
    fut = writer.submit(blocker)
    assert blocker.entered.wait(10)
    return gate, fut


def test_single_item_round_trip(env: Env, parts: tuple[Log, Handler, Writer]) -> None:
    log, handler, writer = parts
    recs = writer.submit(Item("a", n=3)).result(10)
    assert [r.lsn for r in recs] == [1, 2, 3]
    assert [r.body["k"] for r in recs] == [0, 1, 2]
    assert log.last_lsn == 3
    assert log.read(0, verify=True) == recs
    assert side_table(env, handler) == {1: "a", 2: "a", 3: "a"}
    assert handler.after == [recs]
    assert handler.visible_in_after == [True]
    assert handler.after_thread == {"wal-writer"}
    assert writer.stats.groups == 1 and writer.stats.records == 3


async def test_submit_async(parts: tuple[Log, Handler, Writer]) -> None:
    log, _, writer = parts
    recs = await writer.submit_async(Item("x", n=2))
    assert [r.lsn for r in recs] == [1, 2]
    with pytest.raises(ValueError, match="refused"):
        await writer.submit_async(Item("bad", refuse=True))
    assert log.last_lsn == 2


def test_group_commit_really_groups(env: Env, parts: tuple[Log, Handler, Writer]) -> None:
    log, handler, writer = parts
    gate, blocker = hold(writer)
    threads, per_thread = 8, 25
    futures: dict[int, list[concurrent.futures.Future[list[Record]]]] = {}
    start = threading.Barrier(threads)

    def producer(t: int) -> None:
        start.wait()
        futures[t] = [writer.submit(Item(f"t{t}-{i}")) for i in range(per_thread)]

    workers = [threading.Thread(target=producer, args=(t,)) for t in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    gate.set()
    assert [r.lsn for r in blocker.result(10)] == [1]
    results = {t: [f.result(10) for f in fs] for t, fs in futures.items()}
    total = threads * per_thread
    lsns = sorted(recs[0].lsn for rs in results.values() for recs in rs)
    assert lsns == list(range(2, total + 2))  # consecutive, no gaps, none twice
    for rs in results.values():  # each producer's items keep their submission order
        mine = [recs[0].lsn for recs in rs]
        assert mine == sorted(mine)
    for t, rs in results.items():
        assert [recs[0].body["name"] for recs in rs] == [f"t{t}-{i}" for i in range(per_thread)]
    # the blocker was one group; everything queued behind it needed far fewer groups than items
    assert writer.stats.groups < total // 4, writer.stats
    assert writer.stats.records == total + 1
    assert max(len(g) for g in handler.after) > 1
    assert all(handler.visible_in_after)
    assert len(log.read(0, verify=True)) == total + 1
    assert len(side_table(env, handler)) == total + 1


def test_group_bounds_are_respected(env: Env) -> None:
    log = Log(env)
    handler = Handler(env, log)
    writer = Writer(log, handler, max_group=5, max_group_bytes=1000)
    try:
        gate, blocker = hold(writer)
        small = [writer.submit(Item(f"s{i}"), size=10) for i in range(12)]
        gate.set()
        for f in [blocker, *small]:
            f.result(10)
        assert [len(g) for g in handler.after] == [1, 5, 5, 2]
        gate, blocker = hold(writer)
        big = [writer.submit(Item(f"b{i}"), size=400) for i in range(5)]
        gate.set()
        for f in [blocker, *big]:
            f.result(10)
        assert [len(g) for g in handler.after[4:]] == [1, 2, 2, 1]
        # an item bigger than the byte bound still goes, alone
        assert len(writer.submit(Item("huge"), size=10_000).result(10)) == 1
    finally:
        writer.close()


def test_refused_item_fails_alone(env: Env, parts: tuple[Log, Handler, Writer]) -> None:
    log, handler, writer = parts
    gate, blocker = hold(writer)
    items = [Item("a"), Item("b", refuse=True), Item("c", n=2), Item("d", refuse=True), Item("e")]
    futures = [writer.submit(i) for i in items]
    gate.set()
    blocker.result(10)
    with pytest.raises(ValueError, match="refused b"):
        futures[1].result(10)
    with pytest.raises(ValueError, match="refused d"):
        futures[3].result(10)
    a, c, e = futures[0].result(10), futures[2].result(10), futures[4].result(10)
    assert [r.lsn for r in a + c + e] == [2, 3, 4, 5]  # no LSN was burnt on the refusals
    assert writer.stats.last_group_size == 5  # they shared one group with the refused ones
    names = [r.body["name"] for r in log.read(0, verify=True)]
    assert names == ["blocker", "a", "c", "c", "e"]
    assert side_table(env, handler) == {1: "blocker", 2: "a", 3: "c", 4: "c", 5: "e"}


def test_failing_apply_aborts_the_whole_group(
    env: Env, parts: tuple[Log, Handler, Writer]
) -> None:
    log, handler, writer = parts
    writer.submit(Item("before")).result(10)
    tail = (log.last_lsn, log.last_checksum, log.last_ts)
    gate, blocker = hold(writer)
    futures = [writer.submit(Item("a", n=2)), writer.submit(Item("b", poison=True)),
               writer.submit(Item("c"))]
    gate.set()
    blocker.result(10)  # the blocker's own group committed
    assert log.last_lsn == 2
    for f in futures:
        with pytest.raises(RuntimeError, match="a bug in apply"):
            f.result(10)
    # nothing of the failed group is durable, visible or remembered in the tail
    assert log.last_lsn == 2
    assert log.get(3) is None
    assert [r.body["name"] for r in log.read(0, verify=True)] == ["before", "blocker"]
    assert side_table(env, handler) == {1: "before", 2: "blocker"}
    assert all(r.body["name"] != "a" for g in handler.after for r in g)
    assert tail[0] == 1
    # the writer goes on, continuing the chain right after the last committed record
    nxt = writer.submit(Item("after")).result(10)
    assert nxt[0].lsn == 3
    assert [r.lsn for r in log.read(0, verify=True)] == [1, 2, 3]


def test_close_drains_the_queue(env: Env) -> None:
    log = Log(env)
    handler = Handler(env, log)
    writer = Writer(log, handler, max_group=7)
    gate, blocker = hold(writer)
    futures = [writer.submit(Item(f"q{i}")) for i in range(40)]
    closer = threading.Thread(target=writer.close)
    closer.start()
    time.sleep(0.05)
    assert closer.is_alive()  # close waits for the work in hand
    with pytest.raises(RuntimeError, match="stopped"):
        writer.submit(Item("late"))
    gate.set()
    closer.join(10)
    assert not closer.is_alive()
    assert all(f.done() for f in futures)
    assert [f.result()[0].lsn for f in futures] == list(range(2, 42))
    assert log.last_lsn == 41
    assert len(log.read(0, verify=True)) == 41
    assert not writer._thread.is_alive()
    writer.close()  # closing twice is harmless


def test_replicated_records_are_appended_verbatim(tmp_path: Path) -> None:
    primary_env = Env(str(tmp_path / "p.db"), map_size=4 << 20)
    replica_env = Env(str(tmp_path / "r.db"), map_size=4 << 20)
    plog = Log(primary_env)
    pw = Writer(plog, Handler(primary_env, plog))
    rlog = Log(replica_env)
    rhandler = Handler(replica_env, rlog)
    rw = Writer(rlog, rhandler)
    try:
        made = [r for i in range(4) for r in pw.submit(Item(f"p{i}", n=2)).result(10)]
        got = rw.submit(Replicated(made[:5])).result(10)
        assert got == made[:5]
        # a gap fails the item, and (it is appended inside the group) the group
        gap = rw.submit(Replicated(made[6:]))
        with pytest.raises(Exception, match="expected LSN 6"):
            gap.result(10)
        assert rlog.last_lsn == 5
        rw.submit(Replicated(made[5:])).result(10)
        assert rlog.read(0, verify=True) == made
        assert [r.encoded() for r in rlog.read(0)] == [r.encoded() for r in made]
        assert side_table(replica_env, rhandler) == {r.lsn: r.body["name"] for r in made}
    finally:
        pw.close()
        rw.close()
        primary_env.close()
        replica_env.close()


def test_on_group_callback(env: Env) -> None:
    log = Log(env)
    seen: list[tuple[Any, ...]] = []
    writer = Writer(log, Handler(env, log), on_group=lambda *a: seen.append(a))
    try:
        writer.submit(Item("a", n=3)).result(10)
        assert len(seen) == 1
        assert seen[0][:2] == (1, 3)
        assert seen[0][2] >= 0
        assert writer.stats.last_commit_seconds >= 0
    finally:
        writer.close()


def test_a_failing_group_observer_does_not_wedge_the_log(env: Env) -> None:
    log = Log(env)

    def observer(*_: Any) -> None:
        raise RuntimeError("metrics bug")

    writer = Writer(log, Handler(env, log), on_group=observer)
    try:
        first = writer.submit(Item("a")).result(10)
        assert [r.lsn for r in first] == [1]  # durable, so it is reported as done
        assert log.last_lsn == 1
        second = writer.submit(Item("b", n=2)).result(10)
        assert [r.lsn for r in second] == [2, 3]
        assert [r.body["name"] for r in log.read(0, verify=True)] == ["a", "b", "b"]
    finally:
        writer.close()
