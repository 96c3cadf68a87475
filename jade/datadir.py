"""One process owns a data directory: an exclusive lock on ``<data_dir>/jade.lock``.

Like PostgreSQL's ``postmaster.pid``, the lock file says who holds the directory (pid, what it
is, since when, as JSON, written once the lock is taken), so a refused server or tool can name
the holder. Unlike a pid file, the lock itself is a ``flock``: the kernel drops it with the
holder's last file descriptor, so a crashed or SIGKILLed holder leaves no stale lock (the file
stays, with the dead holder's record, and means nothing until someone holds the lock again).
The file is never removed: unlinking a flock file lets two processes lock two different files.

``hold`` is re-entrant within a process: the server holds the directory for its whole life and
its engine holds it again while open. A flock belongs to an open file description, so a second
``open`` + ``flock`` in the same process would refuse itself; instead a process-wide registry
(by real path) shares one descriptor between the handles and counts them. The lock is released
when the last handle is released (or the process exits).

A flock is advisory and per host (on NFS, Linux emulates it with a POSIX lock on the server):
it guards against a second ``jade`` on this directory, not against other programs."""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import threading
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any

LOCK_FILE = "jade.lock"

# A refused attempt retries this long: holder() takes a shared lock for a few microseconds to
# probe, and a start that happens to meet a probe must not be refused for it.
_RETRY_SECONDS = 0.2


class DataDirBusy(RuntimeError):
    """Another process holds the data directory. ``info`` is its lock file record (pid,
    purpose, since, hostname), empty when it could not be read."""

    def __init__(self, data_dir: str, info: dict[str, Any], hint: str = "") -> None:
        self.data_dir = data_dir
        self.info = info
        self.hint = hint
        super().__init__(
            f"data directory {data_dir} is in use by {describe(info)}" + (f"; {hint}" if hint
                                                                          else ""))


def describe(info: dict[str, Any]) -> str:
    """``jade serve (pid 123, since 2026-01-02T03:04:05+00:00)`` from a lock file record."""
    if not info.get("pid"):
        return "another process (its lock file names no holder)"
    where = ""
    host = info.get("hostname")
    if host and host != socket.gethostname():
        where = f" on {host}"
    since = f", since {info['since']}" if info.get("since") else ""
    return f"{info.get('purpose') or 'another process'} (pid {info['pid']}{where}{since})"


@dataclass(slots=True)
class _Held:
    fd: int
    path: str
    info: dict[str, Any]
    count: int = 1


_guard = threading.Lock()
_held: dict[str, _Held] = {}  # os.path.realpath(data_dir) -> the one descriptor holding it


class DataDirLock:
    """A handle on the data directory lock (see ``hold``). ``release`` is idempotent; the
    lock itself goes when the process's last handle is released."""

    def __init__(self, data_dir: str, key: str, held: _Held) -> None:
        self.data_dir = data_dir
        self._key = key
        self._entry: _Held | None = held

    @property
    def path(self) -> str:
        """The lock file."""
        return os.path.join(self._key, LOCK_FILE)

    @property
    def info(self) -> dict[str, Any]:
        """What the lock file says: this process's record (from the first ``hold``)."""
        entry = self._entry
        return dict(entry.info) if entry is not None else {}

    @property
    def held(self) -> bool:
        """Whether this handle still holds (it has not been released)."""
        return self._entry is not None

    def release(self) -> None:
        with _guard:
            entry, self._entry = self._entry, None
            if entry is None:
                return
            entry.count -= 1
            if entry.count > 0:
                return
            if _held.get(self._key) is entry:
                del _held[self._key]
            if entry.fd < 0:  # closed already (a forked child's inherited copy)
                return
            try:
                os.ftruncate(entry.fd, 0)  # still locked: nobody reads a half-cleared record
            except OSError:
                pass
            os.close(entry.fd)  # the last descriptor: the kernel drops the lock

    def __enter__(self) -> DataDirLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def __repr__(self) -> str:
        return f"DataDirLock({self.data_dir!r}, held={self.held})"


def hold(data_dir: str, purpose: str) -> DataDirLock:
    """Take the data directory (created if missing) for this process, for ``purpose`` (what
    the holder is, e.g. "jade serve": shown to whoever is refused). Never waits for another
    holder: raises ``DataDirBusy`` naming it. Re-entrant: a process that already holds the
    directory gets another handle on the same lock (the record keeps the first purpose)."""
    os.makedirs(data_dir, exist_ok=True)
    key = os.path.realpath(data_dir)
    with _guard:
        entry = _held.get(key)
        if entry is not None:
            entry.count += 1
            return DataDirLock(data_dir, key, entry)
        path = os.path.join(key, LOCK_FILE)
        # no O_TRUNC: the file may be another holder's record, kept until we hold the lock
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            if not _try_lock(fd, fcntl.LOCK_EX):
                raise DataDirBusy(data_dir, _read(path))
            info = {
                "pid": os.getpid(),
                "purpose": purpose,
                "since": datetime.now().astimezone().isoformat(timespec="seconds"),
                "started_at": time.time(),
                "hostname": socket.gethostname(),
                "data_dir": key,
            }
            record = json.dumps(info).encode() + b"\n"
            os.ftruncate(fd, 0)
            os.pwrite(fd, record, 0)
        except BaseException:
            os.close(fd)
            raise
        entry = _held[key] = _Held(fd, path, info)
        return DataDirLock(data_dir, key, entry)


def holder(data_dir: str) -> dict[str, Any] | None:
    """The lock file record of the process holding ``data_dir``, or None when no other process
    holds it: free, never used, or held by this very process (a probe on a new descriptor would
    conflict with this process's own lock, so the registry answers for it). The probe takes a
    shared lock for an instant; ``hold`` retries briefly so a start that meets it still wins.
    A record that cannot be read comes back as ``{}`` plus whatever was readable."""
    key = os.path.realpath(data_dir)
    with _guard:
        if key in _held:
            return None
    path = os.path.join(key, LOCK_FILE)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        if _try_lock(fd, fcntl.LOCK_SH, retry=False):
            fcntl.flock(fd, fcntl.LOCK_UN)
            return None
    finally:
        os.close(fd)
    return _read(path)


def _try_lock(fd: int, kind: int, retry: bool = True) -> bool:
    deadline = time.monotonic() + (_RETRY_SECONDS if retry else 0.0)
    while True:
        try:
            fcntl.flock(fd, kind | fcntl.LOCK_NB)
            return True
        except OSError as exc:
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.02)


def _read(path: str) -> dict[str, Any]:
    """The holder's record; a moment's grace for a holder between its lock and its write."""
    for _ in range(10):
        try:
            with open(path, "rb") as fh:
                info = json.loads(fh.read() or b"null")
            if isinstance(info, dict):
                return info
        except (OSError, ValueError):
            pass
        time.sleep(0.01)
    return {}


def _forget_in_child() -> None:
    """A forked child does not own its parent's data directory: drop the inherited registry
    (closing the child's copies of the descriptors leaves the parent's lock in place)."""
    global _guard
    _guard = threading.Lock()
    for entry in _held.values():
        try:
            os.close(entry.fd)
        except OSError:
            pass
        entry.fd, entry.count = -1, 0  # the child's handles release nothing
    _held.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_in_child)
