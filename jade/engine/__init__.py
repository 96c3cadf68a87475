"""The engine: one data directory's log, its projections, and the one write path.

    handler -> Command -> Engine.submit -> commit.Writer (gate, decide, append, apply, commit,
                                                          project, publish: ``commit.py``)

Projections, each a fold of the log's events with the LSN it has applied:
  - ``store``   catalog + vectors (``jade.stores.data``), in the log's LMDB file and
                transaction: always level with the log after a commit;
  - ``auth``    users, keys, sessions, grants, blocks (``jade.auth.store``), its own file;
  - ``indexes`` the in-memory indexes (``jade.indexes.projection``), with checkpoints; the
                HNSW graphs take vector writes behind the acknowledgement (the index
                follower, ``jade.indexes.follow``), searches stay exact about them, and
                writes wait while too many are not in a graph yet (``index_room``).
On open, each catches up from its own applied LSN through ``replay.replay``.

One process owns a data directory: ``open`` takes its lock (``jade.datadir``), so a second
server or an offline tool that writes is refused while this one runs.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import lmdb

from jade import datadir
from jade import events as ev
from jade.auth.store import AuthStore
from jade.core.decide import Command
from jade.engine import integrity
from jade.engine.commit import Writer
from jade.engine.disk import Disk, out_of_space
from jade.engine.replay import replay
from jade.engine.sync import SyncReplication
from jade.errors import IndexBehind, RestoreIncomplete, Unavailable
from jade.indexes.projection import IndexProjection
from jade.settings import Settings
from jade.stores.data import DataStore
from jade.text.projection import TextProjection
from wal.codec import Record
from wal.lmdbenv import Env
from wal.log import Log

log = logging.getLogger(__name__)

# commands whose records stage vectors for the index follower: they wait for room (index_room)
VECTOR_WRITES = frozenset({ev.VecUpsert.type, ev.VecDelete.type})

# The LSN of the last record the current request wrote (0: none); the HTTP layer returns it as
# the ``X-LSN`` header so clients can ask a replica for read-your-writes (``X-Min-LSN``).
written_lsn: contextvars.ContextVar[int] = contextvars.ContextVar("written_lsn", default=0)
# The LSN the current request's answer must see on ``replication.synchronous_replicas``
# replicas before it is sent (0: none): the last record of a command that is not
# ``readonly_ok`` (``jade.engine.sync``; the HTTP middleware waits for it).
sync_lsn: contextvars.ContextVar[int] = contextvars.ContextVar("sync_lsn", default=0)

# A restore fills its directory under this marker (``jade.backup.restore``) and replaces it by
# ``RESTORED`` once complete: a directory still holding it is never opened.
RESTORE_INCOMPLETE = "RESTORE_INCOMPLETE"


def text_dir(s: Settings) -> str:
    """Where the text projection's file lives: beside the index checkpoints' directory."""
    return os.path.join(os.path.dirname(os.path.abspath(s.index_dir)), "text")


def refuse_unfinished_restore(data_dir: str) -> None:
    """Raise ``RestoreIncomplete`` when ``data_dir`` holds an unfinished restore's marker."""
    path = os.path.join(data_dir, RESTORE_INCOMPLETE)
    if os.path.exists(path):
        raise RestoreIncomplete(
            f"{data_dir} is an unfinished restore: {path} is there, the restore into it did "
            "not finish (killed or failed); it must not be served: run the restore again (it "
            "removes this directory)", data_dir=data_dir)


@dataclass(slots=True)
class OpenReport:
    unclean: bool = False  # the previous run did not close (crash, kill -9)
    store_replayed: int = 0
    auth_replayed: int = 0
    index: dict[str, Any] = field(default_factory=dict)
    text: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    last_lsn: int = 0


class Engine:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.env: Env | None = None
        self.log: Log
        self.store: DataStore
        self.indexes: IndexProjection
        self.text: TextProjection | None = None
        self.auth_env: Env | None = None
        self.auth: AuthStore
        self.writer: Writer | None = None
        self.report = OpenReport()
        self.group_observers: list[Any] = []
        # "primary", or "replica" while following settings.primary_url (set by the follower)
        self.role = "primary"
        # with a coordinator (replica.cluster): raises NotPrimary once this node may no longer
        # acknowledge writes (its leader lease is lost or not renewed in time); checked by the
        # writer before a command is written and again when its records are acknowledged
        self.write_fence: Callable[[], None] | None = None
        self.leader_url = ""  # the primary's URL as the coordinator says (refusals name it)
        # synchronous replication: the replicas' confirmed positions and the writes waiting
        self.sync = SyncReplication(settings.synchronous_replicas, settings.synchronous_names,
                                    settings.synchronous_timeout_seconds)
        self.started_at = time.time()
        self.refused_index_behind = 0  # writes refused while the graphs were too far behind
        self._lock: datadir.DataDirLock | None = None
        self.disk = Disk(os.path.dirname(os.path.abspath(settings.db_path)) if settings.db_path
                         else settings.data_dir, settings.reserve_bytes)

    # -- life cycle -------------------------------------------------------------------------
    def open(self, *, restoring: bool = False) -> OpenReport:
        """``restoring``: only for the restore filling this directory (under its marker)."""
        t0 = time.perf_counter()
        s = self.settings
        self._lock = datadir.hold(s.data_dir, "jade engine")
        try:
            if not restoring:
                refuse_unfinished_restore(s.data_dir)
            return self._open(t0)
        except BaseException:
            self._release()
            raise

    def _open(self, t0: float) -> OpenReport:
        s = self.settings
        os.makedirs(s.data_dir, exist_ok=True)
        self._marker = s.db_path + ".running"
        self.report.unclean = os.path.exists(self._marker)
        try:
            with open(self._marker, "w") as fh:
                fh.write(str(os.getpid()))
        except OSError as exc:  # a full disk: the next start cannot tell a crash, says so
            log.warning("%s not written (%s): a crash of this run will not be reported as "
                        "one at the next start", self._marker, exc)
        self.env = Env(s.db_path, map_size=s.initial_map_bytes)
        self.log = Log(self.env)
        self.store = DataStore(self.env)
        if self.store.upgrade() < 2:
            log.info("data store upgraded to the typed events' schema (index parameters "
                     "complete, as the upgraded records say)")
        # the store shares the log's transactions: behind only after a restore or re-seed
        self.report.store_replayed = replay(self.log, self.store)
        self.auth_env = Env(s.auth_db_path, map_size=min(s.initial_map_bytes, 16 << 20))
        self.auth = AuthStore(self.auth_env)
        integrity.check_open(s, self.log, self.store, self.auth)  # before anything is served
        auth_behind = self._replay_auth()
        self.indexes = IndexProjection(self.store, s.index_dir, threads=s.index_threads)
        self.report.index = self.indexes.open(self.log)
        self.text = TextProjection(self.store, text_dir(s))
        self.report.text = self.text.open(self.log)
        self.writer = Writer(self, max_group=s.max_group_records, on_group=self._on_group)
        self.indexes.on_failure.append(lambda _db, _why: self._poke_writer())
        if s.index_lag_max_vectors > 0:
            self.indexes.start_follower()
        if auth_behind is not None:
            self.writer.auth.behind = auth_behind
        elif self.writer.auth.applied < self.log.last_lsn:
            self.writer.auth.applied = self.log.last_lsn  # level in memory (_replay_auth)
        self.report.seconds = time.perf_counter() - t0
        self.report.last_lsn = self.log.last_lsn
        return self.report

    def _replay_auth(self) -> str | None:
        """Catch the auth store up with the log. On a full disk (its file cannot take the
        commit) a start still serves: when the records it misses hold nothing of auth (a stop
        that could not record its applied LSN), the store is exact and only that LSN is
        stale; it is recorded once the disk takes it. Otherwise the store is behind (returned:
        why), readiness says so and the writer catches it up once space is freed."""
        try:
            self.report.auth_replayed = replay(self.log, self.auth)
            return None
        except Exception as exc:
            if not out_of_space(exc, self.disk.path):
                raise
            missing = sum(1 for rec in self.log.iterate(self.auth.applied_lsn())
                          if rec.type in ev.AUTH_TYPES)
            log.warning("auth store not caught up with the log at start (%s): %s", exc,
                        f"{missing} auth record(s) not applied yet" if missing else
                        "no auth record is missing; its applied LSN is recorded later")
            self.disk.full = self.disk.full or f"the start could not write: {exc}"
            return f"{missing} auth record(s) not applied: {exc}" if missing else None

    def close(self, checkpoint: bool = True) -> None:
        auth_level = False  # unknown without the writer: start-up scans from the durable LSN
        if self.writer is not None:
            self.writer.close()
            auth_level = self.writer.auth.level()
            self.writer = None
        if self.env is not None:
            self.indexes.stop_follower()  # what it has not folded, the checkpoint folds
        if checkpoint and self.env is not None:
            try:
                self.indexes.checkpoint()
            except OSError as exc:  # a full disk: the stop is still clean, the log durable
                log.warning("index checkpoint at stop failed (%s); the next start replays the "
                            "log after the previous checkpoint", exc)
        if self.text is not None:
            self.text.close(checkpoint=checkpoint)
            self.text = None
        if self.auth_env is not None:
            if auth_level and self.env is not None:
                # every record up to the tail is folded (the ones since the last auth commit
                # held nothing of auth): a start-up need not scan them again
                last = self.log.last_lsn
                try:
                    self.auth_env.write(lambda txn: self.auth.set_applied(txn, last))
                except lmdb.Error as exc:  # a full disk: the next start scans a little more
                    log.warning("auth store's applied LSN not recorded at stop (%s)", exc)
            self.auth_env.sync()
            self.auth_env.close()
            self.auth_env = None
        if self.env is not None:
            self.env.sync()
            self.env.close()
            self.env = None
            try:
                os.remove(self._marker)
            except OSError:
                pass
        self._release()

    def _release(self) -> None:
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    # -- writes ------------------------------------------------------------------------------
    async def submit(self, cmd: Command) -> list[Record]:
        """Append the command's records durably and apply them. Raises the command's refusal
        (``NotFound``, ``ReadOnly``, ``NotPrimary``...) without writing anything."""
        if self.writer is None:
            raise Unavailable("the server is shutting down")
        if cmd.type in VECTOR_WRITES:
            await self.index_room()
        records = await self.writer.submit_async(cmd, cmd.size)
        if self.write_fence is not None:
            self.write_fence()  # acknowledged only within the lease (queued, then committed)
        if records:
            written_lsn.set(records[-1].lsn)
            if cmd.type not in ev.READONLY_OK_TYPES:  # logins, logouts, steering: no wait
                sync_lsn.set(records[-1].lsn)
            elif cmd.type == ev.SystemPromote.type:
                self.sync.reset()  # a new term: replicas' earlier positions do not count
        return records

    async def index_room(self, wait: float | None = None) -> None:
        """Wait while the graphs are more than ``index_lag_max_vectors`` vectors behind (the
        searches' exact scan of what they have not taken grows with it); after
        ``index_lag_wait_seconds`` (or ``wait``) refuse with ``IndexBehind`` (503,
        Retry-After). ``wait`` < 0: wait as long as it takes (a replica's stream)."""
        bound = self.settings.index_lag_max_vectors
        if bound <= 0 or self.indexes.lag_vectors() < bound:
            return
        limit = self.settings.index_lag_wait_seconds if wait is None else wait
        t0 = time.monotonic()
        while self.indexes.lag_vectors() >= bound:
            if 0 <= limit <= time.monotonic() - t0:
                self.refused_index_behind += 1
                _, seconds, vectors = self.indexes.lag()
                raise IndexBehind(
                    f"{vectors} written vectors are not in the search index yet (the "
                    f"index.lag_max_vectors setting is {bound}; the oldest was written "
                    f"{seconds:.1f} s ago): writes are refused until it catches up, retry",
                    retry_after=max(1, int(seconds) or 1), lag_vectors=vectors)
            await asyncio.sleep(0.005)

    def index_room_sync(self) -> None:
        """``index_room`` for a tool without an event loop (a restore): waits as long as it
        takes."""
        bound = self.settings.index_lag_max_vectors
        while bound > 0 and self.indexes.lag_vectors() >= bound:
            time.sleep(0.005)

    def _poke_writer(self) -> None:
        if self.writer is not None:
            self.writer.poke()  # an idle writer repairs a failed index now, not at the next write

    def submit_sync(self, cmd: Command) -> list[Record]:
        """For tools and tests without an event loop."""
        if self.writer is None:
            raise Unavailable("the engine is closed")
        return self.writer.submit(cmd, cmd.size).result()

    def mode(self) -> str:
        return self.store.mode_cached()

    def projections_behind(self) -> dict[str, str]:
        """Projections that do not serve the log's state now, and why (empty: all level)."""
        out: dict[str, str] = {}
        if self.writer is not None and self.writer.auth.behind is not None:
            out["auth"] = self.writer.auth.behind
        for db_id, why in dict(self.indexes.failed).items():  # a copy: the writer changes it
            out[f"index {db_id}"] = why
        if self.text is not None and self.text.behind is not None:
            out["text"] = self.text.behind
        return out

    def projection_failures(self) -> dict[str, int]:
        """Committed records each projection could not apply, since this engine opened."""
        auth = self.writer.auth.failures if self.writer is not None else 0
        text = self.text.failures if self.text is not None else 0
        return {"index": self.indexes.failures, "auth": auth, "text": text}

    def _on_group(self, requests: int, records: int, seconds: float) -> None:
        for fn in self.group_observers:
            fn(requests, records, seconds)
