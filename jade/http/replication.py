"""The primary's side of replication (DESIGN.md "Replication"):

- ``GET /v1/replication/stream?after=N&checksum=HEX&replica_id=ID`` — one long-lived response
  streaming every record after N (``wal.stream`` frames), then new ones as they commit, with
  heartbeats when idle. A follower whose record N does not match ours (``checksum``) has
  diverged; one asking for records already truncated must re-seed: both get a ``reseed`` frame.
- ``POST /v1/replication/ack`` — the follower's received/applied LSNs (they hold log truncation).
- ``GET /v1/replication/snapshot`` — a fresh snapshot as a tar stream, to bootstrap a follower.
- ``GET /v1/replication/status`` — either side: role, positions, lag.
Access class ``replicate``: users with the ``replicator`` role (and admins).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from aiohttp import web

from jade.errors import InvalidArgument
from jade.http.auth import principal_of
from jade.http.backups import stream_snapshot
from jade.http.keys import BACKUPS, ENGINE, METRICS, REPLICA_STATUS, REPLICAS
from jade.http.middleware import json_response
from jade.http.validate import read_json
from wal.log import LogError
from wal.stream import frame

HEARTBEAT_SECONDS = 1.0
BATCH = 512


def _replica_id(request: web.Request) -> str:
    rid = request.query.get("replica_id") or request.remote or "unknown"
    if len(rid) > 128:
        raise InvalidArgument("replica_id is longer than 128 characters")
    return rid


async def stream(request: web.Request) -> web.StreamResponse:
    engine = request.app[ENGINE]
    wal = engine.log
    try:
        after = int(request.query.get("after", "0"))
    except ValueError:
        raise InvalidArgument("'after' must be an integer") from None
    if after < 0:
        raise InvalidArgument("'after' must be >= 0")
    checksum = request.query.get("checksum", "")
    p = principal_of(request)
    state = request.app[REPLICAS].get(_replica_id(request), request.remote or "", p.user_id)
    resp = web.StreamResponse(headers={"Content-Type": "application/x-jade-stream"})
    await resp.prepare(request)
    await resp.write(
        frame(
            {
                "t": "hello",
                "primary_lsn": wal.last_lsn,
                "primary_ts": wal.last_ts,
                "epoch": wal.epoch,
                "first_lsn": wal.first_lsn,
            }
        )
    )
    reason = await asyncio.to_thread(_mismatch, wal, after, checksum)
    if reason:
        await resp.write(frame({"t": "reseed", "reason": reason, "first_lsn": wal.first_lsn}))
        return resp
    state.connected = True
    cursor = after
    try:
        while True:
            if wal.last_lsn > cursor:
                try:
                    recs = await asyncio.to_thread(wal.read, cursor, limit=BATCH, verify=False)
                except LogError as exc:  # truncated under us
                    await resp.write(
                        frame({"t": "reseed", "reason": str(exc), "first_lsn": wal.first_lsn})
                    )
                    return resp
                if recs:
                    await resp.write(frame({"t": "recs", "records": [r.encoded() for r in recs]}))
                    cursor = recs[-1].lsn
                    state.streamed_lsn = cursor
                    state.last_seen = time.time()
                    continue
            if not await wal.wait_for(cursor + 1, HEARTBEAT_SECONDS):
                await resp.write(
                    frame(
                        {
                            "t": "hb",
                            "last_lsn": wal.last_lsn,
                            "last_ts": wal.last_ts,
                            "epoch": wal.epoch,
                        }
                    )
                )
    except (ConnectionResetError, asyncio.CancelledError):
        raise
    finally:
        state.connected = False
    return resp


def _mismatch(wal: Any, after: int, checksum: str) -> str:
    """Why a follower at ``after`` (with that record's checksum) cannot continue from us."""
    if after > wal.last_lsn:
        return f"follower is at LSN {after}, ahead of the primary's {wal.last_lsn}"
    if after and after < wal.first_lsn - 1:
        return f"records after {after} were truncated (log starts at {wal.first_lsn})"
    if after and checksum:
        if after == wal.first_lsn - 1:
            ours = wal.base_checksum.hex()
        else:
            rec = wal.get(after)
            ours = rec.checksum.hex() if rec else ""
        if ours != checksum:
            return f"histories diverge at LSN {after} (different record there)"
    return ""


async def ack(request: web.Request) -> web.Response:
    body = await read_json(request)
    p = principal_of(request)
    state = request.app[REPLICAS].get(_replica_id(request), request.remote or "", p.user_id)
    for key in ("received_lsn", "applied_lsn"):
        v = body.get(key)
        if v is not None:
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise InvalidArgument(f"'{key}' must be a non-negative integer")
            setattr(state, key, v)
    state.last_seen = time.time()
    m = request.app[METRICS]
    m.replica_lag.labels(state.replica_id).set(
        max(0, request.app[ENGINE].log.last_lsn - state.applied_lsn)
    )
    return json_response({"ok": True, "primary_lsn": request.app[ENGINE].log.last_lsn})


async def snapshot(request: web.Request) -> web.StreamResponse:
    info = await asyncio.to_thread(request.app[BACKUPS].snapshot)
    return await stream_snapshot(request, info.path)


async def status(request: web.Request) -> web.Response:
    follower = request.app.get(REPLICA_STATUS)
    engine = request.app[ENGINE]
    if follower is not None:
        return json_response({"role": "replica", **follower()})
    last = engine.log.last_lsn
    return json_response(
        {
            "role": "primary",
            "last_lsn": last,
            "last_time_ns": engine.log.last_ts,
            "epoch": engine.log.epoch,
            "replicas": [s.json(last) for s in request.app[REPLICAS].by_id.values()],
        }
    )
