"""/v1/admin/snapshots and /v1/admin/backup/window (admin). Snapshots are taken in a worker
thread while writes continue; a download streams the snapshot as a tar archive."""

from __future__ import annotations

import asyncio
import logging
import os
import queue
import tarfile
import threading

from aiohttp import web

from jade.backup import archive, restore, snapshot
from jade.errors import Internal, NotFound
from jade.http.auth import audit
from jade.http.keys import BACKUPS, ENGINE, SETTINGS
from jade.http.middleware import json_response

log = logging.getLogger(__name__)


async def create(request: web.Request) -> web.Response:
    try:
        info = await asyncio.to_thread(request.app[BACKUPS].snapshot)
    except snapshot.SnapshotError as exc:  # e.g. a bad signing key: say so, not "internal"
        raise Internal(str(exc), code="snapshot_failed") from None
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


class _Cancelled(Exception):
    """The client went away: the tar producer stops."""


class _QueueWriter:
    """The tar stream's file object: chunks go to a bounded queue the handler drains. Once
    ``cancelled`` is set (the handler ended) a blocked producer gives up instead of waiting
    forever for a reader that is gone."""

    def __init__(self, q: queue.Queue[bytes | None]) -> None:
        self.q = q
        self.cancelled = threading.Event()

    def put(self, item: bytes | None) -> None:
        while True:
            if self.cancelled.is_set():
                if item is None:  # the end marker: never block, a reader may still wait
                    try:
                        self.q.put_nowait(None)
                    except queue.Full:
                        pass
                    return
                raise _Cancelled()
            try:
                self.q.put(item, timeout=0.2)
                return
            except queue.Full:
                continue

    def write(self, data: bytes) -> int:
        if data:
            self.put(bytes(data))
        return len(data)


async def download(request: web.Request) -> web.StreamResponse:
    return await stream_snapshot(request, _path(request))


async def stream_snapshot(request: web.Request, path: str) -> web.StreamResponse:
    """Stream a snapshot directory as a tar archive (built in a thread, sent as it is made).
    A failure while building it (a file gone: the snapshot was deleted meanwhile) drops the
    connection, so the client sees an incomplete transfer, never a short but valid-looking
    tar."""
    name = os.path.basename(path)
    out = _QueueWriter(queue.Queue(maxsize=32))
    failed: list[BaseException] = []

    def produce() -> None:
        try:
            with tarfile.open(fileobj=out, mode="w|") as tar:  # type: ignore[call-overload]
                tar.add(
                    path, arcname=name, filter=lambda ti: None if ti.name.endswith("-lock") else ti
                )
        except _Cancelled:
            pass
        except Exception as exc:  # reported to the handler, which aborts the response
            failed.append(exc)
        finally:
            out.put(None)

    resp = web.StreamResponse(
        headers={
            "Content-Type": "application/x-tar",
            "Content-Disposition": f'attachment; filename="{name}.tar"',
        }
    )
    await resp.prepare(request)
    threading.Thread(target=produce, name="snapshot-download", daemon=True).start()
    loop = asyncio.get_running_loop()
    try:
        while True:
            chunk = await loop.run_in_executor(None, out.q.get)
            if chunk is None:
                break
            await resp.write(chunk)
    except ConnectionResetError:  # the client went away
        return resp
    finally:
        out.cancelled.set()
    if failed:
        log.warning("snapshot download of %s failed: %s", name, failed[0])
        if request.transport is not None:
            request.transport.abort()
        return resp
    await resp.write_eof()
    return resp


async def window(request: web.Request) -> web.Response:
    # the engine's open log: this process cannot open the same LMDB file a second time
    try:
        w = await asyncio.to_thread(restore.window, request.app[SETTINGS], request.app[ENGINE].log)
    except archive.ArchiveError as exc:
        raise Internal(f"the log archive is damaged: {exc}", code="archive_damaged") from None
    return json_response(w.json())
