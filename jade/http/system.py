"""/health, /health/db, /metrics, /status (API.md §1)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import psutil
from aiohttp import web

from jade import __version__
from jade.http.databases import engine_of
from jade.http.keys import (
    AUTH_HEALTH,
    BACKUPS,
    CONNECTIONS,
    METRICS,
    REPLICA_STATUS,
    REPLICAS,
    SCHEDULER,
    SETTINGS,
)
from jade.http.middleware import json_response
from jade.metrics import CONTENT_TYPE

LOW_BYTES = 64 * 1024 * 1024  # "low" in /health below this (or the reserve, if larger)

def _check_store(request: web.Request) -> tuple[bool, str]:
    try:
        engine = engine_of(request)
        if engine.env is None:
            return False, "closed"
        engine.store.applied_lsn()
        return True, "ok"
    except Exception as exc:  # any failure to read is the answer
        return False, f"error: {type(exc).__name__}"


def _storage(request: web.Request) -> str:
    """The disk, for people: "ok", or why writes are (or are about to be) refused. Not part of
    liveness: a node whose disk is full still serves reads, and restarting it frees nothing."""
    disk = engine_of(request).disk
    free = disk.free()
    if disk.full is not None:
        return f"full: writes refused ({free} bytes free); reads go on"
    if free < max(disk.reserve, LOW_BYTES):
        return f"low: {free} bytes free"
    return "ok"


async def health(request: web.Request) -> web.Response:
    """Liveness: 503 only when the process cannot read its store (a restart may help then)."""
    db_ok, db_msg = _check_store(request)
    net_ok = True
    healthy = db_ok and net_ok
    body = {
        "status": "healthy" if healthy else "unhealthy",
        "timestamp": int(time.time() * 1000),
        "version": __version__,
        "checks": {"database": db_msg, "storage": _storage(request),
                   "network": "ok" if net_ok else "down"},
    }
    return json_response(body, status=200 if healthy else 503)


async def health_db(request: web.Request) -> web.Response:
    db_ok, db_msg = _check_store(request)
    auth_check = request.app.get(AUTH_HEALTH)
    auth_ok, auth_msg = auth_check() if auth_check else (True, "ok")
    engine = engine_of(request)
    # a projection that does not serve the log's state makes the node not ready: an index that
    # could not apply a committed record (vector_db), an auth store behind the log
    behind = engine.projections_behind() if engine.env is not None else {}
    for what, why in behind.items():
        if what == "auth":
            auth_ok, auth_msg = False, f"auth store behind the log: {why}"
        elif db_ok or db_msg.startswith(what):
            db_ok, db_msg = False, f"{what} not served until rebuilt: {why}"
    healthy = db_ok and auth_ok
    body = {
        "status": "healthy" if healthy else "degraded",
        "healthy": healthy,
        "timestamp": int(time.time() * 1000),
        "checks": {
            "authentication_db": {"status": auth_msg, "healthy": auth_ok},
            "vector_db": {"status": db_msg, "healthy": db_ok},
        },
    }
    return json_response(body, status=200 if healthy else 503)


def refresh_gauges(request: web.Request) -> None:
    engine = engine_of(request)
    m = request.app[METRICS]
    if engine.env is None:
        return
    dbs = engine.store.databases()
    m.databases.set(len(dbs))
    m.vectors.set(sum(d["count"] for d in dbs))
    m.wal_last_lsn.set(engine.log.last_lsn)
    m.wal_map_bytes.set(engine.env.map_size())
    # map growths: the storage operations that were redone after MapFullError
    grown = engine.env.grow_count + (engine.auth_env.grow_count if engine.auth_env else 0)
    if grown > m.map_grows_seen:
        m.db_query_retries.inc(grown - m.map_grows_seen)
        m.map_grows_seen = grown
    lives = list(engine.indexes.dbs.values())
    m.index_size.set(sum(x.index.memory_bytes() for x in lives))
    m.index_vectors.set(sum(len(x) for x in lives))
    age = engine.indexes.checkpoint_age_seconds()
    m.checkpoint_age.set(-1 if age is None else age)
    records, seconds, vectors = engine.indexes.lag()
    m.index_lag_records.set(records)
    m.index_lag_seconds.set(seconds)
    m.index_lag_vectors.set(vectors)
    if engine.refused_index_behind > m.writes_refused_index_behind_seen:
        m.writes_refused_index_behind.inc(
            engine.refused_index_behind - m.writes_refused_index_behind_seen)
        m.writes_refused_index_behind_seen = engine.refused_index_behind
    damaged = engine.indexes.checkpoints_damaged
    if damaged > m.checkpoint_damaged_seen:
        m.checkpoint_damaged.inc(damaged - m.checkpoint_damaged_seen)
        m.checkpoint_damaged_seen = damaged
    damaged = engine.store.damaged + engine.auth.damaged
    if damaged > m.store_damaged_seen:
        m.store_damaged.inc(damaged - m.store_damaged_seen)
        m.store_damaged_seen = damaged
    disk = engine.disk
    m.disk_free.set(disk.free())
    m.storage_full.set(1 if disk.full is not None else 0)
    if disk.refused > m.writes_refused_storage_seen:
        m.writes_refused_storage.inc(disk.refused - m.writes_refused_storage_seen)
        m.writes_refused_storage_seen = disk.refused
    for name, count in engine.projection_failures().items():
        seen = m.projection_failures_seen.get(name, 0)
        if count > seen:
            m.projection_failures.labels(name).inc(count - seen)
            m.projection_failures_seen[name] = count
    m.projections_behind.set(len(engine.projections_behind()))
    if engine.auth_env is not None:
        now = time.time() * 1000
        m.active_sessions.set(sum(1 for s in engine.auth.sessions() if s["expires_at"] > now))
        m.users.set(engine.auth.user_count())


async def metrics(request: web.Request) -> web.Response:
    refresh_gauges(request)
    body = request.app[METRICS].render()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})


def _uptime(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 3600}h {s % 3600 // 60}m {s % 60}s"


async def status(request: web.Request) -> web.Response:
    engine = engine_of(request)
    uptime = time.time() - engine.started_at
    dbs = engine.store.databases()
    m = request.app[METRICS]
    count = m.search_duration.value()
    n = m.search_requests.value()
    try:
        disk = psutil.disk_usage(request.app[SETTINGS].data_dir).percent
    except OSError:
        disk = -1.0
    body: dict[str, Any] = {
        "status": "operational",
        "timestamp": int(time.time() * 1000),
        "version": __version__,
        "uptime": _uptime(uptime),
        "uptime_seconds": int(uptime),
        "mode": "replica" if engine.role == "replica" else engine.mode(),
        "role": engine.role,
        "system": {
            "cpu_usage_percent": psutil.cpu_percent(interval=None),
            "memory_usage_percent": psutil.virtual_memory().percent,
            "disk_usage_percent": disk,
        },
        "performance": {
            "database_count": len(dbs),
            "total_vectors": sum(d["count"] for d in dbs),
            "avg_query_time_ms": round(count / n * 1000, 3) if n else 0.0,
            "active_connections": request.app.get(CONNECTIONS, lambda: 0)(),
        },
        "log": {
            "last_lsn": engine.log.last_lsn,
            "first_lsn": engine.log.first_lsn,
            "epoch": engine.log.epoch,
            "groups": engine.writer.stats.groups if engine.writer else 0,
        },
        "scheduler": request.app[SCHEDULER].status(),
        "replication": _replication(request),
        "storage": engine.disk.status(),
        # reads the snapshot and archive listings and the log: off the event loop
        "retention": await asyncio.to_thread(request.app[BACKUPS].retention_status),
        "indexes": {
            "checkpoint_age_seconds": engine.indexes.checkpoint_age_seconds(),
            "replayed_on_start": engine.indexes.replayed_on_start,
            "lag": _index_lag(engine),
        },
    }
    return json_response(body)


def _index_lag(engine: Any) -> dict[str, Any]:
    """How far the HNSW graphs are behind the acknowledged writes (searches stay exact)."""
    records, seconds, vectors = engine.indexes.lag()
    follower = engine.indexes.follower
    return {"records": records, "seconds": round(seconds, 3), "vectors": vectors,
            "max_vectors": engine.settings.index_lag_max_vectors,
            "following": follower is not None,
            "folded_vectors": follower.folded if follower is not None else 0}


def _replication(request: web.Request) -> dict[str, Any]:
    """Lag on both sides: a replica's own, or the primary's followers."""
    follower = request.app.get(REPLICA_STATUS)
    engine = engine_of(request)
    if follower is not None and engine.role == "replica":
        st = follower()
        return {k: st.get(k) for k in ("state", "primary", "applied_lsn", "primary_lsn",
                                       "lag_records", "lag_seconds")}
    last = engine.log.last_lsn
    replicas = [{"replica_id": r.replica_id, "applied_lsn": r.applied_lsn,
                 "lag_records": max(0, last - r.applied_lsn)}
                for r in request.app[REPLICAS].by_id.values()]
    return {"replicas": replicas}
