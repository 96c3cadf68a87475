"""The runbook's procedures (docs: /work/shared/RUNBOOK.md), run the way the runbook runs them:
plain HTTP calls as its curl lines make, against a real server on loopback.

Each test names the runbook section it follows. Procedures that need docker, kubectl or sqlite3
(deployment, scaling, the sqlite backup script) do not run here.
"""

from __future__ import annotations

import re
import shutil
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from jade import __version__
from jade.engine import Engine
from jade.http.app import build_app
from jade.http.keys import ENGINE
from jade.settings import Settings
from tests.conftest import (
    ADMIN_PASSWORD,
    USER_PASSWORD,
    Api,
    Server,
    free_port,
    login,
    make_settings,
    running_server,
)

# -- helpers shared with the other operations test files ----------------------------------------


@asynccontextmanager
async def bare_server(settings: Settings) -> AsyncIterator[tuple[Api, web.Application]]:
    """A real server with nobody registered (``running_server`` registers admin and tester,
    which cannot be repeated on the same data directory)."""
    app = build_app(settings)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    try:
        async with aiohttp.ClientSession() as session:
            yield Api(f"http://127.0.0.1:{port}", session), app
    finally:
        await runner.cleanup()


def with_token(api: Api, token: str) -> Api:
    return Api(api.base, api.session, {"Authorization": f"Bearer {token}"})


_SAMPLE = re.compile(r"^([A-Za-z_:][A-Za-z0-9_:]*)(\{[^}]*\})?\s+(\S+)$")
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def samples(text: str) -> list[tuple[str, dict[str, str], float]]:
    """The Prometheus text format's sample lines as (name, labels, value)."""
    out = []
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = _SAMPLE.match(line)
        assert m, f"not a Prometheus sample line: {line!r}"
        labels = dict(_LABEL.findall(m.group(2) or ""))
        out.append((m.group(1), labels, float(m.group(3))))
    return out


def sample(text: str, name: str, **labels: str) -> float | None:
    """The value of the one sample ``name{labels}`` (labels must match exactly), else None."""
    hits = [v for n, lab, v in samples(text) if n == name and lab == labels]
    assert len(hits) <= 1, (name, labels, hits)
    return hits[0] if hits else None


async def metrics_text(api: Api) -> str:
    status, text = await api.get("/metrics")
    assert status == 200
    assert isinstance(text, str)
    return text


def grep(text: str, word: str) -> list[str]:
    """``curl /metrics | grep word``."""
    return [line for line in text.splitlines() if word in line]


# -- Health Checks ------------------------------------------------------------------------------


async def test_basic_health_check(server: Server) -> None:
    """curl http://localhost:8080/health -> the runbook's expected response, exactly."""
    before = int(time.time() * 1000)
    status, body = await server.anon.get("/health")
    after = int(time.time() * 1000)
    assert status == 200, body
    assert set(body) == {"status", "timestamp", "version", "checks"}
    assert body["status"] == "healthy"
    assert isinstance(body["timestamp"], int) and not isinstance(body["timestamp"], bool)
    assert before - 1000 <= body["timestamp"] <= after + 1000  # milliseconds, not seconds
    assert body["version"] == __version__
    assert body["checks"] == {"database": "ok", "storage": "ok", "network": "ok"}


async def test_probes_ignore_a_bad_bearer_header(server: Server) -> None:
    """Probes send whatever header the monitoring system has: a garbage token is not a 401."""
    bad = {"Authorization": "Bearer not-a-token"}
    status, body = await server.anon.get("/health", headers=bad)
    assert status == 200 and body["status"] == "healthy", body
    status, body = await server.anon.get("/health/db", headers=bad)
    assert status == 200 and body["healthy"] is True, body
    status, text = await server.anon.get("/metrics", headers=bad)
    assert status == 200 and "jadevectordb_" in text
    # ...whereas a route that needs a credential refuses the same header
    status, body = await server.anon.get("/status", headers=bad)
    assert status == 401, body


async def test_database_health_check(server: Server) -> None:
    """curl http://localhost:8080/health/db (API.md §1 shape)."""
    status, body = await server.anon.get("/health/db")
    assert status == 200, body
    assert set(body) == {"status", "healthy", "timestamp", "checks"}
    assert body["status"] == "healthy" and body["healthy"] is True
    assert isinstance(body["timestamp"], int)
    assert abs(body["timestamp"] - time.time() * 1000) < 60_000
    assert body["checks"] == {
        "authentication_db": {"status": "ok", "healthy": True},
        "vector_db": {"status": "ok", "healthy": True},
    }


# -- Security Monitoring ------------------------------------------------------------------------


async def test_check_failed_logins(server: Server) -> None:
    """curl /metrics | grep failed_logins: the counter is there and counts a failed login."""
    lines = grep(await metrics_text(server.anon), "failed_logins")
    assert "# TYPE jadevectordb_failed_logins_total counter" in lines
    before = sample("\n".join(lines), "jadevectordb_failed_logins_total")
    assert before is not None
    status, body = await server.anon.post(
        "/v1/auth/login", {"username": "tester", "password": "wrong-password"})
    assert status == 401 and body["error"] == "invalid_credentials", body
    status, body = await server.anon.post(
        "/v1/auth/login", {"username": "nobody", "password": "wrong-password"})
    assert status == 401, body
    after = sample("\n".join(grep(await metrics_text(server.anon), "failed_logins")),
                   "jadevectordb_failed_logins_total")
    assert after == before + 2


async def test_view_blocked_ips_and_active_sessions(server: Server) -> None:
    """curl /metrics | grep ip_blocks; curl /metrics | grep active_sessions."""
    text = await metrics_text(server.anon)
    assert "# TYPE jadevectordb_ip_blocks_total counter" in grep(text, "ip_blocks")
    assert sample(text, "jadevectordb_ip_blocks_total") == 0
    assert "# TYPE jadevectordb_active_sessions gauge" in grep(text, "active_sessions")
    base = sample(text, "jadevectordb_active_sessions")
    assert base is not None and base >= 2  # the fixture's admin and tester are logged in

    t1 = await login(server.anon, "tester", USER_PASSWORD)
    t2 = await login(server.anon, "tester", USER_PASSWORD)
    text = await metrics_text(server.anon)
    assert sample(text, "jadevectordb_active_sessions") == base + 2

    status, body = await with_token(server.anon, t1).post("/v1/auth/logout")
    assert status == 200, body
    text = await metrics_text(server.anon)
    assert sample(text, "jadevectordb_active_sessions") == base + 1
    status, _ = await with_token(server.anon, t1).get("/status")
    assert status == 401  # the logged-out token is dead...
    status, _ = await with_token(server.anon, t2).get("/status")
    assert status == 200  # ...the other one is not


async def test_ip_unblock(tmp_path: Any) -> None:
    """IP Block Management: a blocked IP shows in the metrics; DELETE /v1/admin/ip-blocks/{ip}
    (admin) lifts the block and logging in from there works again."""
    settings = make_settings(tmp_path, ip_block_threshold=3, trusted_proxies="127.0.0.1")
    ip = "192.168.1.100"  # the runbook's address, as a trusted proxy forwards it
    via = {"X-Forwarded-For": ip}
    async with running_server(settings) as srv:
        for _ in range(3):
            status, body = await srv.anon.post(
                "/v1/auth/login", {"username": "tester", "password": "wrong"}, headers=via)
            assert status == 401, body
        status, body = await srv.anon.post(
            "/v1/auth/login", {"username": "tester", "password": USER_PASSWORD}, headers=via)
        assert status == 403 and body["error"] == "ip_blocked", body
        assert body["retry_after"] > 0

        text = await metrics_text(srv.anon)
        assert sample(text, "jadevectordb_ip_blocks_total") == 1
        status, body = await srv.admin.get("/v1/admin/ip-blocks")
        assert status == 200 and [b["ip"] for b in body["blocked"]] == [ip], body

        status, body = await srv.user.delete(f"/v1/admin/ip-blocks/{ip}")
        assert status == 403, body  # requires admin
        status, body = await srv.admin.delete(f"/v1/admin/ip-blocks/{ip}")
        assert status == 200 and body["ip"] == ip and body["message"], body

        status, body = await srv.anon.post(
            "/v1/auth/login", {"username": "tester", "password": USER_PASSWORD}, headers=via)
        assert status == 200 and body["token"], body
        status, body = await srv.admin.get("/v1/admin/ip-blocks")
        assert status == 200 and body["blocked"] == [], body
        status, body = await srv.admin.delete(f"/v1/admin/ip-blocks/{ip}")
        assert status == 404, body  # not blocked any more


# -- User Management ----------------------------------------------------------------------------


async def test_create_admin_user_on_an_empty_system(tmp_path: Any) -> None:
    """The runbook's register call with is_admin:true makes the first user an admin; later
    anonymous callers asking for it get a plain user."""
    async with bare_server(make_settings(tmp_path)) as (anon, _app):
        status, body = await anon.post("/v1/auth/register", {
            "username": "admin", "email": "admin@example.com",
            "password": "SecurePassword123!", "is_admin": True})
        assert status == 201, body
        assert "admin" in body["roles"] and body["user_id"], body
        admin = with_token(anon, await login(anon, "admin", "SecurePassword123!"))
        status, body = await admin.get("/v1/admin/ip-blocks")
        assert status == 200, body  # an admin's token opens admin routes

        status, body = await anon.post("/v1/auth/register", {
            "username": "mallory", "password": "SecurePassword123!", "is_admin": True})
        assert status == 201 and body["roles"] == ["user"], body
        mallory = with_token(anon, await login(anon, "mallory", "SecurePassword123!"))
        status, body = await mallory.get("/v1/admin/ip-blocks")
        assert status == 403, body


async def test_reset_user_password(server: Server) -> None:
    """forgot-password by email -> 200, the same answer whether or not the account exists;
    in development the reset token is in the body and resets the password."""
    status, body = await server.anon.post("/v1/auth/forgot-password", {"email": "t@example.com"})
    assert status == 200 and body["message"], body
    token = body["reset_token"]  # development only (API.md §2)
    status, other = await server.anon.post("/v1/auth/forgot-password",
                                           {"email": "nobody@example.com"})
    assert status == 200 and other["message"] == body["message"], other
    assert "reset_token" not in other

    status, body = await server.anon.post(
        "/v1/auth/reset-password", {"reset_token": token, "new_password": "Brand_New_Pass1!"})
    assert status == 200, body
    await login(server.anon, "tester", "Brand_New_Pass1!")
    status, body = await server.anon.post(
        "/v1/auth/login", {"username": "tester", "password": USER_PASSWORD})
    assert status == 401, body


# -- Backup and Restore: the manual backup's readonly window -------------------------------------


async def test_manual_backup_readonly_window(server: Server, settings: Settings,
                                             tmp_path: Any) -> None:
    """curl -X POST /admin/readonly (no token, from loopback, development); copy the files;
    curl -X POST /admin/readwrite."""
    api = server.user
    db = await api.create_db(4)
    for i in range(2):
        st, _ = await api.post(f"/v1/databases/{db}/vectors",
                               {"id": f"v{i}", "values": [1.0, float(i), 0.0, 0.0]})
        assert st == 201

    status, body = await server.anon.post("/admin/readonly")
    assert status == 200 and body["mode"] == "readonly", body

    # writes are refused...
    for method, path, payload in (
        ("POST", f"/v1/databases/{db}/vectors", {"id": "v9", "values": [1, 2, 3, 4]}),
        ("POST", "/v1/databases", {"name": "x", "vectorDimension": 4}),
        ("PUT", f"/v1/databases/{db}", {"description": "changed"}),
        ("DELETE", f"/v1/databases/{db}/vectors/v0", None),
    ):
        status, body = await api.call(method, path, payload)
        assert status == 503 and body["error"] == "read_only", (method, path, body)
    # ...reads and searches are not
    status, body = await api.get(f"/v1/databases/{db}/vectors/v0")
    assert status == 200 and body["id"] == "v0"
    status, body = await api.post(f"/v1/databases/{db}/search",
                                  {"queryVector": [1, 0, 0, 0], "topK": 2})
    assert status == 200 and {r["vectorId"] for r in body["results"]} == {"v0", "v1"}, body
    status, body = await api.post(f"/v1/databases/{db}/vectors/batch-get", {"ids": ["v0", "v1"]})
    assert status == 200 and body["count"] == 2, body
    status, body = await server.anon.get("/health")
    assert status == 200 and body["status"] == "healthy"
    status, body = await api.get("/status")
    assert status == 200 and body["mode"] == "readonly", body

    # cp /data/jadevectordb.db /backup/...; cp /data/jadevectordb_auth.db /backup/...
    backup = tmp_path / "backup"
    backup.mkdir()
    shutil.copy(settings.db_path, backup / "jadevectordb.db")
    shutil.copy(settings.auth_db_path, backup / "jadevectordb_auth.db")

    status, body = await server.anon.post("/admin/readwrite")
    assert status == 200 and body["mode"] == "readwrite", body
    status, body = await api.post(f"/v1/databases/{db}/vectors",
                                  {"id": "v9", "values": [1, 2, 3, 4]})
    assert status == 201, body
    status, body = await api.get("/status")
    assert body["mode"] == "readwrite"

    # the copy is a usable database: the two vectors, not the one written after readwrite
    restored = Engine(make_settings(backup.parent, data_dir=str(backup)))
    restored.open()
    try:
        assert [d["count"] for d in restored.store.databases()] == [2]
        assert restored.mode() == "readonly"  # the copy was taken inside the window
    finally:
        restored.close(checkpoint=False)


async def test_readonly_without_token_is_refused_in_production_mode(tmp_path: Any) -> None:
    """With ``loopback_admin`` off (the production default) the runbook's token-less curl is a
    401; a plain user's token is a 403; an admin token works."""
    settings = make_settings(tmp_path, loopback_admin=False)
    async with running_server(settings) as srv:
        for path in ("/admin/readonly", "/v1/admin/readonly", "/admin/readwrite"):
            status, body = await srv.anon.post(path)
            assert status == 401, (path, body)
            status, body = await srv.user.post(path)
            assert status == 403, (path, body)
        status, body = await srv.user.get("/status")
        assert body["mode"] == "readwrite"
        status, body = await srv.admin.post("/admin/readonly")
        assert status == 200 and body["mode"] == "readonly", body
        status, body = await srv.admin.post("/admin/readwrite")
        assert status == 200 and body["mode"] == "readwrite", body


async def test_readonly_mode_survives_a_restart(settings: Settings) -> None:
    """The mode is a log record, not a flag in memory: a restart inside the backup window stays
    readonly until someone says readwrite."""
    async with running_server(settings) as srv:
        db = await srv.user.create_db(4)
        status, body = await srv.admin.post("/v1/admin/readonly")
        assert status == 200, body

    async with bare_server(settings) as (anon, _app):
        user = with_token(anon, await login(anon, "tester", USER_PASSWORD))  # login still works
        status, body = await user.get("/status")
        assert status == 200 and body["mode"] == "readonly", body
        status, body = await user.post(f"/v1/databases/{db}/vectors",
                                       {"id": "a", "values": [1, 2, 3, 4]})
        assert status == 503 and body["error"] == "read_only", body
        admin = with_token(anon, await login(anon, "admin", ADMIN_PASSWORD))
        status, body = await admin.post("/admin/readwrite")
        assert status == 200 and body["mode"] == "readwrite", body

    async with bare_server(settings) as (anon, _app):
        user = with_token(anon, await login(anon, "tester", USER_PASSWORD))
        status, body = await user.get("/status")
        assert body["mode"] == "readwrite", body
        status, body = await user.post(f"/v1/databases/{db}/vectors",
                                       {"id": "a", "values": [1, 2, 3, 4]})
        assert status == 201, body


# -- /status ------------------------------------------------------------------------------------


UPTIME = re.compile(r"^\d+h \d+m \d+s$")


async def test_status_shows_real_numbers(server: Server) -> None:
    api = server.user
    status, body = await server.anon.get("/status")
    assert status == 401, body
    db1 = await api.create_db(3)
    db2 = await api.create_db(2)
    status, _ = await api.post(f"/v1/databases/{db1}/vectors/batch", {"vectors": [
        {"id": f"a{i}", "values": [float(i), 1.0, 0.0]} for i in range(3)]})
    assert status == 201
    for i in range(2):
        status, _ = await api.post(f"/v1/databases/{db2}/vectors",
                                   {"id": f"b{i}", "values": [1.0, float(i)]})
        assert status == 201
    status, _ = await api.post(f"/v1/databases/{db1}/search", {"queryVector": [1, 1, 0]})
    assert status == 200

    status, body = await api.get("/status")
    assert status == 200, body
    assert body["status"] == "operational" and body["version"] == __version__
    assert isinstance(body["timestamp"], int)
    perf = body["performance"]
    assert perf["database_count"] == 2
    assert perf["total_vectors"] == 5
    assert perf["avg_query_time_ms"] > 0  # one search was made
    assert UPTIME.match(body["uptime"]), body["uptime"]
    assert isinstance(body["uptime_seconds"], int) and body["uptime_seconds"] >= 0
    assert body["mode"] == "readwrite" and body["role"] == "primary"
    assert set(body["system"]) == {"cpu_usage_percent", "memory_usage_percent",
                                   "disk_usage_percent"}
    assert 0 <= body["system"]["disk_usage_percent"] <= 100
    assert body["log"]["last_lsn"] == server.app[ENGINE].log.last_lsn
    jobs = body["scheduler"]
    assert {"index_checkpoint", "auth_prune", "rate_limit_cleanup"} <= set(jobs)
    for job in jobs.values():
        assert job["interval_seconds"] > 0 and job["last_outcome"] in ("never", "success")


@pytest.mark.parametrize("spelling", ["/admin/readonly", "/v1/admin/readonly"])
async def test_readonly_spellings_need_admin_or_loopback(server: Server, spelling: str) -> None:
    """Both spellings of the route behave the same; a user token is not an admin's."""
    status, body = await server.user.post(spelling)
    assert status == 403, body
    status, body = await server.admin.post(spelling)
    assert status == 200 and body["mode"] == "readonly", body
    status, body = await server.admin.post(spelling.replace("readonly", "readwrite"))
    assert status == 200 and body["mode"] == "readwrite", body
