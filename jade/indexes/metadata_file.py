"""The metadata side of an index checkpoint: one file beside the index file holding a LiveDb's
``meta`` (label -> metadata of every live vector) and ``terms`` (the inverted index of metadata
terms), so that a start-up from a checkpoint needs neither a scan of the vector store nor a
per-vector ``index_terms``.

File layout (all integers little-endian)::

    MAGIC (8 bytes) | payload length (8) | crc32 of the payload (4) | payload

The payload is one msgpack map::

    {"format": 2, "count": n,
     "labels": <n int64>,                      # sorted; row i is the label of entry i
     "offsets": <n int64>,                     # row for row: where its entry starts in "arena"
     "arena": <bytes>,                         # the entries: 4-byte length, packed metadata
     "fields": [[field, [value, ...], <offsets int64>, <rows int64>], ...]}

(``PackedMeta.to_file``: the packed metadata goes to disk and back as it is held, with no
per-vector Python.) Format 1, read still, held ``"meta": [metadata, ...]`` instead of
``offsets`` and ``arena``.

Under ``fields`` each field's terms are flattened: the vectors of ``(field, values[j])`` are
the rows ``rows[offsets[j]:offsets[j + 1]]`` of ``labels``. Loading is numpy: each term's
labels are one take of ``labels`` (``Terms.from_arrays``), with no per-vector Python.

Crash safety: written with ``wal.files.write_atomic`` (tmp file, fsync, rename, directory
fsync). A file
that is missing, truncated, fails its checksum or disagrees with the expected count raises
``CheckpointError``: the caller then treats the whole checkpoint as not usable.
"""

from __future__ import annotations

import gc
import zlib
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import msgpack
import numpy as np

from jade.indexes.packed_meta import PackedMeta
from jade.indexes.terms import Term, Terms
from wal.files import write_atomic

FORMAT = 2
MAGIC = b"JADEMD\x00\x01"
SUFFIX = ".meta"  # the metadata file is ``<index file name> + SUFFIX``
_HEADER = len(MAGIC) + 8 + 4



class CheckpointError(Exception):
    """The metadata file is missing, damaged or not the one the checkpoint describes."""


def write_metadata(path: str, meta: Mapping[int, Any], terms: Mapping[Term, Any]) -> int:
    """Write ``meta`` and ``terms`` to ``path`` atomically and durably (``write_atomic``).
    Returns the number of labels written. Neither may change meanwhile: a checkpoint passes a
    capture (``LiveDb.capture_metadata``)."""
    count, chunks = encode_metadata(meta, terms)
    crc = 0
    for chunk in chunks:
        crc = zlib.crc32(chunk, crc)
    size = sum(map(len, chunks))
    write_atomic(path, MAGIC, size.to_bytes(8, "little"), crc.to_bytes(4, "little"), *chunks)
    return count


def encode_metadata(meta: Mapping[int, Any], terms: Mapping[Term, Any]
                    ) -> tuple[int, list[bytes]]:
    """``(label count, payload)``: the payload as msgpack chunks whose concatenation is the
    map described above. Built in bounded steps (at most ``_CHUNK`` metadata values, term
    values or sets per C call), never one long call: a checkpoint encodes while the writer
    thread applies records and searches run, and those need the GIL between the steps."""
    with _gc_paused():
        labels, offsets_md, arena = PackedMeta.of(meta).to_file()
        order = np.arange(len(labels))
        by_field: dict[str, tuple[list[str], list[np.ndarray]]] = {}
        for (field, value), members in Terms.of(terms).flat():
            values, sets = by_field.setdefault(field, ([], []))
            values.append(value)
            sets.append(members)
        pk = msgpack.Packer(use_bin_type=True)
        out = [pk.pack_map_header(6)]
        out += map(pk.pack, ("format", FORMAT, "count", len(labels), "labels", _le(labels),
                             "offsets", _le(offsets_md), "arena", arena))
        out += [pk.pack("fields"), pk.pack_array_header(len(by_field))]
        for field, (values, sets) in by_field.items():
            offsets = np.zeros(len(sets) + 1, dtype=np.int64)
            np.cumsum(np.fromiter(map(len, sets), dtype=np.int64, count=len(sets)), out=offsets[1:])
            flat = np.concatenate(sets) if sets else np.zeros(0, dtype=np.int64)
            out += [pk.pack_array_header(4), pk.pack(field)]
            out += _pack_list(pk, values)
            out += [pk.pack(_le(offsets)), pk.pack(_le(_rows_of(labels, order, flat)))]
    return len(labels), out


_CHUNK = 4096


def _pack_list(pk: msgpack.Packer, items: list[Any]) -> list[bytes]:
    """``items`` as a msgpack array: its header, then the packed items ``_CHUNK`` at a time."""
    return [pk.pack_array_header(len(items))] + [
        b"".join(map(pk.pack, items[i : i + _CHUNK])) for i in range(0, len(items), _CHUNK)
    ]


def read_metadata(path: str, count: int) -> tuple[PackedMeta, Terms]:
    """``(meta, terms)`` exactly as ``LiveDb.load_metadata`` would build them from the same
    vectors. Raises ``CheckpointError`` unless the file is intact and holds ``count`` labels."""
    try:
        with open(path, "rb") as fh:
            raw = fh.read()
    except OSError as exc:
        raise CheckpointError(f"metadata file unreadable: {exc}") from exc
    if len(raw) < _HEADER or raw[: len(MAGIC)] != MAGIC:
        raise CheckpointError("metadata file: bad header")
    size = int.from_bytes(raw[len(MAGIC) : len(MAGIC) + 8], "little")
    crc = int.from_bytes(raw[len(MAGIC) + 8 : _HEADER], "little")
    body = memoryview(raw)[_HEADER:]
    if len(body) != size or zlib.crc32(body) != crc:
        raise CheckpointError("metadata file: truncated or checksum mismatch")
    try:
        with _gc_paused():
            return _decode(body, count)
    except CheckpointError:
        raise
    except Exception as exc:  # any shape error: never trust a partial state
        raise CheckpointError(f"metadata file: malformed ({type(exc).__name__}: {exc})") from exc


def _decode(body: memoryview, count: int) -> tuple[PackedMeta, Terms]:
    doc = msgpack.unpackb(body, raw=False, strict_map_key=False)
    if doc["format"] not in (1, FORMAT):
        raise CheckpointError(f"metadata file: format {doc['format']!r}, want {FORMAT}")
    label_arr = np.frombuffer(doc["labels"], dtype="<i8")
    labels = label_arr.tolist()
    if doc["format"] == 1:  # a checkpoint of an older version: packed here, once
        mds = doc["meta"]
        if len(mds) != count:
            raise CheckpointError(f"metadata file: {len(mds)} metadata, want {count}")
        meta = PackedMeta.of(dict(zip(labels, mds, strict=True)))
    else:
        offsets = np.frombuffer(doc["offsets"], dtype="<i8")
        try:
            meta = PackedMeta.from_file(label_arr, offsets, doc["arena"])
        except ValueError as exc:
            raise CheckpointError(f"metadata file: {exc}") from exc
    if doc["count"] != count or len(labels) != count:
        raise CheckpointError(f"metadata file: {len(labels)} labels, want {count}")
    if len(meta) != count:
        raise CheckpointError("metadata file: duplicate labels")
    parts: list[tuple[Term, np.ndarray]] = []
    for field, values, offsets_b, rows_b in doc["fields"]:
        offsets = np.frombuffer(offsets_b, dtype="<i8")
        rows = np.frombuffer(rows_b, dtype="<i8")
        if (
            len(offsets) != len(values) + 1
            or offsets[0] != 0
            or offsets[-1] != len(rows)
            or np.any(np.diff(offsets) < 0)
            or (len(rows) and (rows.min() < 0 or rows.max() >= count))
        ):
            raise CheckpointError(f"metadata file: inconsistent terms of {field!r}")
        members = label_arr.astype(np.int64)[rows]
        for value, lo, hi in zip(values, offsets.tolist(), offsets[1:].tolist(), strict=False):
            parts.append(((field, value), members[lo:hi]))
    return meta, Terms.from_arrays(parts)


@contextmanager
def _gc_paused() -> Iterator[None]:
    """No cyclic GC while millions of containers are built: the collector would walk the
    growing heap again and again (2-4x the time at 1M vectors); nothing built here is garbage."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def _rows_of(labels: np.ndarray, order: np.ndarray, flat: np.ndarray) -> np.ndarray:
    """The row in ``labels`` (sorted by ``order``) of each label in ``flat``. Raises
    ``ValueError`` for a label that is not in ``labels``: terms without metadata would be a
    LiveDb out of step with itself, never written to a checkpoint."""
    if not len(flat):
        return flat
    if not len(labels):
        raise ValueError("terms name labels that have no metadata")
    rows = order[np.minimum(np.searchsorted(labels, flat, sorter=order), len(order) - 1)]
    if not np.array_equal(labels[rows], flat):
        raise ValueError("terms name labels that have no metadata")
    return rows


def _le(a: np.ndarray) -> bytes:
    return a.astype("<i8", copy=False).tobytes()


__all__ = [
    "FORMAT",
    "SUFFIX",
    "CheckpointError",
    "Terms",
    "encode_metadata",
    "read_metadata",
    "write_metadata",
]
