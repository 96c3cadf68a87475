"""The engine: the one write path (``submit``) and the projections it keeps in step.

    handler -> Command -> Engine.submit -> writer thread:
        decide (checks against the state in the transaction) -> log.append -> store.apply
        commit (one fsync per group) -> indexes.apply -> future resolved with the records

On open, every projection catches up from its own applied LSN: the data store (same LMDB file
as the log) from ``applied_lsn``, the indexes from their checkpoints.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from typing import Any

import lmdb

from jade.core.decide import Command, decide
from jade.errors import ReadOnly, Unavailable
from jade.indexes.manager import IndexManager
from jade.settings import Settings
from jade.stores.data import DataStore
from wal.codec import Record
from wal.lmdbenv import Env
from wal.log import Log
from wal.writer import Draft, Writer

log = logging.getLogger(__name__)


@dataclass(slots=True)
class OpenReport:
    store_replayed: int = 0
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
        self.writer: Writer | None = None
        self.report = OpenReport()
        self.group_observers: list[Any] = []
        self.started_at = time.time()

    # -- life cycle -------------------------------------------------------------------------
    def open(self) -> OpenReport:
        t0 = time.perf_counter()
        s = self.settings
        os.makedirs(s.data_dir, exist_ok=True)
        self.env = Env(s.db_path, map_size=s.initial_map_bytes)
        self.log = Log(self.env)
        self.store = DataStore(self.env)
        self.report.store_replayed = self._catch_up_store()
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

    def close(self, checkpoint: bool = True) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
        if checkpoint and self.env is not None:
            self.indexes.checkpoint()
        if self.env is not None:
            self.env.sync()
            self.env.close()
            self.env = None

    # -- writes ------------------------------------------------------------------------------
    async def submit(self, cmd: Command) -> list[Record]:
        """Append the command's records durably and apply them. Raises the command's refusal
        (``NotFound``, ``ReadOnly``...) without writing anything."""
        if self.writer is None:
            raise Unavailable("the server is shutting down")
        if cmd.type != "system.mode" and self.mode() == "readonly":
            raise ReadOnly("the server is in readonly mode; writes are refused")
        return await self.writer.submit_async(cmd, cmd.size)

    def submit_sync(self, cmd: Command) -> list[Record]:
        """For tools and tests without an event loop."""
        if self.writer is None:
            raise Unavailable("the engine is closed")
        return self.writer.submit(cmd, cmd.size).result()

    def mode(self) -> str:
        return self.store.mode()

    def _on_group(self, requests: int, records: int, seconds: float) -> None:
        for fn in self.group_observers:
            fn(requests, records, seconds)


class _Handler:
    """The writer's view of the engine (see ``wal.writer.Handler``)."""

    def __init__(self, engine: Engine) -> None:
        self.e = engine

    def prepare(self, txn: lmdb.Transaction, item: Command) -> list[Draft]:
        return decide(self.e.store, txn, item)

    def apply_in_txn(self, txn: lmdb.Transaction, record: Record) -> None:
        self.e.store.apply(txn, record)

    def after_commit(self, records: list[Record]) -> None:
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
