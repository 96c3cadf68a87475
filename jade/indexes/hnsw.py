"""``HnswIndex``: approximate search with hnswlib, plus a numpy copy of the vectors by label for
exact scans of filtered subsets.

hnswlib releases the GIL in ``knn_query``, so searches from many threads run concurrently; its
``ef`` is one value for the whole index and a resize needs the index alone, which ``EfGate``
(``gate.py``) arbitrates. The checkpoint file is written by ``HnswCapture`` (``hnsw_file.py``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import Any

import hnswlib
import numpy as np
from numpy.typing import NDArray

from jade.indexes.base import (
    F32,
    I64,
    IndexCapture,
    VectorIndex,
    distances_to_scores,
    exact_scores,
    top_k,
)
from jade.indexes.gate import EfGate
from jade.indexes.hnsw_file import HnswCapture

SPACES = {"cosine": "cosine", "euclidean": "l2", "dot": "ip"}


class HnswIndex(VectorIndex):
    """hnswlib for approximate search, and beside it a numpy copy of the vectors by label
    (``vecs``, normalised for cosine as hnswlib stores them; ``alive`` marks the labels present
    and not deleted). The copy serves exact scans of filtered subsets and ``get`` without
    hnswlib's ``get_items`` (which builds Python lists: ~12 ms per 1,000 vectors); it costs
    ``dim * 4`` bytes per label, and is rebuilt from hnswlib's own memory on ``load``."""

    kind = "hnsw"

    def __init__(
        self,
        dim: int,
        metric: str,
        *,
        m: int = 16,
        ef_construction: int = 200,
        ef_search: int = 64,
        capacity: int = 1024,
        threads: int = 0,
        _raw: Any = None,
    ) -> None:
        super().__init__(dim, metric)
        self.m, self.ef_construction, self.ef_search = m, ef_construction, ef_search
        self.threads = threads if threads > 0 else (os.cpu_count() or 1)
        if _raw is not None:
            self.index = _raw
        else:
            self.index = hnswlib.Index(space=SPACES[metric], dim=dim)
            self.index.init_index(
                max_elements=capacity, M=m, ef_construction=ef_construction, random_seed=100
            )
        self.index.set_ef(ef_search)
        self.gate = EfGate(self.index, ef_search)
        self.deleted: set[int] = set()  # labels marked deleted (and not re-added since)
        # (vecs, alive), replaced as one tuple when it grows so readers never see a mismatch
        self._rows: tuple[F32, NDArray[np.bool_]] = (
            np.zeros((0, dim), dtype=np.float32), np.zeros(0, dtype=bool))

    @property
    def _live(self) -> int:
        return int(self.index.element_count) - len(self.deleted)

    def __len__(self) -> int:
        return self._live

    def _ensure_capacity(self, extra: int) -> None:
        need = self.index.element_count + extra
        cap = self.index.get_max_elements()
        if need > cap:
            with self.gate.exclusive():
                self.index.resize_index(max(need, cap * 2))

    def _prep(self, v: F32) -> F32:
        if self.metric == "cosine":
            unit: F32 = v / (np.linalg.norm(v, axis=1, keepdims=True) + 1e-30)  # as hnswlib does
            return unit
        return v

    def _grow_rows(self, top: int) -> tuple[F32, NDArray[np.bool_]]:
        vecs, alive = self._rows
        if top < len(alive):
            return vecs, alive
        cap = max(1024, top + 1, len(alive) * 2)
        nv = np.zeros((cap, self.dim), dtype=np.float32)
        nv[: len(vecs)] = vecs
        na = np.zeros(cap, dtype=bool)
        na[: len(alive)] = alive
        self._rows = (nv, na)
        return nv, na

    def add(self, labels: I64, vectors: F32) -> None:
        v = np.ascontiguousarray(vectors, dtype=np.float32).reshape(-1, self.dim)
        labels = np.asarray(labels, dtype=np.int64)
        if len(labels) == 0:
            return
        self._ensure_capacity(len(labels))
        # an existing label is updated in place; a deleted one is revived (hnswlib unmarks it)
        self.index.add_items(v, labels, num_threads=self.threads if len(labels) > 64 else 1)
        vecs, alive = self._grow_rows(int(labels.max()))
        vecs[labels] = self._prep(v)
        alive[labels] = True
        if self.deleted:
            self.deleted.difference_update(labels.tolist())

    def delete(self, labels: list[int]) -> None:
        alive = self._rows[1]
        for label in labels:
            if label in self.deleted:
                continue
            try:
                self.index.mark_deleted(label)
            except RuntimeError:
                continue  # unknown label: nothing to delete
            self.deleted.add(label)
            alive[label] = False

    def get(self, labels: I64) -> F32:
        """From hnswlib's own memory (what verification compares with the store); raises
        ``RuntimeError`` for an unknown or deleted label."""
        if len(labels) == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        with self.gate.shared(self.ef_search):
            return np.asarray(
                self.index.get_items(np.asarray(labels, dtype=np.int64), return_type="numpy"),
                dtype=np.float32,
            )

    def get_present(self, labels: I64) -> tuple[I64, F32]:
        vecs, alive = self._rows
        labels = np.asarray(labels, dtype=np.int64)
        labels = labels[labels < len(alive)]
        keep = labels[alive[labels]]
        return keep, vecs[keep]

    def set_ef(self, ef: int) -> None:
        self.ef_search = ef  # the gate switches the index's ef at the next search

    def search(
        self, q: F32, k: int, allowed: Callable[[int], bool] | None = None, ef: int | None = None
    ) -> tuple[I64, np.ndarray]:
        k = min(k, self._live)
        if k <= 0:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
        q2 = np.asarray(q, dtype=np.float32).reshape(1, -1)
        want = ef or self.ef_search
        for attempt in range(3):
            if attempt:  # fewer than k reachable (many deleted, a narrow filter): wider
                want = max(self.ef_search, ef or 0, k) * (4 << attempt)
            with self.gate.shared(want):
                try:
                    labels, dist = self.index.knn_query(q2, k=k, num_threads=1, filter=allowed)
                except RuntimeError:
                    continue
            return labels[0].astype(np.int64), distances_to_scores(self.metric, dist[0])
        # the graph cannot yield k live (allowed) neighbours: answer exactly instead
        return self._exact(q2[0], k, allowed)

    def _exact(
        self, q: F32, k: int, allowed: Callable[[int], bool] | None
    ) -> tuple[I64, np.ndarray]:
        """Exact top-k over the live (and allowed) labels."""
        vecs, alive = self._rows
        labels = np.nonzero(alive)[0]
        if allowed is not None:
            labels = labels[np.fromiter(map(allowed, labels.tolist()), dtype=bool,
                                        count=len(labels))]
        if len(labels) == 0:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
        scores = exact_scores(self.metric, vecs[labels], q)
        sel = top_k(scores, k)
        return labels[sel].astype(np.int64), scores[sel]

    def search_batch(self, qs: F32, k: int, ef: int | None = None) -> tuple[I64, np.ndarray]:
        k = min(k, self._live)
        if k <= 0:
            return np.zeros((len(qs), 0), dtype=np.int64), np.zeros((len(qs), 0))
        with self.gate.shared(ef or self.ef_search):
            labels, dist = self.index.knn_query(
                np.ascontiguousarray(qs, dtype=np.float32), k=k, num_threads=self.threads
            )
        return labels.astype(np.int64), distances_to_scores(self.metric, dist)

    def capture(self) -> IndexCapture:
        """No gate needed: the caller excludes ``add`` (the only resize) and ``delete``, and
        ``__getstate__`` only reads, as concurrent searches do. ~50 ms per 100k vectors of
        dimension 128 (a memory copy, GIL held)."""
        return HnswCapture(self.index.__getstate__()[0], sorted(self.deleted))

    @classmethod
    def load(
        cls,
        path: str,
        dim: int,
        metric: str,
        *,
        m: int,
        ef_construction: int,
        ef_search: int,
        threads: int = 0,
    ) -> HnswIndex:
        raw = hnswlib.Index(space=SPACES[metric], dim=dim)
        raw.load_index(path)
        idx = cls(
            dim,
            metric,
            m=m,
            ef_construction=ef_construction,
            ef_search=ef_search,
            threads=threads,
            _raw=raw,
        )
        try:
            with open(path + ".deleted.json") as fh:
                idx.deleted = set(json.load(fh))
        except FileNotFoundError:
            idx.deleted = set()
        idx._load_rows()
        return idx

    def _load_rows(self) -> None:
        """Fill ``vecs``/``alive`` from hnswlib's level-0 memory (one copy, no per-vector
        Python): each element holds its links, its vector and its label at fixed offsets."""
        st = self.index.__getstate__()[0]
        n, size = int(st["cur_element_count"]), int(st["size_data_per_element"])
        if n == 0:
            return
        mem = np.asarray(st["data_level0"]).view(np.uint8)[: n * size].reshape(n, size)
        off, loff = int(st["offset_data"]), int(st["label_offset"])
        vecs = np.ascontiguousarray(mem[:, off : off + self.dim * 4]).view(np.float32)
        labels = np.ascontiguousarray(mem[:, loff : loff + 8]).view(np.uint64).ravel()
        labels = labels.astype(np.int64)
        rows, alive = self._grow_rows(int(labels.max()))
        rows[labels] = vecs
        alive[labels] = True
        if self.deleted:
            gone = np.fromiter(self.deleted, dtype=np.int64, count=len(self.deleted))
            alive[gone[gone < len(alive)]] = False

    def memory_bytes(self) -> int:
        # hnswlib: per element the vector, M*2 level-0 links (4 bytes) and bookkeeping; then
        # the numpy copy of the vectors
        per = self.dim * 4 + self.m * 2 * 4 + 8 + 4 + 8
        vecs, alive = self._rows
        return int(self.index.get_max_elements() * per + vecs.nbytes + alive.nbytes)
