"""POST /v1/databases/{db}/search/batch: many queries in one request (JSON lists or base64
float32 rows), each answered as the single search would answer it; bad input is a 400 naming
the query, never a 500."""

from __future__ import annotations

import base64
from typing import Any

import numpy as np
import pytest

from tests.conftest import Api
from tests.test_http_errors import Strict

DIM, N = 8, 300


@pytest.fixture
def strict(api: Api) -> Strict:
    return Strict(api)


def _data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(7)
    return (rng.normal(size=(N, DIM)).astype(np.float32),
            rng.normal(size=(20, DIM)).astype(np.float32))


async def _load(s: Strict, kind: str) -> str:
    data, _ = _data()
    db = await s.create_db(DIM, indexType=kind)
    await s.expect(201, "POST", f"/v1/databases/{db}/vectors/batch", {"vectors": [
        {"id": f"v{i}", "values": data[i].tolist(), "metadata": {"i": i}} for i in range(N)]})
    await s.api.indexed()  # approximate answers compared below: the graph holds every vector
    return db


def _b64(rows: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(rows, dtype="<f4").tobytes()).decode()


@pytest.mark.parametrize("kind", ["hnsw", "flat"])
async def test_each_row_is_what_the_single_search_answers(strict: Strict, kind: str) -> None:
    db = await _load(strict, kind)
    _, queries = _data()
    body: dict[str, Any] = {"queries": queries.tolist(), "topK": 5, "efSearch": 64,
                            "threshold": -1}
    st, res = await strict.post(f"/v1/databases/{db}/search/batch", body)
    assert st == 200, res
    assert res["count"] == len(queries) == len(res["results"])
    st, res64 = await strict.post(f"/v1/databases/{db}/search/batch",
                                  {"queriesB64": _b64(queries), "topK": 5, "efSearch": 64})
    assert st == 200 and res64 == res  # the two encodings are the same queries
    for q, row in zip(queries, res["results"], strict=True):
        st, one = await strict.post(f"/v1/databases/{db}/search",
                                    {"queryVector": q.tolist(), "topK": 5, "efSearch": 64,
                                     "threshold": -1})
        assert st == 200
        assert row["count"] == 5 == len(row["results"])
        assert [r["vectorId"] for r in row["results"]] == [r["vectorId"] for r in one["results"]]
        assert np.allclose([r["score"] for r in row["results"]],
                           [r["score"] for r in one["results"]], atol=1e-5)


async def test_metadata_and_deleted_vectors(strict: Strict) -> None:
    db = await _load(strict, "hnsw")
    data, _ = _data()
    queries = data[:4]  # each query is a stored vector: its own id comes first
    st, res = await strict.post(f"/v1/databases/{db}/search/batch",
                                {"queries": queries.tolist(), "topK": 3, "includeMetadata": True})
    assert st == 200, res
    for i, row in enumerate(res["results"]):
        top = row["results"][0]
        assert top["vectorId"] == f"v{i}" and top["vector"]["metadata"] == {"i": i}
    for i in range(4):
        await strict.expect(200, "DELETE", f"/v1/databases/{db}/vectors/v{i}")
    st, res = await strict.post(f"/v1/databases/{db}/search/batch",
                                {"queries": queries.tolist(), "topK": 3})
    assert st == 200
    gone = {f"v{i}" for i in range(4)}
    assert all(not gone & {r["vectorId"] for r in row["results"]} for row in res["results"])
    assert all(row["count"] == 3 for row in res["results"])


async def test_ef_search_is_honoured(strict: Strict) -> None:
    rng = np.random.default_rng(3)
    data = rng.normal(size=(2000, 32)).astype(np.float32)
    db = await strict.create_db(32, indexType="hnsw", indexParameters={"M": 4,
                                                                       "efConstruction": 16})
    for s in range(0, 2000, 1000):
        await strict.expect(201, "POST", f"/v1/databases/{db}/vectors/batch", {"vectors": [
            {"id": str(i), "values": data[i].tolist()} for i in range(s, s + 1000)]})
    qs = rng.normal(size=(30, 32)).astype(np.float32)
    answers = {}
    for ef in (10, 400):
        st, res = await strict.post(f"/v1/databases/{db}/search/batch",
                                    {"queriesB64": _b64(qs), "topK": 10, "efSearch": ef})
        assert st == 200, res
        answers[ef] = [[r["vectorId"] for r in row["results"]] for row in res["results"]]
    unit = data / np.linalg.norm(data, axis=1, keepdims=True)
    truth = [{str(i) for i in np.argsort(-(unit @ q))[:10]} for q in qs]

    def recall(rows: list[list[str]]) -> float:
        return sum(len(set(r) & t) for r, t in zip(rows, truth, strict=True)) / (10 * len(qs))

    assert recall(answers[400]) > recall(answers[10])  # ef 10 is starved on this sparse graph
    assert recall(answers[400]) >= 0.95


async def test_bad_input_is_a_400_naming_the_query(strict: Strict) -> None:
    db = await _load(strict, "hnsw")
    p = f"/v1/databases/{db}/search/batch"
    good = [0.1] * DIM
    cases: list[tuple[dict[str, Any], str]] = [
        ({}, "queries"),
        ({"queries": []}, "queries"),
        ({"queries": [good, good, good, [0.1, "x"] + [0.0] * (DIM - 2)]}, "queries[3]"),
        ({"queries": [good, [0.1] * (DIM - 1)]}, "queries[1]"),
        ({"queries": [good, None]}, "queries[1]"),
        ({"queries": [good, [True] * DIM]}, "queries[1]"),
        ({"queries": [good, [1e39] * DIM]}, "float32"),
        ({"queriesB64": "not base64!"}, "base64"),
        ({"queriesB64": base64.b64encode(b"\0" * 12).decode()}, "dimension"),
        ({"queriesB64": 5}, "base64"),
        ({"queries": [good], "topK": 0}, "topK"),
        ({"queries": [good], "efSearch": 0}, "efSearch"),
    ]
    for body, named in cases:
        st, res = await strict.post(p, body)
        assert st == 400, (body, res)
        assert named in res["message"], (named, res)
    st, res = await strict.post(p, {"queriesB64": _b64(np.full((1, DIM), np.nan))})
    assert st == 400 and "finite" in res["message"], res
