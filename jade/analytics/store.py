"""Where query analytics are kept: observations of this server, not state.

Searches are not events: a search changes nothing, replaying the log must not count it again,
and a log that grew with every search would be a log of reads. So analytics live beside the
log, never in it: in memory, a ring of the last ``analytics.max_queries`` searches and one of
as many feedback entries (the request path appends one record to it: no I/O, no lock); on
disk, ``<data_dir>/analytics/queries.jsonl`` and ``feedback.jsonl``, one record per line,
written by ``flush`` (a scheduled job, and once more on shutdown), never on the request path.

Bounds: the rings hold at most ``max_queries`` records each; records older than
``analytics.retention_seconds`` are dropped; a file is appended to until it holds more lines
than ``max_queries`` plus a slack of a half, or its oldest line is past retention, and is then
rewritten from the ring (to a temporary file, fsynced and renamed: a crash leaves the old file
or the new one). The records of a deleted database are dropped at that rewrite (and never
shown: the routes answer 404 for a database that does not exist). A write that fails (a full
disk) logs one warning, keeps the records in memory and rewrites the file at the next flush
that succeeds; searches never notice.

Each node keeps its own: a replica records the searches it serves, in its own data directory;
nothing is replicated, snapshots and restores leave analytics out."""

from __future__ import annotations

import logging
import os
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from itertools import islice
from typing import Any, Generic, TypeVar

import msgspec

from jade.analytics.compute import Feedback, QueryRecord

log = logging.getLogger(__name__)

T = TypeVar("T", QueryRecord, Feedback)
QUERIES_FILE = "queries.jsonl"
FEEDBACK_FILE = "feedback.jsonl"


class _Ring(Generic[T]):
    """Records in arrival order, at most ``limit``, and which of them reached the file."""

    def __init__(self, typ: type[T], limit: int, filename: str) -> None:
        self.typ: type[T] = typ
        self.items: deque[T] = deque(maxlen=limit)
        self.limit = limit
        self.filename = filename
        self.added = 0  # ever appended (the ring forgets, this does not)
        self.flushed = 0  # of ``added``, how many were handed to a flush
        self.file_lines = 0
        self.file_oldest: float | None = None
        self.rewrite = False  # the file must be rewritten from the ring (a write failed...)
        self._decode: Callable[[bytes], T] = msgspec.json.Decoder(typ).decode

    def add(self, item: T) -> None:
        self.items.append(item)
        self.added += 1

    def take_new(self) -> list[T]:
        """The records added since the last call that the ring still holds."""
        k = min(self.added - self.flushed, len(self.items))
        self.flushed = self.added
        new = list(islice(reversed(self.items), k))
        new.reverse()
        return new

    def keep(self, pred: Callable[[T], bool]) -> int:
        """Drop the records ``pred`` refuses; how many were dropped."""
        kept = [x for x in self.items if pred(x)]
        dropped = len(self.items) - len(kept)
        if dropped:
            self.items = deque(kept, maxlen=self.limit)
        return dropped

    def load(self, path: str, cutoff: float) -> int:
        """The file's records since ``cutoff`` (the last ``limit`` of them) into the ring; lines
        that do not decode (a crash in the middle of an append) are skipped."""
        try:
            with open(path, "rb") as fh:
                lines = fh.read().splitlines()
        except FileNotFoundError:
            return 0
        bad = 0
        for line in lines:
            if not line.strip():
                continue
            try:
                item = self._decode(line)
            except (msgspec.DecodeError, ValueError):
                bad += 1
                continue
            if item.ts >= cutoff:
                self.items.append(item)
        if bad:
            log.warning("analytics: skipped %d unreadable lines of %s", bad, path)
        self.added = self.flushed = len(self.items)
        self.file_lines = len(lines)
        self.file_oldest = self.items[0].ts if self.items else None
        return len(self.items)


def _alive(exists: Callable[[str], bool]) -> Callable[[Any], bool]:
    seen: dict[str, bool] = {}

    def alive(x: Any) -> bool:
        got = seen.get(x.db)
        if got is None:
            got = seen[x.db] = exists(x.db)
        return got

    return alive


class Analytics:
    """The analytics of this server (module docstring). The request path calls ``add`` (or
    ``add_feedback``) from the event loop; ``flush`` runs from the loop too and does its file
    work in ``write`` (in a thread: the loop hands it lists that nothing else touches)."""

    def __init__(self, directory: str, *, max_queries: int, retention_seconds: int,
                 enabled: bool = True) -> None:
        self.dir = directory
        self.enabled = enabled
        self.max_queries = max_queries
        self.retention_seconds = retention_seconds
        self.queries: _Ring[QueryRecord] = _Ring(QueryRecord, max_queries, QUERIES_FILE)
        self.feedback: _Ring[Feedback] = _Ring(Feedback, max_queries, FEEDBACK_FILE)
        self._prefix = secrets.token_hex(4)  # per process: ids stay unique across restarts
        self._names: dict[str, str] = {}
        self._warned = False
        self.writes_failed = 0
        self._encode = msgspec.json.Encoder().encode
        self._writing = threading.Lock()  # the job's write and the last one at shutdown

    # ------------------------------------------------------------------ the request path

    def next_id(self) -> str:
        return f"{self._prefix}{self.queries.added & 0xFFFFFFFFFF:010x}"

    def name(self, s: str) -> str:
        """One string object per database id and user id (the records share it)."""
        got = self._names.get(s)
        if got is None:
            if len(self._names) > 10_000:
                self._names.clear()
            got = self._names[s] = s
        return got

    def add(self, rec: QueryRecord) -> None:
        self.queries.add(rec)

    def add_feedback(self, fb: Feedback) -> None:
        self.feedback.add(fb)

    # ------------------------------------------------------------------ reads

    def snapshot(self) -> tuple[list[QueryRecord], list[Feedback]]:
        """Copies of both rings (taken on the loop: the grouping runs elsewhere)."""
        return list(self.queries.items), list(self.feedback.items)

    def find(self, db: str, qid: str) -> QueryRecord | None:
        for r in reversed(self.queries.items):
            if r.qid == qid and r.db == db:
                return r
        return None

    def oldest(self, db: str) -> float | None:
        for r in self.queries.items:
            if r.db == db:
                return r.ts
        return None

    # ------------------------------------------------------------------ disk

    def load(self, now: float | None = None) -> int:
        """Read what the files hold (within retention): at start-up, before any search."""
        cutoff = (now if now is not None else time.time()) - self.retention_seconds
        n = self.queries.load(os.path.join(self.dir, QUERIES_FILE), cutoff)
        self.feedback.load(os.path.join(self.dir, FEEDBACK_FILE), cutoff)
        return n

    def plan(self, now: float, exists: Callable[[str], bool] | None = None
             ) -> list[tuple[str, bool, list[Any]]]:
        """On the loop: drop expired records (and, when a file is rewritten, those of deleted
        databases: ``exists``), and say what each file gets: (file, rewrite?, records)."""
        cutoff = now - self.retention_seconds
        slack = max(60.0, self.retention_seconds / 10)
        out: list[tuple[str, bool, list[Any]]] = []
        for ring in (self.queries, self.feedback):
            if ring.items and ring.items[0].ts < cutoff:
                ring.keep(lambda x: x.ts >= cutoff)
            new = ring.take_new()
            rewrite = (ring.rewrite
                       or ring.file_lines + len(new) > ring.limit + max(ring.limit // 2, 100)
                       or (ring.file_oldest is not None and ring.file_oldest < cutoff - slack))
            if rewrite:
                if exists is not None:
                    ring.keep(_alive(exists))
                out.append((ring.filename, True, list(ring.items)))
            elif new:
                out.append((ring.filename, False, new))
        return out

    def write(self, plan: Iterable[tuple[str, bool, list[Any]]]) -> dict[str, int]:
        """The file work of a flush (any thread). Never raises: a failure is logged once (until
        a write succeeds again) and the next flush rewrites the file from memory."""
        with self._writing:
            return self._write(plan)

    def _write(self, plan: Iterable[tuple[str, bool, list[Any]]]) -> dict[str, int]:
        done = {"appended": 0, "rewritten": 0}
        for filename, rewrite, items in plan:
            ring: _Ring[Any] = self.queries if filename == QUERIES_FILE else self.feedback
            path = os.path.join(self.dir, filename)
            try:
                os.makedirs(self.dir, exist_ok=True)
                data = b"".join(self._encode(x) + b"\n" for x in items)
                if rewrite:
                    tmp = path + ".tmp"
                    with open(tmp, "wb") as fh:
                        fh.write(data)
                        fh.flush()
                        os.fsync(fh.fileno())
                    os.replace(tmp, path)
                    ring.file_lines = len(items)
                    ring.file_oldest = items[0].ts if items else None
                    done["rewritten"] += len(items)
                else:
                    with open(path, "ab") as fh:
                        fh.write(data)
                    ring.file_lines += len(items)
                    if ring.file_oldest is None and items:
                        ring.file_oldest = items[0].ts
                    done["appended"] += len(items)
                ring.rewrite = False
            except OSError as exc:
                ring.rewrite = True
                self.writes_failed += 1
                if not self._warned:
                    self._warned = True
                    log.warning("analytics: cannot write %s (%s); they stay in memory and the "
                                "file is rewritten once writing works again", path, exc)
                try:
                    os.unlink(path + ".tmp")
                except OSError:
                    pass
                continue
            if self._warned:
                self._warned = False
                log.info("analytics: writing %s works again", path)
        return done

    def flush(self, now: float | None = None, exists: Callable[[str], bool] | None = None
              ) -> dict[str, int]:
        """``plan`` and ``write`` in one call (shutdown, tests)."""
        return self.write(self.plan(now if now is not None else time.time(), exists))
