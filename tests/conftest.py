"""Shared fixtures: real LMDB in temp dirs, real aiohttp servers on 127.0.0.1 free ports.

``api`` is the one way HTTP tests talk to a server: it adds whatever credentials the server
needs (so tests say what they test, not how they log in) and returns (status, json).
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson
import pytest

from jade import settings as settings_mod
from jade.http.app import build_app
from jade.settings import Settings
from tools.serve import serving

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def make_settings(tmp_path: Any, **overrides: Any) -> Settings:
    env = {"JADEVECTORDB_DATA_DIR": str(tmp_path / "data"),
           "JADEVECTORDB_CONFIG_DIR": str(tmp_path / "no-config")}
    return settings_mod.load(env, **overrides)


def cli_env(s: Settings) -> dict[str, str]:
    """The environment of an operator's ``jade`` command on the data directory of ``s``."""
    return {
        **os.environ,
        "JADEVECTORDB_DATA_DIR": s.data_dir,
        "JADEVECTORDB_CONFIG_DIR": s.config_dir,
        "PYTHONPATH": ROOT,
    }


def jade(env: dict[str, str], *args: str, timeout: float = 120
         ) -> subprocess.CompletedProcess[str]:
    """``jade ARGS`` as a real subprocess."""
    return subprocess.run([sys.executable, "-m", "tools", *args], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Api:
    """A small JSON client over a real socket."""

    base: str
    session: aiohttp.ClientSession
    headers: dict[str, str] = field(default_factory=dict)

    async def call(self, method: str, path: str, body: Any = None, *, raw: bytes | None = None,
                   headers: dict[str, str] | None = None) -> tuple[int, Any]:
        h = {"Content-Type": "application/json", **self.headers, **(headers or {})}
        data = raw if raw is not None else (orjson.dumps(body) if body is not None else None)
        async with self.session.request(method, self.base + path, data=data, headers=h) as r:
            text = await r.read()
            try:
                return r.status, orjson.loads(text) if text else None
            except orjson.JSONDecodeError:
                return r.status, text.decode(errors="replace")

    async def get(self, path: str, **kw: Any) -> tuple[int, Any]:
        return await self.call("GET", path, **kw)

    async def post(self, path: str, body: Any = None, **kw: Any) -> tuple[int, Any]:
        return await self.call("POST", path, body, **kw)

    async def put(self, path: str, body: Any = None, **kw: Any) -> tuple[int, Any]:
        return await self.call("PUT", path, body, **kw)

    async def delete(self, path: str, **kw: Any) -> tuple[int, Any]:
        return await self.call("DELETE", path, **kw)

    async def indexed(self, timeout: float = 30.0) -> None:
        """Wait until the HNSW graphs hold every acknowledged write (``/status`` index lag 0):
        for tests that compare approximate answers, which are exact while the graph lags."""
        deadline = time.monotonic() + timeout
        while True:
            status, body = await self.get("/status")
            assert status == 200, body
            if body["indexes"]["lag"]["vectors"] == 0:
                return
            assert time.monotonic() < deadline, body["indexes"]
            await asyncio.sleep(0.01)

    async def create_db(self, dim: int = 4, **extra: Any) -> str:
        status, body = await self.post("/v1/databases",
                                       {"name": "t", "vectorDimension": dim, **extra})
        assert status == 201, body
        return str(body["databaseId"])


@pytest.fixture
def settings(tmp_path: Any) -> Settings:
    return make_settings(tmp_path)


ADMIN_PASSWORD = "Admin_Secure123@"
USER_PASSWORD = "PyTest_Secure123@"


async def login(api: Api, username: str, password: str) -> str:
    status, body = await api.post("/v1/auth/login", {"username": username, "password": password})
    assert status == 200, body
    return str(body["token"])


@dataclass
class Server:
    """A running test server: ``anon`` sends no credential, ``admin`` is the bootstrap admin,
    ``user`` a plain self-registered user (the reference test suite's session user)."""

    base: str
    anon: Api
    admin: Api
    user: Api
    app: Any
    user_id: str = ""
    admin_id: str = ""

    async def client_for(self, username: str, password: str) -> Api:
        token = await login(self.anon, username, password)
        return Api(self.base, self.anon.session, {"Authorization": f"Bearer {token}"})


@asynccontextmanager
async def running_server(settings: Settings) -> AsyncIterator[Server]:
    """A real server (aiohttp AppRunner on a free loopback port) with an admin and a user."""
    from aiohttp import web

    app = build_app(settings)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    base = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as session:
            anon = Api(base, session)
            st, body = await anon.post("/v1/auth/register", {
                "username": "admin", "password": ADMIN_PASSWORD, "is_admin": True})
            assert st == 201 and "admin" in body["roles"], body
            admin_id = body["user_id"]
            st, body = await anon.post("/v1/auth/register", {
                "username": "tester", "password": USER_PASSWORD, "email": "t@example.com"})
            assert st == 201 and body["roles"] == ["user"], body
            user_id = body["user_id"]
            admin = Api(base, session, {
                "Authorization": "Bearer " + await login(anon, "admin", ADMIN_PASSWORD)})
            user = Api(base, session, {
                "Authorization": "Bearer " + await login(anon, "tester", USER_PASSWORD)})
            yield Server(base, anon, admin, user, app, user_id, admin_id)
    finally:
        await runner.cleanup()


@pytest.fixture
async def server(settings: Settings) -> AsyncIterator[Server]:
    async with running_server(settings) as srv:
        yield srv


@pytest.fixture
async def api(server: Server) -> Api:
    """A client authenticated as a plain user who owns what it creates."""
    return server.user


class ServerProcess:
    """``jade serve`` as a real subprocess (for crash and restart tests)."""

    def __init__(self, data_dir: str, port: int | None = None, env: dict[str, str] | None = None,
                 log_dir: str | None = None, argv: list[str] | None = None):
        self.data_dir = data_dir
        # a test's own entry point (a fixture that sets a test hook before serving)
        self.argv = argv or [sys.executable, "-m", "tools", "serve"]
        self.log_dir = log_dir or os.path.dirname(data_dir)  # the server's output goes here
        self.port = port or free_port()
        self.env = {**os.environ, "JADEVECTORDB_DATA_DIR": data_dir,
                    "JADEVECTORDB_PORT": str(self.port), "JADEVECTORDB_HOST": "127.0.0.1",
                    "JADEVECTORDB_CONFIG_DIR": os.path.join(data_dir, "no-config"),
                    "PYTHONPATH": ROOT, **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None
        self.base = f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0) -> None:
        self.log = open(os.path.join(self.log_dir, f"server-{self.port}.log"), "ab")
        self.proc = subprocess.Popen(self.argv, env=self.env,
                                     stdout=self.log, stderr=subprocess.STDOUT, cwd=ROOT)
        deadline = time.monotonic() + timeout
        while timeout and time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}")
            if serving("127.0.0.1", self.port, timeout=0.5):
                return
            time.sleep(0.05)
        if timeout:  # 0: spawn only, the caller waits
            raise TimeoutError("server did not start")

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.log.close()

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=30)
        self.log.close()


@pytest.fixture
def server_process(tmp_path: Any) -> Iterator[ServerProcess]:
    sp = ServerProcess(str(tmp_path / "data"))
    yield sp
    if sp.proc is not None and sp.proc.poll() is None:
        sp.kill()
