"""``GET /v1/cluster`` and ``GET /health/cluster`` without a coordinator (a lone primary): the
node describes itself; the engine's write fence (what a lost lease does to writes in flight).
With a coordinator and etcd: tests/test_cluster.py."""

from __future__ import annotations

import asyncio
import threading

from jade.errors import NotPrimary
from jade.http.keys import ENGINE
from tests.conftest import Server


async def test_cluster_view_of_a_lone_primary(server: Server) -> None:
    st, body = await server.anon.get("/v1/cluster")
    assert st == 401, body
    st, body = await server.user.get("/v1/cluster")
    assert st == 200, body
    assert body["role"] == "primary" and body["coordinator"] is None
    assert body["leader"]["url"] == body["url"] and body["leader"]["lsn"] == body["last_lsn"]
    assert [m["role"] for m in body["members"]] == ["primary"]


async def test_readiness_reflects_the_role(server: Server) -> None:
    st, body = await server.anon.get("/health/cluster")
    assert st == 200 and body == {"ready": True, "role": "primary", "reason": ""}, body
    st, body = await server.anon.get("/health/cluster?role=primary")
    assert st == 200, body
    st, body = await server.anon.get("/health/cluster?role=replica")
    assert st == 503 and not body["ready"] and "primary" in body["reason"], body
    st, body = await server.anon.get("/health/cluster?role=leader")
    assert st == 400, body


async def test_the_write_fence_covers_writes_being_committed_and_queued(server: Server) -> None:
    """``Engine.write_fence`` (installed by replica.cluster: the leader lease's deadline) is
    checked when a write is acknowledged, not only when it enters the writer: a write committed
    while the lease ran out is answered 503 not_primary (it is in the log, never acknowledged),
    a write still queued is refused before anything of it is written."""
    engine = server.app[ENGINE]
    st, body = await server.user.post("/v1/databases", {"name": "f", "vectorDimension": 2})
    assert st == 201, body
    dbid = body["databaseId"]
    expired = threading.Event()
    entered, release = threading.Event(), threading.Event()

    def fence() -> None:
        if expired.is_set():
            raise NotPrimary("lease lost (test)")

    def hold(requests: int, records: int, seconds: float) -> None:
        if not release.is_set():  # the first group: committed, its answers not yet given
            entered.set()
            release.wait(10)

    engine.write_fence = fence
    engine.group_observers.append(hold)
    try:
        a = asyncio.ensure_future(server.user.post(f"/v1/databases/{dbid}/vectors",
                                                   {"id": "a", "values": [1.0, 0.0]}))
        assert await asyncio.to_thread(entered.wait, 10)
        b = asyncio.ensure_future(server.user.post(f"/v1/databases/{dbid}/vectors",
                                                   {"id": "b", "values": [0.0, 1.0]}))
        await asyncio.sleep(0.2)  # b is queued behind the held group
        expired.set()  # the lease's deadline passes
        release.set()
        (st_a, body_a), (st_b, body_b) = await a, await b
    finally:
        release.set()
        engine.group_observers.remove(hold)
        engine.write_fence = None
    assert st_a == 503 and body_a["error"] == "not_primary", body_a
    assert st_b == 503 and body_b["error"] == "not_primary", body_b
    st, _ = await server.user.get(f"/v1/databases/{dbid}/vectors/a")
    assert st == 200  # committed before the deadline, but not acknowledged
    st, _ = await server.user.get(f"/v1/databases/{dbid}/vectors/b")
    assert st == 404  # refused by the writer's gate: nothing written
    st, body = await server.user.post(f"/v1/databases/{dbid}/vectors",
                                      {"id": "c", "values": [1.0, 1.0]})
    assert st == 201, body  # without the fence, writes are acknowledged again
