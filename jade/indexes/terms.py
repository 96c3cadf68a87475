"""``Terms``: a database's inverted index of metadata terms, ``(field, value) -> labels``, held
compactly (issue 16, item 4: memory).

A term of few labels is a Python set. A term of many (``SMALL`` and more) is a sorted numpy
array of its labels plus two small sets of the labels added and removed since (``_Big``): 4
bytes a label (int32 while the labels fit) instead of the ~50 of a set slot and an int
object; the changes are merged into a new array once they pass an eighth of it. Where the
old sets cost ~200 bytes a vector for 3 fields, this costs ~15-30.

Threads: one writer (the projection's apply, under its lock) and searches reading. A merge
puts a new ``_Big`` in the dict (never changes an array in place); ``add``/``discard`` change
the small sets in place, each change one C-level set operation. A reader may see a change
half way between two terms, as with the sets before: the term lookup only proposes
candidates, which are then checked against their metadata (``LiveDb.matching``).

Checkpoints: ``capture`` copies the dict and shares its sets and arrays until ``release``;
meanwhile the writer copies a set (or a ``_Big``'s sets) before its first change to it, so the
capture stays as it was taken.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import numpy as np
from numpy.typing import NDArray

I64 = NDArray[np.int64]
Term = tuple[str, str]
SMALL = 64  # labels from which a term is held as an array


class _Big:
    __slots__ = ("arr", "add", "dele")

    def __init__(self, arr: NDArray[np.integer[Any]], add: set[int] | None = None,
                 dele: set[int] | None = None):
        self.arr = arr  # sorted, unique, int32 while the labels fit; never changed in place
        self.add = add if add is not None else set()  # labels in the term, not in ``arr``
        self.dele = dele if dele is not None else set()  # labels of ``arr`` not in the term

    def __len__(self) -> int:
        return len(self.arr) - len(self.dele) + len(self.add)

    def members(self) -> I64:
        arr, add, dele = self.arr.astype(np.int64), list(self.add), list(self.dele)
        if dele:
            arr = arr[~np.isin(arr, np.asarray(dele, dtype=np.int64), assume_unique=True)]
        if add:
            arr = np.union1d(arr, np.asarray(add, dtype=np.int64))
        return arr

    def merged(self) -> _Big:
        return _Big(_narrow(self.members()))


def _narrow(arr: I64) -> NDArray[np.integer[Any]]:
    """A sorted label array as int32 when its labels fit (4 bytes a label instead of 8)."""
    if len(arr) and 0 <= int(arr[0]) and int(arr[-1]) < 2**31:
        return arr.astype(np.int32)
    return arr


Entry = set[int] | _Big


class Terms(Mapping[Term, set[int]]):
    """``(field, value) -> labels``. ``add``/``discard``: the writer thread only; ``add`` is
    given a label not in the term yet and ``discard`` one in it (``LiveDb`` keeps that true:
    a vector's old terms are taken away before its new ones are added)."""

    def __init__(self) -> None:
        self._d: dict[Term, Entry] = {}
        self._captured: dict[Term, Entry] | None = None

    # -- reads -----------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._d)

    def __iter__(self) -> Iterator[Term]:
        return iter(list(self._d))

    def __contains__(self, t: object) -> bool:
        return t in self._d

    def __getitem__(self, t: Term) -> set[int]:
        """The labels of ``t`` as a new set (tests, tools; searches use ``members``)."""
        e = self._d[t]
        return set(e.members().tolist()) if isinstance(e, _Big) else set(e)

    def count(self, t: Term) -> int:
        e = self._d.get(t)
        return 0 if e is None else len(e)

    def members(self, t: Term) -> I64:
        """The labels of ``t`` (sorted for a large term)."""
        e = self._d.get(t)
        if e is None:
            return np.zeros(0, dtype=np.int64)
        if isinstance(e, _Big):
            return e.members()
        return np.asarray(list(e), dtype=np.int64)  # list(): one C-level copy

    def flat(self) -> Iterator[tuple[Term, I64]]:
        """Every term and its labels, for the metadata file."""
        for t, e in list(self._d.items()):
            yield t, (e.members() if isinstance(e, _Big)
                      else np.fromiter(e, dtype=np.int64, count=len(e)))

    # -- writes (the writer thread) --------------------------------------------------------
    def add(self, t: Term, label: int) -> None:
        e = self._own(t)
        if e is None:
            self._d[t] = {label}
        elif isinstance(e, _Big):
            if label in e.dele:
                e.dele.discard(label)
            else:
                e.add.add(label)
            self._settle(t, e)
        else:
            e.add(label)
            if len(e) >= SMALL:
                self._d[t] = _Big(_narrow(np.sort(np.fromiter(e, dtype=np.int64,
                                                              count=len(e)))))

    def discard(self, t: Term, label: int) -> None:
        e = self._own(t)
        if e is None:
            return
        if isinstance(e, _Big):
            if label in e.add:
                e.add.discard(label)
            else:
                e.dele.add(label)
            if len(e) == 0:
                del self._d[t]
            else:
                self._settle(t, e)
        else:
            e.discard(label)
            if not e:
                del self._d[t]

    def _own(self, t: Term) -> Entry | None:
        """``t``'s entry, copied first if a capture holds it (copy on write)."""
        e = self._d.get(t)
        if e is not None and self._captured is not None and self._captured.get(t) is e:
            e = self._d[t] = (_Big(e.arr, set(e.add), set(e.dele)) if isinstance(e, _Big)
                              else set(e))
        return e

    def _settle(self, t: Term, e: _Big) -> None:
        if len(e.add) + len(e.dele) > max(SMALL // 4, len(e.arr) >> 3):
            m = e.merged()
            self._d[t] = m if len(m) >= SMALL // 2 else set(m.arr.tolist())

    # -- checkpoints -----------------------------------------------------------------------
    def capture(self) -> Terms:
        """The terms as they are now, for a checkpoint to write while writes go on: one dict
        copy; the entries are shared until ``release``."""
        copy = Terms()
        copy._d = self._d.copy()
        self._captured = copy._d
        return copy

    def release(self) -> None:
        self._captured = None

    @classmethod
    def from_arrays(cls, items: Iterable[tuple[Term, I64]]) -> Terms:
        out = cls()
        for t, arr in items:
            if len(arr) == 0:
                continue
            out._d[t] = (_Big(_narrow(np.unique(np.asarray(arr, dtype=np.int64))))
                         if len(arr) >= SMALL
                         else set(np.asarray(arr).tolist()))
        return out

    @classmethod
    def of(cls, items: Mapping[Term, Iterable[int]]) -> Terms:
        if isinstance(items, Terms):
            return items
        return cls.from_arrays(
            (t, np.fromiter(v, dtype=np.int64)) for t, v in items.items())


__all__ = ["SMALL", "Term", "Terms"]
