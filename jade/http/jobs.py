"""The scheduled jobs the server runs (``jade.scheduler``): index checkpoints, snapshots, log
archiving and trimming, offsite copies of the backups, pruning expired auth records, and
dropping stale rate-limit windows."""

from __future__ import annotations

import asyncio

from aiohttp import web

from jade.auth.clock import now_ms
from jade.core.decide import Command
from jade.http.analytics import flush_job
from jade.http.keys import AUTH, BACKUPS, ENGINE, METRICS, SETTINGS
from jade.scheduler import Scheduler

TRUNCATE_INTERVAL_SECONDS = 60  # how often the log is trimmed when archiving is off


def add_jobs(app: web.Application, sched: Scheduler) -> None:
    """Register the jobs on ``sched`` (started by the app's life cycle)."""
    settings = app[SETTINGS]
    engine = app[ENGINE]
    svc = app[AUTH]

    def checkpoint_all() -> int:
        n = engine.indexes.checkpoint()
        if engine.text is not None:
            engine.text.checkpoint()  # its file's LSN moves up: the log before it may go
        return n

    async def checkpoint() -> int:
        return await asyncio.to_thread(checkpoint_all)

    async def prune_auth() -> int:
        if engine.role == "replica":
            return 0  # the primary prunes; its records reach us
        now = now_ms()
        expired = sum(1 for s in svc.store.sessions() if s["expires_at"] <= now) + sum(
            1 for b in svc.store.blocks() if b["until"] <= now)
        if expired:
            await engine.submit(Command("auth.prune", {"now": now}))
        return expired

    async def cleanup_limits() -> int:
        return svc.cleanup()

    bk = app[BACKUPS]

    async def take_snapshot() -> dict[str, object]:
        return await asyncio.to_thread(bk.scheduled_snapshot)

    async def archive_log() -> dict[str, object]:
        return await asyncio.to_thread(bk.archive_and_truncate)

    async def truncate_log() -> dict[str, object]:
        return await asyncio.to_thread(bk.truncate)

    metrics = app[METRICS]
    bk.offsite.on_bytes = lambda kind, n: metrics.offsite_bytes.labels(kind).inc(n)

    async def copy_offsite() -> dict[str, object]:
        return await asyncio.to_thread(bk.push_offsite)

    sched.add("index_checkpoint", settings.checkpoint_interval_seconds, checkpoint)
    sched.add("snapshot", settings.snapshot_interval_seconds, take_snapshot)
    # the log is trimmed by default (``jade.backup.jobs``): after each archive run, or on its
    # own when archiving is off
    if settings.archive_interval_seconds > 0:
        sched.add("archive", settings.archive_interval_seconds, archive_log)
    else:
        sched.add("log_truncate", TRUNCATE_INTERVAL_SECONDS, truncate_log)
    if bk.offsite.targets:  # snapshots and segments to a second disk or an S3 bucket
        sched.add("offsite", settings.offsite_interval_seconds, copy_offsite)
    sched.add("auth_prune", 300, prune_auth)
    sched.add("rate_limit_cleanup", 60, cleanup_limits)
    sched.add("analytics_flush", settings.analytics_flush_seconds, flush_job(app))
