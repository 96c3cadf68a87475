"""wal/log.py over a real LMDB environment (wal/lmdbenv.Env) in a temp dir."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lmdb
import numpy as np
import pytest

from jade.core.decide import Command
from jade.engine import Engine
from jade.stores.data import DataStore
from tests.conftest import make_settings
from tests.test_apply import db_create
from wal.codec import GENESIS, CodecError, Record, decode, encode, lsn_key
from wal.lmdbenv import Env
from wal.log import LOG_DB, META_DB, Log, LogError


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    e = Env(str(tmp_path / "log.db"), map_size=8 << 20)
    yield e
    e.close()


def append(log: Log, bodies: list[dict[str, Any]], type_: str = "t", actor: str = "a") -> list[
    Record
]:
    """One committed group of records, the way the writer does it."""

    def body(txn: lmdb.Transaction) -> list[Record]:
        log.begin()  # (re)started on every attempt: env.write retries after growing the map
        return [log.append(txn, type_, actor, b) for b in bodies]

    try:
        recs = log.env.write(body)
    except BaseException:
        log.aborted()
        raise
    log.committed()
    return recs


def append_records(log: Log, recs: list[Record]) -> None:
    """The replica path: verbatim records, all or nothing."""

    def body(txn: lmdb.Transaction) -> None:
        log.begin()
        for r in recs:
            log.append_record(txn, r)

    try:
        log.env.write(body)
    except BaseException:
        log.aborted()
        raise
    log.committed()


def fill(log: Log, n: int, per_group: int = 3) -> list[Record]:
    out: list[Record] = []
    i = 0
    while i < n:
        k = min(per_group, n - i)
        out += append(log, [{"i": i + j} for j in range(k)])
        i += k
    return out


def raw_put(env: Env, lsn: int, data: bytes) -> None:
    env.write(lambda txn: txn.put(lsn_key(lsn), data, db=env.db(LOG_DB)))


def raw_delete(env: Env, lsn: int) -> None:
    env.write(lambda txn: txn.delete(lsn_key(lsn), db=env.db(LOG_DB)))


# -- ordering -----------------------------------------------------------------------------------


def test_empty_log(env: Env) -> None:
    log = Log(env)
    assert (log.last_lsn, log.first_lsn, log.epoch) == (0, 1, 1)
    assert log.last_checksum == GENESIS
    assert log.read(0) == []
    assert list(log.iterate(0)) == []
    assert log.get(1) is None
    assert log.lsn_at_time(time.time_ns()) == 0


def test_lsns_start_at_one_without_gaps_and_ts_increase(env: Env) -> None:
    log = Log(env)
    made = fill(log, 25, per_group=4)
    assert [r.lsn for r in made] == list(range(1, 26))
    assert log.last_lsn == 25
    assert log.last_checksum == made[-1].checksum
    assert log.last_ts == made[-1].ts
    got = log.read(0)
    assert got == made
    assert [r.body["i"] for r in got] == list(range(25))
    assert all(b.ts > a.ts for a, b in zip(got, got[1:], strict=False))  # strictly increasing
    assert all(r.epoch == 1 for r in got)
    assert log.get(7) == made[6]
    assert log.get(26) is None


def test_append_outside_a_group_is_refused(env: Env) -> None:
    log = Log(env)
    with pytest.raises(AssertionError):
        env.write(lambda txn: log.append(txn, "t", "a", {}))


def test_aborted_group_leaves_no_trace(env: Env) -> None:
    log = Log(env)
    fill(log, 3)

    def body(txn: lmdb.Transaction) -> None:
        log.begin()
        log.append(txn, "t", "a", {"x": 1})
        log.append(txn, "t", "a", {"x": 2})
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        env.write(body)
    log.aborted()
    assert log.last_lsn == 3
    assert log.get(4) is None
    rec = append(log, [{"after": True}])[0]
    assert rec.lsn == 4
    assert len(log.read(0, verify=True)) == 4


# -- ranges -------------------------------------------------------------------------------------


def test_read_ranges_and_limits(env: Env) -> None:
    log = Log(env)
    fill(log, 30, per_group=7)

    def lsns(recs: list[Record]) -> list[int]:
        return [r.lsn for r in recs]

    assert lsns(log.read(0)) == list(range(1, 31))
    assert lsns(log.read(10)) == list(range(11, 31))
    assert lsns(log.read(10, upto=15)) == [11, 12, 13, 14, 15]
    assert lsns(log.read(10, limit=3)) == [11, 12, 13]
    assert lsns(log.read(10, limit=3, upto=12)) == [11, 12]
    assert lsns(log.read(0, limit=1)) == [1]
    assert log.read(0, limit=0) == []
    assert lsns(log.read(29)) == [30]
    assert log.read(30) == []
    assert log.read(31) == []
    assert log.read(100) == []
    assert log.read(20, upto=20) == []
    assert log.read(20, upto=5) == []
    assert lsns(log.read(0, upto=1000)) == list(range(1, 31))
    for verify in (True, False):
        assert lsns(log.read(5, upto=9, verify=verify)) == [6, 7, 8, 9]


@pytest.mark.parametrize("chunk", [1, 2, 5, 512])
def test_iterate_streams_across_chunks(env: Env, chunk: int) -> None:
    log = Log(env)
    made = fill(log, 23, per_group=5)
    assert list(log.iterate(0, chunk=chunk)) == made
    assert list(log.iterate(4, upto=17, chunk=chunk)) == made[4:17]
    assert list(log.iterate(22, chunk=chunk)) == made[22:]
    assert list(log.iterate(23, chunk=chunk)) == []


def test_iterate_sees_records_committed_while_streaming(env: Env) -> None:
    log = Log(env)
    fill(log, 4)
    it = log.iterate(0, chunk=2)
    first = [next(it), next(it)]
    fill(log, 3)
    rest = list(it)
    assert [r.lsn for r in first + rest] == list(range(1, 8))


# -- chain verification -------------------------------------------------------------------------


def test_chain_verifies_from_any_starting_point(env: Env) -> None:
    log = Log(env)
    made = fill(log, 12)
    for after in range(0, 13):
        assert log.read(after, verify=True) == made[after:]
        assert log.read(after, upto=min(after + 2, 12), verify=True) == made[after : after + 2]


def test_damaged_record_is_detected_in_ranges(env: Env) -> None:
    log = Log(env)
    made = fill(log, 10)
    bad = bytearray(made[5].encoded())  # LSN 6
    bad[-1] ^= 0x01
    raw_put(env, 6, bytes(bad))
    with pytest.raises(CodecError):
        log.read(0, verify=True)
    with pytest.raises(CodecError):
        log.read(5, verify=True)  # the damaged record itself
    # LSN 7 was chained to the real LSN 6: verifying from 6 needs 6's checksum... which is
    # now wrong only in the payload, so its checksum field still chains 7 correctly
    assert [r.lsn for r in log.read(6, verify=True)] == [7, 8, 9, 10]
    assert [r.lsn for r in log.read(0, upto=5, verify=True)] == [1, 2, 3, 4, 5]


def test_replaced_record_breaks_the_chain(env: Env) -> None:
    log = Log(env)
    made = fill(log, 6)
    # a well-formed record for LSN 3 with a different body, chained to the real LSN 2:
    # it verifies itself, but LSN 4 no longer links to it
    forged = encode(3, made[2].ts, 1, "t", "mallory", {"i": 999}, made[1].checksum)
    raw_put(env, 3, forged.encoded())
    with pytest.raises(CodecError):
        log.read(0, verify=True)
    with pytest.raises(CodecError):
        log.read(3, verify=True)
    assert log.read(0, verify=False)[2].body == {"i": 999}  # unverified reads don't notice


def test_swapped_records_are_detected(env: Env) -> None:
    log = Log(env)
    made = fill(log, 6)
    raw_put(env, 3, made[3].encoded())
    raw_put(env, 4, made[2].encoded())
    with pytest.raises((CodecError, LogError)):
        log.read(0, verify=True)
    with pytest.raises(LogError):  # the stored LSN disagrees with the key even unverified
        log.read(0, verify=False)


@pytest.mark.parametrize("missing", [2, 3, 5])
def test_gap_in_the_log_is_detected(env: Env, missing: int) -> None:
    log = Log(env)
    fill(log, 8)
    raw_delete(env, missing)
    for chunk in (1, 2, 512):  # also when the gap falls on a chunk boundary
        for verify in (True, False):
            with pytest.raises(LogError):
                list(log.iterate(0, chunk=chunk, verify=verify))


# -- time -> LSN --------------------------------------------------------------------------------


def test_lsn_at_time(env: Env) -> None:
    log = Log(env)
    made = fill(log, 17, per_group=4)
    assert log.lsn_at_time(made[0].ts - 1) == 0
    assert log.lsn_at_time(0) == 0
    for r in made:
        assert log.lsn_at_time(r.ts) == r.lsn  # exact hit
        assert log.lsn_at_time(r.ts - 1) == r.lsn - 1  # ts strictly increase
        assert log.lsn_at_time(r.ts + 1) == r.lsn or made[r.lsn].ts == r.ts + 1
    assert log.lsn_at_time(made[-1].ts + 10**12) == 17


def test_ts_never_goes_backwards_even_when_the_clock_does(env: Env) -> None:
    log = Log(env)
    future = time.time_ns() + 3600 * 10**9
    # a record from an hour in the future (e.g. a clock that was wrong, then corrected)
    first = encode(1, future, 1, "t", "a", {}, GENESIS)
    append_records(log, [first])
    later = append(log, [{"n": 1}, {"n": 2}])
    assert later[0].ts == future + 1 and later[1].ts == future + 2
    assert log.lsn_at_time(future) == 1
    assert log.lsn_at_time(future + 1) == 2


# -- truncation ---------------------------------------------------------------------------------


def test_truncate_before_keeps_the_chain_verifiable(env: Env, tmp_path: Path) -> None:
    log = Log(env)
    made = fill(log, 20)
    assert log.truncate_before(8) == 7
    assert log.first_lsn == 8
    assert log.base_checksum == made[6].checksum
    assert log.get(7) is None and log.get(8) == made[7]
    assert log.read(7, verify=True) == made[7:]
    assert log.read(10, verify=True) == made[10:]
    for after in (0, 3, 6):
        with pytest.raises(LogError):
            log.read(after)
        with pytest.raises(LogError):
            list(log.iterate(after, verify=False))
    # truncating to or below the first retained LSN does nothing
    assert log.truncate_before(8) == 0
    assert log.truncate_before(2) == 0
    # time lookups before the first retained record: nothing retained
    assert log.lsn_at_time(made[3].ts) == 0
    assert log.lsn_at_time(made[9].ts) == 10
    # appends continue the chain
    more = append(log, [{"more": 1}])
    assert more[0].lsn == 21
    assert log.read(7, verify=True) == made[7:] + more


def test_truncate_never_removes_the_last_record(env: Env) -> None:
    log = Log(env)
    made = fill(log, 5)
    assert log.truncate_before(100) == 4
    assert log.first_lsn == 5
    assert log.read(4) == [made[4]]
    assert log.last_lsn == 5
    more = append(log, [{}])
    assert log.read(4, verify=True) == [made[4], *more]


def test_truncation_survives_reopen(tmp_path: Path) -> None:
    path = str(tmp_path / "log.db")
    env = Env(path, map_size=4 << 20)
    log = Log(env)
    made = fill(log, 12)
    log.truncate_before(6)
    env.close()
    env = Env(path, map_size=4 << 20)
    try:
        log = Log(env)
        assert (log.first_lsn, log.last_lsn) == (6, 12)
        assert log.base_checksum == made[4].checksum
        assert log.read(5, verify=True) == made[5:]
        with pytest.raises(LogError):
            log.read(0)
        # a damaged base checksum makes the first retained record unverifiable
        env.write(lambda txn: txn.put(b"base_checksum", b"\x01" * 16, db=env.db(META_DB)))
    finally:
        env.close()
    env = Env(path, map_size=4 << 20)
    try:
        log = Log(env)
        with pytest.raises(CodecError):
            log.read(5, verify=True)
        assert len(log.read(5, verify=False)) == 7
        assert log.read(6, verify=True) == made[6:]
    finally:
        env.close()


# -- the replica path ---------------------------------------------------------------------------


def _primary_records(
    tmp_path: Path, n: int, epoch_at: dict[int, int] | None = None
) -> list[Record]:
    """Records made by a 'primary' log in its own env (with epoch changes before some LSNs)."""
    env = Env(str(tmp_path / "primary.db"), map_size=4 << 20)
    try:
        log = Log(env)
        out: list[Record] = []
        for i in range(1, n + 1):
            ep = (epoch_at or {}).get(i)

            def body(txn: lmdb.Transaction, i: int = i, ep: int | None = ep) -> Record:
                log.begin()
                if ep is not None:
                    log.set_epoch(txn, ep)
                return log.append(txn, "vec.upsert", "p", {"i": i})

            out.append(env.write(body))
            log.committed()
        return out
    finally:
        env.close()


def test_append_record_accepts_a_verified_stream(env: Env, tmp_path: Path) -> None:
    recs = _primary_records(tmp_path, 9, {4: 2, 7: 5})
    replica = Log(env)
    append_records(replica, recs[:3])
    append_records(replica, recs[3:])
    assert replica.last_lsn == 9
    assert replica.epoch == 5
    assert replica.last_checksum == recs[-1].checksum
    got = replica.read(0, verify=True)
    assert got == recs
    assert [r.encoded() for r in got] == [r.encoded() for r in recs]  # bytes unchanged
    assert [r.epoch for r in got] == [1, 1, 1, 2, 2, 2, 5, 5, 5]


def test_append_record_rejects_gaps_epochs_and_broken_chains(env: Env, tmp_path: Path) -> None:
    recs = _primary_records(tmp_path, 6, {3: 3})
    replica = Log(env)
    append_records(replica, recs[:2])

    def refused(batch: list[Record], match: str) -> None:
        with pytest.raises(LogError, match=match):
            append_records(replica, batch)
        assert replica.last_lsn == 2
        assert replica.get(3) is None

    refused([recs[3]], "expected LSN 3")  # gap
    refused([recs[2], recs[4]], "expected LSN 4")  # gap inside a batch: nothing of it stays
    refused([recs[1]], "expected LSN 3")  # duplicate
    # a record chained to the wrong predecessor
    forged = encode(3, recs[2].ts, 3, "vec.upsert", "p", {"i": 3}, GENESIS)
    refused([forged], "chain")
    # the payload of LSN 3 with a checksum that does not cover it
    tampered = decode(bytes(recs[2].encoded()[:-1]) + bytes([recs[2].encoded()[-1] ^ 1]))
    refused([tampered], "chain")
    append_records(replica, recs[2:4])  # epoch 3 from LSN 3 on
    assert replica.epoch == 3
    # a record of an older epoch after a newer one (a deposed primary's write)
    stale = encode(5, recs[4].ts, 2, "vec.upsert", "old", {"i": 5}, recs[3].checksum)
    with pytest.raises(LogError, match="epoch"):
        append_records(replica, [stale])
    assert replica.last_lsn == 4
    append_records(replica, recs[4:])
    assert replica.read(0, verify=True) == recs


def test_set_epoch_must_increase(env: Env) -> None:
    log = Log(env)

    def body(txn: lmdb.Transaction, ep: int) -> None:
        log.begin()
        log.set_epoch(txn, ep)

    env.write(lambda txn: body(txn, 4))
    log.committed()
    assert log.epoch == 4
    for ep in (4, 3):
        with pytest.raises(LogError):
            env.write(lambda txn, ep=ep: body(txn, ep))
        log.aborted()
    assert log.epoch == 4
    assert append(log, [{}])[0].epoch == 4


# -- reopening ----------------------------------------------------------------------------------


def test_reopen_restores_tail_epoch_and_checksum(tmp_path: Path) -> None:
    path = str(tmp_path / "log.db")
    env = Env(path, map_size=4 << 20)
    log = Log(env)
    fill(log, 5)

    def promote(txn: lmdb.Transaction) -> Record:
        log.begin()
        log.set_epoch(txn, 7)
        return log.append(txn, "system.promote", "a", {"epoch": 7})

    env.write(promote)
    log.committed()
    made = fill(log, 3)
    tail = (log.last_lsn, log.last_ts, log.epoch, log.last_checksum)
    env.close()

    env = Env(path, map_size=4 << 20)
    log = Log(env)
    assert (log.last_lsn, log.last_ts, log.epoch, log.last_checksum) == tail
    assert tail[0] == 9 and tail[2] == 7 and tail[3] == made[-1].checksum
    nxt = append(log, [{"after": "reopen"}])[0]
    assert (nxt.lsn, nxt.epoch) == (10, 7)
    assert nxt.ts > tail[1]
    assert len(log.read(0, verify=True)) == 10
    # an epoch raised with no record after it is remembered too
    env.write(lambda txn: (log.begin(), log.set_epoch(txn, 9)))
    log.committed()
    env.close()
    env = Env(path, map_size=4 << 20)
    try:
        assert Log(env).epoch == 9
    finally:
        env.close()


# -- waiting for commits ------------------------------------------------------------------------


async def test_wait_for_wakes_on_commit(env: Env) -> None:
    log = Log(env)
    fill(log, 2)
    assert await log.wait_for(2, timeout=0.01) is True  # already there
    assert await log.wait_for(1) is True

    def later() -> None:
        time.sleep(0.15)
        fill(log, 1)

    t0 = time.perf_counter()
    th = threading.Thread(target=later)
    th.start()
    try:
        assert await log.wait_for(3, timeout=10) is True
    finally:
        th.join()
    assert time.perf_counter() - t0 < 5
    assert log.last_lsn == 3
    assert log._waiters == []


async def test_wait_for_several_waiters_wake_at_their_lsn(env: Env) -> None:
    log = Log(env)
    w1 = asyncio.ensure_future(log.wait_for(1, timeout=10))
    w3 = asyncio.ensure_future(log.wait_for(3, timeout=10))
    await asyncio.sleep(0.02)
    await asyncio.to_thread(fill, log, 1)
    assert await asyncio.wait_for(w1, 5) is True
    await asyncio.sleep(0.05)
    assert not w3.done()
    await asyncio.to_thread(fill, log, 2)
    assert await asyncio.wait_for(w3, 5) is True
    assert log._waiters == []


async def test_wait_for_times_out(env: Env) -> None:
    log = Log(env)
    fill(log, 1)
    t0 = time.perf_counter()
    assert await log.wait_for(2, timeout=0.2) is False
    elapsed = time.perf_counter() - t0
    assert 0.15 <= elapsed < 3
    assert log._waiters == []
    # a commit that does not reach the LSN does not wake the waiter
    task = asyncio.ensure_future(log.wait_for(3, timeout=0.3))
    await asyncio.sleep(0.05)
    await asyncio.to_thread(fill, log, 1)
    assert await task is False


# -- map growth under the group commit ----------------------------------------------------------


def test_map_grows_under_the_group_commit_with_concurrent_readers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The engine's group commit (jade/engine/commit.py) appends through ``Log.append`` in its
    own write transaction and, on ``MapFullError``, aborts it with the readers held off
    (``Env.grow``), grows the map and redoes the group."""
    engine = Engine(make_settings(tmp_path, initial_map_bytes=64 * 1024, max_group_records=16))
    engine.open()
    assert engine.env is not None
    env, log = engine.env, engine.log
    engine.submit_sync(db_create("d", dim=750, kind="flat"))  # 3000 bytes a vector
    grows_at_start = env.grow_count
    applies = [0]
    real_apply = DataStore.apply

    def counting_apply(self: DataStore, txn: Any, rec: Record, event: Any) -> None:
        applies[0] += 1
        real_apply(self, txn, rec, event)

    monkeypatch.setattr(DataStore, "apply", counting_apply)
    assert engine.writer is not None
    writer = engine.writer
    stop = threading.Event()
    errors: list[BaseException] = []
    reads = [0]

    def blob(n: int) -> bytes:
        return np.full(750, n % 251, dtype="<f4").tobytes()

    def reader() -> None:
        try:
            while not stop.is_set():
                with env.read() as txn:
                    cur = txn.cursor(db=env.db(LOG_DB))
                    if cur.last():
                        rec = decode(cur.value())
                        if rec.type == "vec.upsert":  # applied in the same transaction
                            (vid,) = rec.body["ids"]
                            assert engine.store.vector("d", vid, txn) is not None
                reads[0] += 1
                if log.last_lsn:
                    assert log.get(log.last_lsn) is not None
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=reader) for _ in range(3)]
    for t in threads:
        t.start()
    n = 0
    t0 = time.perf_counter()
    try:
        futures = []
        while env.grow_count < grows_at_start + 4 and n < 5000:
            cmd = Command("vec.upsert", {"db": "d", "ids": [f"v{n}"], "values": blob(n),
                                         "metadata": [n]}, "w", size=3000)
            futures.append(writer.submit(cmd, cmd.size))
            n += 1
            if n % 8 == 0:
                futures[-1].result(timeout=30)
        got = [f.result(timeout=30) for f in futures]
        elapsed = time.perf_counter() - t0
    finally:
        stop.set()
        for t in threads:
            t.join()
    try:
        assert not errors, errors
        # growing must not stall behind busy readers (an abort racing them took ~10 s per grow)
        assert elapsed < 20, f"{env.grow_count} grows took {elapsed:.1f} s"
        assert env.grow_count >= grows_at_start + 4
        assert env.map_size() >= 64 * 1024 * 16
        assert reads[0] > 0
        assert [r[0].lsn for r in got] == list(range(2, n + 2))
        recs = log.read(1, verify=True)
        assert [r.body["ids"] for r in recs] == [[f"v{i}"] for i in range(n)]
        assert all(r.body["values"] == blob(r.body["metadata"][0]) for r in recs)
        for i in range(n):
            vec = engine.store.vector("d", f"v{i}")
            assert vec is not None and vec.values == blob(i) and vec.metadata == i
        assert applies[0] > n  # groups were redone after growing
        live = engine.indexes.get("d")
        assert live is not None and len(live) == n
    finally:
        engine.close()


def test_tail_start_bounds_the_tail_by_records_and_bytes(env: Env) -> None:
    """Where a start-up's check of the log's tail begins: at most N records and B bytes back,
    never fewer than the last record (a 1M start spent 1.2 s hashing 1,000 batch records)."""
    log = Log(env)
    assert log.tail_start(1000, 1 << 20) == 0  # an empty log
    rng = np.random.default_rng(0)
    big = append(log, [{"x": rng.bytes(10_000)} for _ in range(10)])  # LSN 1..10
    small = append(log, [{"x": "b"} for _ in range(5)])  # LSN 11..15
    size = {r.lsn: len(r.encoded()) for r in big + small}
    assert all(size[n] > 10_000 for n in range(1, 11)) and all(size[n] < 200 for n in size
                                                                 if n > 10)
    assert log.tail_start(1000, 1 << 20) == 0  # all of it fits both bounds
    assert log.tail_start(3, 1 << 20) == 12  # the last 3 records
    # records 9..15 fit the bytes given, 8 does not
    assert log.tail_start(1000, sum(size[n] for n in range(9, 16)) + 10) == 8
    assert log.tail_start(1000, 10) == 14  # the last record, whatever its size
    log.truncate_before(8)
    assert log.tail_start(1000, 1 << 20) == 7  # not before the log's first record
