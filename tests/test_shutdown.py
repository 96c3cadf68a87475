"""Stopping the server (runbook "Service Restart"): ``docker stop`` sends SIGTERM, which drains
in-flight requests, checkpoints the indexes and removes the running marker; a ``kill -9`` is
noticed by the next start, which says what it replayed. Also POST /v1/admin/shutdown."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import numpy as np
import orjson
import pytest

from tests.conftest import Api, ServerProcess, login

PASSWORD = "Ops_Secure123@"
UNCLEAN = re.compile(r"did not stop cleanly: replayed (\d+) log records into the indexes")


@asynccontextmanager
async def client(sp: ServerProcess) -> AsyncIterator[Api]:
    async with aiohttp.ClientSession() as session:
        yield Api(sp.base, session)


async def user_api(anon: Api, username: str, *, is_admin: bool = False) -> Api:
    status, body = await anon.post("/v1/auth/register", {
        "username": username, "password": PASSWORD, "is_admin": is_admin})
    assert status in (201, 409), body
    token = await login(anon, username, PASSWORD)
    return Api(anon.base, anon.session, {"Authorization": f"Bearer {token}"})


async def logged_in(anon: Api, username: str) -> Api:
    token = await login(anon, username, PASSWORD)
    return Api(anon.base, anon.session, {"Authorization": f"Bearer {token}"})


def output_since(sp: ServerProcess, offset: int) -> str:
    with open(sp.log.name, "rb") as fh:
        fh.seek(offset)
        return fh.read().decode(errors="replace")


def log_size(sp: ServerProcess) -> int:
    return os.path.getsize(sp.log.name) if hasattr(sp, "log") else 0


def wait_exit(sp: ServerProcess, timeout: float) -> int:
    assert sp.proc is not None
    code = sp.proc.wait(timeout=timeout)
    sp.log.close()
    return code


def marker(data_dir: str) -> str:
    return os.path.join(data_dir, "jadevectordb.db.running")


async def count_of(api: Api, db: str) -> int:
    status, body = await api.get(f"/v1/databases/{db}/vectors?limit=1")
    assert status == 200, body
    return int(body["total"])


async def test_sigterm_drains_in_flight_write_and_stops_cleanly(tmp_path: Any) -> None:
    """A batch insert whose body is still arriving when SIGTERM comes is finished (201, all of
    it stored); a connection attempted after the signal is refused; exit 0, indexes
    checkpointed, marker gone, and the next start has nothing to report."""
    data = str(tmp_path / "data")
    sp = ServerProcess(data)
    sp.start()
    n, dim = 3000, 64
    rng = np.random.default_rng(7)
    payload = {"vectors": [{"id": f"v{i}", "values": row, "metadata": {"i": i}}
                           for i, row in enumerate(rng.random((n, dim)).round(4).tolist())]}
    raw = orjson.dumps(payload)
    half = len(raw) // 2
    first_sent, signalled = asyncio.Event(), asyncio.Event()

    async def slow_body() -> AsyncIterator[bytes]:
        yield raw[:half]
        first_sent.set()
        await signalled.wait()  # the rest of the body goes out after SIGTERM
        yield raw[half:]

    try:
        async with client(sp) as anon:
            api = await user_api(anon, "ops")
            db = await api.create_db(dim)
            status, _ = await api.post(f"/v1/databases/{db}/vectors/batch", {"vectors": [
                # distinct: ten identical vectors made the graph miss v5 in about 1 run in 10
                {"id": f"pre{i}", "values": row} for i, row in enumerate(
                    rng.random((10, dim)).round(4).tolist())]})
            assert status == 201
            assert os.path.exists(marker(data))  # running

            async def post_slowly() -> tuple[int, Any]:
                async with api.session.post(
                        f"{sp.base}/v1/databases/{db}/vectors/batch", data=slow_body(),
                        headers={**api.headers, "Content-Type": "application/json",
                                 "Content-Length": str(len(raw))}) as r:
                    return r.status, await r.json()

            task = asyncio.create_task(post_slowly())
            await asyncio.wait_for(first_sent.wait(), 10)
            await asyncio.sleep(0.2)  # the server has the headers and half the body
            sp.proc.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
            await asyncio.sleep(0.3)  # it is shutting down now...
            assert sp.proc.poll() is None  # type: ignore[union-attr]  # ...but waiting for us
            with pytest.raises(aiohttp.ClientConnectionError):  # no new connections
                async with aiohttp.ClientSession() as fresh:
                    await fresh.get(sp.base + "/health")
            signalled.set()
            status, body = await asyncio.wait_for(task, 30)
            assert status == 201 and body["count"] == n, body  # drained, not cut off
        assert await asyncio.to_thread(wait_exit, sp, 30) == 0
    finally:
        if sp.proc is not None and sp.proc.poll() is None:
            sp.kill()

    first_run = output_since(sp, 0)
    assert "stopped cleanly" in first_run and "still running" not in first_run
    assert not os.path.exists(marker(data))
    assert os.path.exists(os.path.join(data, "indexes", db, "index.json"))

    offset = log_size(sp)
    sp.start()
    try:
        async with client(sp) as anon:
            api = await logged_in(anon, "ops")
            assert await count_of(api, db) == 10 + n  # all of the batch, not part of it
            status, body = await api.get("/status")
            assert body["indexes"]["replayed_on_start"] == 0  # the checkpoint covered it all
            status, body = await api.post(f"/v1/databases/{db}/search",
                                          {"queryVector": payload["vectors"][5]["values"],
                                           "topK": 1, "efSearch": 200})
            assert status == 200 and body["results"][0]["vectorId"] == "v5", body
        sp.stop()
    finally:
        if sp.proc is not None and sp.proc.poll() is None:
            sp.kill()
    second_run = output_since(sp, offset)
    assert "listening" in second_run
    assert "did not stop cleanly" not in second_run


async def test_next_start_after_sigkill_says_what_it_replayed(tmp_path: Any) -> None:
    data = str(tmp_path / "data")
    sp = ServerProcess(data)
    sp.start()
    try:
        async with client(sp) as anon:
            api = await user_api(anon, "ops")
            db = await api.create_db(4)
            status, _ = await api.post(f"/v1/databases/{db}/vectors/batch", {"vectors": [
                {"id": f"a{i}", "values": [1.0, float(i), 0.0, 0.0]} for i in range(10)]})
            assert status == 201
        sp.stop()  # clean: the index is checkpointed at this point of the log
        assert sp.proc is not None and sp.proc.returncode == 0

        sp.start()
        async with client(sp) as anon:
            api = await logged_in(anon, "ops")
            for i in range(5):
                status, _ = await api.post(f"/v1/databases/{db}/vectors",
                                           {"id": f"b{i}", "values": [0.0, 1.0, float(i), 0.0]})
                assert status == 201  # acknowledged = durable
        sp.kill()  # kill -9: no checkpoint, the marker stays
        assert os.path.exists(marker(data))

        offset = log_size(sp)
        sp.start()
        out = output_since(sp, offset)
        m = UNCLEAN.search(out)
        assert m, out
        replayed = int(m.group(1))
        assert replayed >= 5  # the five acknowledged inserts after the checkpoint (+ a login)
        async with client(sp) as anon:
            api = await logged_in(anon, "ops")
            assert await count_of(api, db) == 15
            status, body = await api.get("/status")
            assert body["indexes"]["replayed_on_start"] == replayed
            status, body = await api.post(f"/v1/databases/{db}/search",
                                          {"queryVector": [0.0, 1.0, 4.0, 0.0], "topK": 1})
            assert body["results"][0]["vectorId"] == "b4", body
        sp.stop()
        assert sp.proc.returncode == 0
        assert not os.path.exists(marker(data))
    finally:
        if sp.proc is not None and sp.proc.poll() is None:
            sp.kill()


async def test_admin_shutdown_endpoint(tmp_path: Any) -> None:
    data = str(tmp_path / "data")
    sp = ServerProcess(data)
    sp.start()
    try:
        async with client(sp) as anon:
            admin = await user_api(anon, "boss", is_admin=True)  # first user: admin
            user = await user_api(anon, "worker")
            for path in ("/v1/admin/shutdown", "/admin/shutdown"):
                status, body = await user.post(path)
                assert status == 403, (path, body)
            status, body = await anon.get("/health")
            assert status == 200  # still up
            t0 = time.monotonic()
            status, body = await admin.post("/v1/admin/shutdown")
            assert status == 200 and body["status"] == "shutting_down", body
            assert body["message"]
        assert await asyncio.to_thread(wait_exit, sp, 10) == 0
        assert time.monotonic() - t0 < 10
    finally:
        if sp.proc is not None and sp.proc.poll() is None:
            sp.kill()
    assert "stopped cleanly" in output_since(sp, 0)
    assert not os.path.exists(marker(data))
