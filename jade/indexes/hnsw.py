"""``HnswIndex``: approximate search with hnswlib, plus a half-precision numpy copy of the
vectors by label for exact scans of filtered subsets (ranked in float16, the best candidates
scored again in full precision).

hnswlib releases the GIL in ``knn_query``, so searches from many threads run concurrently; its
``ef`` is one value for the whole index and a resize needs the index alone, which ``EfGate``
(``gate.py``) arbitrates. The checkpoint file is written by ``HnswCapture`` (``hnsw_file.py``).

Writes may run ahead of the graph (issue 16): ``stage``/``stage_delete`` (the writer thread)
put the new state in the numpy rows at once, the full-precision vectors in the staging buffer
(``_sbuf``: only what is staged, never overwritten in place) and the labels in ``pending``;
``fold`` (the index follower's thread, ``follow.py``) inserts them into the graph later, in
one multi-threaded ``add_items`` per batch. Every search is exact about the staged state: the
graph's answer leaves out the labels not folded yet, and those are scored exactly from the
staging buffer and merged (``search``). ``add``/``delete`` stage and fold at once (start-up,
rebuilds, tools).

Locks: ``_plock`` guards ``pending``/``folding`` and the growth of the rows (held for a few
numpy operations); ``_fold_lock``: one fold at a time (the graph's own state: ``deleted``,
``_dead``, ``in_graph``). A fold never takes ``_plock`` while inserting into the graph.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import hnswlib
import numpy as np
from numpy.typing import NDArray

from jade import faults
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
from jade.indexes.hnsw_file import HNSW_HEADER, HnswCapture

SPACES = {"cosine": "cosine", "euclidean": "l2", "dot": "ip"}
F16 = NDArray[np.float16]
# (vecs, alive, in_graph, scale): see ``HnswIndex.__init__``
Rows = tuple[F16, NDArray[np.bool_], NDArray[np.bool_], NDArray[np.int8]]
SCAN_SLICE = 8192  # rows an exact scan turns back into float32 at a time (cache-sized)
# float16's rounding: relative, and absolute (in units of the row's scale) below its normal
# range (``HnswIndex._rough``)
HALF_EPS = 2.0 ** -11
HALF_TINY = 2.0 ** -25
# at most this many staged labels are left out of a graph search by over-fetching (k + n
# neighbours); more are left out by hnswlib's filter callback
OVERFETCH_MASKED = 256


class HnswIndex(VectorIndex):
    """hnswlib for approximate search, and beside it a float16 copy of the vectors by label
    (``vecs``, normalised for cosine as hnswlib stores them; ``alive`` marks the labels present
    and not deleted). The copy ranks exact scans of filtered subsets without hnswlib's
    ``get_items`` (~5 µs a vector); the few that may be in the top k are scored again from the
    full-precision vectors (``_vectors``: hnswlib's, or the staging buffer's for what is not
    folded yet), so answers and scores are those of float32 (issue 16, item 4: the copy costs
    ``dim * 2`` bytes per label instead of ``dim * 4``). It is rebuilt from hnswlib's own memory
    on ``load``.

    hnswlib is created (and loaded) with ``allow_replace_deleted``: a new label takes the slot of
    a deleted element when there is one (hnswlib then forgets the deleted label), so the graph
    does not grow under delete/re-insert churn; capacity grows only when no slot is free."""

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
                max_elements=capacity, M=m, ef_construction=ef_construction, random_seed=100,
                allow_replace_deleted=True,
            )
        self.index.set_ef(ef_search)
        self.gate = EfGate(self.index, ef_search)
        # labels marked deleted in the graph and not re-added since; may also hold labels whose
        # slot has since gone to a new label (hnswlib does not say which), pruned in
        # ``_prune_deleted``
        self.deleted: set[int] = set()
        self._dead = 0  # hnswlib elements marked deleted (slots a new label can take)
        # (vecs, alive, in_graph, scale), replaced as one tuple when it grows so readers never
        # see a mismatch: the staged state (``vecs`` in float16, each row divided by its scale,
        # the power of two ``2**scale`` that brings its largest component into (0.5, 1]:
        # float16's range and precision whatever the vector's magnitude; ``alive``: present and
        # not deleted) and whether the graph holds the label alive
        self._rows: Rows = (
            np.zeros((0, dim), dtype=np.float16), np.zeros(0, dtype=bool),
            np.zeros(0, dtype=bool), np.zeros(0, dtype=np.int8))
        # the staging buffer: the full-precision vectors staged since it was last emptied, each
        # in a row of its own (a label staged again takes a new row: rows are never written
        # twice, so a reader may copy rows outside ``_plock``); ``_spos``: label -> its newest
        # row; ``_sused``: rows taken. Replaced, never cleared in place.
        self._sbuf: F32 = np.zeros((0, dim), dtype=np.float32)
        self._spos: dict[int, int] = {}
        self._sused = 0
        self._count = 0  # labels alive in the staged state
        self._plock = threading.Lock()
        self._fold_lock = threading.Lock()
        self.pending: set[int] = set()  # staged, not folded yet
        self.folding: set[int] = set()  # being folded now (still left out of graph answers)
        # (LSN, time.monotonic()) of the first write staged into an empty ``pending``, and of
        # the batch being folded: how far the graph is behind
        self._since: tuple[int, float] | None = None
        self._folding_since: tuple[int, float] | None = None

    @property
    def _live(self) -> int:
        return int(self.index.element_count) - self._dead

    def __len__(self) -> int:
        return self._count

    def _ensure_capacity(self, extra: int) -> None:
        """Room for ``extra`` new labels, after the slots of deleted elements are used."""
        need = self.index.element_count + max(0, extra - self._dead)
        cap = self.index.get_max_elements()
        if need > cap:
            with self.gate.exclusive():
                self.index.resize_index(max(need, cap * 2))

    def _prep(self, v: F32) -> F32:
        if self.metric == "cosine":
            unit: F32 = v / (np.linalg.norm(v, axis=1, keepdims=True) + 1e-30)  # as hnswlib does
            return unit
        return v

    def _grow_rows(self, top: int) -> Rows:
        """Under ``_plock``."""
        vecs, alive, in_graph, scale = self._rows
        if top < len(alive):
            return self._rows
        cap = max(1024, top + 1, len(alive) * 2)
        nv = np.zeros((cap, self.dim), dtype=np.float16)
        nv[: len(vecs)] = vecs
        na = np.zeros(cap, dtype=bool)
        na[: len(alive)] = alive
        ng = np.zeros(cap, dtype=bool)
        ng[: len(in_graph)] = in_graph
        ns = np.zeros(cap, dtype=np.int8)
        ns[: len(scale)] = scale
        self._rows = (nv, na, ng, ns)
        return self._rows

    # -- writes: staged at once, folded into the graph later --------------------------------
    def add(self, labels: I64, vectors: F32) -> None:
        self.stage(labels, vectors)
        self.settle()

    def delete(self, labels: list[int]) -> None:
        self.stage_delete(labels)
        self.settle()

    def stage(self, labels: I64, vectors: F32, lsn: int = 0) -> None:
        v = np.ascontiguousarray(vectors, dtype=np.float32).reshape(-1, self.dim)
        labels = np.asarray(labels, dtype=np.int64)
        if len(labels) == 0:
            return
        if len(np.unique(labels)) != len(labels):  # the last vector of a label wins
            last = len(labels) - 1 - np.unique(labels[::-1], return_index=True)[1]
            last.sort()
            labels, v = labels[last], v[last]
        unit = self._prep(v)
        with self._plock:
            vecs, alive, _, scale = self._grow_rows(int(labels.max()))
            self._count += int(np.count_nonzero(~alive[labels]))
            _halve(vecs, scale, labels, unit)
            alive[labels] = True
            self._buffer(labels, unit)
            self._pend(labels, lsn)

    def _buffer(self, labels: I64, unit: F32) -> None:
        """Under ``_plock``: the full-precision rows of ``labels`` into the staging buffer, in
        rows never used before (a larger buffer is a new array: readers keep theirs)."""
        buf, used, n = self._sbuf, self._sused, len(labels)
        if used + n > len(buf):
            grown = np.empty((max(1024, 2 * (used + n)), self.dim), dtype=np.float32)
            grown[:used] = buf[:used]
            buf = self._sbuf = grown
        buf[used : used + n] = unit
        self._spos.update(zip(labels.tolist(), range(used, used + n), strict=True))
        self._sused = used + n

    def _unbuffer(self) -> None:
        """Under ``_plock``, after a fold: a new staging buffer holding only the rows of what is
        still ``pending`` (none: an empty one). Readers holding the old one keep it."""
        keep = [x for x in self.pending if x in self._spos]
        old, pos = self._sbuf, self._spos
        self._spos, self._sused = {}, 0
        self._sbuf = np.zeros((0, self.dim), dtype=np.float32)
        if keep:
            arr = np.asarray(keep, dtype=np.int64)
            self._buffer(arr, old[[pos[x] for x in keep]])

    def stage_delete(self, labels: list[int], lsn: int = 0) -> None:
        with self._plock:
            alive = self._rows[1]
            arr = np.asarray(labels, dtype=np.int64)
            arr = arr[(arr >= 0) & (arr < len(alive))]
            arr = np.unique(arr[alive[arr]])  # unknown or already deleted: nothing to do
            if len(arr) == 0:
                return
            alive[arr] = False
            self._count -= len(arr)
            self._pend(arr, lsn)

    def _pend(self, labels: I64, lsn: int) -> None:
        if not self.pending:
            self._since = (lsn, time.monotonic())
        self.pending.update(labels.tolist())

    def settle(self) -> int:
        """Fold everything staged (the caller stages nothing meanwhile). Returns how many
        labels were folded."""
        n = 0
        with self._fold_lock:
            while self.pending:
                n += self._fold()
        return n

    def fold(self) -> int:
        """Fold what is staged now into the graph (the follower's thread)."""
        with self._fold_lock:
            return self._fold()

    def lag(self) -> tuple[int, tuple[int, float] | None]:
        """Labels staged and not in the graph yet, and (LSN, monotonic time) of the oldest."""
        with self._plock:
            return len(self.pending) + len(self.folding), self._folding_since or self._since

    def _fold(self) -> int:
        with self._plock:
            if not self.pending:
                return 0
            # ``folding`` first: ``_masked`` reads ``pending`` then ``folding`` without the
            # lock, and must never see both empty while these labels are out of the graph
            take = self.folding = self.pending
            self.pending = set()
            self._folding_since, self._since = self._since, None
            alive = self._rows[1]
            labels = np.fromiter(take, dtype=np.int64, count=len(take))
            labels.sort()
            up = alive[labels]
            gone, labels = labels[~up], labels[up]
            spos, buf = self._spos, self._sbuf
            rows = np.fromiter(map(spos.__getitem__, labels.tolist()), dtype=np.int64,
                               count=len(labels))
        # outside ``_plock``: the rows are never written again (a label staged meanwhile takes
        # a new row, is pending again and folded again)
        values = buf[rows]
        try:
            faults.hit("index.fold")
            self._graph_delete(gone)
            self._graph_add(labels, values)
        except BaseException:
            # the batch stays staged for the next fold (folding it again is harmless: the same
            # values added, the same labels deleted); ``pending`` first, as above
            with self._plock:
                self.pending |= take
                self._since = self._folding_since or self._since
                self.folding = set()
                self._folding_since = None
            raise
        with self._plock:
            self.folding = set()
            self._folding_since = None
            self._unbuffer()
        return len(take)

    def _graph_add(self, labels: I64, v: F32) -> None:
        if len(labels) == 0:
            return
        in_graph = self._rows[2]
        # a label alive in the graph is updated in place, and a deleted one still in hnswlib is
        # revived in its own slot (unmarked, then updated: with replacement enabled hnswlib
        # refuses to update a deleted element); only a label hnswlib does not hold takes a
        # deleted slot (``replace_deleted`` does not look the label up: given a present one it
        # would leave the old element in the graph under the same label)
        # ``_dead`` moves before the graph does, so ``_live`` (a search's bound on k) is never
        # below what the graph holds: a k too large makes hnswlib raise and the search answer
        # exactly; one too small would drop a neighbour
        new = ~in_graph[labels]
        for i in np.nonzero(new)[0].tolist():
            if int(labels[i]) not in self.deleted:
                continue  # never added, or its slot went to another label (and pruned)
            self._dead -= 1
            try:
                self.index.unmark_deleted(int(labels[i]))
            except RuntimeError:
                self._dead += 1
                continue  # its slot went to another label: hnswlib forgot it
            new[i] = False
        if not new.all():
            old = ~new
            self.index.add_items(v[old], labels[old],
                                 num_threads=self.threads if int(old.sum()) > 64 else 1)
        if new.any():
            fresh = int(new.sum())
            self._ensure_capacity(fresh)
            before, dead = int(self.index.element_count), self._dead
            self._dead -= min(fresh, dead)  # the deleted slots the new labels may take
            self.index.add_items(v[new], labels[new], replace_deleted=True,
                                 num_threads=self.threads if fresh > 64 else 1)
            self._dead = dead - (fresh - (int(self.index.element_count) - before))  # reused
        with self._plock:  # the rows may have grown meanwhile: mark the current ones
            self._rows[2][labels] = True
        if self.deleted:
            self.deleted.difference_update(labels.tolist())
            self._prune_deleted()

    def _prune_deleted(self) -> None:
        """Drop from ``deleted`` the labels hnswlib no longer holds (their slots went to new
        labels), once they are many: one pass over hnswlib's labels per so many reuses."""
        if len(self.deleted) - self._dead > max(4096, int(self.index.element_count) // 8):
            self.deleted.intersection_update(self.index.get_ids_list())

    def _graph_delete(self, labels: I64) -> None:
        if len(labels) == 0:
            return
        in_graph = self._rows[2]
        dead: list[int] = []
        for label in labels[in_graph[labels]].tolist():
            try:
                self.index.mark_deleted(label)
            except RuntimeError:
                continue
            self.deleted.add(label)
            self._dead += 1
            dead.append(label)
        with self._plock:
            self._rows[2][dead] = False

    # -- reads -----------------------------------------------------------------------------
    def get(self, labels: I64) -> F32:
        """From hnswlib's own memory (what verification compares with the store), once what is
        staged is folded; raises ``RuntimeError`` for an unknown or deleted label."""
        self.settle()
        if len(labels) == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        with self.gate.shared(self.ef_search):
            return np.asarray(
                self.index.get_items(np.asarray(labels, dtype=np.int64), return_type="numpy"),
                dtype=np.float32,
            )

    def get_present(self, labels: I64) -> tuple[I64, F32]:
        return self._vectors(np.asarray(labels, dtype=np.int64))

    def _rough(self, vecs: F16, scale: NDArray[np.int8], labels: I64, q: F32
               ) -> tuple[F32, F32]:
        """Rough ranking keys of ``labels`` from the float16 copy (higher is nearer: the dot
        product with the query, normalised for cosine; minus the distance for euclidean) and a
        bound on each key's error. float16 rounds a component to within 2**-11 of its value
        (2**-25 of its row's scale below float16's normal range), so a dot product moves by at
        most 2**-11 * ||x|| ||q|| + 2**-25 * scale * ||q||_1 (Cauchy-Schwarz), and a distance
        by at most the vector's own error, 2**-11 * ||x|| + 2**-25 * scale * sqrt(dim)."""
        s = np.ldexp(np.float32(1.0), scale[labels].astype(np.int32))
        x = vecs[labels].astype(np.float32)  # each row divided by its scale
        if self.metric == "euclidean":
            x *= s[:, None]
            diff = x - q
            key = -np.sqrt(np.einsum("ij,ij->i", diff, diff))
            err = HALF_EPS * np.sqrt(np.einsum("ij,ij->i", x, x)) + HALF_TINY * s * (
                self.dim ** 0.5)
        elif self.metric == "cosine":  # the rows are unit vectors, and so is the query
            qq = q / (np.linalg.norm(q) + 1e-30)
            key = (x @ qq) * s
            err = HALF_EPS + HALF_TINY * s * float(np.abs(qq).sum())
        else:
            key = (x @ q) * s
            norm_x = np.sqrt(np.einsum("ij,ij->i", x, x)) * s
            err = (HALF_EPS * float(np.linalg.norm(q)) * norm_x
                   + HALF_TINY * s * float(np.abs(q).sum()))
        return key.astype(np.float32), (err * 1.01 + 1e-12).astype(np.float32)

    def _vectors(self, labels: I64) -> tuple[I64, F32]:
        """The live labels among ``labels`` and their full-precision vectors: the staged ones
        from the staging buffer, the others from hnswlib (``get_items``, ~5 µs each: for a few
        candidates, not for scans). A label deleted meanwhile is left out."""
        with self._plock:
            alive = self._rows[1]
            labels = labels[(labels >= 0) & (labels < len(alive))]
            labels = labels[alive[labels]]
            spos, buf = self._spos, self._sbuf
            rows = np.fromiter((spos.get(x, -1) for x in labels.tolist()), dtype=np.int64,
                               count=len(labels))
        out = np.empty((len(labels), self.dim), dtype=np.float32)
        staged = rows >= 0
        out[staged] = buf[rows[staged]]
        folded = np.nonzero(~staged)[0]
        if len(folded) == 0:
            return labels, out
        keep = np.ones(len(labels), dtype=bool)
        with self.gate.shared(self.ef_search):
            try:
                out[folded] = self.index.get_items(labels[folded], return_type="numpy")
            except RuntimeError:  # one was deleted meanwhile: one by one, without it
                for i in folded.tolist():
                    try:
                        out[i] = self.index.get_items([int(labels[i])], return_type="numpy")[0]
                    except RuntimeError:
                        keep[i] = False
        return labels[keep], out[keep]

    def exact_top(self, labels: I64, q: F32, k: int) -> tuple[I64, np.ndarray]:
        """The exact top ``k`` of the live ``labels``: ranked from the float16 copy with a bound
        on each rough score's error (``_rough``), then every label that could be in the true
        top ``k`` (its rough score within twice its bound of the ``k``-th best rough score)
        scored again in full precision. Exact whatever the data: near-duplicates only make
        that set larger."""
        vecs, alive, _, scale = self._rows
        labels = np.asarray(labels, dtype=np.int64)
        labels = labels[(labels >= 0) & (labels < len(alive))]
        labels = labels[alive[labels]]
        if len(labels) == 0 or k <= 0:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
        q = np.asarray(q, dtype=np.float32).ravel()
        if len(labels) > k:
            parts = [self._rough(vecs, scale, part, q)  # a float32 copy of a slice at a time
                     for part in np.array_split(labels, -(-len(labels) // SCAN_SLICE))]
            key = np.concatenate([p[0] for p in parts])
            err = np.concatenate([p[1] for p in parts])
            kth = key[np.argpartition(-key, k - 1)[k - 1]]
            labels = labels[key >= kth - 2 * err]
        kept, full = self._vectors(labels)
        scores = exact_scores(self.metric, full, q)
        sel = top_k(scores, k)
        return kept[sel], scores[sel]

    def set_ef(self, ef: int) -> None:
        self.ef_search = ef  # the gate switches the index's ef at the next search

    def _masked(self) -> set[int] | None:
        """The labels the graph may answer wrongly for (staged, not folded): None if none."""
        if not self.pending and not self.folding:
            return None
        with self._plock:
            if not self.pending and not self.folding:
                return None
            return self.pending | self.folding

    def search(
        self, q: F32, k: int, allowed: Callable[[int], bool] | None = None, ef: int | None = None
    ) -> tuple[I64, np.ndarray]:
        masked = self._masked()
        if masked is None:
            return self._graph_search(q, k, allowed, ef)
        # the graph without the staged labels, then the staged ones scored exactly
        if allowed is None and len(masked) <= OVERFETCH_MASKED:
            gl, gs = self._graph_search(q, k + len(masked), None, ef, masked)
            keep = ~np.isin(gl, np.fromiter(masked, dtype=np.int64, count=len(masked)))
            gl, gs = gl[keep], gs[keep]
        else:
            ok = allowed

            def admit(x: int) -> bool:
                return x not in masked and (ok is None or ok(x))

            gl, gs = self._graph_search(q, k, admit, ef, masked)
        alive = self._rows[1]
        t = np.fromiter(masked, dtype=np.int64, count=len(masked))
        t = t[t < len(alive)]
        t = t[alive[t]]
        if allowed is None and len(gl) < min(k, self._count - len(t)):
            # the graph gave fewer of the other labels than there are (a fold moving its
            # slots meanwhile): those exactly instead
            gl, gs = self._exact(np.asarray(q, dtype=np.float32).ravel(), k, None, masked)
        if allowed is not None and len(t):
            t = t[np.fromiter(map(allowed, t.tolist()), dtype=bool, count=len(t))]
        if len(t) == 0:
            return gl[:k], gs[:k]
        t, tv = self._vectors(t)
        ts = exact_scores(self.metric, tv, np.asarray(q, dtype=np.float32).ravel())
        labels = np.concatenate([gl, t])
        scores = np.concatenate([np.asarray(gs, dtype=np.float32), ts.astype(np.float32)])
        # a label folded between the graph's answer and ``masked``'s copy may be in both
        order = np.argsort(-scores, kind="stable")
        _, first = np.unique(labels[order], return_index=True)
        order = order[np.sort(first)][:k]
        return labels[order], scores[order]

    def _graph_search(
        self, q: F32, k: int, allowed: Callable[[int], bool] | None, ef: int | None,
        masked: set[int] | None = None,
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
        # the graph cannot yield k live (allowed) neighbours: answer exactly instead (without
        # the ``masked`` labels, which the caller scores itself: they must not take places)
        return self._exact(q2[0], k, allowed, masked)

    def _exact(
        self, q: F32, k: int, allowed: Callable[[int], bool] | None,
        masked: set[int] | None = None,
    ) -> tuple[I64, np.ndarray]:
        """Exact top-k over the live (and allowed, and not ``masked``) labels."""
        labels = np.nonzero(self._rows[1])[0]
        if masked:
            labels = labels[~np.isin(labels, np.fromiter(masked, dtype=np.int64,
                                                         count=len(masked)))]
        if allowed is not None:
            labels = labels[np.fromiter(map(allowed, labels.tolist()), dtype=bool,
                                        count=len(labels))]
        return self.exact_top(labels.astype(np.int64), q, k)

    def search_batch(self, qs: F32, k: int, ef: int | None = None) -> tuple[I64, np.ndarray]:
        if self._masked() is not None:  # while the graph lags: each query merged (``search``)
            rows_l, rows_s = [], []
            for q in np.asarray(qs, dtype=np.float32):
                lab, sc = self.search(q, k, ef=ef)
                pad = k - len(lab)
                rows_l.append(np.pad(lab, (0, pad), constant_values=-1))
                rows_s.append(np.pad(sc, (0, pad), constant_values=-np.inf))
            return np.array(rows_l, dtype=np.int64), np.array(rows_s)
        k = min(k, self._live)
        if k <= 0:
            return np.zeros((len(qs), 0), dtype=np.int64), np.zeros((len(qs), 0))
        with self.gate.shared(ef or self.ef_search):
            labels, dist = self.index.knn_query(
                np.ascontiguousarray(qs, dtype=np.float32), k=k, num_threads=self.threads
            )
        return labels.astype(np.int64), distances_to_scores(self.metric, dist)

    def capture(self) -> IndexCapture:
        """Folds what is staged first. No gate needed: the caller excludes writes (``stage``
        and the follower's folds: ``settle`` holds the fold lock) and ``__getstate__`` only
        reads, as concurrent searches do. ~50 ms per 100k vectors of dimension 128 (a memory
        copy, GIL held)."""
        with self._fold_lock:
            while self.pending:
                self._fold()
            state = self.index.__getstate__()[0]
        mem, dead = _level0(state)
        loff = int(state["label_offset"])
        labels = np.ascontiguousarray(mem[dead, loff : loff + 8]).view(np.uint64).ravel()
        return HnswCapture(state, sorted(labels.astype(np.int64).tolist()))

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
        raw.load_index(path, allow_replace_deleted=True)  # also for files written without it
        idx = cls(
            dim,
            metric,
            m=m,
            ef_construction=ef_construction,
            ef_search=ef_search,
            threads=threads,
            _raw=raw,
        )
        state = _file_state(path, int(raw.element_count))
        idx._load_rows(state if state is not None else raw.__getstate__()[0])
        return idx

    def _load_rows(self, state: dict[str, Any]) -> None:
        """Fill ``vecs``/``alive`` (and the deleted labels) from hnswlib's level-0 elements:
        the file just loaded, mapped (``_file_state``: no anonymous copy of the index, which the
        allocator would keep after it is freed), else its ``__getstate__``; a slice at a time,
        no per-vector Python. The deletion marks are hnswlib's own, in its file; the
        ``.deleted.json`` beside it says the same (written for older readers)."""
        vecs, labels, dead = _elements(state, self.dim)
        self.deleted = set(labels[dead].tolist())
        self._dead = int(dead.sum())
        if len(labels) == 0:
            return
        with self._plock:
            rows, alive, in_graph, scale = self._grow_rows(int(labels.max()))
            keep = np.nonzero(~dead)[0] if self._dead else None
            n = len(labels) if keep is None else len(keep)
            for i in range(0, n, SCAN_SLICE):
                part = slice(i, i + SCAN_SLICE) if keep is None else keep[i : i + SCAN_SLICE]
                _halve(rows, scale, labels[part], np.asarray(vecs[part], dtype=np.float32))
            live = labels if keep is None else labels[keep]
            alive[live] = True
            in_graph[live] = True
            self._count = len(live)

    def memory_bytes(self) -> int:
        # hnswlib: per element the vector, M*2 level-0 links (4 bytes) and bookkeeping; then
        # the numpy copy of the vectors
        per = self.dim * 4 + self.m * 2 * 4 + 8 + 4 + 8
        return int(self.index.get_max_elements() * per + sum(a.nbytes for a in self._rows)
                   + self._sbuf.nbytes)


def _file_state(path: str, count: int) -> dict[str, Any] | None:
    """The level-0 part of an hnswlib file as ``_elements`` reads a state: its header's
    fields and the elements mapped from the file (pages of the file cache, not a copy). None
    when the file does not say what the loaded index holds (then the caller copies)."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(HNSW_HEADER.size)
        if len(head) != HNSW_HEADER.size:
            return None
        off0, _cap, n, size, loff, doff = HNSW_HEADER.unpack(head)[:6]
        if off0 != 0 or n != count:
            return None
        level0 = (np.memmap(path, dtype=np.uint8, mode="r", offset=HNSW_HEADER.size,
                            shape=(n * size,)) if n else np.zeros(0, dtype=np.uint8))
    except (OSError, ValueError):
        return None
    return {"cur_element_count": n, "size_data_per_element": size, "offset_level0": 0,
            "label_offset": loff, "offset_data": doff, "data_level0": level0}


def _level0(state: dict[str, Any]) -> tuple[NDArray[np.uint8], NDArray[np.bool_]]:
    """hnswlib's level-0 memory in an ``__getstate__`` state, one row per element (no copy),
    and the elements' deletion marks: each row holds its link count and flags (``DELETE_MARK``,
    bit 0 of byte 2), its links, its vector and its label at fixed offsets."""
    n, size = int(state["cur_element_count"]), int(state["size_data_per_element"])
    mem = np.asarray(state["data_level0"]).view(np.uint8)[: n * size].reshape(n, size)
    dead = (mem[:, int(state["offset_level0"]) + 2] & 1).astype(bool)
    return mem, dead


def _elements(state: dict[str, Any], dim: int) -> tuple[F32, I64, NDArray[np.bool_]]:
    """The vectors, labels and deletion marks of the elements in an hnswlib state. The vectors
    are a strided view of hnswlib's memory where its layout allows (4-byte aligned fields:
    numpy copies 4-byte items ~10x faster than the bytes of a uint8 view: 1.25 s -> ~0.1 s
    per 300k x 128), else a copy."""
    mem, dead = _level0(state)
    n, size = mem.shape
    off, loff = int(state["offset_data"]), int(state["label_offset"])
    if (size % 4 == 0 and off % 4 == 0 and loff % 4 == 0 and mem.flags.c_contiguous
            and sys.byteorder == "little"):
        words = mem.reshape(-1).view(np.uint32).reshape(n, size // 4)
        vecs: F32 = words[:, off // 4 : off // 4 + dim].view(np.float32)
        labels = (words[:, loff // 4].astype(np.int64)
                  | (words[:, loff // 4 + 1].astype(np.int64) << 32))  # little-endian u64
        return vecs, labels, dead
    vecs = np.ascontiguousarray(mem[:, off : off + dim * 4]).view(np.float32).reshape(n, dim)
    raw = np.ascontiguousarray(mem[:, loff : loff + 8]).view(np.uint64).ravel()
    return vecs, raw.astype(np.int64), dead


def _halve(vecs: F16, scale: NDArray[np.int8], labels: I64, v: F32) -> None:
    """Rows ``labels`` of the float16 copy and their scales (exponents of two) from the
    float32 vectors ``v``."""
    top = np.abs(v).max(axis=1) if len(v) else np.zeros(0, dtype=np.float32)
    e = np.clip(np.ceil(np.log2(np.maximum(top, 1e-30))), -126, 127).astype(np.int8)
    scale[labels] = e
    vecs[labels] = v / np.ldexp(np.float32(1.0), e.astype(np.int32))[:, None]
