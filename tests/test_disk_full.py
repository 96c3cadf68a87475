"""A full disk is not a full outage (issue 14, item 1).

The data directory lives on a small tmpfs mounted for the test (root only; skipped otherwise),
filled with a ballast file: writes are refused with 507 ``insufficient_storage`` and
Retry-After, nothing acknowledged is lost, reads, ``/health``, metrics and an existing token go
on, writes resume once the ballast is removed, a stop exits 0, a start on the full disk serves
reads, and failed checkpoints leave no temp files behind.
"""

from __future__ import annotations

import asyncio
import os
import random
import shutil
import signal
import subprocess
from collections.abc import Iterator
from typing import Any

import aiohttp
import pytest

from jade.engine.disk import FREE_TTL_SECONDS
from tests.conftest import Api, ServerProcess, login, make_settings, running_server

PASSWORD = "Disk_Full_Secure123@"
DIM = 64


def _can_mount() -> bool:
    return os.geteuid() == 0 and shutil.which("mount") is not None


@pytest.fixture
def small_disk(tmp_path: Any) -> Iterator[str]:
    """A 24 MiB tmpfs at ``tmp_path/disk``, unmounted afterwards."""
    if not _can_mount():
        pytest.skip("mounting a small tmpfs needs root")
    path = str(tmp_path / "disk")
    os.makedirs(path)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", path],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", path], capture_output=True)


def fill(disk: str, leave: int = 0) -> str:
    """Write a ballast file until ``leave`` bytes are free (0: until the disk is full)."""
    path = os.path.join(disk, "ballast")
    chunk = b"\0" * (256 * 1024)
    with open(path, "ab") as fh:
        while True:
            free = shutil.disk_usage(disk).free
            if free <= leave:
                break
            try:
                fh.write(chunk[: max(4096, min(len(chunk), free - leave))])
                fh.flush()
            except OSError:
                break
    return path


def free_ballast(disk: str) -> None:
    os.remove(os.path.join(disk, "ballast"))


def vectors(start: int, n: int) -> list[dict[str, Any]]:
    return [{"id": f"v{i}", "values": values(i), "metadata": {"i": i}}
            for i in range(start, start + n)]


def values(i: int) -> list[float]:
    rng = random.Random(i)
    return [rng.random() for _ in range(DIM)]


async def write_until_refused(api: Api, db: str, start: int) -> tuple[int, Any, dict[str, str]]:
    """Batches of 100 until one is refused; returns (next id, refusal body, its headers)."""
    n = start
    for _ in range(2000):
        async with api.session.post(f"{api.base}/v1/databases/{db}/vectors/batch",
                                    json={"vectors": vectors(n, 100)},
                                    headers=api.headers) as resp:
            body = await resp.json()
            if resp.status != 201 and resp.status != 200:
                return n, (resp.status, body), dict(resp.headers)
        n += 100
    raise AssertionError("the disk never filled")


def no_temp_files(data_dir: str) -> list[str]:
    left = []
    for root, _, files in os.walk(data_dir):
        left += [os.path.join(root, f) for f in files if f.endswith(".tmp")]
    return left


async def test_writes_refused_on_a_full_disk_reads_go_on_and_writes_resume(
        small_disk: str, tmp_path: Any) -> None:
    """The failing commit itself (reserve 0): LMDB reports ENOSPC, or EIO for a short write."""
    s = make_settings(tmp_path, data_dir=os.path.join(small_disk, "data"), reserve_bytes=0,
                      index_dir=os.path.join(small_disk, "indexes"),
                      backup_dir=str(tmp_path / "backups"))  # snapshots go to another disk
    async with running_server(s) as srv:
        api = srv.user
        db = await api.create_db(DIM)
        fill(small_disk, leave=3 << 20)
        n, (status, body), headers = await write_until_refused(api, db, 0)
        assert status == 507, (status, body)
        assert body["error"] == "insufficient_storage", body
        assert "disk" in body["message"] and int(headers["Retry-After"]) > 0
        acknowledged = n  # v0 .. v{n-1}
        # reads go on: a stored vector, a search, health, metrics, status
        st, got = await api.get(f"/v1/databases/{db}/vectors/v{n - 1}")
        assert st == 200 and got["metadata"] == {"i": n - 1}, got
        st, found = await api.post(f"/v1/databases/{db}/search",
                                   {"queryVector": values(5), "topK": 3})
        assert st == 200 and found["results"][0]["vectorId"] == "v5", found
        st, health = await srv.anon.get("/health")
        assert st == 200 and health["status"] == "healthy", health
        assert health["checks"]["storage"] != "ok", health
        async with api.session.get(f"{srv.base}/metrics") as resp:
            text = await resp.text()
        assert "jadevectordb_storage_full 1.0" in text
        assert "jadevectordb_writes_refused_insufficient_storage_total 1.0" in text
        st, status_body = await srv.admin.get("/status")
        assert status_body["storage"]["writes_refused"] is True, status_body
        # a snapshot to another disk goes on (its index checkpoint cannot be written here)
        fill(small_disk)
        st, snap = await srv.admin.post("/v1/admin/snapshots")
        assert st == 201, snap
        assert no_temp_files(os.path.join(small_disk, "indexes")) == []
        # nothing of the refused batch was written (a smaller write may still fit: LMDB reuses
        # the free pages inside its file)
        for i in (n, n + 99):
            st, _ = await api.get(f"/v1/databases/{db}/vectors/v{i}")
            assert st == 404, i
        # space freed: writes resume by themselves
        free_ballast(small_disk)
        st, body = await api.post(f"/v1/databases/{db}/vectors/batch",
                                  {"vectors": vectors(n, 10)})
        assert st in (200, 201), (st, body)
        st, status_body = await srv.admin.get("/status")
        assert status_body["storage"]["writes_refused"] is False, status_body
        st, info = await api.get(f"/v1/databases/{db}")
        assert st == 200
        assert info.get("vectorCount", info.get("stats", {}).get("vectorCount")) in (
            acknowledged + 10, None), info


async def test_the_reserve_refuses_writes_before_the_disk_is_full(
        small_disk: str, tmp_path: Any) -> None:
    """storage.reserve_bytes: writes refused while less is free; admin steering and logins
    (records allowed in readonly mode) still go through; freeing space lets writes in."""
    s = make_settings(tmp_path, data_dir=os.path.join(small_disk, "data"),
                      reserve_bytes=8 << 20, index_dir=str(tmp_path / "indexes"))
    async with running_server(s) as srv:
        api = srv.user
        db = await api.create_db(DIM)
        st, _ = await api.post(f"/v1/databases/{db}/vectors/batch", {"vectors": vectors(0, 50)})
        assert st in (200, 201)
        fill(small_disk, leave=6 << 20)
        # free space is measured at most every FREE_TTL_SECONDS (10 ms): a tmpfs fills in less
        # than that, and a write in the same window still sees the figure of the last one
        await asyncio.sleep(3 * FREE_TTL_SECONDS)
        st, body = await api.post(f"/v1/databases/{db}/vectors/batch",
                                  {"vectors": vectors(50, 50)})
        assert st == 507 and body["error"] == "insufficient_storage", (st, body)
        assert "reserve" in body["message"], body
        st, body = await srv.admin.post("/v1/databases", {"name": "x", "vectorDimension": 4})
        assert st == 507, (st, body)
        # a login writes a session record: allowed in readonly mode, so it may use the reserve
        token = await login(srv.anon, "tester", "PyTest_Secure123@")
        assert token
        st, body = await srv.admin.post("/v1/admin/readonly")
        assert st == 200, body
        st, body = await srv.admin.post("/v1/admin/readwrite")
        assert st == 200, body
        st, got = await api.get(f"/v1/databases/{db}/vectors/v49")
        assert st == 200
        free_ballast(small_disk)
        st, body = await api.post(f"/v1/databases/{db}/vectors/batch",
                                  {"vectors": vectors(50, 50)})
        assert st in (200, 201), (st, body)


async def _register(base: str, session: aiohttp.ClientSession) -> Api:
    anon = Api(base, session)
    st, body = await anon.post("/v1/auth/register", {"username": "filler", "password": PASSWORD})
    assert st == 201, body
    return Api(base, session, {"Authorization": "Bearer " + await login(anon, "filler",
                                                                         PASSWORD)})


async def test_stop_and_start_on_a_full_disk(small_disk: str, tmp_path: Any) -> None:
    """A real server process: writes fill the disk to the reserve, then the disk fills to its
    last byte; a stop still exits 0 and leaves no temp files; a start on the full disk serves
    reads (writes refused), and every acknowledged vector is there; freeing space lets writes
    in again."""
    data = os.path.join(small_disk, "data")
    env = {"JADEVECTORDB_STORAGE_RESERVE_BYTES": str(4 << 20), "JADEVECTORDB_ENV": "development"}
    sp = ServerProcess(data, env=env, log_dir=str(tmp_path))  # its output: not on the disk
    sp.start()
    timeout = aiohttp.ClientTimeout(total=60)
    try:
        async with aiohttp.ClientSession(timeout=timeout) as session:
            api = await _register(sp.base, session)
            db = await api.create_db(DIM)
            fill(small_disk, leave=8 << 20)
            n, (status, body), _ = await write_until_refused(api, db, 0)
            assert status == 507, (status, body)
            fill(small_disk)  # not a byte left: the checkpoint at stop cannot be written
        assert sp.proc is not None
        sp.proc.send_signal(signal.SIGTERM)
        assert sp.proc.wait(30) == 0, open(sp.log.name).read()[-3000:]
        sp.log.close()
        assert no_temp_files(data) == []
        sp.start()  # on the full disk
        async with aiohttp.ClientSession(timeout=timeout) as session:
            anon = Api(sp.base, session)
            st, health = await anon.get("/health")
            assert st == 200, health
            api = Api(sp.base, session, api.headers)  # the token survives the restart
            for i in (0, n // 2, n - 1):
                st, got = await api.get(f"/v1/databases/{db}/vectors/v{i}")
                assert st == 200 and got["metadata"] == {"i": i}, (i, st, got)
            st, body = await api.post(f"/v1/databases/{db}/vectors", vectors(n, 1)[0])
            assert st == 507 and body["error"] == "insufficient_storage", (st, body)
            free_ballast(small_disk)
            await asyncio.sleep(0)
            st, body = await api.post(f"/v1/databases/{db}/vectors", vectors(n, 1)[0])
            assert st in (200, 201), (st, body)
    finally:
        sp.stop()
    assert sp.proc is not None and sp.proc.returncode == 0


def test_a_start_removes_what_failed_checkpoints_left(tmp_path: Any) -> None:
    """Files of a checkpoint no ``index.json`` names (a save cut short by a full disk or a
    kill) and tmp files are removed at start-up; the named checkpoint is kept and loaded."""
    from jade.core.decide import Command
    from jade.engine import Engine
    from tests.test_apply import upsert
    from tests.test_checkpoint_damage import _create

    s = make_settings(tmp_path)
    engine = Engine(s)
    engine.open()
    engine.submit_sync(_create("h", "hnsw"))
    engine.submit_sync(upsert("h", [(f"v{i}", values(i)[:16], {}) for i in range(50)],
                              actor="t"))
    engine.close(checkpoint=True)
    base = os.path.join(s.index_dir, "h")
    named = sorted(os.listdir(base))
    leftovers = ["hnsw-999.bin.tmp", "hnsw-999.bin", "hnsw-999.bin.metadata.msgpack",
                 "index.json.tmp"]
    for name in leftovers:
        with open(os.path.join(base, name), "wb") as fh:
            fh.write(b"x" * 4096)
    engine = Engine(s)
    report = engine.open()
    try:
        assert report.index["loaded"] == 1, report
        assert sorted(os.listdir(base)) == named
        engine.submit_sync(Command("vec.delete", {"db": "h", "ids": ["v1"]}))
    finally:
        engine.close()
