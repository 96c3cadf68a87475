"""Wire framing of the replication stream: each frame is a 4-byte big-endian length followed by
a msgpack map with a type ``t``:

  ``hello``   {primary_lsn, primary_ts, epoch, first_lsn}       first frame of a stream
  ``recs``    {records: [encoded record bytes...]}              in LSN order, no gaps
  ``hb``      {last_lsn, last_ts, epoch}                        heartbeat when idle
  ``reseed``  {reason, first_lsn}                               the follower must bootstrap
  ``fenced``  {reason}                                          the follower is ahead in epoch

Records travel exactly as stored (``Record.encoded()``), so the follower verifies the very bytes
the primary checksummed.
"""

from __future__ import annotations

from typing import Any

from wal.codec import pack, unpack

MAX_FRAME = 256 * 1024 * 1024


class FrameError(ValueError):
    pass


def frame(obj: dict[str, Any]) -> bytes:
    data = pack(obj)
    return len(data).to_bytes(4, "big") + data


def parse(data: bytes) -> dict[str, Any]:
    try:
        obj = unpack(data)
    except Exception as exc:  # msgpack raises several types on garbage
        raise FrameError(f"undecodable frame: {exc}") from None
    if not isinstance(obj, dict) or "t" not in obj:
        raise FrameError("frame without a type")
    return obj


def length(header: bytes) -> int:
    n = int.from_bytes(header, "big")
    if n <= 0 or n > MAX_FRAME:
        raise FrameError(f"bad frame length {n}")
    return n
