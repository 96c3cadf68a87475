"""The primary's side of replication (DESIGN.md "Replication"):

- ``GET /v1/replication/stream?after=N&checksum=HEX&replica_id=ID`` — one long-lived response
  streaming every record after N (``wal.stream`` frames), then new ones as they commit, with
  heartbeats when idle. A follower whose record N does not match ours (``checksum``) has
  diverged; one asking for records already truncated must re-seed: both get a ``reseed`` frame.
- ``POST /v1/replication/ack`` — the follower's received/applied LSNs (they hold log truncation
  and, with synchronous replication, release the writes waiting for them: ``jade.engine.sync``;
  a ``recs`` frame carries ``ack: true`` when this follower's acknowledgement is awaited, and
  the follower then acknowledges the batch as soon as it is committed).
- ``GET /v1/replication/snapshot`` — a fresh snapshot as a tar stream, to bootstrap a follower.
- ``GET /v1/replication/status`` — either side: role, positions, lag; on the primary also
  ``synchronous`` (the setting, the confirmed LSN, writes waiting) and, per replica, whether it
  counts as synchronous and its confirmed LSN.
Access class ``replicate``: users with the ``replicator`` role (and admins).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from aiohttp import web

from jade.errors import InvalidArgument
from jade.http import schemas as S
from jade.http.auth import principal_of
from jade.http.backups import stream_snapshot
from jade.http.keys import (
    BACKUPS,
    ENGINE,
    INFLIGHT,
    METRICS,
    REPLICA_STATUS,
    REPLICAS,
    SHUTDOWN,
)
from jade.http.middleware import json_response
from jade.http.replication_state import ReplicaState
from jade.http.validate import parse_lsn, parsed
from wal.log import LogError
from wal.stream import frame

HEARTBEAT_SECONDS = 1.0
BATCH = 512  # records per frame at most
FRAME_BYTES = 8 * 1024 * 1024  # and about this many bytes (wal.stream.MAX_FRAME is the limit)
WRITE_TIMEOUT_SECONDS = 30.0


def _replica_id(request: web.Request) -> str:
    rid = request.query.get("replica_id") or request.remote or "unknown"
    if len(rid) > 128:
        raise InvalidArgument("replica_id is longer than 128 characters")
    return rid


async def stream(request: web.Request) -> web.StreamResponse:
    engine = request.app[ENGINE]
    wal = engine.log
    after = parse_lsn(request.query.get("after", "0"), "'after'")
    checksum = request.query.get("checksum", "")
    p = principal_of(request)
    state = request.app[REPLICAS].get(_replica_id(request), request.remote or "", p.user_id)
    resp = web.StreamResponse(headers={"Content-Type": "application/x-jade-stream"})
    await resp.prepare(request)
    await _send(resp, {"t": "hello", "primary_lsn": wal.last_lsn, "primary_ts": wal.last_ts,
                       "epoch": wal.epoch, "first_lsn": wal.first_lsn})
    reason = await asyncio.to_thread(_mismatch, wal, after, checksum)
    if reason:
        await _send(resp, {"t": "reseed", "reason": reason, "first_lsn": wal.first_lsn})
        return resp
    state.streams += 1
    _track(request.app, state)
    cursor = after
    replicas = request.app[REPLICAS]
    state.streamed_lsn = after  # its record ``after`` is ours (checked above): it holds 1..after
    replicas.confirmed(state)
    sync = engine.sync
    stop = request.app[SHUTDOWN]
    inflight = request.app[INFLIGHT]

    def needed() -> bool:
        """While a graceful stop drains the requests in flight, synchronous writes among them
        may still wait for what this stream carries (or has yet to carry)."""
        return bool(sync.required and (inflight.count or sync.waiting or wal.last_lsn > cursor))

    last_hb = 0.0
    try:
        while not stop.is_set() or needed():
            if wal.last_lsn > cursor:
                try:
                    recs = await asyncio.to_thread(wal.read, cursor, limit=BATCH, verify=False)
                except LogError as exc:  # truncated under us
                    await _send(resp, {"t": "reseed", "reason": str(exc),
                                       "first_lsn": wal.first_lsn})
                    return resp
                if recs:
                    raw = _bounded([r.encoded() for r in recs])
                    frame_: dict[str, Any] = {"t": "recs", "records": raw}
                    if sync.counts(state.replica_id):
                        frame_["ack"] = True  # writes wait for it: acknowledge at once
                    await _send(resp, frame_)
                    cursor = recs[len(raw) - 1].lsn
                    state.streamed_lsn = cursor
                    state.last_seen = time.time()
                    continue
            if stop.is_set():  # stopping: nothing to send yet, writes in flight
                await asyncio.sleep(0.01)
                if time.monotonic() - last_hb > 0.2:  # the follower re-acknowledges on it
                    last_hb = time.monotonic()
                    await _send(resp, {"t": "hb", "last_lsn": wal.last_lsn,
                                       "last_ts": wal.last_ts, "epoch": wal.epoch})
                continue
            arrived = await _wait_new(wal, cursor + 1, stop)
            if arrived is False:
                await _send(resp, {"t": "hb", "last_lsn": wal.last_lsn, "last_ts": wal.last_ts,
                                   "epoch": wal.epoch})
    finally:
        state.streams -= 1
    return resp  # shutting down: the follower sees the end of the stream and reconnects


def _bounded(raw: list[bytes]) -> list[bytes]:
    """The first records of ``raw`` that fit in one frame of at most FRAME_BYTES (at least one:
    a record is at most the request body limit, far below ``wal.stream.MAX_FRAME``)."""
    total = 0
    for i, r in enumerate(raw):
        total += len(r) + 8
        if total > FRAME_BYTES and i:
            return raw[:i]
    return raw


async def _send(resp: web.StreamResponse, obj: dict[str, Any]) -> None:
    """Write a frame; a follower that stopped reading (a dead peer that never reset the
    connection) ends the stream instead of holding this handler forever."""
    await asyncio.wait_for(resp.write(frame(obj)), WRITE_TIMEOUT_SECONDS)


async def _wait_new(wal: Any, lsn: int, stop: asyncio.Event) -> bool | None:
    """True when record ``lsn`` committed, False after a heartbeat interval without it, None
    when the server is shutting down (streams must not hold a graceful shutdown)."""
    if wal.last_lsn >= lsn:
        return True
    waiter = asyncio.ensure_future(wal.wait_for(lsn, HEARTBEAT_SECONDS))
    stopper = asyncio.ensure_future(stop.wait())
    try:
        done, _ = await asyncio.wait({waiter, stopper}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for t in (waiter, stopper):
            if not t.done():
                t.cancel()
    if stopper in done:
        return None
    return bool(waiter.result())


def _track(app: web.Application, state: ReplicaState) -> None:
    """The per-follower lag gauge, computed when scraped (a follower that stopped acking shows
    its lag growing, not the last value it reported); the synchronous replicas' count too."""
    engine = app[ENGINE]
    m = app[METRICS]
    m.replica_lag.labels(state.replica_id).set_function(
        lambda: max(0, engine.log.last_lsn - state.applied_lsn))
    m.replication_sync_replicas_connected.set_function(app[REPLICAS].synchronous_connected)


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
    req = await parsed(request, S.ReplicationAck)  # non-negative integers
    p = principal_of(request)
    state = request.app[REPLICAS].get(_replica_id(request), request.remote or "", p.user_id)
    if req.received_lsn is not None:
        state.received_lsn = req.received_lsn
    if req.applied_lsn is not None:
        state.applied_lsn = req.applied_lsn
    state.last_seen = time.time()
    _track(request.app, state)
    request.app[REPLICAS].confirmed(state)  # may release writes waiting for it
    return json_response({"ok": True, "primary_lsn": request.app[ENGINE].log.last_lsn})


async def snapshot(request: web.Request) -> web.StreamResponse:
    info = await asyncio.to_thread(request.app[BACKUPS].snapshot)
    return await stream_snapshot(request, info.path)


async def status(request: web.Request) -> web.Response:
    follower = request.app.get(REPLICA_STATUS)
    engine = request.app[ENGINE]
    if follower is not None and engine.role == "replica":
        return json_response({"role": "replica", **follower()})
    last = engine.log.last_lsn
    body: dict[str, Any] = {
        "role": "primary",
        "last_lsn": last,
        "last_time_ns": engine.log.last_ts,
        "epoch": engine.log.epoch,
        "replicas": [s.json(last, engine.sync) for s in request.app[REPLICAS].by_id.values()],
        "synchronous": {**engine.sync.json(),
                        "connected": request.app[REPLICAS].synchronous_connected()},
    }
    if follower is not None:  # a promoted replica: say what it used to follow
        body["promoted_from"] = follower()["primary"]
    return json_response(body)
