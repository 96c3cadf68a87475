"""The runbook's log files (Appendix "Log Locations"): app.log, access.log, audit.log and
error.log in the log directory; readable text in development, JSON lines in production; every
request's lines carry its request id (the X-Request-ID response header).

In-process tests call ``jade.logs.setup`` (which replaces the root logger's handlers) and put
the previous handlers back afterwards; the production test runs ``jade serve`` for real.
"""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from jade import logs
from jade import settings as settings_mod
from jade.http.app import build_app
from jade.settings import ConfigError, Settings
from tests.conftest import ROOT, ServerProcess, free_port, make_settings, running_server

FILES = ("app.log", "access.log", "audit.log", "error.log")
TEXT_LINE = re.compile(
    r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (DEBUG|INFO|WARNING|ERROR|CRITICAL) (\S+) "
    r"\[([^\]]+)\] (.*)$")
ISO_MS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """Whatever ``logs.setup`` installs is closed and the previous state comes back."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    named = {n: logging.getLogger(n).level for n in ("aiohttp.access", "apscheduler", "jade.test")}
    try:
        yield
    finally:
        for h in list(root.handlers):
            if h not in handlers:
                root.removeHandler(h)
                h.close()
        for h in handlers:
            if h not in root.handlers:
                root.addHandler(h)
        root.setLevel(level)
        for n, lvl in named.items():
            logging.getLogger(n).setLevel(lvl)


def flush() -> None:
    for h in logging.getLogger().handlers:
        h.flush()


def read_lines(log_dir: str, name: str) -> list[str]:
    with open(os.path.join(log_dir, name), encoding="utf-8") as fh:
        return [line.rstrip("\n") for line in fh if line.strip()]


async def _get(session: aiohttp.ClientSession, url: str, **headers: str) -> tuple[int, str]:
    """One request; returns (status, the X-Request-ID the server answered with)."""
    async with session.get(url, headers=headers) as r:
        await r.read()
        return r.status, r.headers["X-Request-ID"]


# -- development: text lines, four files, request ids -------------------------------------------


async def test_development_writes_four_files_with_request_ids(
        tmp_path: Any, restore_logging: None) -> None:
    settings = make_settings(tmp_path)
    assert settings.log_format == "text"
    log_dir = logs.setup(settings, console=False)
    assert log_dir == os.path.join(settings.data_dir, "logs")
    async with running_server(settings) as srv:
        async with aiohttp.ClientSession(headers=srv.user.headers) as s:
            mine = "runbook-req-42"
            status, echoed = await _get(s, srv.base + "/status", **{"X-Request-ID": mine})
            assert status == 200 and echoed == mine  # a client's id is honoured
            ids = []
            for path in ("/health", "/status", "/v1/databases", "/no/such/route"):
                status, rid = await _get(s, srv.base + path)
                assert re.fullmatch(r"[0-9a-f]{16}", rid), rid
                ids.append((path, status, rid))
        logging.getLogger("jade.test").error("something broke: %s", "on purpose")
        logging.getLogger("jade.test").info("just information")
    flush()

    assert sorted(f for f in os.listdir(log_dir) if f.endswith(".log")) == sorted(FILES)

    access = read_lines(log_dir, "access.log")
    parsed = [TEXT_LINE.match(line) for line in access]
    assert all(parsed), [line for line, m in zip(access, parsed, strict=True) if not m]
    assert {m.group(2) for m in parsed if m} == {"jade.access"}
    assert all(m.group(3) != "-" for m in parsed if m)  # every request line has its id
    for path, status, rid in [("/status", 200, mine), *ids]:
        hits = [line for line in access if f"[{rid}]" in line]
        assert len(hits) == 1, (rid, hits)
        assert f'"GET {path}" {status}' in hits[0], hits[0]

    app_lines = read_lines(log_dir, "app.log")
    assert app_lines and all(TEXT_LINE.match(line) for line in app_lines), app_lines
    assert any(" jade.http.app " in line and "opened" in line for line in app_lines)
    assert any("something broke: on purpose" in line for line in app_lines)
    assert not any(" jade.access " in line or " jade.audit " in line for line in app_lines)

    errors = read_lines(log_dir, "error.log")
    assert [TEXT_LINE.match(x).group(1) for x in errors] == ["ERROR"]  # type: ignore[union-attr]
    assert "something broke: on purpose" in errors[0]

    audit = [json.loads(line) for line in read_lines(log_dir, "audit.log")]
    assert audit and all(isinstance(e, dict) and e["event_type"] for e in audit)
    kinds = {e["event_type"] for e in audit}
    assert {"AUTHENTICATION_ATTEMPT", "AUTHENTICATION_SUCCESS"} <= kinds
    assert all(e.get("request_id") for e in audit)


async def test_an_unhandled_error_reaches_error_log_as_json(
        tmp_path: Any, restore_logging: None) -> None:
    """The 500 path (a handler bug) in production format: one JSON line in error.log with the
    request id the client was told, and the traceback."""
    settings = make_settings(tmp_path, log_format="json")
    log_dir = logs.setup(settings, console=False)

    async def boom(request: web.Request) -> web.Response:
        raise RuntimeError("handler bug")

    app = build_app(settings)
    app.router.add_get("/boom", boom)  # not in ROUTES: stands in for any buggy handler
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        async with aiohttp.ClientSession() as s, s.get(f"http://127.0.0.1:{port}/boom") as r:
            assert r.status == 500
            body = await r.json()
            rid = r.headers["X-Request-ID"]
        assert body["error"] == "internal_error" and rid in body["message"]
        assert "handler bug" not in body["message"]  # no internals to the client
    finally:
        await runner.cleanup()
    flush()
    errors = [json.loads(line) for line in read_lines(log_dir, "error.log")]
    assert len(errors) == 1, errors
    e = errors[0]
    assert e["level"] == "error" and e["logger"] == "jade.http"
    assert e["request_id"] == rid
    assert "RuntimeError: handler bug" in e["exc"]


def test_log_level_from_the_environment(tmp_path: Any, restore_logging: None) -> None:
    """JADEVECTORDB_LOG_LEVEL=debug is honoured; the default (info) drops debug lines."""
    for level, wanted in (("debug", True), (None, False)):
        d = tmp_path / (level or "default")
        env = {"JADEVECTORDB_DATA_DIR": str(d), "JADEVECTORDB_CONFIG_DIR": str(d / "none")}
        if level:
            env["JADEVECTORDB_LOG_LEVEL"] = level
        s = settings_mod.load(env)
        log_dir = logs.setup(s, console=False)
        logging.getLogger("jade.test").debug("a debug line")
        logging.getLogger("jade.test").info("an info line")
        flush()
        lines = read_lines(log_dir, "app.log")
        assert any("an info line" in x for x in lines)
        assert any("a debug line" in x for x in lines) is wanted, (level, lines)


def _config(tmp_path: Any, logging_json: dict[str, Any]) -> Settings:
    cfg = tmp_path / "config"
    cfg.mkdir(exist_ok=True)
    (cfg / "logging.json").write_text(json.dumps(logging_json))
    return settings_mod.load({"JADEVECTORDB_DATA_DIR": str(tmp_path / "data"),
                              "JADEVECTORDB_CONFIG_DIR": str(cfg)})


def test_logging_json_is_honoured(tmp_path: Any, restore_logging: None) -> None:
    s = _config(tmp_path, {"max_bytes": 2000, "backup_count": 1,
                           "loggers": {"jade.test": "warning"}})
    log_dir = logs.setup(s, console=False)
    log = logging.getLogger("jade.test")
    log.info("dropped by the per-logger level")
    for i in range(60):
        log.warning("line %d %s", i, "x" * 40)
    flush()
    names = sorted(os.listdir(log_dir))
    assert "app.log.1" in names and "app.log.2" not in names  # rotated, one backup kept
    assert os.path.getsize(os.path.join(log_dir, "app.log")) <= 2000
    assert not any("dropped" in x for x in read_lines(log_dir, "app.log") +
                   read_lines(log_dir, "app.log.1"))


def test_bad_logging_json_refuses(tmp_path: Any, restore_logging: None) -> None:
    s = _config(tmp_path, {"max_bytes": 1000, "colour": True})
    with pytest.raises(ConfigError, match="colour"):
        logs.setup(s)
    (tmp_path / "config" / "logging.json").write_text("{not json")
    with pytest.raises(ConfigError, match="logging.json"):
        logs.setup(s)
    # and the server itself refuses to start, naming the file
    env = {**os.environ, "JADEVECTORDB_DATA_DIR": str(tmp_path / "data"),
           "JADEVECTORDB_CONFIG_DIR": str(tmp_path / "config"), "PYTHONPATH": ROOT,
           "JADEVECTORDB_PORT": str(free_port())}
    proc = subprocess.run([sys.executable, "-m", "tools", "serve"], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert "configuration error" in proc.stderr and "logging.json" in proc.stderr


# -- production: JSON lines, for real ----------------------------------------------------------


async def test_production_writes_json_lines(tmp_path: Any) -> None:
    log_dir = str(tmp_path / "logs")
    sp = ServerProcess(str(tmp_path / "data"), env={
        "JADEVECTORDB_ENV": "production", "JWT_SECRET": "s" * 40,
        "JADEVECTORDB_LOG_DIR": log_dir})
    sp.start()
    try:
        async with aiohttp.ClientSession() as s:
            creds = {"username": "ops", "password": "Prod_Secure123@", "email": "o@example.com"}
            async with s.post(sp.base + "/v1/auth/register", json=creds) as r:
                assert r.status == 201, await r.text()
            async with s.post(sp.base + "/v1/auth/login", json=creds) as r:
                assert r.status == 200, await r.text()
                token = (await r.json())["token"]
                login_rid = r.headers["X-Request-ID"]
            status, rid = await _get(s, sp.base + "/status",
                                     **{"Authorization": f"Bearer {token}",
                                        "X-Request-ID": "prod-req-1"})
            assert status == 200 and rid == "prod-req-1"
    finally:
        sp.proc.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
        assert sp.proc.wait(timeout=30) == 0  # type: ignore[union-attr]
        sp.log.close()

    assert sorted(f for f in os.listdir(log_dir) if f.endswith(".log")) == sorted(FILES)
    for name in ("app.log", "access.log", "error.log"):
        for line in read_lines(log_dir, name):
            rec = json.loads(line)
            assert {"ts", "level", "logger", "request_id", "message"} <= set(rec), rec
            assert ISO_MS.match(rec["ts"]), rec["ts"]
    app_recs = [json.loads(x) for x in read_lines(log_dir, "app.log")]
    assert any(r["message"] == "stopped cleanly" for r in app_recs)
    access = [json.loads(x) for x in read_lines(log_dir, "access.log")]
    assert {r["logger"] for r in access} == {"jade.access"}
    mine = [r for r in access if r["request_id"] == "prod-req-1"]
    assert len(mine) == 1 and mine[0]["status"] == 200 and mine[0]["path"] == "/status", mine
    assert [r["path"] for r in access if r["request_id"] == login_rid] == ["/v1/auth/login"]
    audit = [json.loads(x) for x in read_lines(log_dir, "audit.log")]
    assert all(e["event_type"] for e in audit)
    assert any(e["event_type"] == "AUTHENTICATION_SUCCESS" and e["request_id"] == login_rid
               for e in audit)
    # production keeps the console quiet: the server's own output has no log lines
    with open(sp.log.name, encoding="utf-8") as fh:
        assert "jade.access" not in fh.read()


def test_access_log_writes_from_its_thread_when_the_buffer_fills(tmp_path: Any) -> None:
    """Past MAX_BUFFER lines the background thread writes at once (the request path never
    does file I/O); below it, lines wait for the timer, ``flush`` or ``close``."""

    class Slow(logs.AccessLog):
        FLUSH_SECONDS = 60.0  # the timer never fires during the test
        MAX_BUFFER = 10

    path = tmp_path / "access.log"
    a = Slow(str(path), 0, 1, json_lines=False)
    try:
        for i in range(3):
            a.request(f"r{i}", "127.0.0.1", "GET", "/x", "/x", 200, 0.001)
        time.sleep(0.3)
        assert path.read_text() == ""  # below the threshold: still queued
        for i in range(3, 12):
            a.request(f"r{i}", "127.0.0.1", "GET", "/x", "/x", 200, 0.001)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and path.read_text().count("\n") < 10:
            time.sleep(0.02)
        lines = path.read_text().splitlines()
        assert len(lines) >= 10 and all(TEXT_LINE.match(x) for x in lines), lines
        assert "[r0]" in lines[0] and '"GET /x" 200 1.00ms' in lines[0]
    finally:
        a.close()
    assert path.read_text().count("\n") == 12  # close wrote the rest
