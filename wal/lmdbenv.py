"""An LMDB environment that grows its map on demand.

py-lmdb's default map is 10 MiB; a database outgrows any fixed size. LMDB only lets the map be
resized while this process holds no transaction, so every read transaction passes a gate: a
resize closes the gate, waits for the (microsecond-long) readers in flight, resizes, reopens.
Write transactions are owned by one thread (the log writer, or a tool working offline), and a
write that hits ``MapFullError`` is aborted, the map doubled, and the write retried from scratch
by ``write()``.

A file that is not whole is refused at open (``FileDamaged``, naming it): LMDB maps the file and
trusts it, so a page past the end of a truncated file is a SIGBUS at its first read, which kills
the process with nothing said. ``mdb_env_open`` itself reads only the two meta pages (with
``pread``), so the check runs after it and before any page is touched through the map. LMDB keeps
no checksums of its pages: what it notices itself (a page of the wrong type, a page number past
the end) is raised as ``FileDamaged`` from ``read()`` too.
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


class FileDamaged(RuntimeError):
    """An LMDB file that cannot be trusted: cut short, not an LMDB file, or a page LMDB itself
    found inconsistent. ``path`` names the file; the message says what was found."""

    def __init__(self, path: str, what: str) -> None:
        super().__init__(f"{path}: {what}")
        self.path = path


# what LMDB raises on a page or header it finds inconsistent (it checks types and bounds only)
_DAMAGE = (lmdb.CorruptedError, lmdb.PageNotFoundError, lmdb.InvalidError,
           lmdb.VersionMismatchError)


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
        try:
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
        except _DAMAGE as exc:
            raise FileDamaged(path, f"not a readable LMDB file ({exc})") from None
        try:
            self.check_size()
        except FileDamaged:
            self.env.close()
            raise
        self._dbs: dict[bytes, lmdb._Database] = {}
        self._gate = threading.Condition(threading.Lock())
        self._readers = 0
        self._resizing = False
        self.grow_count = 0

    def check_size(self) -> None:
        """Raise ``FileDamaged`` when the file is shorter than the pages its header says are in
        use (``last_pgno``): a truncated file, whose missing pages would be a SIGBUS when read
        through the map. Reads only the header's figures and the file's size."""
        need = (int(self.env.info()["last_pgno"]) + 1) * int(self.env.stat()["psize"])
        try:
            have = os.path.getsize(self.path)
        except OSError as exc:
            raise FileDamaged(self.path, f"cannot be read ({exc})") from None
        if have < need:
            raise FileDamaged(
                self.path, f"truncated: {have} bytes, but its header says {need} bytes of pages "
                "are in use (the file was cut short)")

    # -- sub-databases -------------------------------------------------------------------------
    def db(self, name: bytes, *, integerkey: bool = False) -> lmdb._Database:
        handle = self._dbs.get(name)
        if handle is None:
            try:
                handle = self.env.open_db(name, integerkey=integerkey,
                                          create=not self.readonly)
            except _DAMAGE as exc:
                raise FileDamaged(self.path, f"a page is damaged ({exc})") from None
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
        except _DAMAGE as exc:
            raise FileDamaged(self.path, f"a page is damaged ({exc})") from None
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
