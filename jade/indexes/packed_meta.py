"""``PackedMeta``: a database's metadata by label, each value msgpack-packed into one
append-only arena (issue 16, item 4: memory).

A Python dict of dicts costs ~400 bytes per vector for a 3-field metadata (the dict, its
values, the int key, the outer dict's slot); packed, the same metadata is ~27 bytes, plus a
4-byte length before it in the arena and an 8-byte offset in a label-indexed numpy array:
~40 bytes. Readers decode what they read (``msgpack.unpackb``, ~0.5 µs for a small dict):
filter scans and the re-check of a term lookup's candidates.

Threads: one writer (the projection's apply, under its lock) and any number of readers
(searches). An entry is never changed in place: a new value is appended and the label's
offset moved to it, so a reader that read an offset finds a whole entry there, whatever the
writer does meanwhile (a ``bytearray`` slice is taken under the GIL). ``(arena, offsets)`` is
one tuple, replaced whole when the offsets grow or the arena is compacted (once the garbage of
overwritten and deleted entries passes the live bytes), so a reader never pairs an arena
with another arena's offsets.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import msgpack
import numpy as np
from numpy.typing import NDArray

I64 = NDArray[np.int64]
_PREFIX = 4  # the little-endian length before each entry
_COMPACT_MIN = 1 << 20  # garbage bytes below which the arena is never compacted


def pack(md: Any) -> bytes:
    packed: bytes = msgpack.packb(md, use_bin_type=True)
    return packed


def unpack(raw: bytes | bytearray) -> Any:
    return msgpack.unpackb(raw, raw=False, strict_map_key=False)


class PackedMeta(Mapping[int, Any]):
    """label -> metadata (decoded on read). ``put``/``discard``: the writer thread only."""

    def __init__(self) -> None:
        self._state: tuple[bytearray, I64] = (bytearray(), np.full(0, -1, dtype=np.int64))
        self._count = 0
        self._live = 0  # bytes of the entries labels point at
        self._garbage = 0  # bytes of entries no label points at

    # -- reads (any thread) -----------------------------------------------------------------
    def __len__(self) -> int:
        return self._count

    def __iter__(self) -> Iterator[int]:
        return iter(self.labels().tolist())

    def __contains__(self, label: object) -> bool:
        ref = self._state[1]
        return isinstance(label, int) and 0 <= label < len(ref) and int(ref[label]) >= 0

    def __getitem__(self, label: int) -> Any:
        raw = self.raw(label)
        if raw is None:
            raise KeyError(label)
        return unpack(raw)

    def get(self, label: int, default: Any = None) -> Any:
        raw = self.raw(label)
        return default if raw is None else unpack(raw)

    def raw(self, label: int) -> bytearray | None:
        """The packed metadata of ``label``, or None."""
        arena, ref = self._state
        if not 0 <= label < len(ref):
            return None
        off = int(ref[label])
        if off < 0:
            return None
        return _entry(arena, off)

    def labels(self) -> I64:
        """The labels present, sorted."""
        return np.nonzero(self._state[1] >= 0)[0].astype(np.int64)

    def items_of(self, labels: Iterable[int]) -> Iterator[tuple[int, Any]]:
        """``(label, metadata)`` of ``labels`` (None for one deleted meanwhile)."""
        arena, ref = self._state
        n = len(ref)
        for x in labels:
            off = int(ref[x]) if 0 <= x < n else -1
            yield x, (unpack(_entry(arena, off)) if off >= 0 else None)

    def snapshot_items(self) -> tuple[int, Iterator[tuple[int, Any]]]:
        """How many labels are present now, and an iterator over them as they are now (the
        offsets copied: writes meanwhile do not show)."""
        arena, ref = self._state
        ref = ref.copy()  # one read of every offset: the writer may delete meanwhile
        labels = np.nonzero(ref >= 0)[0]
        offs = ref[labels].tolist()

        def walk() -> Iterator[tuple[int, Any]]:
            for x, off in zip(labels.tolist(), offs, strict=True):
                yield x, unpack(_entry(arena, off))

        return len(offs), walk()

    # -- writes (the writer thread) --------------------------------------------------------
    def put(self, label: int, md: Any) -> None:
        self.put_raw(label, pack(md))

    def put_raw(self, label: int, raw: bytes | bytearray) -> None:
        arena, ref = self._state
        if label >= len(ref):
            grown = np.full(max(1024, label + 1, 2 * len(ref)), -1, dtype=np.int64)
            grown[: len(ref)] = ref
            ref = grown
            self._state = (arena, ref)
        old = int(ref[label])
        if old >= 0:
            self._drop(arena, old)
        else:
            self._count += 1
        off = len(arena)
        arena += len(raw).to_bytes(_PREFIX, "little")
        arena += raw
        ref[label] = off
        self._live += _PREFIX + len(raw)
        self._maybe_compact()

    def discard(self, label: int) -> None:
        arena, ref = self._state
        if not 0 <= label < len(ref) or int(ref[label]) < 0:
            return
        self._drop(arena, int(ref[label]))
        ref[label] = -1
        self._count -= 1
        self._maybe_compact()

    def _drop(self, arena: bytearray, off: int) -> None:
        size = _PREFIX + int.from_bytes(arena[off : off + _PREFIX], "little")
        self._live -= size
        self._garbage += size

    def _maybe_compact(self) -> None:
        if self._garbage > max(_COMPACT_MIN, self._live):
            arena, ref = self._state
            labels, offsets, blob = _compacted(arena, ref)
            new = np.full(len(ref), -1, dtype=np.int64)
            new[labels] = offsets
            self._state = (bytearray(blob), new)
            self._garbage = 0

    # -- checkpoints -----------------------------------------------------------------------
    def capture(self) -> PackedMeta:
        """A copy that later writes do not change (a checkpoint writes it meanwhile)."""
        arena, ref = self._state
        copy = PackedMeta()
        copy._state = (bytearray(arena), ref.copy())
        copy._count, copy._live, copy._garbage = self._count, self._live, self._garbage
        return copy

    def to_file(self) -> tuple[I64, I64, bytes]:
        """(labels sorted, each one's offset in the blob, the blob): the live entries only."""
        arena, ref = self._state
        return _compacted(arena, ref)

    @classmethod
    def from_file(cls, labels: I64, offsets: I64, blob: bytes) -> PackedMeta:
        """What ``to_file`` gave; raises ``ValueError`` when the parts do not fit together."""
        labels = np.asarray(labels, dtype=np.int64)
        offsets = np.asarray(offsets, dtype=np.int64)
        if len(labels) != len(offsets):
            raise ValueError("labels and offsets differ in length")
        out = cls()
        arena = bytearray(blob)
        if len(labels):
            if labels.min() < 0 or len(np.unique(labels)) != len(labels):
                raise ValueError("negative or duplicate labels")
            if offsets.min() < 0 or offsets.max() + _PREFIX > len(arena):
                raise ValueError("an offset outside the metadata")
            buf = np.frombuffer(bytes(arena), dtype=np.uint8)
            sizes = (buf[offsets].astype(np.int64) | buf[offsets + 1].astype(np.int64) << 8
                     | buf[offsets + 2].astype(np.int64) << 16
                     | buf[offsets + 3].astype(np.int64) << 24)
            if int((offsets + _PREFIX + sizes).max()) > len(arena):
                raise ValueError("an entry past the end of the metadata")
            ref = np.full(int(labels.max()) + 1, -1, dtype=np.int64)
            ref[labels] = offsets
            out._state = (arena, ref)
            out._count = len(labels)
            out._live = int((sizes + _PREFIX).sum())
            out._garbage = len(arena) - out._live
        return out

    @classmethod
    def of(cls, items: Mapping[int, Any]) -> PackedMeta:
        if isinstance(items, PackedMeta):
            return items
        out = cls()
        for label, md in items.items():
            out.put(label, md)
        return out


def _entry(arena: bytearray, off: int) -> bytearray:
    size = int.from_bytes(arena[off : off + _PREFIX], "little")
    return arena[off + _PREFIX : off + _PREFIX + size]


def _compacted(arena: bytearray, ref: I64) -> tuple[I64, I64, bytes]:
    """The live entries of ``arena`` in label order: (labels, their offsets, the blob)."""
    labels = np.nonzero(ref >= 0)[0].astype(np.int64)
    parts: list[bytes] = []
    offsets = np.empty(len(labels), dtype=np.int64)
    at = 0
    for i, off in enumerate(ref[labels].tolist()):
        size = _PREFIX + int.from_bytes(arena[off : off + _PREFIX], "little")
        parts.append(bytes(arena[off : off + size]))
        offsets[i] = at
        at += size
    return labels, offsets, b"".join(parts)


__all__ = ["PackedMeta", "pack", "unpack"]
