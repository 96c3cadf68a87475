"""Scheduled jobs (APScheduler): index checkpoints, expired-session pruning, rate-limit cleanup
(and, with later issues, snapshots and retention). Each job's last run, outcome and duration
are kept for ``/status`` and exported as metrics, the job's name in the label ``task`` (never
``job``, which Prometheus sets on scrape: ``jade.metrics.RESERVED_LABELS``)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from apscheduler.schedulers.asyncio import AsyncIOScheduler

from jade.metrics import Metrics

log = logging.getLogger(__name__)


@dataclass
class JobState:
    name: str
    interval_seconds: float
    runs: int = 0
    failures: int = 0
    last_run: float | None = None
    last_outcome: str = "never"
    last_duration_seconds: float = 0.0
    last_result: Any = None

    def json(self) -> dict[str, Any]:
        return {
            "interval_seconds": self.interval_seconds,
            "runs": self.runs,
            "failures": self.failures,
            "last_run": self.last_run,
            "last_outcome": self.last_outcome,
            "last_duration_seconds": round(self.last_duration_seconds, 4),
            "last_result": self.last_result,
        }


class Scheduler:
    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics
        self.jobs: dict[str, JobState] = {}
        self._fns: dict[str, Callable[[], Awaitable[Any]]] = {}
        self._sched: AsyncIOScheduler | None = None

    def add(self, name: str, seconds: float, fn: Callable[[], Awaitable[Any]]) -> None:
        if seconds <= 0:
            return
        self.jobs[name] = JobState(name, seconds)
        self._fns[name] = fn

    async def run(self, name: str) -> Any:
        """Run a job now (also what the timer calls). Never raises: failures are recorded."""
        state = self.jobs[name]
        t0 = time.perf_counter()
        try:
            result = await self._fns[name]()
            state.last_outcome = "success"
            state.last_result = result
            self.metrics.job_runs.labels(name, "success").inc()
            self.metrics.job_last_success.labels(name).set(time.time())
        except Exception as exc:
            state.failures += 1
            state.last_outcome = f"error: {type(exc).__name__}: {exc}"
            self.metrics.job_runs.labels(name, "error").inc()
            log.exception("scheduled job %s failed", name)
            result = None
        state.runs += 1
        state.last_run = time.time()
        state.last_duration_seconds = time.perf_counter() - t0
        return result

    def start(self) -> None:
        self._sched = AsyncIOScheduler(event_loop=asyncio.get_running_loop())
        for name, state in self.jobs.items():
            self._sched.add_job(
                self.run,
                "interval",
                args=[name],
                id=name,
                seconds=state.interval_seconds,
                max_instances=1,
                coalesce=True,
            )
        self._sched.start()

    def shutdown(self) -> None:
        if self._sched is not None and self._sched.running:
            self._sched.shutdown(wait=False)
        self._sched = None

    def status(self) -> dict[str, Any]:
        return {name: s.json() for name, s in self.jobs.items()}
