"""GET /metrics: every name the runbook and the Grafana dashboard use (API.md §1), with the right
type and buckets, and the counters that exist actually move when the thing they count happens."""

from __future__ import annotations

import os
import re
import sys
import time
from typing import Any

import aiohttp

from jade.http.keys import ENGINE, SCHEDULER, SETTINGS
from tests.conftest import Server, make_settings, running_server
from tests.test_runbook import bare_server, metrics_text, sample, samples

P = "jadevectordb_"
COUNTER, GAUGE, HISTOGRAM = "counter", "gauge", "histogram"

# API.md §1, in its order
RUNBOOK_METRICS: dict[str, str] = {
    P + "auth_requests_total": COUNTER,
    P + "auth_duration_seconds": HISTOGRAM,
    P + "auth_errors_total": COUNTER,
    P + "active_sessions": GAUGE,
    P + "permission_checks_total": COUNTER,
    P + "permission_check_duration_seconds": HISTOGRAM,
    P + "permission_cache_hits_total": COUNTER,
    P + "permission_cache_misses_total": COUNTER,
    P + "db_operations_total": COUNTER,
    P + "db_operation_duration_seconds": HISTOGRAM,
    P + "db_connection_errors_total": COUNTER,
    P + "db_query_retries_total": COUNTER,
    P + "users_total": GAUGE,
    P + "user_operations_total": COUNTER,
    P + "failed_logins_total": COUNTER,
    P + "locked_accounts_total": COUNTER,
    P + "rate_limit_exceeded_total": COUNTER,
    P + "ip_blocks_total": COUNTER,
    P + "circuit_breaker_state_changes_total": COUNTER,
    P + "circuit_breaker_open": GAUGE,
}
GRAFANA_METRICS: dict[str, str] = {
    "similarity_search_requests_total": COUNTER,
    "similarity_search_duration_seconds": HISTOGRAM,
    "similarity_search_active_requests": GAUGE,
    "filtered_similarity_search_requests_total": COUNTER,
    "filtered_similarity_search_duration_seconds": HISTOGRAM,
    "filter_cache_hits_total": COUNTER,
    "filter_cache_misses_total": COUNTER,
}
LOG_AND_INDEX_METRICS: dict[str, str] = {
    P + "wal_last_lsn": GAUGE,
    P + "wal_append_duration_seconds": HISTOGRAM,
    P + "wal_group_commit_size": HISTOGRAM,
    P + "wal_records_total": COUNTER,
    P + "index_size_bytes": GAUGE,
    P + "index_vectors": GAUGE,
    P + "index_checkpoint_age_seconds": GAUGE,
    P + "vectors": GAUGE,
    P + "databases": GAUGE,
    P + "users": GAUGE,
    P + "http_requests_total": COUNTER,
    P + "scheduler_job_runs_total": COUNTER,
}
# "Buckets (s): .001 .005 .01 .05 .1 .5 1 5 10" (API.md §1, for the runbook's histograms)
RUNBOOK_BUCKETS = [0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, float("inf")]

_TYPE = re.compile(r"^# TYPE (\S+) (\S+)$", re.M)


def types(text: str) -> dict[str, str]:
    return dict(_TYPE.findall(text))


def buckets(text: str, name: str, **labels: str) -> list[float]:
    return sorted(
        float(lab["le"])
        for n, lab, _ in samples(text)
        if n == name + "_bucket" and {k: v for k, v in lab.items() if k != "le"} == labels
    )


def total(text: str, name: str, **labels: str) -> float:
    """Sum of every sample of ``name`` whose labels include ``labels`` (0 when absent)."""
    return sum(
        v for n, lab, v in samples(text)
        if n == name and all(lab.get(k) == want for k, want in labels.items())
    )


async def _vectors(api: Any, db: str, n: int, dim: int = 4) -> None:
    status, body = await api.post(f"/v1/databases/{db}/vectors/batch", {"vectors": [
        {"id": f"v{i}", "values": [float(i % 7), 1.0, float(i % 3), 0.5][:dim],
         "metadata": {"category": "even" if i % 2 == 0 else "odd"}}
        for i in range(n)]})
    assert status == 201, body


# -- names, types, buckets, content type --------------------------------------------------------


async def test_every_metric_is_exposed_with_its_type(server: Server) -> None:
    declared = types(await metrics_text(server.anon))
    wanted = {**RUNBOOK_METRICS, **GRAFANA_METRICS, **LOG_AND_INDEX_METRICS}
    wrong = {name: declared.get(name) for name, kind in wanted.items()
             if declared.get(name) != kind}
    assert not wrong, f"missing or mistyped (name: exposed type): {wrong}"


async def test_content_type_and_runbook_buckets(server: Server) -> None:
    async with aiohttp.ClientSession() as s, s.get(server.base + "/metrics") as r:
        assert r.status == 200
        assert r.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        text = await r.text()
    for name in (P + "auth_duration_seconds", P + "permission_check_duration_seconds"):
        assert buckets(text, name) == RUNBOOK_BUCKETS, name
    # every sample line parses and every sample belongs to a declared family
    declared = types(text)
    for name, _, _ in samples(text):
        base = re.sub(r"_(bucket|sum|count)$", "", name)
        assert name in declared or base in declared, name


# -- the log and the indexes --------------------------------------------------------------------


async def test_log_and_index_series(server: Server) -> None:
    api = server.user
    db = await api.create_db(4)
    await _vectors(api, db, 40)
    for i in range(3):
        status, _ = await api.post(f"/v1/databases/{db}/vectors",
                                   {"id": f"x{i}", "values": [1, 2, 3, 4]})
        assert status == 201
    engine = server.app[ENGINE]
    text = await metrics_text(server.anon)
    last = engine.log.last_lsn
    assert last > 0
    assert sample(text, P + "wal_last_lsn") == last
    # a fresh data directory: every record in the log was appended by this server
    assert sample(text, P + "wal_records_total") == last
    assert total(text, P + "wal_append_duration_seconds_count") >= 4
    assert total(text, P + "wal_append_duration_seconds_sum") > 0
    groups = total(text, P + "wal_group_commit_size_count")
    assert groups >= 4
    assert total(text, P + "wal_group_commit_size_sum") >= groups  # ≥ 1 request per group
    assert total(text, P + "index_size_bytes") > 0
    assert sample(text, P + "index_vectors") == 43
    assert sample(text, P + "vectors") == 43
    assert sample(text, P + "databases") == 1
    assert sample(text, P + "users") == 2


async def test_scheduled_checkpoint_moves_status_and_metrics(server: Server) -> None:
    api = server.user
    db = await api.create_db(4)
    await _vectors(api, db, 10)
    text = await metrics_text(server.anon)
    assert sample(text, P + "index_checkpoint_age_seconds") == -1  # none yet
    assert sample(text, P + "scheduler_job_runs_total",
                  task="index_checkpoint", outcome="success") is None
    status, body = await api.get("/status")
    assert body["scheduler"]["index_checkpoint"]["last_outcome"] == "never"

    written = await server.app[SCHEDULER].run("index_checkpoint")
    assert written == 1  # one dirty index

    status, body = await api.get("/status")
    job = body["scheduler"]["index_checkpoint"]
    assert job["last_outcome"] == "success" and job["runs"] == 1 and job["failures"] == 0
    assert job["last_result"] == 1
    assert abs(job["last_run"] - time.time()) < 30
    assert body["indexes"]["checkpoint_age_seconds"] is not None
    text = await metrics_text(server.anon)
    assert sample(text, P + "scheduler_job_runs_total",
                  task="index_checkpoint", outcome="success") == 1
    last_ok = sample(text, P + "scheduler_job_last_success_timestamp_seconds",
                     task="index_checkpoint")
    assert last_ok is not None and abs(last_ok - time.time()) < 30
    age = sample(text, P + "index_checkpoint_age_seconds")
    assert age is not None and 0 <= age < 30
    index_dir = server.app[SETTINGS].index_dir
    assert os.path.exists(os.path.join(index_dir, db, "index.json"))

    await server.app[SCHEDULER].run("index_checkpoint")  # nothing dirty: still a success
    text = await metrics_text(server.anon)
    assert sample(text, P + "scheduler_job_runs_total",
                  task="index_checkpoint", outcome="success") == 2


async def test_failing_job_is_recorded_not_raised(server: Server) -> None:
    sched = server.app[SCHEDULER]

    async def broken() -> None:
        raise OSError("disk on fire")

    sched.add("broken", 3600, broken)
    assert await sched.run("broken") is None
    status, body = await server.user.get("/status")
    job = body["scheduler"]["broken"]
    assert job["failures"] == 1 and job["last_outcome"].startswith("error: OSError")
    text = await metrics_text(server.anon)
    assert sample(text, P + "scheduler_job_runs_total", task="broken", outcome="error") == 1


# -- counters move ------------------------------------------------------------------------------


async def test_search_counters_move(server: Server) -> None:
    api = server.user
    db = await api.create_db(4)
    await _vectors(api, db, 20)
    search = f"/v1/databases/{db}/search"
    before = await metrics_text(server.anon)

    status, body = await api.post(search, {"queryVector": [1, 1, 0, 0], "topK": 3})
    assert status == 200 and body["count"] == 3
    text = await metrics_text(server.anon)
    assert total(text, "similarity_search_requests_total") == \
        total(before, "similarity_search_requests_total") + 1
    assert total(text, "similarity_search_duration_seconds_count") == \
        total(before, "similarity_search_duration_seconds_count") + 1
    assert total(text, "filtered_similarity_search_requests_total") == \
        total(before, "filtered_similarity_search_requests_total")
    assert sample(text, "similarity_search_active_requests") == 0

    flt = {"queryVector": [1, 1, 0, 0], "topK": 3, "filters": {"category": "even"}}
    status, body = await api.post(search, flt)
    assert status == 200 and body["count"] == 3
    text1 = await metrics_text(server.anon)
    assert total(text1, "filtered_similarity_search_requests_total") == 1
    assert total(text1, "filtered_similarity_search_duration_seconds_count") == 1
    assert total(text1, "filter_cache_misses_total") == 1
    assert total(text1, "filter_cache_hits_total") == 0

    status, _ = await api.post(f"/v1/databases/{db}/search/advanced", flt)  # same filter
    assert status == 200
    text2 = await metrics_text(server.anon)
    assert total(text2, "filter_cache_hits_total") == 1
    assert total(text2, "filter_cache_misses_total") == 1
    assert total(text2, "similarity_search_requests_total") == 3

    status, _ = await api.post(f"/v1/databases/{db}/vectors",
                               {"id": "new", "values": [1, 1, 1, 1],
                                "metadata": {"category": "even"}})
    assert status == 201
    status, body = await api.post(search, {**flt, "topK": 50})
    assert status == 200 and "new" in {r["vectorId"] for r in body["results"]}
    text3 = await metrics_text(server.anon)
    assert total(text3, "filter_cache_hits_total") == 1  # a write in between: no stale hit
    assert total(text3, "filter_cache_misses_total") == 2


async def test_permission_and_auth_counters_move(server: Server) -> None:
    status, body = await server.admin.post("/v1/databases", {"name": "adm", "vectorDimension": 2})
    assert status == 201
    admin_db = body["databaseId"]
    db = await server.user.create_db(2)
    before = await metrics_text(server.anon)
    for _ in range(3):
        status, _ = await server.user.get(f"/v1/databases/{db}")
        assert status == 200
    status, _ = await server.user.get(f"/v1/databases/{admin_db}")
    assert status == 403
    status, _ = await server.anon.get("/status", headers={"Authorization": "Bearer x.y.z"})
    assert status == 401
    text = await metrics_text(server.anon)

    def moved(name: str, **labels: str) -> float:
        return total(text, name, **labels) - total(before, name, **labels)

    assert moved(P + "permission_checks_total", outcome="granted") == 3
    assert moved(P + "permission_checks_total", outcome="denied") == 1
    assert moved(P + "permission_cache_hits_total") >= 2  # the same check three times
    assert moved(P + "permission_cache_misses_total") >= 1  # the admin's database
    assert moved(P + "permission_check_duration_seconds_count") == 4
    assert moved(P + "auth_requests_total", method="token", outcome="success") == 4
    assert moved(P + "auth_requests_total", outcome="failure") == 1
    assert moved(P + "auth_errors_total", reason="invalid_token") == 1
    assert moved(P + "auth_duration_seconds_count") == 5
    assert moved(P + "http_requests_total", method="GET", status="200") >= 3
    assert moved(P + "http_requests_total", method="GET", status="403") == 1


async def test_login_rate_limit_counter_moves(tmp_path: Any) -> None:
    async with bare_server(make_settings(tmp_path, login_rate_per_minute=1)) as (anon, _app):
        status, _ = await anon.post("/v1/auth/register",
                                    {"username": "rl", "password": "Rate_Limit1!"})
        assert status == 201
        creds = {"username": "rl", "password": "Rate_Limit1!"}
        status, _ = await anon.post("/v1/auth/login", creds)
        assert status == 200
        status, body = await anon.post("/v1/auth/login", creds)
        assert status == 429 and body["error"] == "rate_limit_exceeded", body
        assert body["retry_after"] >= 1
        text = await metrics_text(anon)
        assert sample(text, P + "rate_limit_exceeded_total", limit="login") == 1


async def test_lockout_counters_move(tmp_path: Any) -> None:
    async with running_server(make_settings(tmp_path, lockout_threshold=2)) as srv:
        for _ in range(2):
            status, _ = await srv.anon.post("/v1/auth/login",
                                            {"username": "tester", "password": "nope"})
            assert status == 401
        text = await metrics_text(srv.anon)
        assert sample(text, P + "failed_logins_total") == 2
        assert sample(text, P + "locked_accounts_total") == 1
        assert sample(text, P + "ip_blocks_total") == 0  # 2 < the IP threshold of 10


async def test_db_operation_counters_move(server: Server) -> None:
    api = server.user
    db = await api.create_db(4)
    await _vectors(api, db, 3)
    status, _ = await api.get(f"/v1/databases/{db}/vectors/v1")
    assert status == 200
    text = await metrics_text(server.anon)
    assert total(text, P + "db_operations_total") >= 3
    assert total(text, P + "db_operation_duration_seconds_count") >= 3
    ops = {lab["operation"] for n, lab, _ in samples(text)
           if n == P + "db_operation_duration_seconds_bucket"}
    assert ops
    for op in ops:
        assert buckets(text, P + "db_operation_duration_seconds", operation=op) == \
            RUNBOOK_BUCKETS


# -- the lock-free counter and histogram (jade/metrics.py) --------------------------------------
def _exposition(registry: Any) -> str:
    from prometheus_client import generate_latest

    # creation times differ between the two implementations; everything else must not
    return re.sub(r"_created(\{[^}]*\})? \S+", r"_created\1 T", generate_latest(registry).decode())


def test_exposition_equals_prometheus_client() -> None:
    import prometheus_client as pc
    from prometheus_client import CollectorRegistry

    from jade import metrics

    theirs, ours = CollectorRegistry(), CollectorRegistry()
    pairs = [
        (pc.Counter("x_total", "X", ["a", "b"], registry=theirs),
         metrics.Counter("x_total", "X", ["a", "b"], registry=ours)),
        (pc.Counter("u_total", "U", registry=theirs),
         metrics.Counter("u_total", "U", registry=ours)),
    ]
    hists = (pc.Histogram("h_seconds", "H", ["op"], buckets=(0.1, 1, 5), registry=theirs),
             metrics.Histogram("h_seconds", "H", ["op"], buckets=(0.1, 1, 5), registry=ours))
    plain = (pc.Histogram("p_seconds", "P", buckets=metrics.FAST_BUCKETS, registry=theirs),
             metrics.Histogram("p_seconds", "P", buckets=metrics.FAST_BUCKETS, registry=ours))
    for m in (0, 1):
        pairs[0][m].labels("p", 1).inc()
        pairs[0][m].labels("p", "1").inc(2.5)
        pairs[0][m].labels("q", "2")  # a child with no update is exposed at 0
        pairs[1][m].inc(3)
        for v in (0.05, 0.1, 0.1000001, 1, 3, 5, 7, 0, -1):  # bucket edges are "le"
            hists[m].labels("z").observe(v)
        plain[m].observe(0.0003)
    assert _exposition(ours) == _exposition(theirs)


def test_concurrent_updates_are_all_counted() -> None:
    import threading

    from prometheus_client import CollectorRegistry

    from jade import metrics

    reg = CollectorRegistry()
    c = metrics.Counter("c_total", "C", registry=reg)
    h = metrics.Histogram("h_seconds", "H", buckets=(0.5,), registry=reg)
    n, threads = 30_000, 4  # several folds each, racing with each other and with scrapes

    def work(i: int) -> None:
        for j in range(n):
            c.inc()
            h.observe(0.25 if j % 2 else 0.75)

    ts = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
    from prometheus_client import generate_latest

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # thread switches between any two bytecodes: races show
    try:
        for t in ts:
            t.start()
        while any(t.is_alive() for t in ts):
            generate_latest(reg)  # scrapes fold too
        for t in ts:
            t.join()
    finally:
        sys.setswitchinterval(interval)
    text = generate_latest(reg).decode()
    assert total(text, "c_total") == n * threads
    assert total(text, "h_seconds_count") == n * threads
    assert total(text, "h_seconds_bucket", le="0.5") == n * threads / 2
    assert total(text, "h_seconds_sum") == (0.25 + 0.75) * n * threads / 2


def test_pending_updates_stay_bounded_and_negative_is_refused() -> None:
    import pytest

    from jade import metrics

    c = metrics.Counter("c_total", "C")
    for _ in range(3 * metrics.FOLD_AT):
        c.inc()
    assert len(c._unlabelled._pending) <= metrics.FOLD_AT
    with pytest.raises(ValueError):
        c.inc(-1)
    with pytest.raises(ValueError):
        c.labels("extra")
