"""``FlatIndex``: the exact index, numpy rows scanned in full for every search, and its
checkpoint file (``np.savez``: the rows and their labels)."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable

import numpy as np

from jade.indexes.base import F32, I64, IndexCapture, VectorIndex, exact_scores, top_k


class _FlatCapture(IndexCapture):
    def __init__(self, data: F32, labels: I64) -> None:
        self.data, self.labels = data, labels

    def write(self, path: str) -> None:
        np.savez(path, data=self.data, labels=self.labels)
        if not path.endswith(".npz"):
            os.replace(path + ".npz", path)


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

    def capture(self) -> IndexCapture:
        with self._lock:
            return _FlatCapture(self.data[: self.n].copy(), self.labels[: self.n].copy())

    @classmethod
    def load(cls, path: str, dim: int, metric: str) -> FlatIndex:
        # our own handle: np.load leaks the one it opens when the zip does not parse
        with open(path, "rb") as fh, np.load(fh) as z:
            data, labels = z["data"], z["labels"]
        idx = cls(dim, metric, capacity=max(1024, len(labels)))
        idx.n = len(labels)
        idx.data[: idx.n] = data
        idx.labels[: idx.n] = labels
        idx.pos = {int(x): i for i, x in enumerate(labels.tolist())}
        return idx

    def memory_bytes(self) -> int:
        return int(self.data.nbytes + self.labels.nbytes + len(self.pos) * 100)
