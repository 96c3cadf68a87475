"""In-memory vector indexes: ``hnsw`` (hnswlib) and ``flat`` (exact, numpy).

Both map integer labels (decided in the log records) to vectors, and both answer with
*scores*, higher is better: cosine similarity for ``cosine``, the inner product for ``dot``, and
``1 / (1 + euclidean distance)`` for ``euclidean``.

Thread model: one writer thread calls ``add``/``delete``/``save``; searches come from any
thread, and run concurrently (hnswlib releases the GIL in ``knn_query``). hnswlib allows
searches concurrent with ``add_items``, but not with ``resize_index``, and its ``ef`` is one
value for the whole index: ``EfGate`` lets searches share the index while they want the same
ef, and gives a resize (or a search wanting another ef) the index once it is idle.
"""

from __future__ import annotations

import json
import os
import struct
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
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


class EfGate:
    """Shared use of an hnswlib index by searches with the same ``ef``; exclusive use for a
    resize. A search wanting another ef waits until the searches in flight finish, then
    switches the index's ef (the usual case, every search with the database's ef, never
    waits). Fair: while a resize or a search wanting another ef waits, new searches with the
    current ef wait behind it, so a steady stream of them cannot starve either."""

    def __init__(self, index: Any, ef: int) -> None:
        self._index = index
        self._cond = threading.Condition(threading.Lock())
        self._ef = ef
        self._active = 0
        self._exclusive = False
        self._exclusive_waiting = 0
        self._switching = 0  # searches waiting to switch the ef

    @contextmanager
    def shared(self, ef: int) -> Iterator[None]:
        c = self._cond
        with c:
            registered = False
            try:
                while True:
                    if not (self._exclusive or self._exclusive_waiting):
                        if self._ef == ef:
                            if self._switching - registered == 0:
                                break
                        elif not self._active:
                            self._index.set_ef(ef)
                            self._ef = ef
                            c.notify_all()  # others waiting for this ef may join
                            break
                        elif not registered:
                            self._switching += 1
                            registered = True
                    c.wait()
            finally:
                if registered:
                    self._switching -= 1
                    c.notify_all()
            self._active += 1
        try:
            yield
        finally:
            with c:
                self._active -= 1
                if not self._active:
                    c.notify_all()

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        c = self._cond
        with c:
            self._exclusive_waiting += 1
            try:
                while self._exclusive or self._active:
                    c.wait()
            finally:
                self._exclusive_waiting -= 1
            self._exclusive = True
        try:
            yield
        finally:
            with c:
                self._exclusive = False
                c.notify_all()


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

    def capture(self) -> IndexCapture:
        """A copy of the index as it is now, which ``IndexCapture.write`` writes later while the
        index goes on changing. No ``add``/``delete`` may run during the capture (the caller
        excludes them: ``IndexManager`` holds its lock); searches may."""
        raise NotImplementedError

    def save(self, path: str) -> None:
        """Write the index file ``path`` and whatever belongs beside it (``<path><suffix>``),
        not fsynced (the caller fsyncs and renames)."""
        self.capture().write(path)

    def memory_bytes(self) -> int:
        raise NotImplementedError


class IndexCapture:
    """An index as ``VectorIndex.capture`` found it: ``write`` writes the files ``save``
    would have written at that moment. Owns its memory: nothing the index does later shows."""

    def write(self, path: str) -> None:
        raise NotImplementedError


class _FlatCapture(IndexCapture):
    def __init__(self, data: F32, labels: I64) -> None:
        self.data, self.labels = data, labels

    def write(self, path: str) -> None:
        np.savez(path, data=self.data, labels=self.labels)
        if not path.endswith(".npz"):
            os.replace(path + ".npz", path)


# hnswlib 0.8 ``HierarchicalNSW::saveIndex`` header: offsetLevel0, max_elements, element count,
# size_data_per_element, label_offset, offsetData (size_t), maxlevel (int), enterpoint_node
# (tableint = uint32), maxM, maxM0, M (size_t), mult (double), ef_construction (size_t)
_HNSW_HEADER = struct.Struct("<QQQQQQiIQQQdQ")


class _HnswCapture(IndexCapture):
    """hnswlib's state (``Index.__getstate__``: one copy of its memory) and the deletion marks.
    ``write`` writes hnswlib's own file format from it, byte for byte what ``save_index`` would
    have written at the capture (``tests/test_index_checkpoint.py`` compares the two), so loading
    is unchanged (``load_index``). Written by us rather than by a second ``hnswlib.Index``
    rebuilt from the state: no third copy of the index in memory, and the GIL is released
    while the bytes go to the file (``save_index`` holds it throughout)."""

    def __init__(self, state: dict[str, Any], deleted: list[int]) -> None:
        if state.get("ser_version") != 1 or state.get("offset_level0") != 0:
            raise RuntimeError(
                f"hnswlib state version {state.get('ser_version')!r} not known: cannot write "
                "a checkpoint from it (check the hnswlib version)"
            )
        self.state, self.deleted = state, deleted

    def write(self, path: str) -> None:
        st = self.state
        n, size = int(st["cur_element_count"]), int(st["size_data_per_element"])
        header = _HNSW_HEADER.pack(
            0,
            int(st["max_elements"]),
            n,
            size,
            int(st["label_offset"]),
            int(st["offset_data"]),
            int(st["max_level"]),
            int(st["enterpoint_node"]) & 0xFFFFFFFF,  # -1 (no element yet) as a tableint
            int(st["max_M"]),
            int(st["max_M0"]),
            int(st["M"]),
            float(st["mult"]),
            int(st["ef_construction"]),
        )
        level0 = np.asarray(st["data_level0"]).view(np.uint8)[: n * size]
        levels = np.asarray(st["element_levels"])[:n]
        links = np.asarray(st["link_lists"]).view(np.uint8)
        with open(path, "wb") as fh:
            fh.write(header)
            fh.write(level0.data)
            fh.write(_link_section(levels, links, int(st["size_links_per_element"])).data)
        with open(path + ".deleted.json", "w") as fh:
            json.dump(self.deleted, fh)


def _link_section(levels: np.ndarray, links: np.ndarray, per_level: int) -> np.ndarray:
    """The tail of hnswlib's file: per element, the byte size of its upper-level link lists
    (uint32, ``level * per_level``) followed by those bytes, taken in order from ``links`` (the
    lists of all elements back to back, as ``__getstate__`` gives them)."""
    sizes = levels.astype(np.int64) * per_level
    if int(sizes.sum()) != len(links):
        raise RuntimeError("hnswlib state: link lists do not match the element levels")
    n = len(sizes)
    out = np.empty(4 * n + len(links), dtype=np.uint8)
    head = 4 * np.arange(n, dtype=np.int64)
    head[1:] += np.cumsum(sizes)[:-1]
    at = head[:, None] + np.arange(4)  # the 4 size bytes of each element
    out[at] = sizes.astype("<u4").view(np.uint8).reshape(n, 4)
    body = np.ones(len(out), dtype=bool)
    body[at] = False
    out[body] = links
    return out


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
            return v / (np.linalg.norm(v, axis=1, keepdims=True) + 1e-30)  # as hnswlib does
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
        return _HnswCapture(self.index.__getstate__()[0], sorted(self.deleted))

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
