"""The group commit: one thread owns every write of the data directory, and this module reads
top to bottom in the order a group goes through it.

Callers put items on a queue and get a future: a ``Command`` (from a handler or a tool),
``Replicated`` (records made by another node: a replica's stream, a restore), or ``Truncate``
(retention). The thread takes everything waiting (bounded by count and bytes) and for the
whole group:

    0. level   the auth projection is caught up from the log if an earlier commit of its
               file failed (``AuthStage.level``); until it is, auth commands are refused 503
    1. gate    a replica refuses commands (``NotPrimary``), readonly mode refuses every
               event type that is not ``readonly_ok`` (``ReadOnly``): the one place for both
    2. decide  the command against the state in this transaction (it sees the effects of
               the group's earlier items) -> typed events, every default resolved
    3. append  each event as a record (``wal.Log.append``; a replicated record is verified
               and appended as it is)
    4. apply   the data store, in the same transaction; the auth store, in its own file's
               transaction opened for the group
    5. commit  one fsync for the group; then the auth file's transaction
    6. project the in-memory indexes fold the group (a failure there is contained and
               repaired: ``IndexProjection.apply_group``); vector writes are staged there,
               and the HNSW graphs take them behind (``jade.indexes.follow``)
    7. publish the new tail becomes visible (``Log.committed``: last_lsn, wait_for, the
               replication stream) and every request's future is resolved

A command refused in 1-2 fails alone; the rest of the group goes on. A full map aborts the
transaction, grows the map and redoes the group from the start (so decide writes nothing
itself). Any other failure before the commit (a bug, LMDB failing) aborts the group and fails
every item: nothing half-written becomes durable. Nothing after the commit can fail a request:
the group is durable, and each projection that could not follow is behind and caught up from
the log, its applied LSN moving only over records it has applied, in order.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import lmdb

from jade import events as ev
from jade import faults
from jade.auth.decide import decide_auth
from jade.core.decide import Command, Defaults, decide
from jade.engine.replay import Entry, replay
from jade.errors import JadeError, NotPrimary, ReadOnly, Unavailable
from jade.text.projection import IDLE_STEP_DOCS, IDLE_STEP_SECONDS
from wal.codec import Record

if TYPE_CHECKING:
    from jade.engine import Engine

log = logging.getLogger(__name__)


def refuse_writes(role: str, mode: str, readonly_ok: bool, primary: str | None) -> None:
    """The one rule of refused writes: a replica refuses every one (``NotPrimary``, naming the
    primary); readonly mode refuses every one that is not ``readonly_ok`` (``ReadOnly``). The
    gate applies it per command inside the group's transaction (authoritative); admission
    applies it per route before the handler runs, so the answer cannot depend on the input."""
    if role == "replica":
        raise NotPrimary("this node is a read replica; send writes to the primary",
                         primary=primary)
    if not readonly_ok and mode == "readonly":
        raise ReadOnly("the server is in readonly mode; writes are refused")


@dataclass(slots=True)
class Replicated:
    """Records made by another node, appended verbatim after verification (replica, restore)."""

    records: list[Record]


@dataclass(slots=True)
class Truncate:
    """Drop log records before ``lsn`` (retention), in the writer's own transaction."""

    lsn: int
    removed: int = 0


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


class AuthStage:
    """The auth store's side of a group: a write transaction of its own file, opened by the
    group's first auth command or record and committed right after the log's commit.

    ``applied`` is the LSN up to which the auth store has folded every record (durably, or
    with nothing of auth in the records since). A failed commit of the auth file leaves it
    where it was: the store is behind, and ``level`` replays the log into it before any
    further auth event is applied, so no acknowledged auth change is ever skipped."""

    def __init__(self, engine: Engine) -> None:
        self.e = engine
        self.applied = engine.auth.applied_lsn()
        self.txn: lmdb.Transaction[bytes] | None = None
        self.behind: str | None = None  # why the auth store is behind the log (None: level)
        self.failures = 0  # commits of the auth file that failed after the log's

    def level(self) -> bool:
        """Catch the auth store up to the log's committed tail. Whether it is level."""
        last = self.e.log.last_lsn
        if self.applied >= last:
            return True
        try:
            replay(self.e.log, self.e.auth)
        except Exception as exc:
            if self.behind is None:
                log.exception("auth store cannot catch up with the log")
            self.behind = f"{type(exc).__name__}: {exc}"
            self.applied = self.e.auth.applied_lsn()
            return False
        self.applied = last
        if self.behind is not None:
            log.warning("auth store caught up with the log at LSN %d", last)
        self.behind = None
        return True

    def settle(self) -> int:
        """Make the auth file's durable applied LSN its in-memory one (the groups since its
        last commit held nothing of auth, so nothing else is written), and return it: the log
        before it is no longer needed by the auth store. Truncation keeps everything after."""
        if self.behind is None and self.txn is None and self.e.auth.applied_lsn() < self.applied:
            assert self.e.auth_env is not None
            applied = self.applied
            self.e.auth_env.write(lambda txn: self.e.auth.set_applied(txn, applied))
        return self.e.auth.applied_lsn()

    def open(self) -> lmdb.Transaction[bytes]:
        if self.behind is not None:
            raise Unavailable("the auth store is behind the log (a commit of its file failed); "
                              "auth changes are refused until it catches up: retry")
        if self.txn is None:
            assert self.e.auth_env is not None
            self.txn = self.e.auth_env.env.begin(write=True)
        return self.txn

    def abort(self) -> None:
        if self.txn is not None:
            self.txn.abort()
        self.txn = None

    def grow(self) -> None:
        assert self.e.auth_env is not None
        # the abort runs with the auth env's readers held off (see ``Env.grow``)
        self.e.auth_env.grow(before=self.abort)

    def commit(self, first: int, last: int) -> None:
        """After the log's commit of records ``first..last``."""
        txn, self.txn = self.txn, None
        if txn is None:
            if self.behind is None and self.applied == first - 1:
                self.applied = last  # nothing of auth in them
            return
        try:
            self.e.auth.set_applied(txn, last)
            faults.hit("auth.commit")
            txn.commit()
        except Exception as exc:
            try:
                txn.abort()
            except lmdb.Error:
                pass  # a commit that failed has already ended the transaction
            self.failures += 1
            self.behind = f"{type(exc).__name__}: {exc}"
            log.exception("auth store commit failed after the log's (LSN %d-%d); the auth "
                          "store is behind and catches up from the log", first, last)
            self.level()
            return
        finally:
            self.e.auth.version += 1  # permission decisions cached before the commit expire
        self.applied = last


class Writer:
    """The thread and its queue; ``_commit`` is the pipeline of the module doc."""

    def __init__(self, engine: Engine, *, max_group: int = 1024,
                 max_group_bytes: int = 64 * 1024 * 1024,
                 on_group: Callable[[int, int, float], None] | None = None) -> None:
        self.e = engine
        self.log = engine.log
        self.defaults = Defaults(hnsw={
            "M": engine.settings.hnsw_m,
            "efConstruction": engine.settings.hnsw_ef_construction,
            "efSearch": engine.settings.hnsw_ef_search,
        })
        self.auth = AuthStage(engine)
        self.max_group = max_group
        self.max_group_bytes = max_group_bytes
        self.stats = GroupStats()
        self._on_group = on_group
        self._queue: deque[_Job] = deque()
        self._free = 0  # free bytes on the disk, measured at the start of the current group
        self._cond = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="wal-writer", daemon=True)
        self._thread.start()

    # -- submitting -------------------------------------------------------------------------
    def submit(self, item: Any, size: int = 0) -> concurrent.futures.Future[list[Record]]:
        job = _Job(item, size)
        with self._cond:
            if self._stopping:
                raise RuntimeError("the log writer is stopped")
            self._queue.append(job)
            self._cond.notify()
        return job.future

    def poke(self) -> None:
        """Wake an idle writer (a projection just fell behind: it repairs it now)."""
        with self._cond:
            self._cond.notify()

    async def submit_async(self, item: Any, size: int = 0) -> list[Record]:
        return await asyncio.wrap_future(self.submit(item, size))

    def close(self) -> None:
        """Finish what is queued, then stop the thread."""
        with self._cond:
            self._stopping = True
            self._cond.notify()
        self._thread.join()

    def _take(self) -> list[_Job] | None:
        with self._cond:
            while not self._queue and not self._stopping:
                if self._building():
                    return []  # idle: a step of a text index build (``jade.text.projection``)
                # a projection behind the log is retried every second while idle
                self._cond.wait(1.0 if self._repairing() else None)
                if self._repairing() and not self._queue:
                    return []
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

    def _repairing(self) -> bool:
        return (self.auth.behind is not None or bool(self.e.indexes.failed)
                or (self.e.text is not None and self.e.text.behind is not None))

    def _building(self) -> bool:
        return self.e.text is not None and self.e.text.wants_step()

    def _build_step(self, idle: bool = False) -> None:
        """A bounded step of the text index builds, cut short once writes are waiting (they
        wait for one read chunk of it at most); the build moves on while the writer is idle
        or busy (``jade.text.projection``)."""
        if self._building():
            assert self.e.text is not None

            def waiting() -> bool:
                return bool(self._queue)

            if idle:
                self.e.text.build_step(IDLE_STEP_SECONDS, IDLE_STEP_DOCS, waiting)
            else:
                self.e.text.build_step(interrupt=waiting)

    def _run(self) -> None:
        while True:
            group = self._take()
            if group is None:
                self.auth.abort()  # transactions the thread opened end on the thread
                return
            try:
                self._commit(group)
            except BaseException as exc:  # a full disk, LMDB failing, or a bug in decide/apply
                error: BaseException = exc
                refused = self.e.disk.failed(exc)
                if refused is not None:
                    error = refused  # counted and logged once by the disk watch
                elif not isinstance(exc, JadeError):  # a refusal of the whole group is not
                    log.exception("log group failed before its commit; nothing of it is durable")
                self.auth.abort()
                for job in group:
                    if not job.future.done():
                        job.future.set_exception(error)

    # -- the pipeline -----------------------------------------------------------------------
    def _commit(self, group: list[_Job]) -> None:
        t0 = time.perf_counter()
        self.auth.level()  # 0. level
        if not group:  # idle: retry what is behind (on this thread the store cannot move)
            if self.e.indexes.failed:
                self.e.indexes.repair()
            if self.e.text is not None and self.e.text.behind is not None:
                self.e.text.repair()
            self._build_step(idle=True)
            return
        while True:
            self._free = self.e.disk.free()  # once per group: the gate weighs each write by it
            self.log.begin()
            txn = self.log.env.env.begin(write=True)
            staged: list[Entry] = []
            try:
                for job in group:
                    job.records, job.error = [], None
                    self._one(txn, job, staged)
                txn.commit()  # 5. commit: one fsync for the group
                self.e.disk.committed()
                break
            except lmdb.MapFullError:
                self.log.aborted()
                self.auth.abort()
                self.log.env.grow(before=txn.abort)  # abort with the readers held off
                log.info("log map grown to %d bytes", self.log.env.map_size())
            except BaseException:
                txn.abort()
                self.log.aborted()
                self.auth.abort()
                raise
        if any(event.is_catalog for _, event in staged):
            self.e.store.catalog_version += 1  # after the commit: see database_cached
        try:
            if staged:
                self.auth.commit(staged[0][0].lsn, staged[-1][0].lsn)
            else:
                self.auth.abort()  # every auth command of the group was refused
        except Exception as exc:  # commit() contains its own failures; a bug must not hide
            log.exception("auth store step after a commit failed; catching up from the log")
            self.auth.abort()
            self.auth.behind = f"{type(exc).__name__}: {exc}"
            self.auth.applied = self.e.auth.applied_lsn()
        try:
            self.e.indexes.apply_group(staged)  # 6. project
        except Exception as exc:  # apply_group contains its own failures; a bug must not hide
            log.exception("index step after a commit failed; the databases of the group are "
                          "rebuilt from the store")
            self.e.indexes.mark_failed({e.db_id for _, e in staged if e.touches_index
                                        and e.db_id is not None},
                                       f"{type(exc).__name__}: {exc}")
        if self.e.text is not None:
            self.e.text.apply_group(staged)  # 6. project: the text indexes (contained too)
        elapsed = time.perf_counter() - t0
        self.stats.groups += 1
        self.stats.records += len(staged)
        self.stats.last_group_size = len(group)
        self.stats.last_commit_seconds = elapsed
        if self._on_group is not None:
            try:
                self._on_group(len(group), len(staged), elapsed)
            except Exception:
                log.exception("group observer failed")
        # 7. publish: a read that waited for an LSN then finds it in search too
        self.log.committed()
        for job in group:
            if isinstance(job.item, Truncate) and job.error is None and job.item.removed:
                self.log.truncated(job.item.lsn)
            if job.error is not None:
                job.future.set_exception(job.error)
            else:
                job.future.set_result(job.records)
        self._build_step()  # after the group's answers: they do not wait for it

    def _one(self, txn: lmdb.Transaction[bytes], job: _Job, staged: list[Entry]) -> None:
        item = job.item
        if isinstance(item, Truncate):
            # never past what the auth store still has to fold (a start-up replays it)
            item.lsn = min(item.lsn, self.auth.settle() + 1)
            if self.e.text is not None:  # nor past what the text indexes' file has folded
                item.lsn = min(item.lsn, self.e.text.settle() + 1)
            item.removed = self.log.truncate_in_txn(txn, item.lsn)
            return
        if isinstance(item, Replicated):
            self.e.disk.check(job.size, self._free)  # fails the group: the records go in order
            for rec in item.records:
                event = ev.of(rec)  # a body that does not fit fails the group, before commit
                self.log.append_record(txn, rec)  # 3. verified: LSN, epoch, checksum chain
                self._apply(txn, rec, event, staged, replicated=True)
                job.records.append(rec)
            return
        cmd: Command = item
        try:
            self._gate(txn, cmd)  # 1. gate
            events = self._decide(txn, cmd)  # 2. decide
        except lmdb.MapFullError:
            raise
        except Exception as exc:  # the item is refused; the rest of the group goes on
            job.error = exc
            return
        for event in events:
            if isinstance(event, ev.SystemPromote):
                # the new epoch applies to this record and every one after it (fencing)
                self.log.set_epoch(txn, event.epoch)
            rec = self.log.append(txn, event.type, cmd.actor, event.body())  # 3. append
            self._apply(txn, rec, event, staged, replicated=False)
            job.records.append(rec)

    def _gate(self, txn: lmdb.Transaction[bytes], cmd: Command) -> None:
        cls = ev.EVENTS.get(cmd.type)
        readonly_ok = cls is not None and cls.readonly_ok
        refuse_writes(self.e.role, self.e.store.mode(txn), readonly_ok,
                      self.e.leader_url or self.e.settings.primary_url)
        if self.e.write_fence is not None:
            self.e.write_fence()  # a primary whose lease is lost writes nothing
        if not readonly_ok:  # administrative records pass the reserve (a few bytes)
            self.e.disk.check(cmd.size, self._free)
            self._free -= 2 * cmd.size

    def _decide(self, txn: lmdb.Transaction[bytes], cmd: Command) -> list[ev.Event]:
        if cmd.type.startswith("auth."):
            try:
                return decide_auth(self.e.auth, self.auth.open(), cmd, self.e.store, txn)
            except lmdb.MapFullError:
                self.auth.grow()
                raise
        return decide(self.e.store, txn, cmd, self.defaults)

    def _apply(self, txn: lmdb.Transaction[bytes], rec: Record, event: ev.Event,
               staged: list[Entry], *, replicated: bool) -> None:
        """4. apply: the data store in the log's transaction, the auth store in its own."""
        self.e.store.apply(txn, rec, event)
        if event.is_auth and (not replicated or self.auth.behind is None):
            try:
                self.e.auth.apply(self.auth.open(), rec, event)
            except lmdb.MapFullError:
                self.auth.grow()
                raise
        staged.append((rec, event))
