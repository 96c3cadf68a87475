"""One database's in-memory side: its serving vector index, its metadata (for filters), an
inverted index of metadata terms, and a cache of filter results valid until the next write.

Filtered search keeps its recall at every selectivity: the filter is evaluated first (narrowed by
the inverted index when it has equality terms; the result is cached until the next write), then
- few matches (``<= EXACT_ALWAYS``): an exact scan of just the matching vectors;
- a large share of the database (at least ``overfetch_percent``): an unfiltered HNSW search for
  ``2 * topK / share`` neighbours, post-filtered, kept if at least ``topK`` of them match;
- otherwise, up to ``exact_scan_max`` matches: the exact scan;
- beyond: HNSW with the filter applied during the graph search and ``ef`` widened by the inverse
  of the selectivity, so ``topK`` counts only matching vectors (filter-then-rank).

The one part of a search whose work grows with the database and with the filter is the metadata
scan; given a ``deadline``, it checks the clock between slices of records (sized so a slice takes
a few milliseconds) and raises ``QueryTimeout`` once the deadline has passed: the work stops,
it is not left running behind an answer. Everything after the scan is bounded (at most
``exact_scan_max`` vectors scanned exactly, or hnswlib's ``ef`` of at most 4,096).
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from itertools import islice
from typing import Any, Protocol

import numpy as np

from jade import events as ev
from jade.core.filters import Filter, index_terms
from jade.indexes.base import VectorIndex
from jade.indexes.flat import FlatIndex
from jade.indexes.hnsw import HnswIndex
from jade.indexes.packed_meta import PackedMeta
from jade.indexes.terms import Terms


class IdLookup(Protocol):
    def ids_for_labels(self, db_id: str, labels: list[int]) -> list[str | None]: ...


EXACT_ALWAYS = 4096  # matches up to this many: an exact scan is the cheapest answer


class QueryTimeout(Exception):
    """A search passed its deadline (the ``query_timeout_seconds`` setting) and was stopped."""


def _select(items: Iterable[tuple[int, Any]], count: int, f: Filter, deadline: float | None
            ) -> list[int]:
    """The labels of the ``count`` ``items`` (label, metadata) that ``f`` matches. With a
    ``deadline`` (``time.monotonic()``), the clock is read between slices, each sized to take
    about 1-5 ms (from one record, doubling while quicker, halving while slower): a cheap filter
    pays one clock read per few thousand records, an expensive one (hundreds of regexes over long
    strings) is stopped within about two records' work of the deadline. The slices are taken
    from one iterator (materialising them would allocate a tuple per record)."""
    matches = f.matches
    if deadline is None:
        return [x for x, md in items if matches(md)]
    clock = time.monotonic
    out: list[int] = []
    it: Iterator[tuple[int, Any]] = iter(items)
    done, step = 0, 1
    while done < count:
        t = clock()
        if t > deadline:
            raise QueryTimeout
        out += [x for x, md in islice(it, step) if matches(md)]
        done += step
        spent = clock() - t
        if spent < 0.001 and step < 65536:
            step *= 2
        elif spent > 0.005 and step > 1:
            step //= 2
    return out


class Match:
    """The labels a filter matches (sorted), with a set and a mask by label built on demand."""

    __slots__ = ("labels", "_set", "_mask")

    def __init__(self, labels: np.ndarray) -> None:
        self.labels = labels
        self._set: set[int] | None = None
        self._mask: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def contains(self) -> set[int]:
        if self._set is None:
            self._set = set(self.labels.tolist())
        return self._set

    def mask_of(self, labels: np.ndarray) -> np.ndarray:
        """Which of ``labels`` match."""
        if self._mask is None:
            top = int(self.labels[-1]) + 1 if len(self.labels) else 0
            mask = np.zeros(top, dtype=bool)
            mask[self.labels] = True
            self._mask = mask
        mask = self._mask
        inside = labels < len(mask)
        out = np.zeros(len(labels), dtype=bool)
        out[inside] = mask[labels[inside]]
        return out


@dataclass(frozen=True, slots=True)
class IndexSpec:
    """What the serving index is built with; a change of any field but ef_search rebuilds."""

    index_id: str
    kind: str  # "hnsw" | "flat"
    m: int
    ef_construction: int
    ef_search: int

    def build_key(self) -> tuple[str, str, int, int]:
        return (self.index_id, self.kind, self.m, self.ef_construction)


def spec_of(index: ev.IndexDef | None) -> IndexSpec:
    """What the serving index ``index`` is built with (None: no index, an exact scan). The
    event's parameters are complete (decided before the append)."""
    if index is None:
        return IndexSpec("", "flat", 0, 0, 0)
    p = index.parameters
    return IndexSpec(index.id, index.kind, int(p.get("M", 0)), int(p.get("efConstruction", 0)),
                     int(p.get("efSearch", 0)))


@dataclass(slots=True)
class SearchStats:
    filter_cache_hit: bool | None = None  # None: no filter
    matched: int | None = None
    strategy: str = "index"


class LiveDb:
    def __init__(
        self,
        db_id: str,
        dim: int,
        metric: str,
        spec: IndexSpec,
        *,
        threads: int = 0,
        index: VectorIndex | None = None,
        indexes: list[ev.IndexDef] | None = None,
    ) -> None:
        self.db_id = db_id
        self.dim = dim
        self.metric = metric
        self.spec = spec
        # the database's indexes as folded from its events (the last one serves searches)
        self.indexes: list[ev.IndexDef] = list(indexes or [])
        self.threads = threads
        self.index = index if index is not None else self.new_index(spec)
        # label -> metadata, for every live vector (packed: ``packed_meta.py``)
        self.meta = PackedMeta()
        self.terms = Terms()  # the inverted index of metadata terms (``terms.py``)
        self.version = 0  # bumped on every write: filter results are cached per version
        self._filter_cache: OrderedDict[str, tuple[int, Match]] = OrderedDict()
        self._cache_lock = threading.Lock()
        self.covered_lsn = 0  # the LSN this in-memory state reflects (for checkpoints)
        self.dirty = False
        # label -> vector id, filled from the store as searches return labels (a label names
        # one id for ever: a new id always gets a new label), emptied for deleted labels
        self._id_of: list[str | None] = []

    def new_index(self, spec: IndexSpec, capacity: int = 1024) -> VectorIndex:
        if spec.kind == "hnsw":
            return HnswIndex(
                self.dim,
                self.metric,
                m=spec.m,
                ef_construction=spec.ef_construction,
                ef_search=spec.ef_search,
                capacity=capacity,
                threads=self.threads,
            )
        return FlatIndex(self.dim, self.metric, capacity=capacity)

    def rebuilt(self, indexes: list[ev.IndexDef]) -> LiveDb:
        """A new LiveDb serving ``indexes[-1]`` (built with its parameters), holding this one's
        vectors and metadata: the projection's own state, never the store's."""
        spec = spec_of(indexes[-1] if indexes else None)
        new = LiveDb(self.db_id, self.dim, self.metric, spec, threads=self.threads,
                     indexes=indexes)
        labels = self.meta.labels()
        new.index = new.new_index(spec, capacity=max(1024, len(labels) + 1024))
        for i in range(0, len(labels), 8192):
            keep, vecs = self.index.get_present(labels[i : i + 8192])
            new.upsert(keep, vecs, [md for _, md in self.meta.items_of(keep.tolist())])
        new._id_of = self._id_of
        new.covered_lsn = self.covered_lsn
        new.dirty = True
        return new

    # -- writes (writer thread) ------------------------------------------------------------
    def upsert(self, labels: np.ndarray, vectors: np.ndarray, metadata: list[Any],
               lsn: int | None = None) -> None:
        """With ``lsn`` (the record's), the vector index only stages the vectors and takes them
        into its graph later (the index follower); the metadata is current at once."""
        if lsn is None:
            self.index.add(labels, vectors)
        else:
            self.index.stage(labels, vectors, lsn)
        for label, md in zip(labels.tolist(), metadata, strict=True):
            self._unterm(label)
            self.meta.put(label, md)
            for t in index_terms(md if isinstance(md, dict) else None):
                self.terms.add(t, label)
        self._touch()

    def delete(self, labels: list[int], lsn: int | None = None) -> None:
        if lsn is None:
            self.index.delete(labels)
        else:
            self.index.stage_delete(labels, lsn)
        known = self._id_of
        for label in labels:
            self._unterm(label)
            self.meta.discard(label)
            if label < len(known):
                known[label] = None
        self._touch()

    def ids_for(self, labels: list[int], store: IdLookup) -> list[str | None]:
        """The vector ids of ``labels`` (None for one deleted meanwhile): from memory, the
        misses from ``store`` (``DataStore.ids_for_labels``), which are remembered."""
        known = self._id_of
        n = len(known)
        out = [known[x] if x < n else None for x in labels]
        miss = [i for i, v in enumerate(out) if v is None]
        if miss:
            found = store.ids_for_labels(self.db_id, [labels[i] for i in miss])
            top = max(labels[i] for i in miss)
            if top >= len(known):
                known.extend([None] * (max(top + 1, 2 * len(known)) - len(known)))
            for i, vid in zip(miss, found, strict=True):
                out[i] = vid
                if vid is not None:
                    known[labels[i]] = vid
        return out

    def load_metadata(self, labels: list[int], metadata: list[Any]) -> None:
        """Fill the metadata side without touching the vector index (start-up from a checkpoint)."""
        for label, md in zip(labels, metadata, strict=True):
            self.meta.put(label, md)
            for t in index_terms(md if isinstance(md, dict) else None):
                self.terms.add(t, label)

    def _unterm(self, label: int) -> None:
        old = self.meta.get(label)
        if old is None or not isinstance(old, dict):
            return
        for t in index_terms(old):
            self.terms.discard(t, label)

    # -- checkpoint captures (under the index manager's lock: no write runs meanwhile) ------
    def capture_metadata(self) -> tuple[PackedMeta, Terms]:
        """``meta`` and ``terms`` as they are now, for a checkpoint to write while writes go
        on: a copy of the packed metadata (two buffer copies) and of the terms dict, no
        per-vector or per-term Python. The terms' entries are shared until
        ``release_capture`` and the writer changes copies of them (``Terms``)."""
        return self.meta.capture(), self.terms.capture()

    def release_capture(self) -> None:
        """The capture is written (or dropped): the writer may change the terms in place."""
        self.terms.release()

    def _touch(self) -> None:
        self.version += 1
        self.dirty = True

    def __len__(self) -> int:
        return len(self.meta)

    # -- filters ---------------------------------------------------------------------------
    def matching(self, f: Filter, cache_size: int, deadline: float | None = None
                 ) -> tuple[Match, bool]:
        """The labels matching ``f``, and whether they came from the cache; ``QueryTimeout``
        once ``deadline`` (``time.monotonic()``) has passed (nothing is cached then)."""
        key = f.canonical
        version = self.version
        if cache_size:
            with self._cache_lock:
                hit = self._filter_cache.get(key)
                if hit is not None and hit[0] == version:
                    self._filter_cache.move_to_end(key)
                    return hit[1], True
        terms = f.equality_terms()
        meta = self.meta
        if terms:
            arrays = sorted((self.terms.members(t) for t in terms), key=len)
            cand = arrays[0]
            for other in arrays[1:]:
                if not len(cand):
                    break
                cand = np.intersect1d(cand, other, assume_unique=True)
            labels = _select(meta.items_of(cand.tolist()), len(cand), f, deadline)
        else:
            # the offsets as they are now: the writer may go on meanwhile
            count, items = meta.snapshot_items()
            labels = _select(items, count, f, deadline)
        match = Match(np.array(sorted(labels), dtype=np.int64))
        if cache_size:
            with self._cache_lock:
                self._filter_cache[key] = (version, match)
                self._filter_cache.move_to_end(key)
                while len(self._filter_cache) > cache_size:
                    self._filter_cache.popitem(last=False)
        return match, False

    # -- search ----------------------------------------------------------------------------
    def search(
        self,
        q: np.ndarray,
        k: int,
        f: Filter | None,
        *,
        exact_scan_max: int,
        cache_size: int,
        ef: int | None = None,
        overfetch_percent: int = 0,
        deadline: float | None = None,
    ) -> tuple[np.ndarray, np.ndarray, SearchStats]:
        """The ``k`` nearest vectors to ``q`` that ``f`` admits; ``QueryTimeout`` once
        ``deadline`` (``time.monotonic()``) has passed during the filter's scan."""
        stats = SearchStats()
        if f is None or f.is_match_all:
            labels, scores = self.index.search(q, k, ef=ef)
            stats.strategy = self.index.kind
            return labels, scores, stats
        match, hit = self.matching(f, cache_size, deadline)
        stats.filter_cache_hit = hit
        stats.matched = n = len(match)
        if n == 0:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32), stats
        if n <= min(EXACT_ALWAYS, exact_scan_max) or isinstance(self.index, FlatIndex):
            return self._exact(q, k, match, stats)
        live = max(1, len(self))
        selectivity = n / live
        base = ef or self.spec.ef_search
        if overfetch_percent and selectivity * 100 >= overfetch_percent:
            want = min(live, int(2 * k / selectivity) + 10)
            labels, scores = self.index.search(q, want, ef=max(base, want))
            keep = match.mask_of(labels)
            if int(keep.sum()) >= min(k, n):
                stats.strategy = "hnsw_postfilter"
                return labels[keep][:k], scores[keep][:k], stats
        if n <= exact_scan_max:
            return self._exact(q, k, match, stats)
        stats.strategy = "hnsw_filtered"
        k = min(k, n)  # hnswlib cannot return more than the filter admits
        wide = int(min(4096, max(base, k) / max(selectivity, 1e-3)))
        labels, scores = self.index.search(q, k, allowed=match.contains.__contains__, ef=wide)
        return labels, scores, stats

    def _exact(
        self, q: np.ndarray, k: int, match: Match, stats: SearchStats
    ) -> tuple[np.ndarray, np.ndarray, SearchStats]:
        stats.strategy = "exact_filtered"
        labels, scores = self.index.exact_top(match.labels, q, k)
        return labels, scores, stats
