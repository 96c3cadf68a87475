"""In-memory vector indexes: ``hnsw`` (hnswlib) and ``flat`` (exact, numpy).

Both map integer labels (decided in the log records) to vectors, and both answer with
*scores*, higher is better: cosine similarity for ``cosine``, the inner product for ``dot``, and
``1 / (1 + euclidean distance)`` for ``euclidean``.

Thread model: one writer thread calls ``add``/``delete``/``save``; searches come from any
thread. hnswlib allows searches concurrent with ``add_items``; ``resize_index`` is not, so it
happens under ``_resize_lock`` which searches also take (uncontended but for a resize).
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable
from typing import Any

import hnswlib
import numpy as np
from numpy.typing import NDArray

F32 = NDArray[np.float32]
I64 = NDArray[np.int64]

SPACES = {"cosine": "cosine", "euclidean": "l2", "dot": "ip"}


def distances_to_scores(metric: str, d: np.ndarray) -> np.ndarray:
    """hnswlib distances → scores (higher is better)."""
    if metric == "euclidean":
        return 1.0 / (1.0 + np.sqrt(np.maximum(d, 0.0)))
    return 1.0 - d  # cosine: 1 - cos; ip: 1 - dot


def exact_scores(metric: str, data: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Scores of every row of ``data`` against ``q`` (data already normalised for cosine)."""
    if metric == "cosine":
        qn = q / (np.linalg.norm(q) + 1e-30)
        return data @ qn
    if metric == "dot":
        return data @ q
    diff = data - q
    return 1.0 / (1.0 + np.sqrt(np.einsum("ij,ij->i", diff, diff)))


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k highest scores, highest first."""
    if k >= len(scores):
        return np.argsort(-scores, kind="stable")
    part = np.argpartition(-scores, k)[:k]
    return part[np.argsort(-scores[part], kind="stable")]


class VectorIndex:
    kind = "abstract"

    def __init__(self, dim: int, metric: str) -> None:
        self.dim = dim
        self.metric = metric

    def __len__(self) -> int:  # live (non-deleted) vectors
        raise NotImplementedError

    def add(self, labels: I64, vectors: F32) -> None:
        raise NotImplementedError

    def delete(self, labels: list[int]) -> None:
        raise NotImplementedError

    def get(self, labels: I64) -> F32:
        """Stored vectors (normalised for cosine) of the given live labels."""
        raise NotImplementedError

    def get_present(self, labels: I64) -> tuple[I64, F32]:
        """Like ``get``, but labels deleted meanwhile (a search racing the writer thread) are
        left out: returns the labels kept and their vectors, row for row."""
        raise NotImplementedError

    def search(
        self, q: F32, k: int, allowed: Callable[[int], bool] | None = None, ef: int | None = None
    ) -> tuple[I64, np.ndarray]:
        raise NotImplementedError

    def search_batch(self, qs: F32, k: int, ef: int | None = None) -> tuple[I64, np.ndarray]:
        raise NotImplementedError

    def set_ef(self, ef: int) -> None:
        pass

    def save(self, path: str) -> None:
        raise NotImplementedError

    def memory_bytes(self) -> int:
        raise NotImplementedError


class FlatIndex(VectorIndex):
    kind = "flat"

    def __init__(self, dim: int, metric: str, capacity: int = 1024) -> None:
        super().__init__(dim, metric)
        self.data = np.zeros((capacity, dim), dtype=np.float32)
        self.labels = np.zeros(capacity, dtype=np.int64)
        self.pos: dict[int, int] = {}
        self.n = 0
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return self.n

    def _prep(self, vectors: np.ndarray) -> np.ndarray:
        v = np.asarray(vectors, dtype=np.float32).reshape(-1, self.dim)
        if self.metric == "cosine":
            v = v / (np.linalg.norm(v, axis=1, keepdims=True) + 1e-30)
        return v

    def add(self, labels: I64, vectors: F32) -> None:
        v = self._prep(vectors)
        with self._lock:
            for i, label in enumerate(labels.tolist()):
                row = self.pos.get(label)
                if row is None:
                    if self.n == len(self.data):
                        cap = max(1024, len(self.data) * 2)
                        data = np.zeros((cap, self.dim), dtype=np.float32)
                        data[: self.n] = self.data[: self.n]
                        lab = np.zeros(cap, dtype=np.int64)
                        lab[: self.n] = self.labels[: self.n]
                        self.data, self.labels = data, lab
                    row = self.n
                    self.n += 1
                    self.pos[label] = row
                    self.labels[row] = label
                self.data[row] = v[i]

    def delete(self, labels: list[int]) -> None:
        with self._lock:
            for label in labels:
                row = self.pos.pop(label, None)
                if row is None:
                    continue
                last = self.n - 1
                if row != last:
                    moved = int(self.labels[last])
                    self.data[row] = self.data[last]
                    self.labels[row] = moved
                    self.pos[moved] = row
                self.n -= 1

    def get(self, labels: I64) -> F32:
        with self._lock:
            rows = [self.pos[int(label)] for label in labels]
            return self.data[rows].copy()

    def get_present(self, labels: I64) -> tuple[I64, F32]:
        with self._lock:
            pos = self.pos
            keep = [int(x) for x in labels.tolist() if x in pos]
            rows = [pos[x] for x in keep]
            return np.asarray(keep, dtype=np.int64), self.data[rows].copy()

    def search(
        self, q: F32, k: int, allowed: Callable[[int], bool] | None = None, ef: int | None = None
    ) -> tuple[I64, np.ndarray]:
        with self._lock:
            n = self.n
            data = self.data[:n]
            labels = self.labels[:n]
            if n == 0 or k <= 0:
                return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
            scores = exact_scores(self.metric, data, q)
            if allowed is not None:
                mask = np.fromiter((allowed(int(x)) for x in labels), dtype=bool, count=n)
                idx = np.nonzero(mask)[0]
                sel = top_k(scores[idx], k)
                return labels[idx][sel].copy(), scores[idx][sel]
            sel = top_k(scores, k)
            return labels[sel].copy(), scores[sel]

    def search_batch(self, qs: F32, k: int, ef: int | None = None) -> tuple[I64, np.ndarray]:
        rows_l, rows_s = [], []
        for q in qs:
            lab, sc = self.search(q, k)
            pad = k - len(lab)
            rows_l.append(np.pad(lab, (0, pad), constant_values=-1))
            rows_s.append(np.pad(sc, (0, pad), constant_values=-np.inf))
        return np.array(rows_l), np.array(rows_s)

    def save(self, path: str) -> None:
        with self._lock:
            np.savez(path, data=self.data[: self.n], labels=self.labels[: self.n])
        if not path.endswith(".npz"):
            os.replace(path + ".npz", path)

    @classmethod
    def load(cls, path: str, dim: int, metric: str) -> FlatIndex:
        with np.load(path) as z:
            data, labels = z["data"], z["labels"]
        idx = cls(dim, metric, capacity=max(1024, len(labels)))
        idx.n = len(labels)
        idx.data[: idx.n] = data
        idx.labels[: idx.n] = labels
        idx.pos = {int(x): i for i, x in enumerate(labels.tolist())}
        return idx

    def memory_bytes(self) -> int:
        return int(self.data.nbytes + self.labels.nbytes + len(self.pos) * 100)


class HnswIndex(VectorIndex):
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
        self._resize_lock = threading.Lock()
        if _raw is not None:
            self.index = _raw
        else:
            self.index = hnswlib.Index(space=SPACES[metric], dim=dim)
            self.index.init_index(
                max_elements=capacity, M=m, ef_construction=ef_construction, random_seed=100
            )
        self.index.set_ef(ef_search)
        self.deleted: set[int] = set()  # labels marked deleted (and not re-added since)

    @property
    def _live(self) -> int:
        return int(self.index.element_count) - len(self.deleted)

    def __len__(self) -> int:
        return self._live

    def _ensure_capacity(self, extra: int) -> None:
        need = self.index.element_count + extra
        cap = self.index.get_max_elements()
        if need > cap:
            with self._resize_lock:
                self.index.resize_index(max(need, cap * 2))

    def add(self, labels: I64, vectors: F32) -> None:
        v = np.ascontiguousarray(vectors, dtype=np.float32).reshape(-1, self.dim)
        labels = np.asarray(labels, dtype=np.int64)
        self._ensure_capacity(len(labels))
        # an existing label is updated in place; a deleted one is revived (hnswlib unmarks it)
        self.index.add_items(v, labels, num_threads=self.threads if len(labels) > 64 else 1)
        if self.deleted:
            self.deleted.difference_update(labels.tolist())

    def delete(self, labels: list[int]) -> None:
        for label in labels:
            if label in self.deleted:
                continue
            try:
                self.index.mark_deleted(label)
            except RuntimeError:
                continue  # unknown label: nothing to delete
            self.deleted.add(label)

    def get(self, labels: I64) -> F32:
        if len(labels) == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        with self._resize_lock:
            return np.asarray(
                self.index.get_items(np.asarray(labels, dtype=np.int64), return_type="numpy"),
                dtype=np.float32,
            )

    def get_present(self, labels: I64) -> tuple[I64, F32]:
        with self._resize_lock:
            deleted = self.deleted
            keep = [int(x) for x in labels.tolist() if x not in deleted]
            if not keep:
                return np.zeros(0, dtype=np.int64), np.zeros((0, self.dim), dtype=np.float32)
            try:
                data = self.index.get_items(np.asarray(keep, dtype=np.int64), return_type="numpy")
            except RuntimeError:  # marked deleted between the check and the read: one by one
                rows, kept = [], []
                for x in keep:
                    try:
                        rows.append(self.index.get_items([x], return_type="numpy")[0])
                    except RuntimeError:
                        continue
                    kept.append(x)
                keep, data = kept, np.asarray(rows).reshape(len(kept), self.dim)
        return np.asarray(keep, dtype=np.int64), np.asarray(data, dtype=np.float32)

    def set_ef(self, ef: int) -> None:
        self.ef_search = ef
        self.index.set_ef(ef)

    def search(
        self, q: F32, k: int, allowed: Callable[[int], bool] | None = None, ef: int | None = None
    ) -> tuple[I64, np.ndarray]:
        k = min(k, self._live)
        if k <= 0:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
        q2 = np.asarray(q, dtype=np.float32).reshape(1, -1)
        with self._resize_lock:
            try:
                for attempt in range(3):
                    if attempt:  # fewer than k reachable (many deleted, a narrow filter): wider
                        self.index.set_ef(max(self.ef_search, ef or 0, k) * (4 << attempt))
                    elif ef is not None and ef != self.ef_search:
                        self.index.set_ef(ef)
                    try:
                        labels, dist = self.index.knn_query(q2, k=k, num_threads=1, filter=allowed)
                    except RuntimeError:
                        continue
                    return labels[0].astype(np.int64), distances_to_scores(self.metric, dist[0])
            finally:
                self.index.set_ef(self.ef_search)
            # the graph cannot yield k live (allowed) neighbours: answer exactly instead
            return self._exact(q2[0], k, allowed)

    def _exact(
        self, q: F32, k: int, allowed: Callable[[int], bool] | None
    ) -> tuple[I64, np.ndarray]:
        """Exact top-k over the live (and allowed) labels; the caller holds ``_resize_lock``."""
        deleted = self.deleted
        ids = [
            label
            for label in self.index.get_ids_list()
            if label not in deleted and (allowed is None or allowed(label))
        ]
        if not ids:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
        labels = np.asarray(ids, dtype=np.int64)
        data = np.asarray(self.index.get_items(labels, return_type="numpy"), dtype=np.float32)
        scores = exact_scores(self.metric, data, q)
        sel = top_k(scores, k)
        return labels[sel], scores[sel]

    def search_batch(self, qs: F32, k: int, ef: int | None = None) -> tuple[I64, np.ndarray]:
        k = min(k, self._live)
        if k <= 0:
            return np.zeros((len(qs), 0), dtype=np.int64), np.zeros((len(qs), 0))
        with self._resize_lock:
            labels, dist = self.index.knn_query(
                np.ascontiguousarray(qs, dtype=np.float32), k=k, num_threads=self.threads
            )
        return labels.astype(np.int64), distances_to_scores(self.metric, dist)

    def save(self, path: str) -> None:
        with self._resize_lock:
            self.index.save_index(path)
        with open(path + ".deleted.json", "w") as fh:
            json.dump(sorted(self.deleted), fh)

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
        return idx

    def memory_bytes(self) -> int:
        # hnswlib: per element the vector, M*2 level-0 links (4 bytes) and bookkeeping.
        per = self.dim * 4 + self.m * 2 * 4 + 8 + 4 + 8
        return int(self.index.get_max_elements() * per)
