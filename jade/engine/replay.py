"""The one replay function: fold log records into a projection, in order, from where it is.

Start-up (data store, auth store, the index tail after checkpoints), snapshots (the auth file
brought to the data file's LSN), ``jade verify`` (a fresh fold compared with the live one) and
restores all catch a projection up through ``replay``. Replicas and restores that apply records
made elsewhere go through the group commit (``commit.Replicated``), which folds them with the
same projection code.

A target offers ``applied_lsn()`` (where it is) and ``apply_group(entries)`` (fold these, the
next records after it, and move its applied LSN to the last one only once they are applied).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Protocol

from jade import events as ev
from wal.codec import Record
from wal.log import Log

Entry = tuple[Record, ev.Event]


class Target(Protocol):
    def applied_lsn(self) -> int: ...
    def apply_group(self, entries: list[Entry]) -> None: ...


def entries(records: Iterable[Record]) -> Iterator[Entry]:
    """Each record with its typed event (upgraded from older schemas)."""
    for rec in records:
        yield rec, ev.of(rec)


def replay(
    log: Log,
    target: Target,
    *,
    after: int | None = None,
    upto: int | None = None,
    verify: bool = True,
    chunk: int = 1024,
) -> int:
    """Fold the records after ``after`` (default: the target's applied LSN) up to ``upto``
    (default: the log's tail) into ``target``, ``chunk`` records per group. Returns how many
    records were folded. A damaged record (``verify``: the checksum chain) or one whose body
    does not fit its type raises before anything of its group is applied."""
    start = target.applied_lsn() if after is None else after
    last = log.last_lsn if upto is None else upto
    if start >= last:
        return 0
    n = 0
    buf: list[Entry] = []
    for entry in entries(log.iterate(start, upto=last, verify=verify)):
        buf.append(entry)
        if len(buf) >= chunk:
            target.apply_group(buf)
            n += len(buf)
            buf = []
    if buf:
        target.apply_group(buf)
        n += len(buf)
    return n
