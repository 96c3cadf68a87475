"""/v1/admin/snapshots and /v1/admin/backup/window (admin). Snapshots are taken in a worker
thread while writes continue; a download streams the snapshot as a tar archive."""

from __future__ import annotations

import asyncio
import os
import queue
import tarfile
import threading

from aiohttp import web

from jade.backup import restore, snapshot
from jade.errors import NotFound
from jade.http.auth import audit
from jade.http.keys import BACKUPS, SETTINGS
from jade.http.middleware import json_response


async def create(request: web.Request) -> web.Response:
    info = await asyncio.to_thread(request.app[BACKUPS].snapshot)
    audit(request, "ADMIN_OPERATION", operation="snapshot", resource=f"snapshots/{info.name}")
    return json_response(info.json(), status=201)


async def list_(request: web.Request) -> web.Response:
    snaps = await asyncio.to_thread(snapshot.listing, request.app[SETTINGS].backup_dir)
    return json_response({"snapshots": [s.json() for s in snaps], "count": len(snaps)})


def _path(request: web.Request) -> str:
    name = request.match_info["name"]
    root = snapshot.snapshots_dir(request.app[SETTINGS].backup_dir)
    path = os.path.join(root, name)
    if (
        not name.startswith("snap-")
        or os.path.dirname(os.path.abspath(path)) != os.path.abspath(root)
        or not os.path.isdir(path)
    ):
        raise NotFound("Snapshot not found", name=name)
    return path


async def get(request: web.Request) -> web.Response:
    path = _path(request)
    info = await asyncio.to_thread(snapshot.info, path)
    problems = await asyncio.to_thread(snapshot.verify, path)
    return json_response({**info.json(), "intact": not problems, "problems": problems})


async def delete(request: web.Request) -> web.Response:
    path = _path(request)
    name = os.path.basename(path)
    await asyncio.to_thread(snapshot.delete, request.app[SETTINGS].backup_dir, name)
    audit(request, "DATA_DELETION", operation="snapshot_delete", resource=f"snapshots/{name}")
    return json_response({"name": name, "message": "snapshot deleted"})


class _QueueWriter:
    def __init__(self, q: queue.Queue[bytes | None]) -> None:
        self.q = q

    def write(self, data: bytes) -> int:
        if data:
            self.q.put(bytes(data))
        return len(data)


async def download(request: web.Request) -> web.StreamResponse:
    return await stream_snapshot(request, _path(request))


async def stream_snapshot(request: web.Request, path: str) -> web.StreamResponse:
    """Stream a snapshot directory as a tar archive (built in a thread, sent as it is made)."""
    name = os.path.basename(path)
    q: queue.Queue[bytes | None] = queue.Queue(maxsize=32)

    def produce() -> None:
        try:
            with tarfile.open(fileobj=_QueueWriter(q), mode="w|") as tar:  # type: ignore[arg-type]
                tar.add(
                    path, arcname=name, filter=lambda ti: None if ti.name.endswith("-lock") else ti
                )
        finally:
            q.put(None)

    resp = web.StreamResponse(
        headers={
            "Content-Type": "application/x-tar",
            "Content-Disposition": f'attachment; filename="{name}.tar"',
        }
    )
    await resp.prepare(request)
    threading.Thread(target=produce, name="snapshot-download", daemon=True).start()
    loop = asyncio.get_running_loop()
    while True:
        chunk = await loop.run_in_executor(None, q.get)
        if chunk is None:
            break
        await resp.write(chunk)
    await resp.write_eof()
    return resp


async def window(request: web.Request) -> web.Response:
    w = await asyncio.to_thread(restore.window, request.app[SETTINGS])
    return json_response(w.json())
