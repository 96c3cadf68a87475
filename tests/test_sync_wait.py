"""``jade.engine.sync.SyncReplication``: which acknowledgements count, the N-th highest position,
one acknowledgement releasing every write it covers, the timeout's answer. (The end-to-end
behaviour, with real processes: ``test_sync_replication.py``.)"""

from __future__ import annotations

import asyncio

import pytest

from jade.engine.sync import SyncReplication
from jade.errors import NotReplicated


async def test_asynchronous_mode_never_waits() -> None:
    sync = SyncReplication(0, "", 1)
    assert await sync.wait(10**9) == 0.0
    assert not sync.counts("r1")
    sync.position("r1", 5)  # ignored
    assert sync.positions == {}


async def test_one_ack_releases_every_write_it_covers_and_no_other() -> None:
    sync = SyncReplication(1, "", 30)
    waits = [asyncio.ensure_future(sync.wait(lsn)) for lsn in (3, 5, 5, 7, 9)]
    await asyncio.sleep(0)
    assert sync.waiting == 5
    sync.position("r1", 6)
    await asyncio.sleep(0.01)
    assert [w.done() for w in waits] == [True, True, True, False, False]
    assert sync.waiting == 2 and sync.confirmed_lsn == 6
    sync.position("r1", 9)
    await asyncio.wait_for(asyncio.gather(*waits), 1)
    assert sync.waiting == 0
    assert await sync.wait(9) == 0.0  # already confirmed: no wait


async def test_quorum_is_the_nth_highest_position_among_named_replicas() -> None:
    sync = SyncReplication(2, "a, b ,c", 30)
    assert sync.names == {"a", "b", "c"}
    assert not sync.counts("x") and sync.counts("b")
    w = asyncio.ensure_future(sync.wait(10))
    sync.position("x", 100)  # not named: does not count
    sync.position("a", 100)
    await asyncio.sleep(0)
    assert not w.done() and sync.confirmed_lsn == 0
    sync.position("c", 9)
    await asyncio.sleep(0)
    assert not w.done() and sync.confirmed_lsn == 9
    assert sync.acknowledged(10) == 1
    sync.position("b", 12)
    await asyncio.wait_for(w, 1)
    assert sync.confirmed_lsn == 12  # second highest of 100, 12, 9
    sync.forget("a")
    assert sync.confirmed_lsn == 9
    sync.reset()  # promoted: a new term
    assert sync.confirmed_lsn == 0 and sync.positions == {}


async def test_timeout_says_the_write_is_written() -> None:
    sync = SyncReplication(1, "", 0.05)
    sync.position("r1", 3)
    with pytest.raises(NotReplicated) as info:
        await sync.wait(4)
    err = info.value
    assert err.status == 503 and err.code == "replication_timeout"
    body = err.body()
    assert body["written"] is True and body["lsn"] == 4
    assert body["synchronous_replicas"] == 1 and body["acknowledged"] == 0
    assert "IS durable" in body["message"]
    assert sync.timeouts == 1 and sync.waiting == 0


async def test_timed_out_waiters_do_not_accumulate() -> None:
    sync = SyncReplication(1, "", 0.01)
    for lsn in range(1, 300):
        with pytest.raises(NotReplicated):
            await sync.wait(lsn)
    assert len(sync._heap) <= 65


async def test_abandon_answers_every_waiting_write_at_once() -> None:
    sync = SyncReplication(1, "", 30)
    waits = [asyncio.ensure_future(sync.wait(lsn)) for lsn in (1, 2)]
    await asyncio.sleep(0)
    assert sync.abandon("this node lost its leader lease") == 2
    for w in waits:
        with pytest.raises(NotReplicated) as info:
            await w
        assert info.value.body()["written"] is True
        assert "lost its leader lease" in info.value.message
    assert sync.waiting == 0
