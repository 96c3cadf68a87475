"""The group-commit writer: one thread owns every write transaction of the log's environment.

Callers put items on a queue and get a future. The thread takes everything waiting (bounded by
count and bytes), and for the whole group runs ONE write transaction:

    for each item:  records = handler.prepare(txn, item)     # may raise: only that item fails
                    log.append(...) for each record, then handler.apply_in_txn(txn, record)
    commit (one fsync for the group)
    handler.after_commit(records)                              # in-memory indexes, other stores
    resolve each item's future with its records

``prepare`` sees the effects of earlier items of the same group (they were applied in the same
transaction), so decisions are exactly as if the items ran one by one. If the map fills, the
transaction is aborted, the map grows and the group is redone from the start; ``prepare`` must
therefore write nothing itself. A failure in ``apply_in_txn`` (a bug) aborts the group and fails
every item in it: nothing half-written becomes durable.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Protocol

import lmdb

from wal.codec import Record
from wal.log import Log

log = logging.getLogger(__name__)


@dataclass(slots=True)
class Draft:
    """A record to append: the primary decides LSN, ts and epoch at append time."""

    type: str
    actor: str
    body: dict[str, Any]


@dataclass(slots=True)
class Replicated:
    """Records made by another node, appended verbatim after verification (replica path)."""

    records: list[Record]


@dataclass(slots=True)
class Truncate:
    """Drop log records before ``lsn`` (retention), in the writer's own transaction."""

    lsn: int
    removed: int = 0


class Handler(Protocol):
    def prepare(self, txn: lmdb.Transaction, item: Any) -> list[Draft]: ...
    def apply_in_txn(self, txn: lmdb.Transaction, record: Record) -> None: ...
    def after_commit(self, records: list[Record]) -> None: ...


@dataclass(slots=True)
class _Job:
    item: Any
    size: int
    future: concurrent.futures.Future[list[Record]] = field(
        default_factory=concurrent.futures.Future
    )
    records: list[Record] = field(default_factory=list)
    error: BaseException | None = None


@dataclass(slots=True)
class GroupStats:
    groups: int = 0
    records: int = 0
    last_group_size: int = 0
    last_commit_seconds: float = 0.0


class Writer:
    def __init__(
        self,
        log_: Log,
        handler: Handler,
        *,
        max_group: int = 1024,
        max_group_bytes: int = 64 * 1024 * 1024,
        on_group: Any = None,
    ) -> None:
        self.log = log_
        self.handler = handler
        self.max_group = max_group
        self.max_group_bytes = max_group_bytes
        self.stats = GroupStats()
        self._on_group = on_group  # callback(group_size, seconds) for metrics
        self._queue: deque[_Job] = deque()
        self._cond = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="wal-writer", daemon=True)
        self._thread.start()

    # -- submitting ----------------------------------------------------------------------------
    def submit(self, item: Any, size: int = 0) -> concurrent.futures.Future[list[Record]]:
        job = _Job(item, size)
        with self._cond:
            if self._stopping:
                raise RuntimeError("the log writer is stopped")
            self._queue.append(job)
            self._cond.notify()
        return job.future

    async def submit_async(self, item: Any, size: int = 0) -> list[Record]:
        return await asyncio.wrap_future(self.submit(item, size))

    def close(self) -> None:
        """Finish what is queued, then stop the thread."""
        with self._cond:
            self._stopping = True
            self._cond.notify()
        self._thread.join()

    # -- the thread ----------------------------------------------------------------------------
    def _take(self) -> list[_Job] | None:
        with self._cond:
            while not self._queue and not self._stopping:
                self._cond.wait()
            if not self._queue:
                return None
            group = [self._queue.popleft()]
            size = group[0].size
            while self._queue and len(group) < self.max_group:
                if size + self._queue[0].size > self.max_group_bytes:
                    break
                job = self._queue.popleft()
                size += job.size
                group.append(job)
            return group

    def _run(self) -> None:
        while True:
            group = self._take()
            if group is None:
                # last words on the writer thread: transactions it opened must end here
                stopping = getattr(self.handler, "stopping", None)
                if stopping is not None:
                    stopping()
                return
            try:
                self._commit(group)
            except BaseException as exc:  # a bug in apply, or LMDB failing: fail the group
                log.exception("log group failed; nothing of it was committed")
                aborted = getattr(self.handler, "aborted", None)
                if aborted is not None:
                    aborted()
                for job in group:
                    if not job.future.done():
                        job.future.set_exception(exc)

    def _commit(self, group: list[_Job]) -> None:
        t0 = time.perf_counter()
        while True:
            self.log.begin()
            txn = self.log.env.env.begin(write=True)
            try:
                for job in group:
                    job.records, job.error = [], None
                    self._one(txn, job)
                txn.commit()
                break
            except lmdb.MapFullError:
                self.log.aborted()
                self.log.env.grow(before=txn.abort)  # abort with the readers held off
                log.info("log map grown to %d bytes", self.log.env.map_size())
            except BaseException:
                txn.abort()
                self.log.aborted()
                raise
        records = [r for job in group for r in job.records]
        elapsed = time.perf_counter() - t0
        self.stats.groups += 1
        self.stats.records += len(records)
        self.stats.last_group_size = len(group)
        self.stats.last_commit_seconds = elapsed
        if self._on_group is not None:
            # the group is durable: an observer's failure must neither fail its requests nor
            # keep the tail below (``committed`` not running would wedge every later append)
            try:
                self._on_group(len(group), len(records), elapsed)
            except Exception:
                log.exception("group observer failed")
        try:
            # called even for a group whose every item was refused: the handler may hold
            # per-group state (the engine's auth transaction) to close
            self.handler.after_commit(records)
        finally:
            # The new tail becomes visible (last_lsn, wait_for, the replication stream) only once
            # the group is applied everywhere, indexes included: a read that waited for an LSN
            # then finds it in search too.
            self.log.committed()
            for job in group:
                if isinstance(job.item, Truncate) and job.error is None and job.item.removed:
                    self.log.truncated(job.item.lsn)
                if job.error is not None:
                    job.future.set_exception(job.error)
                else:
                    job.future.set_result(job.records)

    def _one(self, txn: lmdb.Transaction, job: _Job) -> None:
        item = job.item
        if isinstance(item, Truncate):
            item.removed = self.log.truncate_in_txn(txn, item.lsn)
            return
        if isinstance(item, Replicated):
            for rec in item.records:
                self.log.append_record(txn, rec)
                self.handler.apply_in_txn(txn, rec)
                job.records.append(rec)
            return
        try:
            drafts = self.handler.prepare(txn, item)
        except lmdb.MapFullError:
            raise
        except Exception as exc:  # the item is refused; the rest of the group goes on
            job.error = exc
            return
        for d in drafts:
            rec = self.log.append(txn, d.type, d.actor, d.body)
            self.handler.apply_in_txn(txn, rec)
            job.records.append(rec)
