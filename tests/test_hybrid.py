"""/search/hybrid and /search/rerank (jade/http/text.py, jade/text/fusion.py): the fusions'
arithmetic, every error row over HTTP, filters applied before either ranking is cut, the
answer's shape with metadata and values, and reranking with the text model."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from jade.text import models
from jade.text.fusion import fuse
from tests.conftest import Api, Server

DIM = 4


def test_fusion_arithmetic() -> None:
    vec = [("a", 0.9), ("b", 0.5), ("c", 0.1)]
    bm = [("c", 7.0), ("d", 3.0), ("a", 1.0)]
    rrf = {f.id: f.score for f in fuse(vec, bm, "rrf", k=60)}
    assert rrf["a"] == pytest.approx(1 / 61 + 1 / 63)
    assert rrf["c"] == pytest.approx(1 / 63 + 1 / 61)
    assert rrf["d"] == pytest.approx(1 / 62)
    w = {f.id: f.score for f in fuse(vec, bm, "weighted", alpha=0.25, k=10)}
    assert w["a"] == pytest.approx(0.25 / 11 + 0.75 / 13)
    lin = fuse(vec, bm, "linear", alpha=0.7)
    scores = {f.id: f.score for f in lin}
    assert scores["a"] == pytest.approx(0.7 * 1.0 + 0.3 * 0.0)
    assert scores["c"] == pytest.approx(0.7 * 0.0 + 0.3 * 1.0)
    assert scores["d"] == pytest.approx(0.3 * (3.0 - 1.0) / 6.0)
    assert [f.id for f in lin] == [f.id for f in fuse(vec, bm, "weighted_linear", alpha=0.7)]
    # ties broken by id; alpha 0 or 1 is one side alone
    assert [f.id for f in fuse([("y", 1.0), ("x", 1.0)], [], "linear")] == ["x", "y"]
    assert [f.id for f in fuse(vec, bm, "linear", alpha=1.0)][:3] == ["a", "b", "c"]
    both = next(f for f in lin if f.id == "a")
    assert (both.vector_score, both.bm25_score) == (0.9, 1.0)
    with pytest.raises(ValueError):
        fuse(vec, bm, "max")


async def _setup(api: Api) -> str:
    db = await api.create_db(DIM)
    vs = [
        {"id": "fox", "values": [1, 0, 0, 0], "metadata": {"text": "quick brown fox jumps",
                                                          "cat": "animal", "n": 1}},
        {"id": "dog", "values": [0.9, 0.1, 0, 0], "metadata": {"text": "lazy brown dog sleeps",
                                                               "cat": "animal", "n": 2}},
        {"id": "car", "values": [0, 1, 0, 0], "metadata": {"text": "fast red car engine",
                                                          "cat": "vehicle", "n": 3}},
        {"id": "bus", "values": [0, 0.9, 0.1, 0], "metadata": {"text": "big brown bus engine",
                                                               "cat": "vehicle", "n": 4}},
        {"id": "sea", "values": [0, 0, 1, 0], "metadata": {"text": "blue sea waves",
                                                          "cat": "place", "n": 5}},
    ] + [{"id": f"x{i}", "values": [0, 0, 0, 1], "metadata": {"text": f"filler words {i}",
                                                              "cat": "other"}}
         for i in range(20)]
    st, body = await api.post(f"/v1/databases/{db}/vectors/batch", {"vectors": vs})
    assert st == 201, body
    st, body = await api.post(f"/v1/databases/{db}/bm25-index/build", {"textField": "text"})
    assert st == 200, body
    return db


async def test_hybrid_search_answers(server: Server) -> None:
    api = server.user
    db = await _setup(api)
    path = f"/v1/databases/{db}/search/hybrid"
    # text only, vector only, both
    st, body = await api.post(path, {"queryText": "brown engine", "topK": 3})
    assert st == 200 and body["fusionMethod"] == "rrf" and body["count"] == 3, body
    assert body["results"][0]["vectorId"] == "bus"  # both words
    assert all("bm25Score" in r and "vectorScore" not in r for r in body["results"])
    st, body = await api.post(path, {"queryVector": [1, 0, 0, 0], "topK": 2})
    assert st == 200 and [r["vectorId"] for r in body["results"]] == ["fox", "dog"], body
    assert all("vectorScore" in r and "bm25Score" not in r for r in body["results"])
    for method in ("rrf", "linear", "weighted", "weighted_linear", "RRF"):
        st, body = await api.post(path, {"queryText": "engine", "queryVector": [0, 1, 0, 0],
                                         "topK": 2, "fusionMethod": method, "alpha": 0.5,
                                         "k": 10})
        assert st == 200 and body["fusionMethod"] == method.lower(), body
        assert [r["vectorId"] for r in body["results"]] == ["bus", "car"] or \
            [r["vectorId"] for r in body["results"]] == ["car", "bus"], body
        scores = [r["hybridScore"] for r in body["results"]]
        assert scores == sorted(scores, reverse=True)
    # alpha moves the weight: all vector, the nearest vector first; all text, the best text
    st, body = await api.post(path, {"queryText": "sea waves", "queryVector": [1, 0, 0, 0],
                                     "topK": 1, "fusionMethod": "linear", "alpha": 1.0})
    assert body["results"][0]["vectorId"] == "fox", body
    st, body = await api.post(path, {"queryText": "sea waves", "queryVector": [1, 0, 0, 0],
                                     "topK": 1, "fusionMethod": "linear", "alpha": 0.0})
    assert body["results"][0]["vectorId"] == "sea", body
    # metadata and values on request; scores left out on request
    st, body = await api.post(path, {"queryText": "fox", "topK": 1, "includeMetadata": True,
                                     "includeVectorData": True, "includeScores": False})
    assert st == 200, body
    r = body["results"][0]
    assert r["vector"]["metadata"]["cat"] == "animal" and r["vector"]["values"] == [1, 0, 0, 0]
    assert "bm25Score" not in r and "hybridScore" in r


async def test_filters_apply_before_ranking(server: Server) -> None:
    api = server.user
    db = await _setup(api)
    path = f"/v1/databases/{db}/search/hybrid"
    # the best text match ("bus") is not a vehicle-free result: with the filter, topK 2 still
    # answers 2 animals, although they rank below it
    st, body = await api.post(path, {"queryText": "brown engine", "topK": 2,
                                     "filters": {"cat": "animal"}})
    assert st == 200 and sorted(r["vectorId"] for r in body["results"]) == ["dog", "fox"], body
    st, body = await api.post(path, {"queryVector": [0, 1, 0, 0], "topK": 2,
                                     "filters": {"cat": "animal"}})
    assert sorted(r["vectorId"] for r in body["results"]) == ["dog", "fox"], body
    st, body = await api.post(path, {"queryText": "brown", "queryVector": [0, 1, 0, 0],
                                     "topK": 5, "filters": {"n": {"$gte": 4}}})
    assert st == 200 and {r["vectorId"] for r in body["results"]} <= {"bus", "sea"}, body
    assert body["results"][0]["vectorId"] == "bus"
    # a document given directly has no metadata: a filter never admits it
    st, body = await api.post(f"/v1/databases/{db}/bm25-index/documents",
                              {"documents": [{"doc_id": "note", "text": "brown brown brown"}]})
    assert st == 200, body
    st, body = await api.post(path, {"queryText": "brown", "topK": 10})
    assert body["results"][0]["vectorId"] == "note", body
    st, body = await api.post(path, {"queryText": "brown", "topK": 10,
                                     "filters": {"cat": "animal"}})
    assert "note" not in {r["vectorId"] for r in body["results"]}, body
    st, body = await api.post(path, {"queryText": "brown", "filters": {"cat": {"$bad": 1}}})
    assert st == 400 and body["error"] == "invalid_filter", body


@pytest.mark.parametrize("body,code", [
    ({"topK": 3}, "missing_field"),
    ({"queryText": "   "}, "missing_field"),
    ({"queryText": 5}, "invalid_argument"),
    ({"queryText": "x", "alpha": 1.5}, "invalid_argument"),
    ({"queryText": "x", "alpha": -0.1}, "invalid_argument"),
    ({"queryText": "x", "alpha": "high"}, "invalid_argument"),
    ({"queryText": "x", "fusionMethod": "max"}, "invalid_fusion_method"),
    ({"queryText": "x", "fusionMethod": 3}, "invalid_fusion_method"),
    ({"queryText": "x", "k": 0}, "invalid_argument"),
    ({"queryText": "x", "k": 1.5}, "invalid_argument"),
    ({"queryText": "x", "topK": 0}, "invalid_argument"),
    ({"queryVector": [1, 2]}, "dimension_mismatch"),
    ({"queryVector": "abc"}, "invalid_argument"),
    ({"queryText": "x", "includeMetadata": "yes"}, "invalid_argument"),
])
async def test_hybrid_error_rows(server: Server, body: dict[str, Any], code: str) -> None:
    api = server.user
    db = await api.create_db(DIM)
    st, out = await api.post(f"/v1/databases/{db}/bm25-index/build", {})
    assert st == 200, out
    st, out = await api.post(f"/v1/databases/{db}/search/hybrid", body)
    assert st == 400 and out["error"] == code, (body, out)


async def test_hybrid_and_rerank_need_a_database_and_an_index(server: Server) -> None:
    api = server.user
    db = await api.create_db(DIM)
    for path in ("/search/hybrid", "/search/rerank"):
        st, body = await api.post(f"/v1/databases/{db}{path}", {"queryText": "x"})
        assert st == 404 and body["error"] == "bm25_index_not_found", body
        st, body = await api.post(f"/v1/databases/nope{path}", {"queryText": "x"})
        assert st == 404 and body["error"] == "not_found", body
        st, body = await server.anon.post(f"/v1/databases/{db}{path}", {"queryText": "x"})
        assert st == 401, body
    # a vector query needs no text index
    st, body = await api.post(f"/v1/databases/{db}/search/hybrid", {"queryVector": [1] * DIM})
    assert st == 200 and body["count"] == 0, body


async def test_rerank_search(server: Server) -> None:
    api = server.user
    db = await _setup(api)
    path = f"/v1/databases/{db}/search/rerank"
    st, body = await api.post(path, {"topK": 3})
    assert st == 400 and body["error"] == "missing_field", body
    st, body = await api.post(path, {"queryText": "x", "rerankTopN": 0})
    assert st == 400, body
    # without reranking: the hybrid order, no rerank scores, no model needed
    st, body = await api.post(path, {"queryText": "brown engine", "topK": 3,
                                     "enableReranking": False})
    assert st == 200 and body["count"] == 3 and body["reranked"] is False, body
    assert body["results"][0]["docId"] == "bus" and "totalMs" in body["timings"]
    assert "rerankScore" not in body["results"][0]
    assert body["results"][0]["metadata"]["cat"] == "vehicle"
    st, body = await api.post(path, {"queryText": "animals sleeping", "topK": 3,
                                     "queryVector": [0, 0, 0, 1], "rerankTopN": 25})
    if st == 503:  # a slim install: the model is missing, and the answer says so
        assert body["error"] == "model_unavailable", body
        return
    assert st == 200 and body["reranked"] is True and body["modelName"], body
    rows = body["results"]
    assert len(rows) == 3 and all("rerankScore" in r and "combinedScore" in r for r in rows)
    assert [r["combinedScore"] for r in rows] == sorted((r["combinedScore"] for r in rows),
                                                        reverse=True)
    # the reranker reads the text: the sleeping dog is the best of 25 candidates
    assert rows[0]["docId"] == "dog", rows
    assert body["timings"]["totalMs"] >= body["timings"]["rerankMs"] > 0


async def test_rerank_loads_its_model_off_the_event_loop(server: Server) -> None:
    """The first rerank loads the model (~0.5 s): other requests are served meanwhile."""
    api = server.user
    db = await _setup(api)
    models._loaded.clear()  # this process loads the model again at the next call
    gaps: list[float] = []
    done = asyncio.Event()

    async def beat() -> None:  # the loop's pulse: a request would wait as long as a gap
        last = time.perf_counter()
        while not done.is_set():
            await asyncio.sleep(0.005)
            now = time.perf_counter()
            gaps.append(now - last)
            last = now

    pulse = asyncio.create_task(beat())
    await asyncio.sleep(0.05)
    t0 = time.perf_counter()
    st, body = await api.post(f"/v1/databases/{db}/search/rerank",
                              {"queryText": "animals sleeping", "topK": 3})
    took = time.perf_counter() - t0
    done.set()
    await pulse
    if st == 503:  # a slim install: nothing to load
        assert body["error"] == "model_unavailable", body
        return
    assert st == 200 and body["reranked"] is True, body
    assert models.status() == "ready"
    assert took > 0.1, took  # the model was loaded by this call
    # the loop went on meanwhile (a load on the loop stops it for the whole call: ~took)
    assert max(gaps) < 0.4 * took, (max(gaps), took)

