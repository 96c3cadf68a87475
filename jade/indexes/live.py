"""One database's in-memory side: its serving vector index, its metadata (for filters), an
inverted index of metadata terms, and a cache of filter results valid until the next write.

Filtered search keeps its recall at every selectivity: the filter is evaluated first (narrowed by
the inverted index when it has equality terms), then
- few matches (``<= exact_scan_max``): an exact scan of just the matching vectors;
- many: HNSW with the filter applied during the graph search and ``ef`` widened by the inverse
  of the selectivity, so ``topK`` counts only matching vectors (filter-then-rank).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import numpy as np

from jade.core.filters import Filter, index_terms
from jade.indexes.vector_index import FlatIndex, HnswIndex, VectorIndex, exact_scores, top_k


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
    ) -> None:
        self.db_id = db_id
        self.dim = dim
        self.metric = metric
        self.spec = spec
        self.threads = threads
        self.index = index if index is not None else self.new_index(spec)
        self.meta: dict[int, Any] = {}  # label -> metadata, for every live vector
        self.terms: dict[tuple[str, str], set[int]] = {}
        self.version = 0  # bumped on every write: filter results are cached per version
        self._filter_cache: OrderedDict[str, tuple[int, np.ndarray]] = OrderedDict()
        self._cache_lock = threading.Lock()
        self.covered_lsn = 0  # the LSN this in-memory state reflects (for checkpoints)
        self.dirty = False

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

    # -- writes (writer thread) ------------------------------------------------------------
    def upsert(self, labels: np.ndarray, vectors: np.ndarray, metadata: list[Any]) -> None:
        self.index.add(labels, vectors)
        for label, md in zip(labels.tolist(), metadata, strict=True):
            self._unterm(label)
            self.meta[label] = md
            for t in index_terms(md if isinstance(md, dict) else None):
                self.terms.setdefault(t, set()).add(label)
        self._touch()

    def delete(self, labels: list[int]) -> None:
        self.index.delete(labels)
        for label in labels:
            self._unterm(label)
            self.meta.pop(label, None)
        self._touch()

    def load_metadata(self, labels: list[int], metadata: list[Any]) -> None:
        """Fill the metadata side without touching the vector index (start-up from a checkpoint)."""
        for label, md in zip(labels, metadata, strict=True):
            self.meta[label] = md
            for t in index_terms(md if isinstance(md, dict) else None):
                self.terms.setdefault(t, set()).add(label)

    def _unterm(self, label: int) -> None:
        old = self.meta.get(label)
        if old is None or not isinstance(old, dict):
            return
        for t in index_terms(old):
            s = self.terms.get(t)
            if s is not None:
                s.discard(label)
                if not s:
                    del self.terms[t]

    def _touch(self) -> None:
        self.version += 1
        self.dirty = True

    def __len__(self) -> int:
        return len(self.meta)

    # -- filters ---------------------------------------------------------------------------
    def matching(self, f: Filter, cache_size: int) -> tuple[np.ndarray, bool]:
        """Labels matching ``f`` (sorted), and whether they came from the cache."""
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
            sets = [self.terms.get(t, set()) for t in terms]
            sets.sort(key=len)
            cand = set(sets[0]).intersection(*sets[1:]) if sets[0] else set()
            labels = [x for x in cand if f.matches(meta.get(x))]
        else:
            labels = [x for x, md in list(meta.items()) if f.matches(md)]
        arr = np.array(sorted(labels), dtype=np.int64)
        if cache_size:
            with self._cache_lock:
                self._filter_cache[key] = (version, arr)
                self._filter_cache.move_to_end(key)
                while len(self._filter_cache) > cache_size:
                    self._filter_cache.popitem(last=False)
        return arr, False

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
    ) -> tuple[np.ndarray, np.ndarray, SearchStats]:
        stats = SearchStats()
        if f is None or f.is_match_all:
            labels, scores = self.index.search(q, k, ef=ef)
            stats.strategy = self.index.kind
            return labels, scores, stats
        allowed, hit = self.matching(f, cache_size)
        stats.filter_cache_hit = hit
        stats.matched = len(allowed)
        if len(allowed) == 0:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32), stats
        live = max(1, len(self))
        if len(allowed) <= exact_scan_max or isinstance(self.index, FlatIndex):
            stats.strategy = "exact_filtered"
            present, data = self.index.get_present(allowed)
            scores = exact_scores(self.metric, data, q)
            sel = top_k(scores, k)
            return present[sel], scores[sel], stats
        stats.strategy = "hnsw_filtered"
        k = min(k, len(allowed))  # hnswlib cannot return more than the filter admits
        allowed_set = set(allowed.tolist())
        selectivity = len(allowed) / live
        base = ef or self.spec.ef_search
        wide = int(min(4096, max(base, k) / max(selectivity, 1e-3)))
        labels, scores = self.index.search(q, k, allowed=allowed_set.__contains__, ef=wide)
        return labels, scores, stats
