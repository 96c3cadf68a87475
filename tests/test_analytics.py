"""Query analytics (API.md §11, issue 17 item 5): every search recorded beside the log, the
/analytics routes answering from real searches, bounded in memory and on disk, kept across a
restart, with auth as everywhere else.

The pure part (``jade.analytics.compute``) and the store are tested directly; the routes over
HTTP against a real server, with real searches producing the data. Time is chosen through the
store's API (records with the timestamps a test needs), never by patching the clock.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import time
from typing import Any

import aiohttp
import pytest

from jade.analytics import Analytics, Feedback, QueryRecord
from jade.analytics import compute as C
from jade.core.filters import parse_filter
from jade.http.keys import ANALYTICS
from tests.conftest import (
    USER_PASSWORD,
    Api,
    Server,
    ServerProcess,
    login,
    make_settings,
    running_server,
)
from tests.test_disk_full import fill, free_ballast, small_disk  # noqa: F401, F811 - a fixture

AN = "/analytics"
ROUTES = ("stats", "queries", "patterns", "insights", "trending", "export")


def rec(ts: float, *, db: str = "db", kind: str = "vector", latency: float = 1.0,
        results: int = 10, ok: bool = True, top_k: int = 10, filt: str = "", text: str = "",
        qid: str = "") -> QueryRecord:
    return QueryRecord(qid or f"q{ts}", ts, db, kind, latency, results, ok, "u", top_k, filt,
                       text)


# ------------------------------------------------------------------ pure computations


def test_filter_signature_keeps_fields_and_operators_not_values() -> None:
    a = parse_filter({"price": {"$lt": 10}, "color": "red"}).canonical
    b = parse_filter({"color": "blue", "price": {"$lt": 99}}).canonical
    c = parse_filter({"price": {"$gt": 10}, "color": "red"}).canonical
    assert C.filter_shape(a) == C.filter_shape(b) == "and(eq:color,lt:price)"
    assert C.filter_shape(c) != C.filter_shape(a)
    assert C.signature(rec(0, kind="filtered", filt=a)) == C.signature(
        rec(1, kind="filtered", filt=b))
    assert C.signature(rec(0, top_k=5)) != C.signature(rec(0, top_k=10))
    # text queries: lower-cased, whitespace collapsed
    assert C.signature(rec(0, kind="bm25", text="  Red   SHOES\n")) == C.signature(
        rec(1, kind="bm25", text="red shoes"))
    assert C.signature(rec(0, kind="bm25", text="red shoes")) != C.signature(
        rec(0, kind="hybrid", text="red shoes"))


def test_percentiles_and_buckets() -> None:
    assert C.percentile([], 50) == 0.0
    values = [float(i) for i in range(1, 101)]
    assert (C.percentile(values, 50), C.percentile(values, 95), C.percentile(values, 99)) == (
        50.0, 95.0, 99.0)
    monday = C.parse_time("2025-01-06T00:00:00Z")  # a Monday
    rs = [rec(monday + 60, latency=1), rec(monday + 3600 * 5 + 1, latency=3, results=0),
          rec(monday + 86400 * 3, latency=5, ok=False), rec(monday - 1, latency=7)]
    hourly = C.buckets(rs, "hourly")
    assert [b["time_bucket"] for b in hourly] == [
        "2025-01-05T23:00:00Z", "2025-01-06T00:00:00Z", "2025-01-06T05:00:00Z",
        "2025-01-09T00:00:00Z"]
    weekly = C.buckets(rs, "weekly")
    assert [(b["time_bucket"], b["total_queries"]) for b in weekly] == [
        ("2024-12-30T00:00:00Z", 1), ("2025-01-06T00:00:00Z", 3)]
    week = weekly[1]
    assert (week["successful_queries"], week["failed_queries"], week["zero_result_queries"]) \
        == (2, 1, 1)
    assert week["avg_latency_ms"] == 2.0  # the failed one is left out of latency
    assert [b["total_queries"] for b in C.buckets(rs, "daily")] == [1, 2, 1]


def test_trending_compares_the_two_halves_of_the_window() -> None:
    t0 = 1_700_000_000.0
    rs = ([rec(t0 + i, top_k=1) for i in range(4)]  # steady: 4 then 4
          + [rec(t0 + 100 + i, top_k=1) for i in range(4)]
          + [rec(t0 + 10, top_k=2)] + [rec(t0 + 110 + i, top_k=2) for i in range(3)]  # 1 -> 3
          + [rec(t0 + 120 + i, top_k=3) for i in range(2)])  # new
    got = {t["pattern"]: t for t in C.trending(rs, t0, t0 + 199, min_growth=0.5)}
    assert set(got) == {"vector topK=2", "vector topK=3"}
    assert (got["vector topK=2"]["growth_rate"], got["vector topK=2"]["previous_count"]) == (
        2.0, 1)
    assert got["vector topK=3"]["new"] is True
    assert "vector topK=1" in {t["pattern"] for t in C.trending(rs, t0, t0 + 199, 0.0)}


def test_parse_time() -> None:
    assert C.parse_time("1970-01-02") == 86400
    assert C.parse_time("1970-01-01T01:00:00+01:00") == 0
    assert C.parse_time("86400") == 86400
    assert C.parse_time("1700000000000") == C.parse_time("1700000000") == 1_700_000_000
    for bad in ("yesterday", "2025-13-01", "nan", "-5", "inf"):
        with pytest.raises(ValueError):
            C.parse_time(bad)


# ------------------------------------------------------------------ the store


def test_store_bounds_flushes_and_reloads(tmp_path: Any) -> None:
    d = str(tmp_path / "analytics")
    a = Analytics(d, max_queries=10, retention_seconds=1000)
    now = 1_700_000_000.0
    for i in range(25):
        a.add(rec(now - 100 + i, qid=f"q{i}"))
    assert [r.qid for r in a.queries.items] == [f"q{i}" for i in range(15, 25)]
    a.add_feedback(Feedback(now, "db", "q20", "u", "u", 5))
    assert a.flush(now) == {"appended": 11, "rewritten": 0}
    assert a.flush(now) == {"appended": 0, "rewritten": 0}  # nothing new
    b = Analytics(d, max_queries=10, retention_seconds=1000)
    assert b.load(now) == 10
    assert [r.qid for r in b.queries.items] == [f"q{i}" for i in range(15, 25)]
    assert b.feedback.items[0].rating == 5
    # the file is rewritten from the ring once it holds more than max_queries and a slack
    for i in range(200):
        b.add(rec(now + i, qid=f"n{i}"))
        b.flush(now + i)
    with open(os.path.join(d, "queries.jsonl"), "rb") as fh:
        lines = fh.read().splitlines()
    assert 10 <= len(lines) <= 10 + 100 + 1
    # retention: a reload keeps only what is recent enough
    c = Analytics(d, max_queries=10, retention_seconds=5)
    assert [r.qid for r in c.queries.items] == [] and c.load(now + 200) == 5


def test_store_drops_deleted_databases_and_survives_a_failing_disk(
        tmp_path: Any, caplog: pytest.LogCaptureFixture) -> None:
    d = tmp_path / "analytics"
    d.write_text("a file where the directory should be")  # every write fails
    a = Analytics(str(d), max_queries=100, retention_seconds=1000)
    now = 1_700_000_000.0
    for i in range(3):
        a.add(rec(now + i, db="gone" if i else "kept", qid=f"q{i}"))
    with caplog.at_level(logging.WARNING, logger="jade.analytics.store"):
        assert a.flush(now) == {"appended": 0, "rewritten": 0}  # no exception
        a.add(rec(now + 3, db="kept", qid="q3"))
        a.flush(now)
    warnings = [r for r in caplog.records if "cannot write" in r.getMessage()]
    assert len(warnings) == 1  # once, not per flush
    assert len(a.queries.items) == 4 and a.queries.rewrite
    d.unlink()
    # the next flush that works rewrites the file from memory, without the deleted database
    assert a.flush(now, exists=lambda db: db == "kept") == {"appended": 0, "rewritten": 2}
    assert [r.qid for r in a.queries.items] == ["q0", "q3"]
    b = Analytics(str(d), max_queries=100, retention_seconds=1000)
    assert b.load(now) == 2


def test_store_skips_a_torn_line(tmp_path: Any) -> None:
    a = Analytics(str(tmp_path), max_queries=10, retention_seconds=1000)
    now = 1_700_000_000.0
    a.add(rec(now, qid="q0"))
    a.flush(now)
    with open(tmp_path / "queries.jsonl", "ab") as fh:
        fh.write(b'["q1",1700000000.0,"db","vec')  # a crash in the middle of an append
    b = Analytics(str(tmp_path), max_queries=10, retention_seconds=1000)
    assert b.load(now) == 1


# ------------------------------------------------------------------ over HTTP


async def search(api: Api, db: str, body: dict[str, Any], route: str = "/search"
                 ) -> tuple[int, Any, str | None]:
    """A search, with the X-Query-Id its answer carries."""
    async with api.session.post(f"{api.base}/v1/databases/{db}{route}", json=body,
                                headers=api.headers) as r:
        return r.status, await r.json(), r.headers.get("X-Query-Id")


async def make_db(api: Api, n: int = 8) -> str:
    db = await api.create_db(4)
    vectors = [{"id": f"v{i}", "values": [1, i, 0, 0],
                "metadata": {"color": "red" if i % 2 else "blue", "n": i}} for i in range(n)]
    st, body = await api.post(f"/v1/databases/{db}/vectors/batch", {"vectors": vectors})
    assert st == 201, body
    return db


async def test_searches_are_recorded_and_answered(server: Server) -> None:
    api = server.user
    db = await make_db(api)
    qids = []
    for _ in range(3):
        st, body, qid = await search(api, db, {"queryVector": [1, 0, 0, 0], "topK": 2})
        assert st == 200 and body["count"] == 2 and qid
        qids.append(qid)
    assert len(set(qids)) == 3
    for color in ("red", "blue", "green"):  # one shape, three values; green matches nothing
        st, body, _ = await search(api, db, {"queryVector": [1, 0, 0, 0], "topK": 3,
                                             "filters": {"color": color}}, "/search/advanced")
        assert st == 200, body
    st, body, qid = await search(api, db, {"queries": [[1, 0, 0, 0]] * 2, "topK": 2},
                                 "/search/batch")
    assert st == 200 and qid
    st, body, bad_qid = await search(api, db, {"queryVector": [1, 0, 0]})  # wrong dimension
    assert st == 400 and bad_qid, body
    st, _, none = await search(api, "no_such_db", {"queryVector": [1, 0, 0, 0]})
    assert st == 404 and none is None  # not recorded: nothing to attach it to

    st, s = await api.get(f"/v1/databases/{db}{AN}/stats")
    assert st == 200, s
    total = s["summary"]
    assert (total["total_queries"], total["successful_queries"], total["failed_queries"],
            total["zero_result_queries"]) == (8, 7, 1, 1)
    assert (total["vector_queries"], total["filtered_queries"], total["batch_queries"]) == (
        4, 3, 1)
    assert len(s["stats"]) == 1 and s["stats"][0]["total_queries"] == 8
    assert s["granularity"] == "hourly" and s["database_id"] == db
    lat = [total[k] for k in ("p50_latency_ms", "p95_latency_ms", "p99_latency_ms",
                              "max_latency_ms")]
    assert 0 < lat[0] <= lat[1] <= lat[2] <= lat[3] < 5000, total
    for g in ("daily", "weekly"):
        st, s = await api.get(f"/v1/databases/{db}{AN}/stats?granularity={g}")
        assert st == 200 and s["summary"]["total_queries"] == 8

    st, q = await api.get(f"/v1/databases/{db}{AN}/queries?limit=2&offset=1")
    assert st == 200 and q["total"] == 8 and len(q["queries"]) == 2
    st, q = await api.get(f"/v1/databases/{db}{AN}/queries")
    newest = q["queries"][0]
    assert newest["query_id"] == bad_qid and newest["success"] is False
    assert (newest["status"], newest["error"]) == (400, "dimension_mismatch")
    first = q["queries"][-1]
    assert first["query_id"] == qids[0] and first["top_k"] == 2
    assert first["top_result_ids"] and first["user_id"] == server.user_id
    zero = next(x for x in q["queries"] if x["result_count"] == 0 and x["success"])
    assert zero["filter_shape"] == "eq:color"

    st, p = await api.get(f"/v1/databases/{db}{AN}/patterns")  # min_count 2 by default
    assert st == 200
    counts = {x["pattern"]: x["count"] for x in p["patterns"]}
    assert counts == {"vector topK=2": 3, "filtered topK=3 filter=eq:color": 3}
    st, p = await api.get(f"/v1/databases/{db}{AN}/patterns?min_count=1&limit=1")
    assert p["total_patterns"] == 4 and len(p["patterns"]) == 1

    st, ins = await api.get(f"/v1/databases/{db}{AN}/insights")
    assert st == 200
    assert {"summary", "common_patterns", "slow_queries", "zero_result_queries",
            "trending"} <= ins.keys()
    assert ins["summary"]["total_queries"] == 8
    assert [z["result_count"] for z in ins["zero_result_queries"]] == [0]
    slow = [x["latency_ms"] for x in ins["slow_queries"]]
    assert slow == sorted(slow, reverse=True) and len(slow) == 7

    st, t = await api.get(f"/v1/databases/{db}{AN}/trending?min_growth=0")
    assert st == 200 and isinstance(t["trending"], list)

    st, ex = await api.get(f"/v1/databases/{db}{AN}/export")
    assert st == 200 and ex["total_queries"] == 8 and len(ex["queries"]) == 8
    async with api.session.get(f"{api.base}/v1/databases/{db}{AN}/export?format=csv",
                               headers=api.headers) as r:
        assert r.status == 200 and r.content_type == "text/csv"
        rows = list(csv.DictReader(io.StringIO(await r.text())))
    assert len(rows) == 8 and rows[0]["query_id"] == qids[0]
    assert rows[0]["success"] == "true" and json.loads(rows[0]["top_result_ids"])
    assert {r["query_type"] for r in rows} == {"vector", "filtered", "batch"}


async def test_feedback_round_trip(server: Server) -> None:
    api = server.user
    db = await make_db(api)
    _, _, qid = await search(api, db, {"queryVector": [1, 0, 0, 0], "topK": 3})
    st, body = await api.post(f"/v1/databases/{db}{AN}/feedback", {
        "queryId": qid, "userId": "end-user-7", "rating": 4, "feedbackText": "good",
        "clickedResultId": "v1", "clickedRank": 2})
    assert st == 201 and body["success"] is True and body["query_id"] == qid, body
    assert body["query_known"] is True
    st, body = await api.post(f"/v1/databases/{db}{AN}/feedback",  # the reference's names
                              {"query_id": qid, "rating": 2, "clicked_rank": 1})
    assert st == 201 and body["query_id"] == qid
    st, body = await api.post(f"/v1/databases/{db}{AN}/feedback", {"queryId": "unknown-q"})
    assert st == 201 and body["query_known"] is False
    st, ex = await api.get(f"/v1/databases/{db}{AN}/export")
    fb = ex["feedback"]
    assert [(f["query_id"], f["rating"], f["clicked_rank"]) for f in fb] == [
        (qid, 4, 2), (qid, 2, 1), ("unknown-q", None, None)]
    assert fb[0]["user_id"] == "end-user-7" and fb[0]["submitted_by"] == server.user_id
    assert fb[1]["user_id"] == server.user_id and fb[0]["feedback_text"] == "good"
    st, ins = await api.get(f"/v1/databases/{db}{AN}/insights")
    s = ins["summary"]
    assert (s["feedback_count"], s["avg_rating"], s["clicked_queries"], s["avg_clicked_rank"]) \
        == (3, 3.0, 1, 1.5)


async def test_errors(server: Server) -> None:
    api = server.user
    db = await make_db(api)
    base = f"/v1/databases/{db}{AN}"
    bad = [
        ("/stats?granularity=monthly", "invalid_granularity"),
        ("/stats?start_time=yesterday", "invalid_time"),
        ("/stats?end_time=2025-13-40", "invalid_time"),
        ("/stats?start_time=2025-02-01&end_time=2025-01-01", "invalid_time"),
        ("/queries?limit=0", None), ("/queries?limit=1001", None), ("/queries?limit=x", None),
        ("/queries?offset=-1", None),
        ("/patterns?min_count=0", None), ("/patterns?limit=5000", None),
        ("/trending?min_growth=abc", None), ("/trending?min_growth=nan", None),
        ("/trending?limit=-3", None),
        ("/export?format=xml", "invalid_format"),
        ("/insights?start_time=tomorrow", "invalid_time"),
    ]
    for path, code in bad:
        st, body = await api.get(base + path)
        assert st == 400 and body["error"] and body["message"], (path, st, body)
        if code:
            assert body["error"] == code, (path, body)
    for body in ({}, {"queryId": ""}, {"queryId": 7}, {"queryId": "q", "rating": 6},
                 {"queryId": "q", "rating": "five"}, {"queryId": "q", "clickedRank": -1},
                 {"queryId": "q", "feedbackText": "x" * 1001}, {"query_id": "q", "rating": 0}):
        st, got = await api.post(base + "/feedback", body)
        assert st == 400 and got["error"], (body, st, got)
    st, got = await api.post(base + "/feedback", raw=b"{not json")
    assert st == 400
    for route in ROUTES:
        st, got = await api.get(f"/v1/databases/no_such_db{AN}/{route}?granularity=bad")
        assert st == 404 and "not found" in got["message"].lower(), (route, got)
    st, got = await api.post(f"/v1/databases/no_such_db{AN}/feedback", {"queryId": "q"})
    assert st == 404


async def test_auth_like_every_database_read(server: Server) -> None:
    db = await make_db(server.user)
    _, _, qid = await search(server.user, db, {"queryVector": [1, 0, 0, 0]})
    st, reg = await server.anon.post("/v1/auth/register", {"username": "mallory",
                                                            "password": USER_PASSWORD})
    assert st == 201
    other = await server.client_for("mallory", USER_PASSWORD)
    for route in ROUTES:
        st, _ = await server.anon.get(f"/v1/databases/{db}{AN}/{route}")
        assert st == 401
        st, body = await other.get(f"/v1/databases/{db}{AN}/{route}")
        assert st in (403, 404), (route, st, body)
    st, _ = await other.post(f"/v1/databases/{db}{AN}/feedback", {"queryId": qid})
    assert st in (403, 404)
    # a read grant is enough to see the analytics and to rate results
    st, _ = await server.user.post(f"/v1/databases/{db}/grants",
                                   {"user_id": reg["user_id"], "permission": "read"})
    assert st == 201
    for route in ROUTES:
        st, _ = await other.get(f"/v1/databases/{db}{AN}/{route}")
        assert st == 200, route
    st, body = await other.post(f"/v1/databases/{db}{AN}/feedback", {"queryId": qid,
                                                                     "rating": 5})
    assert st == 201, body


async def test_feedback_in_readonly_mode(server: Server) -> None:
    db = await make_db(server.user)
    _, _, qid = await search(server.user, db, {"queryVector": [1, 0, 0, 0]})
    st, body = await server.admin.post("/v1/admin/readonly")
    assert st == 200, body
    st, body = await server.user.post(f"/v1/databases/{db}{AN}/feedback", {"queryId": qid})
    assert st == 201, body
    _, _, qid2 = await search(server.user, db, {"queryVector": [1, 0, 0, 0]})
    assert qid2  # searches are still recorded


async def test_slow_queries_and_trending_with_chosen_times(server: Server) -> None:
    api = server.user
    db = await make_db(api)
    for _ in range(2):
        await search(api, db, {"queryVector": [1, 0, 0, 0], "topK": 2})
    a = server.app[ANALYTICS]
    t0 = C.parse_time("2025-03-01T00:00:00Z")
    # the first hour: topK=5 once; the second: topK=5 four times, topK=6 (new) twice
    times = [(t0 + 60, 5)] + [(t0 + 3600 + 60 * i, 5) for i in range(4)] + [
        (t0 + 5000, 6), (t0 + 5100, 6)]
    for i, (ts, k) in enumerate(times):
        a.add(QueryRecord(f"chosen{i}", ts, db, "vector", 2000.0 + i, 3, True, "u", k))
    window = "start_time=2025-03-01T00:00:00Z&end_time=2025-03-01T02:00:00Z"
    st, t = await api.get(f"/v1/databases/{db}{AN}/trending?{window}&min_growth=1")
    assert st == 200, t
    assert [(x["pattern"], x["previous_count"], x["recent_count"], x["growth_rate"])
            for x in t["trending"]] == [("vector topK=5", 1, 4, 3.0),
                                        ("vector topK=6", 0, 2, 2.0)]
    st, t = await api.get(f"/v1/databases/{db}{AN}/trending?{window}&min_growth=2.5")
    assert [x["pattern"] for x in t["trending"]] == ["vector topK=5"]
    st, s = await api.get(f"/v1/databases/{db}{AN}/stats?{window}")
    assert [(b["time_bucket"], b["total_queries"]) for b in s["stats"]] == [
        ("2025-03-01T00:00:00Z", 1), ("2025-03-01T01:00:00Z", 6)]
    # the window leaves the real searches (now) out; without one they are in
    st, ins = await api.get(f"/v1/databases/{db}{AN}/insights?start_time=0")
    assert ins["summary"]["total_queries"] == 9
    assert ins["slow_queries"][0]["query_id"] == "chosen6"  # the slowest first
    assert all(x["latency_ms"] < 2000 for x in ins["slow_queries"][7:])


async def test_max_queries_is_honoured(tmp_path: Any) -> None:
    async with running_server(make_settings(tmp_path, analytics_max_queries=5)) as srv:
        db = await make_db(srv.user)
        ids = [(await search(srv.user, db, {"queryVector": [1, 0, 0, float(i)]}))[2]
               for i in range(9)]
        st, q = await srv.user.get(f"/v1/databases/{db}{AN}/queries")
        assert q["total"] == 5
        assert [x["query_id"] for x in q["queries"]] == ids[:3:-1]
        assert len(srv.app[ANALYTICS].queries.items) == 5


async def test_disabled(tmp_path: Any) -> None:
    async with running_server(make_settings(tmp_path, analytics_enabled=False)) as srv:
        db = await make_db(srv.user)
        st, _, qid = await search(srv.user, db, {"queryVector": [1, 0, 0, 0]})
        assert st == 200 and qid is None
        st, s = await srv.user.get(f"/v1/databases/{db}{AN}/stats")
        assert st == 200 and s["summary"]["total_queries"] == 0
    assert not os.path.exists(tmp_path / "data" / "analytics")


async def test_deleted_database_drops_its_analytics(server: Server) -> None:
    api = server.user
    kept, gone = await make_db(api), await make_db(api)
    for db in (kept, gone):
        await search(api, db, {"queryVector": [1, 0, 0, 0]})
    st, _ = await api.delete(f"/v1/databases/{gone}")
    assert st == 200
    st, _ = await api.get(f"/v1/databases/{gone}{AN}/queries")
    assert st == 404
    a = server.app[ANALYTICS]
    a.queries.rewrite = True  # as when the file outgrows its bound
    from jade.http.analytics import flush_job
    await flush_job(server.app)()
    assert {r.db for r in a.queries.items} == {kept}
    with open(os.path.join(a.dir, "queries.jsonl"), "rb") as fh:
        assert gone.encode() not in fh.read()


async def test_survives_a_restart(tmp_path: Any) -> None:
    data = str(tmp_path / "data")
    sp = ServerProcess(data)
    sp.start()
    try:
        async with aiohttp.ClientSession() as session:
            anon = Api(sp.base, session)
            st, body = await anon.post("/v1/auth/register", {"username": "ana",
                                                              "password": USER_PASSWORD})
            assert st == 201, body
            api = Api(sp.base, session,
                      {"Authorization": "Bearer " + await login(anon, "ana", USER_PASSWORD)})
            db = await make_db(api)
            qids = [(await search(api, db, {"queryVector": [1, 0, 0, 0], "topK": 2}))[2]
                    for _ in range(3)]
            st, _ = await api.post(f"/v1/databases/{db}{AN}/feedback",
                                   {"queryId": qids[0], "rating": 5})
            assert st == 201
            sp.stop()  # SIGTERM: the last records are flushed on the way out
        sp.start()
        async with aiohttp.ClientSession() as session:
            anon = Api(sp.base, session)
            api = Api(sp.base, session,
                      {"Authorization": "Bearer " + await login(anon, "ana", USER_PASSWORD)})
            st, q = await api.get(f"/v1/databases/{db}{AN}/queries")
            assert st == 200 and [x["query_id"] for x in q["queries"]] == qids[::-1], q
            st, ex = await api.get(f"/v1/databases/{db}{AN}/export")
            assert [(f["query_id"], f["rating"]) for f in ex["feedback"]] == [(qids[0], 5)]
            _, _, qid = await search(api, db, {"queryVector": [1, 0, 0, 0], "topK": 2})
            assert qid not in qids  # ids stay unique across restarts
            st, p = await api.get(f"/v1/databases/{db}{AN}/patterns")
            assert p["patterns"][0]["count"] == 4
    finally:
        sp.stop()
    assert os.path.exists(os.path.join(data, "analytics", "queries.jsonl"))


async def test_recording_costs_microseconds(server: Server) -> None:
    """The request path appends to memory: 10,000 records well under a second even on a
    loaded CI machine (about 2 µs each measured; the bound leaves a wide margin)."""
    from jade.http.analytics import record

    class Req(dict[Any, Any]):
        app = server.app

    req = Req()
    t = time.perf_counter()
    for _ in range(10_000):
        record(req, db_id="d", kind="vector", latency_ms=1.0, results=3,  # type: ignore[arg-type]
               top_k=10, top_ids=("a", "b", "c"))
    assert time.perf_counter() - t < 1.0


async def test_each_node_keeps_its_own(tmp_path: Any) -> None:
    """Analytics are not in the log: a replica records the searches it serves (and takes
    feedback, which is no write), the primary only its own."""
    from tests.test_replication import Node, bootstrap_auth, client, wait_converged

    root = str(tmp_path)
    primary = Node(root, "primary").start()
    nodes = [primary]
    try:
        creds = bootstrap_auth(primary.base)
        replica = Node(root, "r1", follow=primary.base, key=creds.repl_key).start()
        nodes.append(replica)
        async with aiohttp.ClientSession() as s:
            p = client(s, primary.base, creds.user_token)
            r = client(s, replica.base, creds.user_token)
            st, db = await p.post("/v1/databases", {"name": "a", "vectorDimension": 4})
            assert st == 201, db
            db_id = db["databaseId"]
            st, _ = await p.post(f"/v1/databases/{db_id}/vectors",
                                 {"id": "v1", "values": [1, 0, 0, 0]})
            assert st == 201
            await wait_converged(client(s, primary.base, creds.admin_token),
                                 [client(s, replica.base, creds.admin_token)])
            on_replica = [(await search(r, db_id, {"queryVector": [1, 0, 0, 0]}))[2]
                          for _ in range(2)]
            on_primary = (await search(p, db_id, {"queryVector": [1, 0, 0, 0]}))[2]
            assert all(on_replica) and on_primary
            st, q = await r.get(f"/v1/databases/{db_id}{AN}/queries")
            assert st == 200 and [x["query_id"] for x in q["queries"]] == on_replica[::-1]
            st, q = await p.get(f"/v1/databases/{db_id}{AN}/queries")
            assert [x["query_id"] for x in q["queries"]] == [on_primary]
            st, body = await r.post(f"/v1/databases/{db_id}{AN}/feedback",
                                    {"queryId": on_replica[0], "rating": 3})
            assert st == 201 and body["query_known"] is True, body
    finally:
        for n in nodes:
            n.stop()


async def test_a_full_disk_does_not_break_searches(
        small_disk: str, tmp_path: Any,  # noqa: F811 - the fixture imported above
        caplog: pytest.LogCaptureFixture) -> None:
    """The analytics files on a full disk: searches answer, the flush logs one warning and keeps
    the records; once there is room again the next flush writes them all."""
    s = make_settings(tmp_path, data_dir=os.path.join(small_disk, "data"),
                      backup_dir=str(tmp_path / "backups"), analytics_flush_seconds=0,
                      reserve_bytes=0)
    async with running_server(s) as srv:
        db = await make_db(srv.user)
        a = srv.app[ANALYTICS]
        from jade.http.analytics import flush_job

        flush = flush_job(srv.app)
        await search(srv.user, db, {"queryVector": [1, 0, 0, 0]})
        await flush()
        fill(small_disk)
        ids = []
        with caplog.at_level(logging.WARNING, logger="jade.analytics.store"):
            for _ in range(3):
                for _ in range(20):  # more than the last page of the file can take
                    a.add(QueryRecord(a.next_id(), time.time(), db, "bm25", 1.0, 0, True,
                                      text="x" * 1000))
                st, _, qid = await search(srv.user, db, {"queryVector": [1, 0, 0, 0]})
                assert st == 200 and qid
                ids.append(qid)
                for _ in range(5):
                    await flush()
        assert len([r for r in caplog.records if "cannot write" in r.getMessage()]) == 1
        free_ballast(small_disk)
        await flush()
        with open(os.path.join(a.dir, "queries.jsonl"), "rb") as fh:
            written = fh.read()
        assert all(q.encode() in written for q in ids)
