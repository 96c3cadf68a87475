"""The reference CLI's text, rerank, embedding and analytics commands end to end over HTTP.

Issue 17: ``hybrid-search``, ``hybrid-build``, ``hybrid-status``, ``hybrid-rebuild``,
``rerank-search``, ``rerank``, ``generate-embedding`` and ``analytics-stats`` answered 404. Each
request here is what the reference CLI (``cli/python/jadevectordb/cli.py``) and its client
(``client.py``) send for that command: the same method, path, body fields (with the CLI's
defaults filled in as the CLI fills them) and query parameters, sent by a plain self-registered
user, authenticated with its session token or with an API key as ``--api-key`` does. Each test
asserts the status the client accepts (it raises on anything else) and the fields it reads or
that API.md §7.3, §9 and §11 promise it. The client's other documented text and analytics
calls (BM25 documents, reranking config, batch embeddings, analytics queries, patterns,
insights, trending, export and feedback) are driven the same way.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

import pytest

from tests.conftest import Api, Server

DIM = 4
DOCS = [  # id, text, category, vector (the query vector below is nearest to the first)
    ("d1", "Knead the bread dough until smooth, then leave it to rise.", "food",
     [1.0, 0.0, 0.0, 0.0]),
    ("d2", "A sourdough starter is flour and water with wild yeast.", "food",
     [0.9, 0.1, 0.0, 0.0]),
    ("d3", "Saturn's rings are made mostly of water ice.", "space", [0.0, 1.0, 0.0, 0.0]),
    ("d4", "The offside rule in football concerns the second-last defender.", "sport",
     [0.0, 0.0, 1.0, 0.0]),
    ("d5", "Cold brew coffee steeps for twelve hours in cold water.", "food",
     [0.0, 0.0, 0.0, 1.0]),
]
QUERY_VECTOR = "1.0,0.05,0.0,0.0"  # the CLI's --query-vector, comma separated


def cli_vector(arg: str) -> list[float]:
    """How the CLI parses ``--query-vector``: a JSON array or comma-separated numbers."""
    if arg.startswith("[") and arg.endswith("]"):
        import json

        return [float(x) for x in json.loads(arg)]
    return [float(x) for x in arg.split(",")]


def with_params(path: str, params: dict[str, Any]) -> str:
    """``path`` with ``params`` encoded as ``requests`` does (``session.get(url, params=...)``)."""
    return f"{path}?{urlencode(params)}" if params else path


async def cli_api(server: Server, credential: str) -> Api:
    """The plain user as the CLI authenticates it: ``--api-key`` carries either the session
    token or an API key the user made for itself; both go out as ``Bearer``."""
    if credential == "token":
        return server.user
    status, body = await server.user.post("/v1/api-keys", {
        "user_id": server.user_id, "description": "cli walk", "permissions": ["read", "write"],
        "validity_days": 0})
    assert status in (200, 201), body
    return Api(server.base, server.anon.session, {"Authorization": f"Bearer {body['api_key']}"})


async def text_db(api: Api) -> str:
    """A database with five vectors carrying metadata ``text`` (``store`` as the client sends
    it: metadata values stringified)."""
    status, body = await api.post("/v1/databases", {
        "name": "cli_text", "description": "", "vectorDimension": DIM, "indexType": "hnsw"})
    assert status == 201, body
    db = str(body["databaseId"])
    for vid, text, category, values in DOCS:
        status, body = await api.post(f"/v1/databases/{db}/vectors", {
            "id": vid, "values": values, "metadata": {"text": text, "category": category}})
        assert status == 201, body
    await api.indexed()
    return db


# -- the eight commands --------------------------------------------------------------------------


async def hybrid_build(api: Api, db: str, *, text_field: str = "text",
                       incremental: bool = False) -> dict[str, Any]:
    # hybrid-build --database-id DB [--text-field F] [--incremental]
    status, body = await api.post(f"/v1/databases/{db}/bm25-index/build",
                                  {"textField": text_field, "incremental": incremental})
    assert status == 200, body  # the client accepts only 200 (not the reference's 202)
    assert body["status"] and isinstance(body["message"], str)
    assert isinstance(body["documentCount"], int)
    return body  # type: ignore[no-any-return]


async def hybrid_status(api: Api, db: str) -> dict[str, Any]:
    # hybrid-status --database-id DB
    status, body = await api.get(f"/v1/databases/{db}/bm25-index/status")
    assert status == 200, body
    for key in ("status", "totalDocuments", "processedDocuments", "indexedTerms",
                "progressPercentage"):
        assert key in body, (key, body)
    return body  # type: ignore[no-any-return]


async def hybrid_search(api: Api, db: str, *, query_text: str | None = None,
                        query_vector: str | None = None, top_k: int = 10,
                        fusion_method: str = "rrf", alpha: float = 0.7,
                        filters: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    # hybrid-search --database-id DB [--query-text T] [--query-vector V] [--top-k N]
    #               [--fusion-method rrf|weighted_linear] [--alpha A] [--filters JSON]
    payload: dict[str, Any] = {"topK": top_k, "fusionMethod": fusion_method, "alpha": alpha}
    if query_text:
        payload["queryText"] = query_text
    if query_vector:
        payload["queryVector"] = cli_vector(query_vector)
    if filters:
        payload["filters"] = filters
    status, body = await api.post(f"/v1/databases/{db}/search/hybrid", payload)
    assert status == 200, body
    results = body.get("results", [])  # what the client returns and the CLI prints
    assert isinstance(results, list) and len(results) <= top_k
    assert body["count"] == len(results) and body["fusionMethod"]
    for r in results:
        assert isinstance(r["vectorId"], str) and isinstance(r["hybridScore"], float)
    return results


async def test_hybrid_build_status_search_rebuild(server: Server) -> None:
    api = server.user
    db = await text_db(api)
    built = await hybrid_build(api, db)
    assert built["documentCount"] == len(DOCS)
    st = await hybrid_status(api, db)
    assert st["totalDocuments"] == len(DOCS) and st["indexedTerms"] > 0
    assert st["progressPercentage"] == 100

    # text only (BM25 alone): the bread documents, and nothing without the words
    results = await hybrid_search(api, db, query_text="bread dough")
    assert results[0]["vectorId"] == "d1"
    assert "d3" not in [r["vectorId"] for r in results]
    assert "bm25Score" in results[0]
    # vector only
    results = await hybrid_search(api, db, query_vector=QUERY_VECTOR, top_k=2)
    assert [r["vectorId"] for r in results] == ["d1", "d2"]
    assert "vectorScore" in results[0]
    # both, the CLI's two fusion choices
    for method in ("rrf", "weighted_linear"):
        results = await hybrid_search(api, db, query_text="water", query_vector=QUERY_VECTOR,
                                      fusion_method=method, alpha=0.5)
        ids = [r["vectorId"] for r in results]
        assert sorted(ids) == ["d1", "d2", "d3", "d4", "d5"], (method, ids)  # both rankings
        if method == "rrf":  # the one with neither the word nor a near vector comes last
            assert ids[-1] == "d4", ids
    # the JSON-array form of --query-vector and a filter (applied before ranking)
    results = await hybrid_search(api, db, query_text="water",
                                  query_vector="[0.0, 0.0, 0.0, 1.0]",
                                  filters={"category": "food"})
    assert {r["vectorId"] for r in results} <= {"d1", "d2", "d5"} and results

    # a vector whose text changes after the build: the index follows the write
    status, body = await api.put(f"/v1/databases/{db}/vectors/d4", {
        "values": [0.0, 0.0, 1.0, 0.0], "metadata": {"text": "Bread rolls for the match day."}})
    assert status == 200, body
    results = await hybrid_search(api, db, query_text="rolls")
    assert [r["vectorId"] for r in results] == ["d4"]

    # hybrid-rebuild --database-id DB [--text-field F]
    status, body = await api.post(f"/v1/databases/{db}/bm25-index/rebuild", {"textField": "text"})
    assert status == 200, body
    assert body["status"] and isinstance(body["message"], str)
    assert body["documentCount"] == len(DOCS)
    # hybrid-build --incremental, over another field
    built = await hybrid_build(api, db, text_field="category", incremental=True)
    assert built["documentCount"] == len(DOCS) - 1  # d4's new metadata has no category
    results = await hybrid_search(api, db, query_text="space")
    assert [r["vectorId"] for r in results] == ["d3"]


async def test_hybrid_status_before_the_build_is_404(server: Server) -> None:
    api = server.user
    db = await text_db(api)
    status, body = await api.get(f"/v1/databases/{db}/bm25-index/status")
    assert status == 404 and body["error"], body  # the CLI prints the error and exits 1
    assert "bm25" in str(body).lower(), body  # says what is missing (not "no route")
    await hybrid_build(api, db)
    assert (await hybrid_status(api, db))["totalDocuments"] == len(DOCS)


@pytest.mark.parametrize("credential", ["token", "api_key"])
async def test_rerank_search(server: Server, credential: str) -> None:
    api = await cli_api(server, credential)
    db = await text_db(server.user)
    await hybrid_build(server.user, db)
    # rerank-search --database-id DB --query-text T [--query-vector V] [--top-k N]: the client
    # fills enableReranking true and rerankTopN 100
    for query_vector in (None, QUERY_VECTOR):
        payload: dict[str, Any] = {"queryText": "how do I make bread rise", "topK": 3,
                                   "enableReranking": True, "rerankTopN": 100}
        if query_vector:
            payload["queryVector"] = cli_vector(query_vector)
        status, body = await api.post(f"/v1/databases/{db}/search/rerank", payload)
        assert status == 200, body
        assert body["count"] == len(body["results"]) and 0 < len(body["results"]) <= 3
        assert body["timings"]["totalMs"] >= 0
        for r in body["results"]:
            for key in ("docId", "vectorScore", "bm25Score", "hybridScore", "rerankScore"):
                assert key in r, (key, r)
            assert r["metadata"]["text"]
        assert body["results"][0]["docId"] == "d1"
    status, body = await api.post(f"/v1/databases/{db}/search/rerank",
                                   {"topK": 3, "enableReranking": True, "rerankTopN": 100})
    assert status == 400 and body["error"], body  # no queryText


@pytest.mark.parametrize("credential", ["token", "api_key"])
async def test_rerank_standalone(server: Server, credential: str) -> None:
    api = await cli_api(server, credential)
    # rerank --query Q --documents '[{"id": ..., "text": ...}]' [--top-k N]
    documents = [{"id": vid, "text": text} for vid, text, _, _ in DOCS]
    status, body = await api.post("/v1/rerank", {"query": "rings of a planet",
                                                 "documents": documents})
    assert status == 200, body
    results = body.get("results", [])  # what the client returns
    assert [r["rank"] for r in results] == list(range(1, len(DOCS) + 1))
    assert results[0]["id"] == "d3"
    scores = [r["score"] for r in results]
    assert scores == sorted(scores, reverse=True)
    assert isinstance(body["latencyMs"], float)
    status, body = await api.post("/v1/rerank", {"query": "rings of a planet",
                                                 "documents": documents, "topK": 2})
    assert status == 200 and len(body["results"]) == 2 and body["results"][0]["id"] == "d3"
    status, body = await server.anon.post("/v1/rerank", {"query": "q", "documents": documents})
    assert status == 401, body  # API.md: auth required (the reference asks none)


@pytest.mark.parametrize("credential", ["token", "api_key"])
async def test_generate_embedding(server: Server, credential: str) -> None:
    api = await cli_api(server, credential)
    # generate-embedding --text T [--input-type text] [--model default] [--provider default]
    payload = {"input": "a cat sat on the mat", "input_type": "text", "model": "default",
               "provider": "default"}
    status, body = await api.post("/v1/embeddings/generate", payload)
    assert status == 200, body
    for key in ("input", "input_type", "model", "provider", "embedding", "dimension", "status",
                "generated_at"):
        assert key in body, (key, body)
    assert body["status"] == "success" and body["input"] == payload["input"]
    assert body["dimension"] == len(body["embedding"]) == 384
    assert abs(sum(x * x for x in body["embedding"]) - 1.0) < 1e-3
    status, again = await api.post("/v1/embeddings/generate", payload)
    assert again["embedding"] == body["embedding"]  # deterministic
    # the client's generate_embeddings with a list of texts
    status, batch = await api.post("/v1/embeddings/generate", {
        "input": ["a cat sat on the mat", "stock markets fell"], "input_type": "text",
        "model": "default", "provider": "default"})
    assert status == 200, batch
    assert batch["embedding"] == body["embedding"]
    assert len(batch["embeddings"]) == 2 and batch["embeddings"][0] == body["embedding"]
    status, body = await api.post("/v1/embeddings/generate", {"input_type": "text"})
    assert status == 400 and body["error"], body


@pytest.mark.parametrize("credential", ["token", "api_key"])
async def test_analytics_stats(server: Server, credential: str) -> None:
    api = await cli_api(server, credential)
    db = await text_db(server.user)
    for filters in (None, {"category": "nothing"}, None):  # the last finds no result
        body = {"queryVector": cli_vector(QUERY_VECTOR), "topK": 2}
        status, _ = await api.post(f"/v1/databases/{db}/search",
                                   {**body, "filters": filters} if filters else body)
        assert status == 200
    # analytics-stats --database-id DB [--granularity hourly|daily|weekly]
    #                 [--start-time ISO] [--end-time ISO]
    path = f"/v1/databases/{db}/analytics/stats"
    status, body = await api.get(with_params(path, {"granularity": "hourly"}))
    assert status == 200, body
    assert body["database_id"] == db and body["granularity"] == "hourly"
    total = sum(b["total_queries"] for b in body["stats"])
    assert total >= 3, body
    bucket = body["stats"][-1]
    for key in ("time_bucket", "total_queries", "successful_queries", "failed_queries",
                "zero_result_queries", "avg_latency_ms", "p50_latency_ms", "p95_latency_ms",
                "p99_latency_ms", "vector_queries", "hybrid_queries"):
        assert key in bucket, (key, bucket)
    assert sum(b["vector_queries"] for b in body["stats"]) >= 2
    assert sum(b["zero_result_queries"] for b in body["stats"]) >= 1
    for granularity in ("daily", "weekly"):
        status, body = await api.get(with_params(path, {
            "granularity": granularity, "start_time": "2020-01-01T00:00:00Z",
            "end_time": "2100-01-01T00:00:00Z"}))
        assert status == 200, body
        assert sum(b["total_queries"] for b in body["stats"]) == total


# -- the client's other text and analytics calls -------------------------------------------------


async def test_client_add_bm25_documents(server: Server) -> None:
    api = server.user
    db = await text_db(api)
    await hybrid_build(api, db)
    # add_bm25_documents(database_id, documents=[{doc_id, text}])
    status, body = await api.post(f"/v1/databases/{db}/bm25-index/documents", {"documents": [
        {"doc_id": "x1", "text": "Penguins swim fast under water."},
        {"doc_id": "x2", "text": "Owls hunt at night."}]})
    assert status == 200, body
    assert body["status"] and isinstance(body["message"], str)
    assert body["addedCount"] == 2 and body["totalDocuments"] == len(DOCS) + 2
    assert body["totalTerms"] > 0
    results = await hybrid_search(api, db, query_text="penguins")
    assert [r["vectorId"] for r in results] == ["x1"]
    status, body = await api.post(f"/v1/databases/{db}/bm25-index/documents",
                                  {"documents": [{"text": "no id"}]})
    assert status == 400 and body["error"], body


async def test_client_reranking_config(server: Server) -> None:
    api = server.user
    db = await text_db(api)
    # get_reranking_config
    status, body = await api.get(f"/v1/databases/{db}/reranking/config")
    assert status == 200, body
    for key in ("modelName", "batchSize", "scoreThreshold", "combineScores", "rerankWeight",
                "status", "statistics"):
        assert key in body, (key, body)
    for key in ("totalRequests", "failedRequests", "avgLatencyMs", "totalDocumentsReranked"):
        assert key in body["statistics"], (key, body)
    # update_reranking_config(batch_size, score_threshold, combine_scores, rerank_weight)
    status, body = await api.put(f"/v1/databases/{db}/reranking/config", {
        "batchSize": 16, "scoreThreshold": 0.1, "combineScores": False, "rerankWeight": 0.4})
    assert status == 200, body
    assert (body["batchSize"], body["scoreThreshold"], body["combineScores"],
            body["rerankWeight"]) == (16, 0.1, False, 0.4)
    status, body = await api.get(f"/v1/databases/{db}/reranking/config")
    assert body["batchSize"] == 16 and body["combineScores"] is False
    # model_name: the name the server reports is accepted back
    status, body = await api.put(f"/v1/databases/{db}/reranking/config",
                                 {"modelName": body["modelName"]})
    assert status == 200, body
    status, body = await api.put(f"/v1/databases/{db}/reranking/config", {"rerankWeight": 1.5})
    assert status == 400 and body["error"], body


async def _searched_db(api: Api) -> tuple[str, str]:
    """A database with four recorded searches; returns it and the last one's query id."""
    db = await text_db(api)
    for top_k in (3, 3, 3, 1):  # a repeated query, so patterns with min_count 2 see it
        status, body = await api.post(f"/v1/databases/{db}/search",
                                      {"queryVector": cli_vector(QUERY_VECTOR), "topK": top_k})
        assert status == 200, body
    status, body = await api.get(f"/v1/databases/{db}/analytics/queries?limit=1")
    assert status == 200 and body["queries"], body
    query_id = body["queries"][0]["query_id"]
    assert query_id, body
    return db, str(query_id)


async def test_client_analytics_queries_patterns_insights_trending(server: Server) -> None:
    api = server.user
    db, _ = await _searched_db(api)
    base = f"/v1/databases/{db}/analytics"
    # get_analytics_queries(limit=100, offset=0)
    status, body = await api.get(with_params(f"{base}/queries", {"limit": 100, "offset": 0}))
    assert status == 200, body
    assert len(body["queries"]) == 4
    status, body = await api.get(with_params(f"{base}/queries", {
        "limit": 2, "offset": 1, "start_time": "2020-01-01T00:00:00Z",
        "end_time": "2100-01-01T00:00:00Z"}))
    assert status == 200 and len(body["queries"]) == 2, body
    # get_analytics_patterns(min_count=2, limit=100)
    status, body = await api.get(with_params(f"{base}/patterns", {"min_count": 2, "limit": 100}))
    assert status == 200, body
    assert isinstance(body["patterns"], list) and body["patterns"], body
    # get_analytics_insights()
    status, body = await api.get(f"{base}/insights")
    assert status == 200, body
    for key in ("summary", "common_patterns", "slow_queries", "zero_result_queries", "trending"):
        assert key in body, (key, body)
    # get_analytics_trending(min_growth=0.5, limit=100)
    status, body = await api.get(with_params(f"{base}/trending",
                                             {"min_growth": 0.5, "limit": 100}))
    assert status == 200, body
    assert isinstance(body["trending"], list)


async def test_client_analytics_feedback_and_export(server: Server) -> None:
    api = server.user
    db, query_id = await _searched_db(api)
    base = f"/v1/databases/{db}/analytics"
    # submit_analytics_feedback: camelCase, optional fields only when given
    status, body = await api.post(f"{base}/feedback", {
        "queryId": query_id, "userId": server.user_id, "rating": 5,
        "feedbackText": "the first result was right", "clickedResultId": "d1",
        "clickedRank": 1})
    assert status in (200, 201), body
    assert body["success"] is True and body["query_id"] == query_id and body["message"]
    status, body = await api.post(f"{base}/feedback", {"queryId": query_id})
    assert status in (200, 201), body
    status, body = await api.post(f"{base}/feedback", {"rating": 3})
    assert status == 400 and body["error"], body  # no query id
    # export_analytics(format="json")
    status, body = await api.get(with_params(f"{base}/export", {"format": "json"}))
    assert status == 200, body
    assert isinstance(body, dict) and len(body["queries"]) == 4
    # format="csv": 200 with CSV text (the client's export_analytics then calls .json() on it
    # and fails: the client is wrong there, API.md §11 promises csv)
    status, text = await api.get(with_params(f"{base}/export", {"format": "csv"}))
    assert status == 200 and isinstance(text, str)
    lines = text.strip().splitlines()
    assert len(lines) >= 5 and "," in lines[0]


async def test_text_routes_need_a_credential(server: Server) -> None:
    db = await text_db(server.user)
    for method, path in (
        ("POST", f"/v1/databases/{db}/bm25-index/build"),
        ("GET", f"/v1/databases/{db}/bm25-index/status"),
        ("POST", f"/v1/databases/{db}/search/hybrid"),
        ("POST", f"/v1/databases/{db}/search/rerank"),
        ("POST", "/v1/embeddings/generate"),
        ("GET", f"/v1/databases/{db}/analytics/stats?granularity=hourly"),
    ):
        status, body = await server.anon.call(method, path, {})
        assert status == 401, (method, path, body)


async def test_hybrid_and_rerank_searches_are_recorded(server: Server) -> None:
    """API.md §11 / issue 17: every search records its kind; the stats count hybrid, BM25 and
    reranked searches apart from vector ones."""
    api = server.user
    db = await text_db(api)
    await hybrid_build(api, db)
    await hybrid_search(api, db, query_text="bread", query_vector=QUERY_VECTOR)
    await hybrid_search(api, db, query_text="no such words here")
    status, body = await api.post(f"/v1/databases/{db}/search/rerank", {
        "queryText": "bread", "topK": 2, "enableReranking": True, "rerankTopN": 100})
    assert status == 200, body
    status, body = await api.get(f"/v1/databases/{db}/analytics/queries?limit=100&offset=0")
    assert status == 200, body
    assert len(body["queries"]) == 3, body
    status, body = await api.get(f"/v1/databases/{db}/analytics/stats?granularity=hourly")
    assert status == 200, body
    kinds = {k: sum(b[k] for b in body["stats"])
             for k in ("hybrid_queries", "bm25_queries", "reranked_queries", "vector_queries")}
    assert kinds["hybrid_queries"] + kinds["bm25_queries"] == 2, kinds
    assert kinds["reranked_queries"] == 1 and kinds["vector_queries"] == 0, kinds
