"""An LMDB environment that grows its map on demand.

py-lmdb's default map is 10 MiB; a database outgrows any fixed size. LMDB only lets the map be
resized while this process holds no transaction, so every read transaction passes a gate: a
resize closes the gate, waits for the (microsecond-long) readers in flight, resizes, reopens.
Write transactions are owned by one thread (the log writer, or a tool working offline), and a
write that hits ``MapFullError`` is aborted, the map doubled, and the write retried from scratch
by ``write()``.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

import lmdb

T = TypeVar("T")

DEFAULT_MAP_SIZE = 64 * 1024 * 1024


class Env:
    """One LMDB file (``subdir=False``: the data is ``path``, the lock file ``path-lock``)."""

    def __init__(
        self,
        path: str,
        *,
        map_size: int = DEFAULT_MAP_SIZE,
        max_dbs: int = 32,
        readonly: bool = False,
        sync: bool = True,
    ) -> None:
        self.path = path
        parent = os.path.dirname(os.path.abspath(path))
        os.makedirs(parent, exist_ok=True)
        self.env = lmdb.open(
            path,
            subdir=False,
            map_size=map_size,
            max_dbs=max_dbs,
            readonly=readonly,
            sync=sync,
            metasync=sync,
            max_readers=512,
            lock=True,
        )
        self._dbs: dict[bytes, lmdb._Database] = {}
        self._gate = threading.Condition(threading.Lock())
        self._readers = 0
        self._resizing = False
        self.grow_count = 0

    # -- sub-databases -------------------------------------------------------------------------
    def db(self, name: bytes, *, integerkey: bool = False) -> lmdb._Database:
        handle = self._dbs.get(name)
        if handle is None:
            handle = self.env.open_db(name, integerkey=integerkey, create=not self.readonly)
            self._dbs[name] = handle
        return handle

    @property
    def readonly(self) -> bool:
        return bool(self.env.flags().get("readonly"))

    # -- transactions --------------------------------------------------------------------------
    @contextmanager
    def read(self) -> Iterator[lmdb.Transaction[bytes]]:
        """A read transaction. Keep it short: a map resize waits for it."""
        with self._gate:
            while self._resizing:
                self._gate.wait()
            self._readers += 1
        try:
            with self.env.begin(buffers=False) as txn:
                yield txn
        finally:
            with self._gate:
                self._readers -= 1
                if self._readers == 0:
                    self._gate.notify_all()

    def write(self, body: Callable[[lmdb.Transaction[bytes]], T]) -> T:
        """Run ``body`` in a write transaction and commit it (durably when the env syncs).

        On ``MapFullError`` the transaction is aborted, the map doubled and ``body`` run again,
        so ``body`` must do all its writing through the transaction it is given."""
        while True:
            txn = self.env.begin(write=True)
            try:
                result = body(txn)
                txn.commit()
                return result
            except lmdb.MapFullError:
                self.grow(before=txn.abort)
            except BaseException:
                txn.abort()
                raise

    def grow(self, factor: int = 2, *, before: Callable[[], None] | None = None) -> None:
        """Multiply the map size, waiting for in-flight readers of this process.

        ``before`` (the abort of the write transaction that hit ``MapFullError``) runs once the
        readers are out: py-lmdb serialises an abort with every reader's cursor work on one
        environment lock, so an abort racing busy readers can wait for seconds."""
        with self._gate:
            self._resizing = True
            while self._readers:
                self._gate.wait()
            try:
                if before is not None:
                    before()
                self.env.set_mapsize(self.env.info()["map_size"] * factor)
                self.grow_count += 1
            finally:
                self._resizing = False
                self._gate.notify_all()

    # -- housekeeping --------------------------------------------------------------------------
    def map_size(self) -> int:
        return int(self.env.info()["map_size"])

    def file_size(self) -> int:
        try:
            return os.path.getsize(self.path)
        except OSError:
            return 0

    def sync(self) -> None:
        self.env.sync(True)

    def copy_to(self, path: str) -> None:
        """A consistent, compacted copy of the whole file taken inside one read transaction.
        Blocking file I/O: call it from a worker thread, never from the event loop."""
        with self.read() as txn:
            self.env.copy(path, compact=True, txn=txn)

    def close(self) -> None:
        self.env.close()
