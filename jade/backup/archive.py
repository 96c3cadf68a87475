"""The continuous log archive: closed, checksummed segments of records in the backup directory,
so the server may truncate its own log while point-in-time restore stays possible.

A segment file ``seg-<first>-<last>-<sha16>.wal`` holds one msgpack map:
``{format, first, last, first_ts, last_ts, prev, records: [encoded record bytes...]}`` where
``prev`` is the checksum of record ``first - 1``. The name carries the first 16 hex digits of the
file's SHA-256; reading verifies that, the bounds, and the checksum chain of every record, so a
truncated or bit-flipped segment is named and never replayed. Segments are written to a temporary
name, fsynced and renamed. Blocking I/O: call from a worker thread.
"""

from __future__ import annotations

import hashlib
import os
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass

from wal.codec import Record, decode, pack, unpack
from wal.files import write_atomic
from wal.log import Log

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
        raise ArchiveError(
            f"records {after + 1}..{log.first_lsn - 1} were truncated before being archived"
        )
    made = []
    upto = log.last_lsn
    while after < upto:
        recs = log.read(after, limit=max_records, upto=upto, verify=True)
        if not recs:
            break
        # the checksum the first record chains to (the base checksum right after truncation)
        prev_rec = log.get(after) if after >= log.first_lsn else None
        prev = prev_rec.checksum if prev_rec is not None else log.base_checksum
        made.append(_write(d, recs, prev))
        after = recs[-1].lsn
    return made


def _write(d: str, recs: list[Record], prev: bytes) -> Segment:
    data = pack(
        {
            "format": FORMAT,
            "first": recs[0].lsn,
            "last": recs[-1].lsn,
            "first_ts": recs[0].ts,
            "last_ts": recs[-1].ts,
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
    return prev, recs, int(m.get("first_ts", 0)), int(m.get("last_ts", 0))


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
