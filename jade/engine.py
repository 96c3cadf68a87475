"""The engine: the one write path (``submit``) and the projections it keeps in step.

    handler -> Command -> Engine.submit -> writer thread:
        decide (checks against the state in the transaction) -> log.append -> store.apply
        commit (one fsync per group) -> indexes.apply -> future resolved with the records

On open, every projection catches up from its own applied LSN: the data store (same LMDB file
as the log) from ``applied_lsn``, the indexes from their checkpoints.
"""

from __future__ import annotations

import contextvars
import logging
import os
import time
from dataclasses import dataclass, field
from typing import Any

import lmdb

from jade.auth.decide import READONLY_ALLOWED as AUTH_READONLY_ALLOWED
from jade.auth.decide import decide_auth
from jade.auth.store import AUTH_TYPES, AuthStore
from jade.core.decide import Command, decide
from jade.errors import NotPrimary, ReadOnly, Unavailable
from jade.indexes.manager import IndexManager
from jade.settings import Settings
from jade.stores.data import CATALOG_TYPES, DataStore
from wal.codec import Record
from wal.lmdbenv import Env
from wal.log import Log
from wal.writer import Draft, Writer

log = logging.getLogger(__name__)

# The LSN of the last record the current request wrote (0: none); the HTTP layer returns it as
# the ``X-LSN`` header so clients can ask a replica for read-your-writes (``X-Min-LSN``).
written_lsn: contextvars.ContextVar[int] = contextvars.ContextVar("written_lsn", default=0)


@dataclass(slots=True)
class OpenReport:
    unclean: bool = False  # the previous run did not close (crash, kill -9)
    store_replayed: int = 0
    auth_replayed: int = 0
    index: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    last_lsn: int = 0


class Engine:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.env: Env | None = None
        self.log: Log
        self.store: DataStore
        self.indexes: IndexManager
        self.auth_env: Env | None = None
        self.auth: AuthStore
        self.writer: Writer | None = None
        self.report = OpenReport()
        self.group_observers: list[Any] = []
        # "primary", or "replica" while following settings.primary_url (set by the follower)
        self.role = "primary"
        self.started_at = time.time()

    # -- life cycle -------------------------------------------------------------------------
    def open(self) -> OpenReport:
        t0 = time.perf_counter()
        s = self.settings
        os.makedirs(s.data_dir, exist_ok=True)
        self._marker = s.db_path + ".running"
        self.report.unclean = os.path.exists(self._marker)
        with open(self._marker, "w") as fh:
            fh.write(str(os.getpid()))
        self.env = Env(s.db_path, map_size=s.initial_map_bytes)
        self.log = Log(self.env)
        self.store = DataStore(self.env)
        self.report.store_replayed = self._catch_up_store()
        self.auth_env = Env(s.auth_db_path, map_size=min(s.initial_map_bytes, 16 << 20))
        self.auth = AuthStore(self.auth_env)
        self.report.auth_replayed = self._catch_up_auth()
        self.indexes = IndexManager(self.store, s)
        self.report.index = self.indexes.open(self.log)
        self.writer = Writer(
            self.log, _Handler(self), max_group=s.max_group_records, on_group=self._on_group
        )
        self.report.seconds = time.perf_counter() - t0
        self.report.last_lsn = self.log.last_lsn
        return self.report

    def _catch_up_store(self) -> int:
        """Apply log records the store has not seen (none after a normal crash: they share a
        transaction; some after a restore that brought the log further than the store)."""
        applied = self.store.applied_lsn()
        if applied >= self.log.last_lsn:
            return 0
        n = 0
        for chunk in _chunks(self.log.iterate(applied, verify=True), 1024):

            def body(txn: lmdb.Transaction, chunk: list[Record] = chunk) -> None:
                for rec in chunk:
                    self.store.apply(txn, rec)

            self.env.write(body)  # type: ignore[union-attr]
            n += len(chunk)
        return n

    def _catch_up_auth(self, upto: int | None = None) -> int:
        """Apply the auth records after the auth store's applied LSN (after a crash between the
        log commit and the auth store's own commit, or a restore), up to ``upto`` (default: the
        log's tail)."""
        applied = self.auth.applied_lsn()
        last = self.log.last_lsn if upto is None else upto
        if applied >= last:
            return 0
        n = 0
        for chunk in _chunks(self.log.iterate(applied, upto=last, verify=True), 1024):
            todo = [r for r in chunk if r.type in AUTH_TYPES]

            def body(txn: lmdb.Transaction, todo: list[Record] = todo,
                     last: int = chunk[-1].lsn) -> None:
                for rec in todo:
                    self.auth.apply(txn, rec)
                txn.put(b"applied_lsn", last.to_bytes(8, "big"), db=self.auth.db["sys"])

            self.auth_env.write(body)  # type: ignore[union-attr]
            n += len(todo)
        return n

    def close(self, checkpoint: bool = True) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
        if checkpoint and self.env is not None:
            self.indexes.checkpoint()
        if self.auth_env is not None:
            last = self.log.last_lsn
            # everything up to ``last`` is applied: start-up need not rescan it
            self.auth_env.write(
                lambda txn: txn.put(b"applied_lsn", last.to_bytes(8, "big"),
                                    db=self.auth.db["sys"])
            )
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

    # -- writes ------------------------------------------------------------------------------
    async def submit(self, cmd: Command) -> list[Record]:
        """Append the command's records durably and apply them. Raises the command's refusal
        (``NotFound``, ``ReadOnly``...) without writing anything."""
        if self.writer is None:
            raise Unavailable("the server is shutting down")
        if self.role == "replica":
            raise NotPrimary("this node is a read replica; send writes to the primary",
                             primary=self.settings.primary_url)
        if (cmd.type != "system.mode" and cmd.type not in AUTH_READONLY_ALLOWED
                and self.mode() == "readonly"):
            raise ReadOnly("the server is in readonly mode; writes are refused")
        records = await self.writer.submit_async(cmd, cmd.size)
        if records:
            written_lsn.set(records[-1].lsn)
        return records

    def submit_sync(self, cmd: Command) -> list[Record]:
        """For tools and tests without an event loop."""
        if self.writer is None:
            raise Unavailable("the engine is closed")
        return self.writer.submit(cmd, cmd.size).result()

    def mode(self) -> str:
        return self.store.mode_cached()

    def _on_group(self, requests: int, records: int, seconds: float) -> None:
        for fn in self.group_observers:
            fn(requests, records, seconds)


class _Handler:
    """The writer's view of the engine (see ``wal.writer.Handler``).

    Auth records go to a second LMDB file. Its write transaction is opened lazily by the first
    auth command or record of a group, tied to that group's data transaction, and committed
    right after the log's commit (a crash in between is repaired by ``_catch_up_auth``). A
    group that is aborted or retried shows up here as a new data transaction: the stale auth
    transaction is aborted then. A full auth map grows that map and asks the writer to redo
    the group (by re-raising ``MapFullError``).
    """

    def __init__(self, engine: Engine) -> None:
        self.e = engine
        self._atxn: lmdb.Transaction | None = None
        self._for: lmdb.Transaction | None = None

    def _auth_txn(self, txn: lmdb.Transaction) -> lmdb.Transaction:
        if self._for is not txn:
            self._drop_auth_txn()
        if self._atxn is None:
            assert self.e.auth_env is not None
            self._atxn = self.e.auth_env.env.begin(write=True)
            self._for = txn
        return self._atxn

    def _drop_auth_txn(self) -> None:
        if self._atxn is not None:
            self._atxn.abort()
        self._atxn, self._for = None, None

    def _auth_full(self) -> None:
        assert self.e.auth_env is not None
        # the abort runs with the auth env's readers held off (see ``Env.grow``)
        self.e.auth_env.grow(before=self._drop_auth_txn)

    def prepare(self, txn: lmdb.Transaction, item: Command) -> list[Draft]:
        if item.type == "system.promote":
            # the new epoch applies to this record and every one after it (fencing)
            self.e.log.set_epoch(txn, int(item.body["epoch"]))
            return [Draft("system.promote", item.actor, dict(item.body))]
        if item.type.startswith("auth."):
            try:
                return decide_auth(self.e.auth, self._auth_txn(txn), item, self.e.store, txn)
            except lmdb.MapFullError:
                self._auth_full()
                raise
        return decide(self.e.store, txn, item)

    def apply_in_txn(self, txn: lmdb.Transaction, record: Record) -> None:
        self.e.store.apply(txn, record)
        if record.type in AUTH_TYPES:
            try:
                self.e.auth.apply(self._auth_txn(txn), record)
            except lmdb.MapFullError:
                self._auth_full()
                raise

    def aborted(self) -> None:
        self._drop_auth_txn()

    def stopping(self) -> None:
        self._drop_auth_txn()

    def after_commit(self, records: list[Record]) -> None:
        if self._atxn is not None and not records:
            self._drop_auth_txn()  # every auth command of the group was refused
        if self._atxn is not None:
            atxn, self._atxn, self._for = self._atxn, None, None
            try:
                atxn.commit()
            except lmdb.Error:
                log.exception("auth store commit failed; catching up from the log")
                # the group is durable in the log but not yet the visible tail
                self.e._catch_up_auth(upto=records[-1].lsn if records else None)
            self.e.auth.version += 1  # permission decisions cached before the commit expire
        if any(rec.type in CATALOG_TYPES for rec in records):
            self.e.store.catalog_version += 1  # after the commit: see DataStore.database_cached
        for rec in records:
            self.e.indexes.apply(rec)


def _chunks(it: Any, n: int) -> Any:
    buf: list[Any] = []
    for x in it:
        buf.append(x)
        if len(buf) >= n:
            yield buf
            buf = []
    if buf:
        yield buf
