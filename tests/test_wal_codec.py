"""wal/codec.py: record layout, round trip, and the checksum chain catching any damage."""

from __future__ import annotations

import pytest

from wal.codec import (
    CHECKSUM_SIZE,
    GENESIS,
    VERSION,
    CodecError,
    Record,
    chain,
    decode,
    encode,
    key_lsn,
    lsn_key,
    verify_link,
)


def _chain_of(n: int, *, big: bool = False) -> list[Record]:
    """``n`` records chained from GENESIS, with varied bodies (vectors as raw bytes)."""
    out: list[Record] = []
    prev = GENESIS
    for i in range(1, n + 1):
        body = {
            "db": f"db{i % 3}",
            "ids": [f"v{i}", f"w{i}"],
            "values": bytes(range(i, i + (64 if big else 16))),
            "metadata": [{"k": i, "s": "x" * i}, None],
            "nested": {"a": [1, 2.5, None, True], "b": -i},
        }
        ts = 1_700_000_000_000_000_000 + i
        rec = encode(i, ts, 1 + i // 4, "vec.upsert", "alice", body, prev)
        out.append(rec)
        prev = rec.checksum
    return out


def _verify_sequence(blobs: list[bytes], start: bytes = GENESIS) -> list[Record]:
    """Decode a sequence verifying every link (what replay and replication do)."""
    prev = start
    out = []
    for raw in blobs:
        rec = decode(raw, prev)
        out.append(rec)
        prev = rec.checksum
    return out


def test_round_trip_keeps_every_field() -> None:
    body = {"id": "db1", "values": b"\x00\x01\x02\x03" * 4, "md": {"ü": [1, None]}, "n": 2**40}
    rec = encode(7, 123456789, 3, "db.create", "bob", body, GENESIS)
    data = rec.encoded()
    assert data[0] == VERSION
    assert data[1 : 1 + CHECKSUM_SIZE] == rec.checksum
    back = decode(data, GENESIS)
    assert back == rec
    assert (back.lsn, back.ts, back.epoch, back.type, back.actor) == (
        7,
        123456789,
        3,
        "db.create",
        "bob",
    )
    assert back.body == body
    assert isinstance(back.body["values"], bytes)  # vectors stay raw bytes, not lists
    assert back.payload == rec.payload
    assert back.encoded() == data  # forwarding a decoded record gives the same bytes
    # without the predecessor only the structure is checked
    assert decode(data) == rec


def test_checksum_is_chained_to_predecessor() -> None:
    a = encode(1, 1, 1, "t", "x", {}, GENESIS)
    b1 = encode(2, 2, 1, "t", "x", {"k": 1}, a.checksum)
    b2 = encode(2, 2, 1, "t", "x", {"k": 1}, GENESIS)
    assert b1.payload == b2.payload
    assert b1.checksum != b2.checksum  # same payload, different history
    assert b1.checksum == chain(a.checksum, b1.payload)
    verify_link(b1, a.checksum)
    with pytest.raises(CodecError):
        verify_link(b1, GENESIS)


def test_lsn_keys_sort_like_lsns() -> None:
    lsns = [0, 1, 2, 255, 256, 65535, 65536, 2**40, 2**63 - 1]
    keys = [lsn_key(x) for x in lsns]
    assert sorted(keys) == keys
    assert all(len(k) == 8 for k in keys)
    assert [key_lsn(k) for k in keys] == lsns


@pytest.mark.parametrize("which", [0, 2, 4])
def test_every_flipped_byte_is_detected(which: int) -> None:
    recs = _chain_of(6)
    target = recs[which]
    prev = GENESIS if which == 0 else recs[which - 1].checksum
    data = target.encoded()
    assert decode(data, prev) == target
    for pos in range(len(data)):
        for mask in (0x01, 0x80, 0xFF):
            damaged = bytearray(data)
            damaged[pos] ^= mask
            try:
                rec = decode(bytes(damaged), prev)
            except CodecError:
                continue
            # should never get here; if it does the chain must still refuse the record
            with pytest.raises(CodecError):
                verify_link(rec, prev)
            pytest.fail(f"flipping byte {pos} with {mask:#x} went unnoticed")


def test_damage_is_detected_in_a_whole_sequence() -> None:
    recs = _chain_of(5, big=True)
    blobs = [r.encoded() for r in recs]
    assert _verify_sequence(blobs) == recs
    for i in range(len(blobs)):
        for pos in (0, 1, 1 + CHECKSUM_SIZE, len(blobs[i]) // 2, len(blobs[i]) - 1):
            damaged = list(blobs)
            b = bytearray(damaged[i])
            b[pos] ^= 0x10
            damaged[i] = bytes(b)
            with pytest.raises(CodecError):
                _verify_sequence(damaged)


def test_damaged_predecessor_checksum_breaks_the_next_link() -> None:
    recs = _chain_of(3)
    # a record whose checksum field was rewritten to match a forged payload still breaks
    # the link of its successor
    forged_payload = encode(2, 99, 1, "t", "mallory", {}, recs[0].checksum)
    blobs = [recs[0].encoded(), forged_payload.encoded(), recs[2].encoded()]
    with pytest.raises(CodecError):
        _verify_sequence(blobs)


def test_reordering_is_detected() -> None:
    recs = _chain_of(4)
    blobs = [r.encoded() for r in recs]
    swapped = [blobs[0], blobs[2], blobs[1], blobs[3]]
    with pytest.raises(CodecError):
        _verify_sequence(swapped)
    reversed_ = list(reversed(blobs))
    with pytest.raises(CodecError):
        _verify_sequence(reversed_)


def test_duplication_and_omission_are_detected() -> None:
    recs = _chain_of(4)
    blobs = [r.encoded() for r in recs]
    with pytest.raises(CodecError):
        _verify_sequence([blobs[0], blobs[1], blobs[1], blobs[2]])
    with pytest.raises(CodecError):
        _verify_sequence([blobs[0], blobs[2], blobs[3]])  # one missing
    with pytest.raises(CodecError):
        _verify_sequence(blobs[1:])  # starting mid-chain from GENESIS
    # but from the right predecessor the tail verifies
    assert _verify_sequence(blobs[1:], recs[0].checksum) == recs[1:]


def test_truncated_data_is_detected() -> None:
    rec = _chain_of(1)[0]
    data = rec.encoded()
    for n in range(len(data)):
        with pytest.raises(CodecError):
            decode(data[:n], GENESIS)
    # structure-only decoding also refuses a cut-off payload
    for n in range(0, len(data) - 1, 3):
        with pytest.raises(CodecError):
            decode(data[:n])


def test_trailing_garbage_is_detected() -> None:
    rec = _chain_of(1)[0]
    with pytest.raises(CodecError):
        decode(rec.encoded() + b"\x00", GENESIS)
    with pytest.raises(CodecError):
        decode(rec.encoded() + b"\x01\x02")


def test_garbage_and_wrong_shapes_are_refused() -> None:
    import msgpack

    def raw(payload: bytes, prev: bytes = GENESIS) -> bytes:
        return bytes((VERSION,)) + chain(prev, payload) + payload

    bad_payloads = [
        msgpack.packb([1, 2, 3]),  # wrong arity
        msgpack.packb({"lsn": 1}),  # not an array
        msgpack.packb(["1", 2, 3, "t", "a", {}]),  # lsn not an int
        msgpack.packb([1, 2, 3, 4, "a", {}]),  # type not a str
        msgpack.packb([1, 2, 3, "t", "a", []]),  # body not a map
        b"\xc1",  # never-used msgpack byte
        b"\xff" * 5 + b"\xc1",
    ]
    for payload in bad_payloads:
        with pytest.raises(CodecError):
            decode(raw(payload), GENESIS)
        with pytest.raises(CodecError):
            decode(raw(payload))
    good = _chain_of(1)[0].encoded()
    with pytest.raises(CodecError):
        decode(bytes((VERSION + 1,)) + good[1:])
    with pytest.raises(CodecError):
        decode(b"")
