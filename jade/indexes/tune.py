"""efSearch from a recall target, on the caller's sample of real queries: their exact top-k
among the live vectors is the truth; the graph is searched at growing ef until the mean
recall@k reaches the target, then the smallest passing ef is found by bisection. What the
caller does with the answer (report it, or apply it through the log as an ``index.update``)
is the HTTP layer's business.

Why the caller's queries and not stored vectors: a stored vector is in the graph, and the
search walks straight to it and its neighbours. On the benchmark data (100k x 128, M=16) stored
vectors reached recall 0.95 at ef 21, where fresh queries from the same clusters got 0.857 and
needed ef 40; vectors with synthetic noise were off either way depending on the noise scale.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from jade.indexes.base import VectorIndex
from jade.indexes.live import QueryTimeout

I64 = NDArray[np.int64]
F32 = NDArray[np.float32]
MAX_EF = 4096
QUERY_CHUNK = 64  # exact truth: this many queries per matrix product


@dataclass(frozen=True, slots=True)
class Point:
    ef: int
    recall: float
    qps: float  # batch search throughput at this ef (the index's threads)


@dataclass(frozen=True, slots=True)
class Tuning:
    ef: int | None  # the smallest ef reaching the target; None when MAX_EF does not
    recall: float  # at ``ef`` (at MAX_EF when not reached)
    curve: list[Point]  # every ef tried, ascending
    queries: int


def _check(deadline: float | None) -> None:
    if deadline is not None and time.monotonic() > deadline:
        raise QueryTimeout("tuning passed its deadline")


def exact_truth(metric: str, data: F32, labels: I64, queries: F32, k: int,
                deadline: float | None = None) -> I64:
    """Exact top-``k`` labels per query over ``data`` (rows ``labels``), ordered as the index
    orders them. ``data`` is as the index keeps it (unit rows for cosine). ``deadline``
    (``time.monotonic()``): checked between chunks of queries (``QueryTimeout``)."""
    out = np.empty((len(queries), k), dtype=np.int64)
    sq = np.einsum("ij,ij->i", data, data) if metric == "euclidean" else None
    for s in range(0, len(queries), QUERY_CHUNK):
        _check(deadline)
        q = queries[s : s + QUERY_CHUNK]
        scores = q @ data.T  # (chunk, n)
        if sq is not None:  # -|q - v|^2 up to a per-query constant
            scores = 2.0 * scores - sq[None, :]
        part = np.argpartition(-scores, k, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(scores, part, axis=1), axis=1, kind="stable")
        out[s : s + QUERY_CHUNK] = labels[np.take_along_axis(part, order, axis=1)]
    return out


def tune_ef(index: VectorIndex, metric: str, live: Iterable[int], queries: F32, target: float,
            k: int, deadline: float | None = None) -> Tuning:
    """The smallest efSearch whose mean recall@``k`` over ``queries`` reaches ``target``.
    ``live``: the live labels (``LiveDb.meta``: copied here, off the event loop, by one
    ``list()``, atomic against the writer thread). Needs at least ``k`` live vectors (the
    caller checks). ``deadline``: the request's (``query_timeout_seconds``), checked between
    the steps (``QueryTimeout``): one request of a write-grant holder cannot hold the cores."""
    labels, data = index.get_present(np.fromiter(list(live), dtype=np.int64))
    k = min(k, len(labels))
    truth = exact_truth(metric, data, labels, queries, k, deadline)
    tried: dict[int, Point] = {}

    def measure(ef: int) -> float:
        _check(deadline)
        t0 = time.perf_counter()
        found, _ = index.search_batch(queries, k, ef=max(ef, k))
        secs = time.perf_counter() - t0
        hits = sum(len(set(row.tolist()).intersection(want.tolist()))
                   for row, want in zip(found, truth, strict=True))
        recall = hits / (k * len(queries))
        tried[ef] = Point(ef, round(recall, 4), round(len(queries) / max(secs, 1e-9), 1))
        return recall

    lo, ef = 0, k  # lo: the largest ef known to miss the target
    while measure(ef) < target:
        if ef >= MAX_EF:
            return Tuning(None, tried[ef].recall, sorted(tried.values(), key=lambda p: p.ef),
                          len(queries))
        lo, ef = ef, min(MAX_EF, max(ef + 8, ef * 3 // 2))
    hi = ef
    while hi - lo > 1:  # recall grows with ef (up to sampling noise): bisect to the edge
        mid = (lo + hi) // 2
        if measure(mid) >= target:
            hi = mid
        else:
            lo = mid
    return Tuning(hi, tried[hi].recall, sorted(tried.values(), key=lambda p: p.ef), len(queries))
