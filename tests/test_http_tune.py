"""POST /v1/databases/{db}/indexes/{iid}/tune: efSearch from a recall target on sample queries,
checked against recall measured independently (numpy exact search on other queries from the
same distribution, through the search API)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from jade.indexes.tune import exact_truth
from tests.conftest import Api, Server
from tests.test_http_errors import Strict

DIM, N, K = 16, 3000, 10


def clustered(n: int, seed: int) -> np.ndarray:
    """``n`` vectors around 20 centres fixed by ``seed``: split one draw into data and queries."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(20, DIM))
    return (centres[rng.integers(0, 20, n)] + rng.normal(size=(n, DIM)) * 0.6).astype(np.float32)


@pytest.fixture
def strict(api: Api) -> Strict:
    return Strict(api)


async def _hnsw_db(s: Strict, data: np.ndarray, metric: str = "cosine") -> tuple[str, str]:
    """A deliberately weak graph (M=4, efConstruction=16), so recall depends on efSearch."""
    db = await s.create_db(DIM, indexType="hnsw", distanceMetric=metric,
                           indexParameters={"M": 4, "efConstruction": 16})
    for start in range(0, len(data), 1000):
        st, body = await s.post(f"/v1/databases/{db}/vectors/batch", {"vectors": [
            {"id": f"v{i}", "values": data[i].tolist()}
            for i in range(start, min(start + 1000, len(data)))]})
        assert st == 201, body
    st, idx = await s.get(f"/v1/databases/{db}/indexes")
    assert st == 200 and len(idx) == 1, idx
    return db, idx[0]["indexId"]


async def _recall(s: Strict, db: str, data: np.ndarray, queries: np.ndarray, ef: int) -> float:
    """Recall@K of the server's answers at ``ef`` against exact cosine top-K."""
    unit = data / np.linalg.norm(data, axis=1, keepdims=True)
    hits = 0
    for q in queries:
        truth = set(np.argsort(-(unit @ (q / np.linalg.norm(q))))[:K].tolist())
        st, res = await s.post(f"/v1/databases/{db}/search",
                               {"queryVector": q.tolist(), "topK": K, "efSearch": ef})
        assert st == 200, res
        hits += len(truth & {int(r["vectorId"][1:]) for r in res["results"]})
    return hits / (K * len(queries))


def _tune_body(queries: np.ndarray, **extra: Any) -> dict[str, Any]:
    return {"queries": queries.tolist(), **extra}


async def test_tuned_ef_reaches_the_target_and_is_the_smallest(strict: Strict) -> None:
    both = clustered(N + 300, 1)
    data, sample, fresh = both[:N], both[N : N + 150], both[N + 150 :]
    db, iid = await _hnsw_db(strict, data)
    st, t = await strict.post(f"/v1/databases/{db}/indexes/{iid}/tune",
                              _tune_body(sample, targetRecall=0.95, topK=K))
    assert st == 200, t
    assert t["reached"] and t["recall"] >= 0.95 and not t["applied"]
    ef = t["efSearch"]
    curve = {p["efSearch"]: p["recall"] for p in t["curve"]}
    assert curve[ef] == t["recall"]
    assert all(r < 0.95 for e, r in curve.items() if e < ef)  # nothing smaller passed
    assert ef - 1 in curve or ef == K  # the bisection pinned the edge
    assert curve[min(curve)] < 0.9  # the graph is weak enough for the test to mean something
    assert t["queries"] == len(sample)
    # independently: other queries from the same distribution, through the search API
    at_ef = await _recall(strict, db, data, fresh, ef)
    below = await _recall(strict, db, data, fresh, min(curve))
    assert at_ef >= 0.92, (at_ef, t)  # the sample's estimate holds up to sampling noise
    assert below < 0.9 < at_ef


async def test_apply_sets_ef_search_through_the_log(server: Server, strict: Strict) -> None:
    both = clustered(N + 100, 3)
    data, sample = both[:N], both[N:]
    db, iid = await _hnsw_db(strict, data)
    st, t = await strict.post(f"/v1/databases/{db}/indexes/{iid}/tune",
                              _tune_body(sample, targetRecall=0.9, apply=True))
    assert st == 200 and t["reached"], t
    assert t["applied"] is (t["efSearch"] != t["previousEfSearch"])
    st, idx = await strict.get(f"/v1/databases/{db}/indexes/{iid}")
    assert idx["parameters"]["efSearch"] == t["efSearch"], idx
    # readonly: a dry run still answers, applying is refused like any write
    st, body = await server.admin.post("/v1/admin/readonly")
    assert st == 200, body
    st, dry = await strict.post(f"/v1/databases/{db}/indexes/{iid}/tune",
                                _tune_body(sample, targetRecall=0.99))
    assert st == 200 and not dry["applied"], dry
    st, body = await strict.api.call("POST", f"/v1/databases/{db}/indexes/{iid}/tune",
                                     _tune_body(sample, targetRecall=0.97, apply=True))
    # refused when there was something to write (not when the target is out of reach on this
    # weak graph, or the answer equals the ef already set)
    if body.get("reached", True) and body.get("efSearch") != t["efSearch"]:
        assert st == 503 and body["error"] == "read_only", body


Q = [[0.5] * DIM]


@pytest.mark.parametrize("body, code", [
    ({"queries": Q}, "missing_field"),
    ({"targetRecall": 1.5, "queries": Q}, "invalid_argument"),
    ({"targetRecall": 0, "queries": Q}, "invalid_argument"),
    ({"targetRecall": "high", "queries": Q}, "invalid_argument"),
    ({"targetRecall": 0.9}, "invalid_queries"),
    ({"targetRecall": 0.9, "queries": []}, "invalid_queries"),
    ({"targetRecall": 0.9, "queries": Q * 2001}, "invalid_queries"),
    ({"targetRecall": 0.9, "queries": [[0.5] * (DIM - 1)]}, "dimension_mismatch"),
    ({"targetRecall": 0.9, "queries": [[0.5] * (DIM - 1) + ["x"]]}, "invalid_argument"),
    ({"targetRecall": 0.9, "queries": Q, "topK": 0}, "invalid_argument"),
    ({"targetRecall": 0.9, "queries": Q, "apply": "yes"}, "invalid_argument"),
])
async def test_bad_bodies_are_400(strict: Strict, body: dict[str, Any], code: str) -> None:
    db, iid = await _hnsw_db(strict, clustered(50, 4))
    before = (await strict.get(f"/v1/databases/{db}/indexes/{iid}"))[1]["parameters"]
    st, res = await strict.post(f"/v1/databases/{db}/indexes/{iid}/tune", body)
    assert st == 400 and res["error"] == code, res
    assert (await strict.get(f"/v1/databases/{db}/indexes/{iid}"))[1]["parameters"] == before


async def test_what_cannot_be_tuned(strict: Strict) -> None:
    db, iid = await _hnsw_db(strict, clustered(8, 5))
    body = {"targetRecall": 0.9, "queries": Q}
    st, res = await strict.post(f"/v1/databases/{db}/indexes/{iid}/tune", body)
    assert st == 400 and res["error"] == "not_enough_vectors", res
    st, res = await strict.post(f"/v1/databases/{db}/indexes/nope/tune", body)
    assert st == 404, res
    st, flat = await strict.post(f"/v1/databases/{db}/indexes", {"type": "FLAT"})
    assert st == 201, flat
    st, res = await strict.post(f"/v1/databases/{db}/indexes/{iid}/tune", body)
    assert st == 409 and res["error"] == "index_not_serving", res
    st, res = await strict.post(f"/v1/databases/{db}/indexes/{flat['indexId']}/tune", body)
    assert st == 400 and res["error"] == "not_applicable", res


@pytest.mark.parametrize("metric", ["cosine", "dot", "euclidean"])
def test_exact_truth_is_brute_force(metric: str) -> None:
    rng = np.random.default_rng(6)
    data = rng.normal(size=(500, 8)).astype(np.float32)
    if metric == "cosine":  # the index keeps unit rows for cosine
        data /= np.linalg.norm(data, axis=1, keepdims=True)
    labels = np.arange(1000, 1500, dtype=np.int64)
    queries = rng.normal(size=(70, 8)).astype(np.float32)  # more than one chunk of 64
    got = exact_truth(metric, data, labels, queries, 5)
    for row, q in zip(got, queries, strict=True):
        if metric == "euclidean":
            score = -np.linalg.norm(data - q, axis=1)
        elif metric == "cosine":
            score = data @ (q / np.linalg.norm(q))
        else:
            score = data @ q
        assert row.tolist() == labels[np.argsort(-score)[:5]].tolist()


def test_tuning_stops_at_its_deadline() -> None:
    """One tune request (a write-grant holder's) runs exact search over the whole database and
    many searches: it takes the request's deadline (query_timeout_seconds) and stops there."""
    import time

    from jade.indexes.hnsw import HnswIndex
    from jade.indexes.live import QueryTimeout
    from jade.indexes.tune import tune_ef

    data = clustered(2000, 5)
    index = HnswIndex(DIM, "cosine", m=4, ef_construction=16, ef_search=10)
    index.add(np.arange(len(data), dtype=np.int64), data)
    queries = clustered(50, 6)
    ok = tune_ef(index, "cosine", range(len(data)), queries, 0.9, K,
                 deadline=time.monotonic() + 60)
    assert ok.ef is not None
    with pytest.raises(QueryTimeout):
        tune_ef(index, "cosine", range(len(data)), queries, 0.9, K,
                deadline=time.monotonic() - 1)
