"""Recall of the served search against an exact numpy brute force (DESIGN.md: "Filtered search
must keep its recall at every selectivity"): HNSW recall@10 >= 0.95, and filtered recall@10 >=
0.95 at ~0.5 %, 5 %, 30 % and 90 % selectivity, through the exact-scan path (the default
``exact_scan_max``, over-fetching off), through HNSW-with-filter (``exact_scan_max=0``, no
over-fetching) and through over-fetch + post-filter (``exact_scan_max=0``, the default
``filter_overfetch_percent``)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import numpy as np
import pytest
import pytest_asyncio

from jade.indexes.hnsw import HnswIndex
from tests.conftest import make_settings, running_server
from tests.test_http_errors import Strict

N, DIM, CLUSTERS, QUERIES, K = 3000, 32, 30, 50, 10
BUCKETS = 200  # metadata {"bucket": i % 200}
MIN_RECALL = 0.95

# (filter, predicate on the bucket, expected share of the data)
SELECTIVITIES: list[tuple[dict[str, Any], Any, float]] = [
    ({"bucket": {"$in": [7]}}, lambda b: b == 7, 0.005),
    ({"bucket": {"$lt": 10}}, lambda b: b < 10, 0.05),
    ({"bucket": {"$in": list(range(0, 120, 2))}}, lambda b: b < 120 and b % 2 == 0, 0.30),
    ({"bucket": {"$lt": 180}}, lambda b: b < 180, 0.90),
]


def _dataset() -> tuple[np.ndarray, np.ndarray]:
    """Clustered data (a few dozen Gaussian blobs) and queries drawn near the same centres."""
    rng = np.random.default_rng(20240611)
    centres = rng.normal(size=(CLUSTERS, DIM)) * 1.5
    data = centres[rng.integers(0, CLUSTERS, N)] + rng.normal(size=(N, DIM))
    queries = centres[rng.integers(0, CLUSTERS, QUERIES)] + rng.normal(size=(QUERIES, DIM))
    return data.astype(np.float32), queries.astype(np.float32)


DATA, QUERY = _dataset()
UNIT = DATA.astype(np.float64) / np.linalg.norm(DATA.astype(np.float64), axis=1, keepdims=True)
BUCKET = np.arange(N) % BUCKETS


def _exact(q: np.ndarray, mask: np.ndarray | None = None) -> list[int]:
    """Brute-force cosine top-K (of the rows allowed by ``mask``)."""
    scores = UNIT @ (q / np.linalg.norm(q))
    if mask is not None:
        scores = np.where(mask, scores, -np.inf)
    top = np.argsort(-scores, kind="stable")[:K]
    return [int(i) for i in top if np.isfinite(scores[i])]


async def _load(s: Strict) -> str:
    db = await s.create_db(DIM)
    for start in range(0, N, 1000):
        await s.expect(
            201,
            "POST",
            f"/v1/databases/{db}/vectors/batch",
            {
                "vectors": [
                    {
                        "id": str(i),
                        "values": DATA[i].tolist(),
                        "metadata": {"bucket": int(BUCKET[i])},
                    }
                    for i in range(start, min(N, start + 1000))
                ]
            },
        )
    assert await s.count(db) == N
    return db


async def _recall(
    s: Strict,
    db: str,
    filters: dict[str, Any] | None,
    pred: Any,
    strategy: str,
    ef: int | None = None,
) -> float:
    mask = None if pred is None else np.array([pred(int(b)) for b in BUCKET])
    hits = total = 0
    for q in QUERY:
        truth = _exact(q, mask)
        body: dict[str, Any] = {"queryVector": q.tolist(), "topK": K, "threshold": -1}
        if filters is not None:
            body["filters"] = filters
        if ef is not None:
            body["efSearch"] = ef
        st, res = await s.post(f"/v1/databases/{db}/search", body)
        assert st == 200, res
        assert res["strategy"] == strategy, res["strategy"]
        got = [int(r["vectorId"]) for r in res["results"]]
        assert len(got) == len(truth) == min(K, int(mask.sum()) if mask is not None else K)
        if mask is not None:
            assert all(mask[i] for i in got), "a result that does not match the filter"
        hits += len(set(got) & set(truth))
        total += len(truth)
    return hits / total


# one server per path for the whole module: loading and indexing 3000 vectors is the slow part
module_loop = pytest.mark.asyncio(loop_scope="module")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def exact_path(tmp_path_factory: Any) -> AsyncIterator[tuple[Strict, str]]:
    settings = make_settings(tmp_path_factory.mktemp("exact"), filter_overfetch_percent=0)
    async with running_server(settings) as srv:
        s = Strict(srv.user)
        yield s, await _load(s)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def hnsw_path(tmp_path_factory: Any) -> AsyncIterator[tuple[Strict, str]]:
    settings = make_settings(tmp_path_factory.mktemp("hnsw"), exact_scan_max=0,
                             filter_overfetch_percent=0)
    async with running_server(settings) as srv:
        s = Strict(srv.user)
        yield s, await _load(s)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def postfilter_path(tmp_path_factory: Any) -> AsyncIterator[tuple[Strict, str]]:
    settings = make_settings(tmp_path_factory.mktemp("post"), exact_scan_max=0)
    assert settings.filter_overfetch_percent == 5
    async with running_server(settings) as srv:
        s = Strict(srv.user)
        yield s, await _load(s)


def test_selectivities_hit_their_targets() -> None:
    for _, pred, share in SELECTIVITIES:
        got = float(np.mean([pred(int(b)) for b in BUCKET]))
        assert got == pytest.approx(share, rel=0.01)


@module_loop
async def test_unfiltered_hnsw_recall(hnsw_path: tuple[Strict, str]) -> None:
    s, db = hnsw_path
    recall = await _recall(s, db, None, None, "hnsw")
    assert recall >= MIN_RECALL, recall
    # the measurement is not vacuous: a starved search (ef = topK) is visibly worse
    starved = await _recall(s, db, None, None, "hnsw", ef=K)
    assert starved < recall, (starved, recall)


@module_loop
async def test_filtered_recall_exact_scan_path(exact_path: tuple[Strict, str]) -> None:
    s, db = exact_path
    for filters, pred, share in SELECTIVITIES:
        recall = await _recall(s, db, filters, pred, "exact_filtered")
        assert recall >= MIN_RECALL, (share, recall)


@module_loop
async def test_filtered_recall_hnsw_with_filter_path(hnsw_path: tuple[Strict, str]) -> None:
    s, db = hnsw_path
    for filters, pred, share in SELECTIVITIES:
        recall = await _recall(s, db, filters, pred, "hnsw_filtered")
        assert recall >= MIN_RECALL, (share, recall)


@module_loop
async def test_filtered_recall_overfetch_path(postfilter_path: tuple[Strict, str]) -> None:
    """Shares of 30 % and 90 % over-fetch unfiltered neighbours and post-filter them; below the
    threshold (0.5 %) the graph search with the filter answers."""
    s, db = postfilter_path
    for filters, pred, share in SELECTIVITIES:
        if share == 0.05:
            continue  # at the threshold either path may answer (too few matches → fallback)
        strategy = "hnsw_postfilter" if share >= 0.05 else "hnsw_filtered"
        recall = await _recall(s, db, filters, pred, strategy)
        assert recall >= MIN_RECALL, (share, recall)


@module_loop
async def test_filter_narrower_than_top_k_on_the_hnsw_path(hnsw_path: tuple[Strict, str]) -> None:
    """Fewer matches than ``topK``: every match comes back, in exact order (hnswlib alone
    cannot return k results then)."""
    s, db = hnsw_path
    for filters, pred in (
        ({"bucket": 7}, lambda b: b == 7),
        ({"bucket": {"$in": [3, 4]}}, lambda b: b in (3, 4)),
    ):
        mask = np.array([pred(int(b)) for b in BUCKET])
        for q in QUERY[:5]:
            body = {"queryVector": q.tolist(), "topK": 100, "threshold": -1, "filters": filters}
            st, res = await s.post(f"/v1/databases/{db}/search", body)
            assert st == 200 and res["strategy"] == "hnsw_filtered", res
            scores = np.where(mask, UNIT @ (q / np.linalg.norm(q)), -np.inf)
            truth = [str(i) for i in np.argsort(-scores, kind="stable")[: int(mask.sum())]]
            assert [r["vectorId"] for r in res["results"]] == truth


def test_hnsw_falls_back_to_an_exact_answer() -> None:
    """When the graph cannot produce k allowed neighbours, ``HnswIndex.search`` answers with an
    exact scan of the allowed labels instead of failing."""
    idx = HnswIndex(DIM, "cosine", m=4, ef_construction=16, ef_search=4, capacity=N)
    idx.add(np.arange(N, dtype=np.int64), DATA)
    idx.delete(list(range(0, N, 3)))
    allowed = {i for i in range(N) if i % 3 and BUCKET[i] < 4}
    q = QUERY[0]
    labels, scores = idx.search(q, 1000, allowed=allowed.__contains__)
    mask = np.array([i in allowed for i in range(N)])
    truth = np.argsort(-np.where(mask, UNIT @ (q / np.linalg.norm(q)), -np.inf), kind="stable")
    assert labels.tolist() == truth[: len(allowed)].tolist()
    assert np.all(np.diff(scores) <= 1e-6)
