"""Record codec: how one log record is laid out in bytes, and its checksum chain.

A stored record is ``VERSION (1 byte) | checksum (16 bytes) | payload``, where payload is the
msgpack array ``[lsn, ts, epoch, type, actor, body]`` and

    checksum = blake2b-128(previous record's checksum || payload)

The first record chains to ``GENESIS`` (16 zero bytes). Verifying a record never re-encodes
anything: the checksum covers the exact payload bytes, so any flipped byte in the payload, the
checksum, or a reordering of records is detected by ``decode(..., prev_checksum=...)``.
Vectors travel inside bodies as raw little-endian float32 bytes (msgpack bin).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import msgpack

VERSION = 1
CHECKSUM_SIZE = 16
GENESIS = b"\x00" * CHECKSUM_SIZE
_HEADER = 1 + CHECKSUM_SIZE


class CodecError(ValueError):
    """A record that cannot be trusted: bad version, checksum mismatch, broken chain, garbage."""


@dataclass(frozen=True, slots=True)
class Record:
    """One durable event. ``ts`` is the primary's wall clock in nanoseconds."""

    lsn: int
    ts: int
    epoch: int
    type: str
    actor: str
    body: dict[str, Any]
    checksum: bytes = GENESIS
    payload: bytes = b""  # the exact encoded payload (kept so replicas forward bytes unchanged)

    def encoded(self) -> bytes:
        return bytes((VERSION,)) + self.checksum + self.payload


def lsn_key(lsn: int) -> bytes:
    """8-byte big-endian key: LMDB's byte order is LSN order."""
    return lsn.to_bytes(8, "big")


def key_lsn(key: bytes) -> int:
    return int.from_bytes(key, "big")


def chain(prev_checksum: bytes, payload: bytes) -> bytes:
    h = hashlib.blake2b(prev_checksum, digest_size=CHECKSUM_SIZE)
    h.update(payload)  # not ``prev_checksum + payload``: a payload may be megabytes
    return h.digest()


def pack(obj: Any) -> bytes:
    packed: bytes = msgpack.packb(obj, use_bin_type=True)  # msgpack is untyped
    return packed


def unpack(data: bytes) -> Any:
    return msgpack.unpackb(data, raw=False, strict_map_key=False)


def encode(
    lsn: int,
    ts: int,
    epoch: int,
    type_: str,
    actor: str,
    body: dict[str, Any],
    prev_checksum: bytes,
) -> Record:
    """Build a record chained to ``prev_checksum``."""
    payload = pack([lsn, ts, epoch, type_, actor, body])
    return Record(lsn, ts, epoch, type_, actor, body, chain(prev_checksum, payload), payload)


def decode(data: bytes, prev_checksum: bytes | None = None) -> Record:
    """Parse stored bytes. With ``prev_checksum`` the chain link is verified too; without it only
    the structure is checked (use that for random access, never for replay or replication)."""
    if len(data) < _HEADER + 1:
        raise CodecError(f"record too short ({len(data)} bytes)")
    if data[0] != VERSION:
        raise CodecError(f"unknown record version {data[0]}")
    checksum = bytes(data[1:_HEADER])
    payload = bytes(data[_HEADER:])
    if prev_checksum is not None and chain(prev_checksum, payload) != checksum:
        raise CodecError("checksum mismatch: the record or its predecessor is damaged")
    try:
        fields = unpack(payload)
    except Exception as exc:  # msgpack raises several unrelated types on garbage
        raise CodecError(f"undecodable payload: {exc}") from None
    if not (isinstance(fields, list) and len(fields) == 6):
        raise CodecError("payload is not a 6-field record")
    lsn, ts, epoch, type_, actor, body = fields
    if not (isinstance(lsn, int) and isinstance(ts, int) and isinstance(epoch, int)):
        raise CodecError("record header fields have wrong types")
    if not (isinstance(type_, str) and isinstance(actor, str) and isinstance(body, dict)):
        raise CodecError("record type/actor/body have wrong types")
    return Record(lsn, ts, epoch, type_, actor, body, checksum, payload)


def verify_link(record: Record, prev_checksum: bytes) -> None:
    """Raise unless ``record`` chains to ``prev_checksum``."""
    if chain(prev_checksum, record.payload) != record.checksum:
        raise CodecError(f"checksum chain broken at LSN {record.lsn}")
