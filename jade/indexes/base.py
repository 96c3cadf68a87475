"""What every in-memory vector index is: the ``VectorIndex`` interface (``hnsw.py``,
``flat.py``), the ``IndexCapture`` a checkpoint writes, and the score convention both kinds
answer with.

Both kinds map integer labels (decided in the log records) to vectors, and both answer with
*scores*, higher is better: cosine similarity for ``cosine``, the inner product for ``dot``, and
``1 / (1 + euclidean distance)`` for ``euclidean`` (``exact_scores``, ``distances_to_scores``).

Thread model: one writer thread calls ``add``/``delete``/``stage``/``save``, the index
follower calls ``fold``; searches come from any thread, and run concurrently.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from numpy.typing import NDArray

F32 = NDArray[np.float32]
I64 = NDArray[np.int64]


def distances_to_scores(metric: str, d: np.ndarray) -> np.ndarray:
    """hnswlib distances → scores (higher is better)."""
    scores: np.ndarray  # numpy's operators on an untyped-dtype array return Any
    if metric == "euclidean":
        scores = 1.0 / (1.0 + np.sqrt(np.maximum(d, 0.0)))
    else:
        scores = 1.0 - d  # cosine: 1 - cos; ip: 1 - dot
    return scores


def exact_scores(metric: str, data: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Scores of every row of ``data`` against ``q`` (data already normalised for cosine)."""
    scores: np.ndarray  # numpy's operators on an untyped-dtype array return Any
    if metric == "cosine":
        qn = q / (np.linalg.norm(q) + 1e-30)
        scores = data @ qn
    elif metric == "dot":
        scores = data @ q
    else:
        diff = data - q
        scores = 1.0 / (1.0 + np.sqrt(np.einsum("ij,ij->i", diff, diff)))
    return scores


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

    def stage(self, labels: I64, vectors: F32, lsn: int = 0) -> None:
        """Take the write now; the search structure may take it later (``fold``), searches
        answer with it at once either way. ``lsn``: the record's, for the lag. An index
        without a graph to build (the flat one) takes it at once."""
        self.add(labels, vectors)

    def stage_delete(self, labels: list[int], lsn: int = 0) -> None:
        self.delete(labels)

    def fold(self) -> int:
        """Fold staged writes into the search structure (the index follower's thread)."""
        return 0

    def settle(self) -> int:
        """Fold everything staged, on the calling thread."""
        return 0

    def lag(self) -> tuple[int, tuple[int, float] | None]:
        """Labels staged and not folded yet, and (LSN, ``time.monotonic()``) of the oldest."""
        return 0, None

    def get(self, labels: I64) -> F32:
        """Stored vectors (normalised for cosine) of the given live labels."""
        raise NotImplementedError

    def get_present(self, labels: I64) -> tuple[I64, F32]:
        """Like ``get``, but labels deleted meanwhile (a search racing the writer thread) are
        left out: returns the labels kept and their vectors, row for row."""
        raise NotImplementedError

    def exact_top(self, labels: I64, q: F32, k: int) -> tuple[I64, np.ndarray]:
        """The exact top ``k`` of ``labels`` (those deleted meanwhile left out): labels and
        scores, best first."""
        present, data = self.get_present(np.asarray(labels, dtype=np.int64))
        scores = exact_scores(self.metric, data, np.asarray(q, dtype=np.float32).ravel())
        sel = top_k(scores, k)
        return present[sel], scores[sel]

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
        excludes them: ``IndexProjection`` holds its lock); searches may."""
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
