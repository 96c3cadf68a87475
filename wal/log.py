"""The log store: records keyed by LSN in an LMDB sub-database.

Invariants:
- LSNs are strictly increasing from 1 with no gaps between ``first_lsn`` and ``last_lsn``.
- Every record chains to its predecessor's checksum; the record before ``first_lsn`` (removed by
  truncation) is remembered as ``base_checksum`` so the chain can still be verified.
- ``ts`` strictly increases (the wall clock is clamped), so time→LSN is a binary search.
- Appends happen only inside a write transaction owned by the writer thread; the in-memory
  tail (``last_lsn``...) moves only after that transaction committed (``committed()``).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import lmdb

from wal.codec import GENESIS, CodecError, Record, decode, encode, key_lsn, lsn_key, verify_link
from wal.lmdbenv import Env

LOG_DB = b"log"
META_DB = b"log_meta"


class LogError(RuntimeError):
    """The log refuses an operation (gap, epoch regression, broken chain)."""


@dataclass(slots=True)
class Tail:
    lsn: int = 0
    ts: int = 0
    epoch: int = 1
    checksum: bytes = GENESIS


class Log:
    def __init__(self, env: Env) -> None:
        self.env = env
        self._log = env.db(LOG_DB)
        self._meta = env.db(META_DB)
        self._tail = Tail()
        self._pending: Tail | None = None
        self.first_lsn = 1
        self.base_checksum = GENESIS
        self._waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None], int]] = []
        self._waiters_lock = threading.Lock()
        self._load()

    # -- state -------------------------------------------------------------------------------
    def _load(self) -> None:
        with self.env.read() as txn:
            base_lsn = txn.get(b"base_lsn", db=self._meta)
            base_sum = txn.get(b"base_checksum", db=self._meta)
            epoch = txn.get(b"epoch", db=self._meta)
            cur = txn.cursor(db=self._log)
            tail = Tail()
            if base_lsn is not None:
                tail.lsn = key_lsn(base_lsn)
                self.first_lsn = tail.lsn + 1
                self.base_checksum = bytes(base_sum or GENESIS)
                tail.checksum = self.base_checksum
            if cur.last():
                rec = decode(cur.value())
                tail = Tail(rec.lsn, rec.ts, rec.epoch, rec.checksum)
            if epoch is not None:
                tail.epoch = max(tail.epoch, int(epoch))
            self._tail = tail

    @property
    def last_lsn(self) -> int:
        return self._tail.lsn

    @property
    def last_ts(self) -> int:
        return self._tail.ts

    @property
    def epoch(self) -> int:
        return self._tail.epoch

    @property
    def last_checksum(self) -> bytes:
        return self._tail.checksum

    # -- writing (writer thread only) --------------------------------------------------------
    def begin(self) -> None:
        """Start a group: appends accumulate on a pending tail until ``committed``/``aborted``."""
        t = self._tail
        self._pending = Tail(t.lsn, t.ts, t.epoch, t.checksum)

    def append(
        self, txn: lmdb.Transaction[bytes], type_: str, actor: str, body: dict[str, Any]
    ) -> Record:
        """Append a new record in ``txn`` (the primary's path: LSN, ts, epoch decided here)."""
        p = self._pending
        assert p is not None, "append outside begin()"
        ts = max(time.time_ns(), p.ts + 1)
        rec = encode(p.lsn + 1, ts, p.epoch, type_, actor, body, p.checksum)
        if not txn.put(lsn_key(rec.lsn), rec.encoded(), db=self._log, overwrite=False):
            raise LogError(f"LSN {rec.lsn} already exists")
        p.lsn, p.ts, p.checksum = rec.lsn, rec.ts, rec.checksum
        return rec

    def append_record(self, txn: lmdb.Transaction[bytes], rec: Record) -> None:
        """Append a record made elsewhere (a replica's path): continuity, epoch and chain are
        verified before anything is written."""
        p = self._pending
        assert p is not None, "append outside begin()"
        if rec.lsn != p.lsn + 1:
            raise LogError(f"expected LSN {p.lsn + 1}, got {rec.lsn}")
        if rec.epoch < p.epoch:
            raise LogError(f"record {rec.lsn} has epoch {rec.epoch} < current epoch {p.epoch}")
        try:
            verify_link(rec, p.checksum)
        except CodecError as exc:
            raise LogError(str(exc)) from None
        if not txn.put(lsn_key(rec.lsn), rec.encoded(), db=self._log, overwrite=False):
            raise LogError(f"LSN {rec.lsn} already exists")
        p.lsn, p.ts, p.epoch, p.checksum = rec.lsn, rec.ts, rec.epoch, rec.checksum

    def set_epoch(self, txn: lmdb.Transaction[bytes], epoch: int) -> None:
        """Raise the epoch for the records that follow (promotion)."""
        p = self._pending
        assert p is not None
        if epoch <= p.epoch:
            raise LogError(f"epoch must increase ({epoch} <= {p.epoch})")
        txn.put(b"epoch", str(epoch).encode(), db=self._meta)
        p.epoch = epoch

    def committed(self) -> None:
        if self._pending is not None:
            self._tail = self._pending
            self._pending = None
        self._notify()

    def aborted(self) -> None:
        self._pending = None

    # -- truncation --------------------------------------------------------------------------
    def truncate_before(self, lsn: int) -> int:
        """Remove records with LSN < ``lsn`` (never the last one) in a transaction of its own.
        For offline use; a running server truncates through its group commit
        (``jade.engine.commit.Truncate``)."""
        lsn = min(lsn, self.last_lsn)
        if lsn <= self.first_lsn:
            return 0
        n = self.env.write(lambda txn: self.truncate_in_txn(txn, lsn))
        self.truncated(lsn)
        return n

    def truncated(self, lsn: int) -> None:
        """After the commit of ``truncate_in_txn(.., lsn)``: the log now starts at ``lsn``."""
        with self.env.read() as txn:
            raw = txn.get(b"base_checksum", db=self._meta)
        self.base_checksum = bytes(raw) if raw else GENESIS
        self.first_lsn = lsn

    def truncate_in_txn(self, txn: lmdb.Transaction[bytes], lsn: int) -> int:
        """Delete records with LSN < ``lsn`` inside ``txn``, remembering the base checksum."""
        prev = txn.get(lsn_key(lsn - 1), db=self._log)
        if prev is None:
            raise LogError(f"LSN {lsn - 1} missing")
        base = decode(prev)
        cur = txn.cursor(db=self._log)
        n = 0
        if cur.first():
            while key_lsn(cur.key()) < lsn:
                cur.delete()
                n += 1
        txn.put(b"base_lsn", lsn_key(lsn - 1), db=self._meta)
        txn.put(b"base_checksum", base.checksum, db=self._meta)
        return n

    # -- reading -----------------------------------------------------------------------------
    def get(self, lsn: int) -> Record | None:
        with self.env.read() as txn:
            raw = txn.get(lsn_key(lsn), db=self._log)
        return decode(raw) if raw is not None else None

    def read(
        self,
        after: int = 0,
        *,
        limit: int | None = None,
        upto: int | None = None,
        verify: bool = True,
    ) -> list[Record]:
        """Records with ``after < lsn <= upto``, oldest first, at most ``limit``. With ``verify``
        the checksum chain is checked from the first record returned (its predecessor's checksum
        is read from the log, or is the base checksum)."""
        out: list[Record] = []
        if limit is not None and limit <= 0:
            return out
        for rec in self.iterate(after, upto=upto, verify=verify):
            out.append(rec)
            if limit is not None and len(out) >= limit:
                break
        return out

    def iterate(
        self, after: int = 0, *, upto: int | None = None, verify: bool = True, chunk: int = 512
    ) -> Iterator[Record]:
        """Like ``read`` but streams, holding a read transaction only per chunk."""
        start = max(after + 1, self.first_lsn)
        if after + 1 < self.first_lsn:
            raise LogError(f"LSN {after + 1} was truncated; the log starts at {self.first_lsn}")
        prev: bytes | None = None
        nxt = start
        while True:
            batch: list[tuple[int, bytes]] = []
            with self.env.read() as txn:
                cur = txn.cursor(db=self._log)
                # set_range, not set_key: a record missing at a chunk boundary must show up as
                # a gap below, not end the iteration silently
                if not cur.set_range(lsn_key(nxt)):
                    return
                for key, value in cur:
                    lsn = key_lsn(key)
                    if upto is not None and lsn > upto:
                        break
                    batch.append((lsn, value))
                    if len(batch) >= chunk:
                        break
            if not batch:
                return
            if verify and prev is None:
                prev = self._checksum_before(start)
            for lsn, raw in batch:
                if lsn != nxt:
                    raise LogError(f"gap in the log: expected LSN {nxt}, found {lsn}")
                rec = decode(raw, prev) if verify else decode(raw)
                if rec.lsn != nxt:
                    raise LogError(f"record stored under LSN {nxt} says LSN {rec.lsn}")
                prev = rec.checksum
                nxt += 1
                yield rec
            if upto is not None and nxt > upto:
                return

    def tail_start(self, records: int, max_bytes: int) -> int:
        """The LSN after which the log's last records number at most ``records`` and hold at
        most ``max_bytes`` bytes (but always the last record): where a check of the tail
        starts. Read backwards, without decoding a record."""
        last = after = self.last_lsn
        size = 0
        with self.env.read() as txn:
            cur = txn.cursor(db=self._log)
            if not cur.last():
                return last
            for key, value in cur.iterprev():
                size += len(value)
                if after < last and (size > max_bytes or last - after >= records):
                    break
                after = key_lsn(key) - 1
        return max(after, self.first_lsn - 1)

    def _checksum_before(self, lsn: int) -> bytes:
        if lsn <= self.first_lsn:
            return self.base_checksum
        rec = self.get(lsn - 1)
        if rec is None:
            raise LogError(f"LSN {lsn - 1} missing")
        return rec.checksum

    def lsn_at_time(self, ts_ns: int) -> int:
        """The LSN of the last record with ``ts <= ts_ns`` (0 when there is none retained)."""
        lo, hi = self.first_lsn, self.last_lsn
        found = 0
        with self.env.read() as txn:
            while lo <= hi:
                mid = (lo + hi) // 2
                raw = txn.get(lsn_key(mid), db=self._log)
                if raw is None:
                    raise LogError(f"LSN {mid} missing")
                if decode(raw).ts <= ts_ns:
                    found, lo = mid, mid + 1
                else:
                    hi = mid - 1
        return found

    # -- subscription ------------------------------------------------------------------------
    async def wait_for(self, lsn: int, timeout: float | None = None) -> bool:
        """Wait until ``last_lsn >= lsn``. True when reached, False on timeout."""
        if self.last_lsn >= lsn:
            return True
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        entry = (loop, fut, lsn)
        with self._waiters_lock:
            self._waiters.append(entry)
        if self.last_lsn >= lsn:  # committed between the check and the registration
            self._resolve(fut)
        try:
            await asyncio.wait_for(fut, timeout)
            return True
        except TimeoutError:
            return self.last_lsn >= lsn
        finally:
            with self._waiters_lock:
                if entry in self._waiters:
                    self._waiters.remove(entry)

    @staticmethod
    def _resolve(fut: asyncio.Future[None]) -> None:
        if not fut.done():
            fut.set_result(None)

    def _notify(self) -> None:
        last = self.last_lsn
        with self._waiters_lock:
            ready = [w for w in self._waiters if w[2] <= last]
            if not ready:
                return
            self._waiters = [w for w in self._waiters if w[2] > last]
        for loop, fut, _ in ready:
            try:
                loop.call_soon_threadsafe(self._resolve, fut)
            except RuntimeError:  # loop closed
                pass
