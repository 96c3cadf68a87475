"""Fusing a vector ranking and a BM25 ranking into one (``/search/hybrid``). Pure functions.

Each input is a list of ``(id, score)``, best first (higher scores better). Methods:
  rrf              reciprocal rank fusion: sum over the lists of 1 / (k + rank), rank from 1;
                   ``alpha`` plays no part
  weighted         weighted RRF: alpha / (k + vector rank) + (1 - alpha) / (k + BM25 rank)
  linear           each list's scores min-max normalised to 0..1 (all equal: 1), then
                   alpha * vector + (1 - alpha) * BM25, a list that lacks the id adding 0
  weighted_linear  the same as linear (the CLI's name for it)
``alpha`` is the weight of the vector side. Ties are broken by id, so the order is a function
of the inputs alone.
"""

from __future__ import annotations

from dataclasses import dataclass

METHODS = ("rrf", "linear", "weighted", "weighted_linear")
DEFAULT_ALPHA = 0.7
DEFAULT_K = 60


@dataclass(slots=True)
class Fused:
    id: str
    score: float
    vector_score: float | None = None
    bm25_score: float | None = None
    vector_rank: int | None = None
    bm25_rank: int | None = None


def _normalised(hits: list[tuple[str, float]]) -> dict[str, float]:
    if not hits:
        return {}
    scores = [s for _, s in hits]
    lo, hi = min(scores), max(scores)
    if hi <= lo:
        return {i: 1.0 for i, _ in hits}
    return {i: (s - lo) / (hi - lo) for i, s in hits}


def fuse(vector: list[tuple[str, float]], bm25: list[tuple[str, float]], method: str,
         alpha: float = DEFAULT_ALPHA, k: int = DEFAULT_K) -> list[Fused]:
    """Every id of either list with its fused score, best first."""
    if method not in METHODS:
        raise ValueError(f"unknown fusion method {method!r}")
    out: dict[str, Fused] = {}
    for rank, (i, s) in enumerate(vector, 1):
        if i not in out:
            out[i] = Fused(i, 0.0, vector_score=s, vector_rank=rank)
    for rank, (i, s) in enumerate(bm25, 1):
        f = out.get(i)
        if f is None:
            out[i] = Fused(i, 0.0, bm25_score=s, bm25_rank=rank)
        elif f.bm25_rank is None:
            f.bm25_score, f.bm25_rank = s, rank
    if method in ("rrf", "weighted"):
        wv, wb = (1.0, 1.0) if method == "rrf" else (alpha, 1.0 - alpha)
        for f in out.values():
            f.score = ((wv / (k + f.vector_rank) if f.vector_rank is not None else 0.0)
                       + (wb / (k + f.bm25_rank) if f.bm25_rank is not None else 0.0))
    else:
        nv, nb = _normalised(vector), _normalised(bm25)
        for f in out.values():
            f.score = alpha * nv.get(f.id, 0.0) + (1.0 - alpha) * nb.get(f.id, 0.0)
    return sorted(out.values(), key=lambda f: (-f.score, f.id))
