"""POST /v1/rerank with the real model, and a database's reranking configuration
(GET/PUT /v1/databases/{db}/reranking/config): a record in the log, folded into the catalog, so
it survives a restart, replays to the same state, and is refused in readonly mode."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp
import pytest

from jade.core.decide import Command
from jade.engine import Engine
from jade.errors import InvalidArgument, NotFound
from jade.settings import Settings
from jade.text import models
from tests.conftest import USER_PASSWORD, Api, Server, ServerProcess
from tests.test_apply import db_create, refused, run

RERANK = "/v1/rerank"

# (query, documents, the id that must come first)
CASES: list[tuple[str, list[dict[str, str]], str]] = [
    ("how do I reset my password?",
     [{"id": "cafe", "text": "The cafeteria is open from 8am to 3pm on weekdays."},
      {"id": "pw", "text": "To reset your password, open Settings and choose Security."},
      {"id": "park", "text": "Parking permits are issued by the front desk."}],
     "pw"),
    ("What is the capital of France?",
     [{"id": "berlin", "text": "Berlin is the capital and largest city of Germany."},
      {"id": "tomato", "text": "Tomatoes are rich in vitamin C."},
      {"id": "paris", "text": "Paris is the capital of France."}],
     "paris"),
    ("symptoms of the flu",
     [{"id": "guitar", "text": "How to tune a guitar by ear."},
      {"id": "flu", "text": "Influenza often causes fever, cough, sore throat and muscle aches."},
      {"id": "tax", "text": "The deadline for filing income tax returns is in April."},
      {"id": "bread", "text": "Knead the dough for ten minutes before letting it rise."}],
     "flu"),
    ("python list comprehension",
     [{"id": "snake", "text": "Pythons are large non-venomous snakes found in Africa and Asia."},
      {"id": "code", "text": "In Python, [x * 2 for x in items] builds a new list from items."},
      {"id": "java", "text": "Java classes are compiled to bytecode for the JVM."}],
     "code"),
]


@pytest.mark.parametrize("query,docs,first", CASES, ids=[c[2] for c in CASES])
async def test_the_relevant_document_comes_first(server: Server, query: str,
                                                 docs: list[dict[str, str]], first: str) -> None:
    st, body = await server.user.post(RERANK, {"query": query, "documents": docs})
    assert st == 200, body
    results = body["results"]
    assert results[0]["id"] == first, results
    assert [r["rank"] for r in results] == list(range(1, len(docs) + 1))
    assert sorted(r["id"] for r in results) == sorted(d["id"] for d in docs)
    scores = [r["score"] for r in results]
    assert scores == sorted(scores, reverse=True)
    assert body["latencyMs"] >= 0 and body["model"] == "all-MiniLM-L6-v2-int8-bi-encoder"


async def test_top_k_and_bare_strings(server: Server) -> None:
    query, docs, first = CASES[2]
    st, body = await server.user.post(RERANK, {"query": query, "documents": docs, "topK": 2})
    assert st == 200, body
    assert len(body["results"]) == 2 and body["count"] == 2
    assert body["results"][0]["id"] == first
    st, body = await server.user.post(RERANK, {"query": query, "documents": docs, "topK": 99})
    assert st == 200 and len(body["results"]) == len(docs)
    # plain strings are documents too, their position their id
    st, body = await server.user.post(RERANK, {"query": query,
                                               "documents": [d["text"] for d in docs]})
    assert st == 200, body
    assert body["results"][0]["id"] == "1"  # the flu text


async def test_rerank_refusals(server: Server) -> None:
    doc = [{"id": "a", "text": "some text"}]
    cases: list[tuple[dict[str, Any], int]] = [
        ({"documents": doc}, 400),
        ({"query": "", "documents": doc}, 400),
        ({"query": 3, "documents": doc}, 400),
        ({"query": "q"}, 400),
        ({"query": "q", "documents": []}, 400),
        ({"query": "q", "documents": "text"}, 400),
        ({"query": "q", "documents": [{"id": "a"}]}, 400),
        ({"query": "q", "documents": [{"id": "a", "text": 5}]}, 400),
        ({"query": "q", "documents": [{"id": {"x": 1}, "text": "t"}]}, 400),
        ({"query": "q", "documents": [7]}, 400),
        ({"query": "q", "documents": [{"id": "a", "text": "t"}] * 257}, 400),
        ({"query": "q", "documents": [{"id": "a", "text": "t" * 8193}]}, 400),
        ({"query": "q" * 8193, "documents": doc}, 400),
        ({"query": "q", "documents": doc, "topK": 0}, 400),
        ({"query": "q", "documents": doc, "topK": "3"}, 400),
    ]
    for body, status in cases:
        st, answer = await server.user.post(RERANK, body)
        assert st == status, (str(body)[:200], answer)
        assert answer["error"] and answer["message"], answer
    st, answer = await server.anon.post(RERANK, {"query": "q", "documents": doc})
    assert st == 401, answer


# -- configuration ----------------------------------------------------------------------------


def config_path(db: str) -> str:
    return f"/v1/databases/{db}/reranking/config"


DEFAULTS = {"modelName": "all-MiniLM-L6-v2-int8-bi-encoder", "batchSize": 32,
            "scoreThreshold": 0.0, "combineScores": True, "rerankWeight": 0.7}


async def test_config_defaults_changes_and_refusals(server: Server) -> None:
    api = server.user
    db = await api.create_db(4)
    st, body = await api.get(config_path(db))
    assert st == 200, body
    assert {k: body[k] for k in DEFAULTS} == DEFAULTS
    assert body["status"] in ("ready", "not_loaded")
    assert body["statistics"]["totalRequests"] == 0
    assert set(body["statistics"]) >= {"totalRequests", "failedRequests", "avgLatencyMs",
                                       "totalDocumentsReranked"}

    st, body = await api.put(config_path(db), {"batchSize": 8, "rerankWeight": 0.25})
    assert st == 200, body
    assert (body["batchSize"], body["rerankWeight"], body["scoreThreshold"]) == (8, 0.25, 0.0)
    # a later change keeps what it does not name
    st, body = await api.put(config_path(db), {"scoreThreshold": -0.5, "combineScores": False,
                                               "modelName": "all-MiniLM-L6-v2-int8-bi-encoder"})
    assert st == 200, body
    want = {"modelName": "all-MiniLM-L6-v2-int8-bi-encoder", "batchSize": 8,
            "scoreThreshold": -0.5, "combineScores": False, "rerankWeight": 0.25}
    assert {k: body[k] for k in want} == want
    st, body = await api.get(config_path(db))
    assert {k: body[k] for k in want} == want
    st, body = await api.put(config_path(db), {"modelName": "default"})
    assert st == 200 and body["modelName"] == DEFAULTS["modelName"]

    bad: list[dict[str, Any]] = [
        {}, {"unknown": 1}, {"batchSize": 0}, {"batchSize": -3}, {"batchSize": 2.5},
        {"batchSize": True}, {"batchSize": 5000}, {"rerankWeight": 1.5}, {"rerankWeight": -0.1},
        {"rerankWeight": "0.5"}, {"scoreThreshold": 2}, {"scoreThreshold": "high"},
        {"combineScores": "yes"}, {"modelName": "cross-encoder/ms-marco-MiniLM-L-6-v2"},
        {"modelName": 3}, {"batchSize": 4, "rerankWeight": 9},  # nothing of a bad request
    ]
    for req in bad:
        st, answer = await api.put(config_path(db), req)
        assert st == 400, (req, answer)
        assert answer["error"] in ("invalid_config", "unknown_model"), answer
    st, body = await api.get(config_path(db))
    assert {k: body[k] for k in want} == {**want, "modelName": DEFAULTS["modelName"]}

    for method in ("GET", "PUT"):
        st, answer = await api.call(method, config_path("db_nope"), {"batchSize": 4})
        assert st == 404, answer
    # another user's database: not theirs to read or change
    st, reg = await server.anon.post("/v1/auth/register", {"username": "mallory",
                                                           "password": USER_PASSWORD})
    other = await server.client_for("mallory", USER_PASSWORD)
    st, _ = await other.get(config_path(db))
    assert st in (403, 404)
    st, _ = await other.put(config_path(db), {"batchSize": 4})
    assert st in (403, 404)
    st, body = await api.get(config_path(db))
    assert body["batchSize"] == 8


async def test_config_is_deleted_with_its_database(server: Server) -> None:
    api = server.user
    db = await api.create_db(4)
    st, _ = await api.put(config_path(db), {"batchSize": 4})
    assert st == 200
    st, _ = await api.delete(f"/v1/databases/{db}")
    assert st == 200
    st, body = await api.get(config_path(db))
    assert st == 404, body


def test_config_records_fold_like_the_rest_of_the_log(settings: Settings, tmp_path: Path
                                                      ) -> None:
    """decide merges a change over the current configuration; the store rebuilt from the log
    alone (restore, replica) holds the same configurations."""
    from tests.test_engine_property import replay_digest, state_digest

    e = Engine(settings)
    e.open()
    try:
        run(e, db_create("d", dim=2))
        run(e, db_create("e", dim=2))
        recs = run(e, Command("db.rerank_config", {"db": "d", "changes": {"batch_size": 4}}))
        assert recs[-1].type == "db.rerank_config"
        assert recs[-1].body["batch_size"] == 4 and recs[-1].body["rerank_weight"] == 0.7
        run(e, Command("db.rerank_config", {"db": "d", "changes": {"rerank_weight": 0.1}}))
        run(e, Command("db.rerank_config", {"db": "e", "changes": {"combine_scores": False}}))
        db = e.store.database("d")
        assert db is not None
        assert models.rerank_config(db) == {**DEFAULTS, "batchSize": 4, "rerankWeight": 0.1}
        refused(e, Command("db.rerank_config", {"db": "nope", "changes": {"batch_size": 1}}),
                NotFound)
        run(e, Command("db.delete", {"db": "e"}))
        assert replay_digest(e, tmp_path) == state_digest(e.store)
        with pytest.raises(InvalidArgument):
            e.submit_sync(Command("db.rerank_config.nope", {}))
    finally:
        e.close()


async def test_config_survives_a_restart_and_readonly_refuses_it(tmp_path: Any) -> None:
    sp = ServerProcess(str(tmp_path / "data"))
    sp.start()
    try:
        async with aiohttp.ClientSession() as session:
            anon = Api(sp.base, session)
            st, body = await anon.post("/v1/auth/register", {"username": "u1",
                                                             "password": USER_PASSWORD})
            assert st == 201, body
            st, body = await anon.post("/v1/auth/login", {"username": "u1",
                                                          "password": USER_PASSWORD})
            token = body["token"]
            api = Api(sp.base, session, {"Authorization": f"Bearer {token}"})
            db = await api.create_db(4)
            st, body = await api.put(config_path(db), {"batchSize": 16, "scoreThreshold": 0.3,
                                                       "combineScores": False})
            assert st == 200, body
        sp.stop()
        sp.start()
        async with aiohttp.ClientSession() as session:
            api = Api(sp.base, session, {"Authorization": f"Bearer {token}"})
            st, body = await api.get(config_path(db))
            assert st == 200, body
            assert (body["batchSize"], body["scoreThreshold"], body["combineScores"],
                    body["rerankWeight"]) == (16, 0.3, False, 0.7)
            assert body["statistics"]["totalRequests"] == 0  # in-memory: a new process
            # readonly (token-less admin from loopback in development)
            st, body = await Api(sp.base, session).post("/admin/readonly")
            assert st == 200, body
            st, body = await api.put(config_path(db), {"batchSize": 2})
            assert st == 503 and body["error"] == "read_only", body
            st, body = await api.get(config_path(db))
            assert st == 200 and body["batchSize"] == 16
            # reading stays allowed: embeddings and reranking are not writes
            st, body = await api.post(RERANK, {"query": "q", "documents": ["a", "b"]})
            assert st == 200, body
    finally:
        sp.stop()


def test_statistics_are_counted_per_database() -> None:
    models.record_rerank("db_stats_a", 10.0, 5)
    models.record_rerank("db_stats_a", 30.0, 3)
    models.record_rerank("db_stats_a", 2.0, 9, failed=True)
    s = models.rerank_statistics("db_stats_a")
    assert (s["totalRequests"], s["failedRequests"], s["totalDocumentsReranked"]) == (3, 1, 8)
    assert s["avgLatencyMs"] == 14.0
    assert models.rerank_statistics("db_stats_b")["totalRequests"] == 0
