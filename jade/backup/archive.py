"""The continuous log archive: closed, checksummed segments of records in the backup directory,
so the server may truncate its own log while point-in-time restore stays possible.

A segment file ``seg-<first>-<last>-<sha16>.wal`` holds one msgpack map:
``{format, first, last, first_ts, last_ts, sealed_ts, prev, records: [encoded record bytes...]}``
where ``prev`` is the checksum of record ``first - 1``. The name carries the first 16 hex digits
of the file's SHA-256; reading verifies that, the bounds, and the checksum chain of every record,
so a truncated or bit-flipped segment is named and never replayed. Segments are written to a
temporary name, fsynced and renamed. Blocking I/O: call from a worker thread.

How far the archive is complete (``coverage``): the newest segment's ``sealed_ts``, the moment
up to which every record was archived once it was written — the time the archive run read the
log's tail (taken just before reading it) for the run's last segment, the segment's own last
record for the others (a run stopped between two segments leaves the archive complete only up
to there). It is covered by the segment's checksum like the rest. A run with nothing new to
archive writes nothing, so the seal stays where the last segment put it. Segments written before
``sealed_ts`` existed cover up to their last record. A write being committed at the instant the
tail is read (stamped before it, committed after it: at most one group commit) is not seen by
that run.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from wal.codec import Record, decode, pack, unpack
from wal.files import write_atomic
from wal.log import Log

logger = logging.getLogger(__name__)

FORMAT = 1
NAME = re.compile(r"^seg-(\d{16})-(\d{16})-([0-9a-f]{16})\.wal$")


class ArchiveError(RuntimeError):
    """A damaged or inconsistent archive; the message names the segment."""


@dataclass(frozen=True, slots=True)
class Segment:
    path: str
    first: int
    last: int
    sha16: str

    @property
    def name(self) -> str:
        return os.path.basename(self.path)


@dataclass(frozen=True, slots=True)
class Coverage:
    """How far the archive is known complete: every record with ``ts <= until_ts`` is in it."""

    lsn: int  # the last archived record
    last_ts: int  # its time
    until_ts: int
    sealed: bool  # False: no seal time recorded (an older segment): ``until_ts == last_ts``
    segment: str  # the newest segment's name


def archive_dir(backup_dir: str) -> str:
    return os.path.join(backup_dir, "archive")


def segments(backup_dir: str) -> list[Segment]:
    d = archive_dir(backup_dir)
    if not os.path.isdir(d):
        return []
    out = []
    for name in os.listdir(d):
        m = NAME.match(name)
        if m:
            out.append(Segment(os.path.join(d, name), int(m[1]), int(m[2]), m[3]))
    out.sort(key=lambda s: s.first)
    return out


def last_archived(backup_dir: str) -> int:
    segs = segments(backup_dir)
    return segs[-1].last if segs else 0


def archive_new(log: Log, backup_dir: str, max_records: int) -> list[Segment]:
    """Write segments for every record after the last archived one. Returns the new ones."""
    d = archive_dir(backup_dir)
    os.makedirs(d, exist_ok=True)
    for name in os.listdir(d):
        if name.endswith(".tmp"):
            os.remove(os.path.join(d, name))
    after = last_archived(backup_dir)
    if after < log.first_lsn - 1:
        # records never archived are gone from the log: trimmed while archiving was off, or a
        # directory that began from a snapshot (a replica, a restore). The archive goes on from
        # the log's first record; a restore cannot cross the gap (``verify_all`` names it).
        if after:
            logger.warning(
                "log archive: records %d..%d were trimmed from the log without being archived "
                "(archiving was off); the archive goes on from LSN %d",
                after + 1, log.first_lsn - 1, log.first_lsn,
            )
        after = log.first_lsn - 1
    made = []
    # taken before the tail is read: every record stamped up to this moment is at or before it
    read_at = now_ns()
    upto = log.last_lsn
    while after < upto:
        recs = log.read(after, limit=max_records, upto=upto, verify=True)
        if not recs:
            break
        # the checksum the first record chains to (the base checksum right after truncation)
        prev_rec = log.get(after) if after >= log.first_lsn else None
        prev = prev_rec.checksum if prev_rec is not None else log.base_checksum
        last = recs[-1]
        sealed = max(read_at, last.ts) if last.lsn >= upto else last.ts
        made.append(_write(d, recs, prev, sealed))
        after = last.lsn
    return made


def _write(d: str, recs: list[Record], prev: bytes, sealed_ts: int) -> Segment:
    data = pack(
        {
            "format": FORMAT,
            "first": recs[0].lsn,
            "last": recs[-1].lsn,
            "first_ts": recs[0].ts,
            "last_ts": recs[-1].ts,
            "sealed_ts": sealed_ts,
            "prev": prev,
            "records": [r.encoded() for r in recs],
        }
    )
    sha16 = hashlib.sha256(data).hexdigest()[:16]
    name = f"seg-{recs[0].lsn:016d}-{recs[-1].lsn:016d}-{sha16}.wal"
    final = os.path.join(d, name)
    write_atomic(final, data)
    return Segment(final, recs[0].lsn, recs[-1].lsn, sha16)


def read(seg: Segment) -> tuple[bytes, list[Record], int, int]:
    """(prev checksum, verified records, first_ts, last_ts) of one segment."""
    m, prev, recs = _load(seg)
    return prev, recs, int(m.get("first_ts", 0)), int(m.get("last_ts", 0))


def coverage(backup_dir: str) -> Coverage | None:
    """How far the archive is known complete (None: no segment). Reads (and verifies) the
    newest segment."""
    segs = segments(backup_dir)
    if not segs:
        return None
    seg = segs[-1]
    m, _, recs = _load(seg)
    last_ts = recs[-1].ts
    sealed = m.get("sealed_ts")
    until = max(int(sealed), last_ts) if sealed is not None else last_ts
    return Coverage(seg.last, last_ts, until, sealed is not None, seg.name)


def _load(seg: Segment) -> tuple[dict[str, Any], bytes, list[Record]]:
    """(the segment's map, prev checksum, verified records)."""
    try:
        with open(seg.path, "rb") as fh:
            data = fh.read()
    except OSError as exc:
        raise ArchiveError(f"{seg.name}: unreadable ({exc})") from None
    if hashlib.sha256(data).hexdigest()[:16] != seg.sha16:
        raise ArchiveError(f"{seg.name}: checksum mismatch (damaged or truncated)")
    try:
        m = unpack(data)
        prev = bytes(m["prev"])
        raws = m["records"]
        first, last = int(m["first"]), int(m["last"])
    except Exception as exc:  # msgpack raises several types on garbage
        raise ArchiveError(f"{seg.name}: undecodable ({exc})") from None
    if (first, last) != (seg.first, seg.last) or len(raws) != last - first + 1:
        raise ArchiveError(f"{seg.name}: bounds do not match its contents")
    recs = []
    chain = prev
    for i, raw in enumerate(raws):
        try:
            rec = decode(raw, chain)
        except ValueError as exc:
            raise ArchiveError(f"{seg.name}: record {first + i}: {exc}") from None
        if rec.lsn != first + i:
            raise ArchiveError(f"{seg.name}: record {first + i} has LSN {rec.lsn}")
        chain = rec.checksum
        recs.append(rec)
    return m, prev, recs


def verify_all(backup_dir: str) -> list[str]:
    """Problems in the archive: damaged segments, gaps or breaks in the chain between them."""
    problems = []
    prev_last: int | None = None
    prev_sum: bytes | None = None
    for seg in segments(backup_dir):
        try:
            prev, recs, _, _ = read(seg)
        except ArchiveError as exc:
            problems.append(str(exc))
            prev_last, prev_sum = seg.last, None
            continue
        if prev_last is not None and seg.first != prev_last + 1:
            problems.append(f"{seg.name}: gap after LSN {prev_last}")
        if prev_sum is not None and prev != prev_sum:
            problems.append(f"{seg.name}: does not chain to the previous segment")
        prev_last, prev_sum = seg.last, recs[-1].checksum
    return problems


def records(backup_dir: str, after: int, upto: int) -> Iterator[Record]:
    """Archived records with ``after < lsn <= upto`` in order (verified)."""
    for seg in segments(backup_dir):
        if seg.last <= after or seg.first > upto:
            continue
        _, recs, _, _ = read(seg)
        for rec in recs:
            if after < rec.lsn <= upto:
                yield rec


def lsn_at_time(backup_dir: str, ts_ns: int) -> tuple[int, int] | None:
    """(LSN of the last archived record with ts <= ts_ns, its ts), None when before all."""
    best: tuple[int, int] | None = None
    for seg in segments(backup_dir):
        _, recs, first_ts, _ = read(seg)
        if first_ts > ts_ns:
            break
        for rec in recs:
            if rec.ts <= ts_ns:
                best = (rec.lsn, rec.ts)
            else:
                return best
    return best


def now_ns() -> int:
    return time.time_ns()
