"""``replica.etcd`` against a real etcd: leases, keys, the election's transaction."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest

from replica.etcd import Etcd, EtcdError, endpoint_of
from tests.conftest import free_port
from tests.etcd_server import EtcdServer, etcd, needs_etcd

__all__ = ["etcd"]  # the fixture

pytestmark = needs_etcd


def test_endpoint_of() -> None:
    assert endpoint_of("etcd://h:2379") == "http://h:2379"
    assert endpoint_of("etcds://h:2379/") == "https://h:2379"
    assert endpoint_of("http://h:1") == "http://h:1"
    with pytest.raises(ValueError):
        endpoint_of("h:2379")


async def test_keys_and_prefix_range(etcd: EtcdServer) -> None:
    async with aiohttp.ClientSession() as s:
        c = Etcd(s, etcd.url.replace("http://", "etcd://"))
        assert await c.get("/a/x") is None
        rev = await c.put("/a/x", b"1")
        await c.put("/a/y", b"\x00\xff")
        await c.put("/b/z", b"3")
        kv = await c.get("/a/x")
        assert kv is not None and kv.value == b"1" and kv.create_revision == rev
        assert [(k.key, k.value) for k in await c.range("/a/")] == [
            ("/a/x", b"1"), ("/a/y", b"\x00\xff")]
        assert await c.delete("/a/x") == 1
        assert await c.delete("/a/x") == 0
        assert [k.key for k in await c.range("/a/")] == ["/a/y"]


async def test_create_has_exactly_one_winner_and_replace_checks_the_holder(
        etcd: EtcdServer) -> None:
    async with aiohttp.ClientSession() as s:
        c = Etcd(s, etcd.url)
        results = await asyncio.gather(*(
            c.create("/l", f"n{i}".encode(), also={f"/h/{i}": b"x"}) for i in range(8)))
        winners = [i for i, (ok, _) in enumerate(results) if ok]
        assert len(winners) == 1
        w = winners[0]
        ok, mine = results[w]
        assert mine is not None and mine.value == f"n{w}".encode()
        for i, (_, holder) in enumerate(results):
            if i != w:
                assert holder is not None and holder.value == f"n{w}".encode()
        assert [k.key for k in await c.range("/h/")] == [f"/h/{w}"]  # only the winner's
        assert await c.replace("/l", b"v2", mine.create_revision)
        assert not await c.replace("/l", b"v3", mine.create_revision + 1000)
        assert not await c.delete_if("/l", mine.create_revision + 1000)
        assert await c.delete_if("/l", mine.create_revision)
        ok, again = await c.create("/l", b"new")
        assert ok and again is not None and again.create_revision > mine.create_revision
        assert not await c.replace("/l", b"old holder", mine.create_revision)


async def test_lease_expiry_deletes_its_keys_and_keepalive_reports_it(
        etcd: EtcdServer) -> None:
    async with aiohttp.ClientSession() as s:
        c = Etcd(s, etcd.url)
        lease = await c.grant(2)
        ok, _ = await c.create("/leader", b"me", lease)
        assert ok
        await asyncio.sleep(1.2)
        assert await c.keepalive(lease) == 2  # renewed
        await asyncio.sleep(1.2)
        assert await c.get("/leader") is not None  # still within the renewed TTL
        await asyncio.sleep(2.5)
        assert await c.get("/leader") is None  # expired: the key went with it
        assert await c.keepalive(lease) == 0
        lease2 = await c.grant(5)
        await c.put("/m", b"x", lease2)
        await c.revoke(lease2)
        assert await c.get("/m") is None


async def test_unreachable_etcd_is_an_error_within_the_timeout() -> None:
    async with aiohttp.ClientSession() as s:
        c = Etcd(s, f"etcd://127.0.0.1:{free_port()}", timeout=0.5)
        with pytest.raises(EtcdError):
            await c.get("/x")
        with pytest.raises(EtcdError):
            await c.keepalive(1)
