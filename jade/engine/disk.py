"""The data directory's disk: free space, and writes refused while it is full.

A full disk must not become a full outage. The rule (etcd's space quota, with PostgreSQL's
"the server stays up for reads"): a write is refused with 507 ``insufficient_storage`` and
``Retry-After`` when

  - the file system holding the data directory has less free space than
    ``storage.reserve_bytes`` (plus what the write itself needs): the reserve is headroom for
    index checkpoints, snapshots and the operator, so the disk is never driven to its last
    byte by writes; or
  - a commit failed because the disk filled anyway (another process wrote to it, or the
    reserve is 0): LMDB reports that as ``DiskError`` "No space left on device", or as an
    "Input/output error" when the write came up short.

Nothing of a refused write is written (the commit is all or nothing). Reads, logins that
write nothing, ``/health``, metrics and snapshots to another disk go on. Writes resume by
themselves once space is freed: every write checks again; no operator step re-arms them.
Administrative records marked ``readonly_ok`` (readonly/readwrite, replica promotion) are let
through the reserve (they are a few bytes): the operator can still steer the node.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import threading
import time

import lmdb

from jade.errors import InsufficientStorage

log = logging.getLogger(__name__)

RETRY_AFTER_SECONDS = 10
# a write needs about twice its bytes in new pages (the record in the log, the values in the
# store) plus the B-tree pages it touches
OVERHEAD_BYTES = 256 * 1024
FREE_TTL_SECONDS = 0.01
_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)


def free_bytes(path: str) -> int:
    """Free bytes for an unprivileged writer on the file system holding ``path`` (the nearest
    existing parent): what a write can use."""
    while path and not os.path.exists(path):
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    return shutil.disk_usage(path or ".").free


def out_of_space(exc: BaseException, path: str) -> bool:
    """Whether ``exc`` (from a write to a file under ``path``) means the disk is full."""
    if isinstance(exc, OSError) and exc.errno in _FULL_ERRNOS:
        return True
    if isinstance(exc, lmdb.Error):
        text = str(exc)
        if "No space left" in text or "quota exceeded" in text.lower():
            return True
        # LMDB turns a short write (the disk filled under it) into EIO
        if "Input/output error" in text:
            try:
                return free_bytes(path) < OVERHEAD_BYTES * 4
            except OSError:
                return False
    return False


class Disk:
    """Free space of one data directory's file system and whether writes are refused now."""

    def __init__(self, path: str, reserve_bytes: int) -> None:
        self.path = path
        self.reserve = reserve_bytes
        self.full: str | None = None  # why writes are refused (None: they are accepted)
        self.since: float | None = None  # when they started to be
        self.refused = 0  # writes refused since the engine opened
        self._lock = threading.Lock()
        self._free = 0
        self._measured_at = -1.0  # time.monotonic() of the last measurement

    def free(self, fresh: bool = False) -> int:
        """Free bytes, measured at most every ``FREE_TTL_SECONDS`` (a statvfs per write cost
        ~40 us of the single-write path twice: admission and the writer's gate); a commit that
        fails for space is classified by ``out_of_space``, which measures afresh."""
        now = time.monotonic()
        if not fresh and now - self._measured_at < FREE_TTL_SECONDS:
            return self._free
        try:
            free = os.statvfs(self.path)
            self._free = free.f_bavail * free.f_frsize
        except FileNotFoundError:  # not created yet: the nearest existing parent's
            try:
                self._free = free_bytes(self.path)
            except OSError:
                self._free = 0
        except OSError:
            self._free = 0
        self._measured_at = now
        return self._free

    def check(self, size: int = 0, free: int | None = None) -> None:
        """Refuse a write of about ``size`` bytes when the disk cannot take it (above);
        ``free``: the free bytes measured for the whole group, if they were."""
        measured = free is None
        if free is None:
            free = self.free()
        need = self.reserve + (2 * size + OVERHEAD_BYTES if self.reserve else 0)
        if free < need and measured:  # measured again before a refusal: space freed resumes
            free = self.free(fresh=True)  # writes at once (a group's own figure is its own)
        if free < need:
            self.refuse(f"{free} bytes free on the data directory's disk, below the reserve "
                        f"of {self.reserve} bytes (storage.reserve_bytes)")
        if self.full is not None:
            self._cleared(free)

    def refuse(self, why: str) -> None:
        """Count and raise the refusal, and remember the disk as full."""
        with self._lock:
            self.refused += 1
            if self.full is None:
                self.since = time.time()
                log.warning("writes refused: %s; reads go on; writes resume once space is "
                            "freed", why)
            self.full = why
        raise InsufficientStorage(
            f"the data directory's disk is full: {why}; nothing was written; retry once "
            "space is freed", retry_after=RETRY_AFTER_SECONDS)

    def failed(self, exc: BaseException) -> InsufficientStorage | None:
        """The refusal a failed commit amounts to, when the disk filled (else None)."""
        if not out_of_space(exc, self.path):
            return None
        try:
            self.refuse(f"a commit failed: {exc}")
        except InsufficientStorage as refused:
            return refused
        raise AssertionError("unreachable")

    def committed(self) -> None:
        """A commit succeeded: the disk took it."""
        if self.full is not None:
            self._cleared(self.free())

    def _cleared(self, free: int) -> None:
        with self._lock:
            if self.full is not None:
                log.warning("writes accepted again: %d bytes free on the data directory's disk",
                            free)
            self.full = None
            self.since = None

    def status(self) -> dict[str, object]:
        free = self.free()
        return {
            "free_bytes": free,
            "reserve_bytes": self.reserve,
            "writes_refused": self.full is not None,
            "reason": self.full,
            "since": self.since,
            "refused_total": self.refused,
        }
