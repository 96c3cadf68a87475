"""The client side of ``jade``: the commands that talk to a server (``import``, ``export``).

Which server and which credential (the one environment scheme, with the server's names):
``--url`` or ``JADEVECTORDB_URL``, else ``http://JADEVECTORDB_HOST:JADEVECTORDB_PORT`` (the
address a server started in the same environment listens on; a wildcard host is reached on
127.0.0.1), else ``http://127.0.0.1:8080``; ``--api-key`` or ``JADEVECTORDB_API_KEY`` (an API
key or a login token, sent as ``Authorization: Bearer``). These are the only variables a tool
reads itself (``jade.settings.CLIENT_ENV``; the server tolerates them in its environment).

A database is named by id or by name (``resolve_db``): the id when the server knows it, else
the one database of that name among those the credential can see. The server has no lookup by
name, so the name is matched in ``GET /v1/databases`` here, on the client.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping
from types import TracebackType
from typing import Any
from urllib.parse import quote

import aiohttp
import orjson

from tools.errors import USAGE, CliError

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8080
WILDCARDS = ("", "0.0.0.0", "::", "[::]")
LEGACY = {"JADE_URL": "JADEVECTORDB_URL", "JADE_API_KEY": "JADEVECTORDB_API_KEY"}


def add_client_args(p: Any) -> None:
    p.add_argument("--url", help="the server (default: JADEVECTORDB_URL, else http://"
                   "JADEVECTORDB_HOST:JADEVECTORDB_PORT, else http://127.0.0.1:8080)")
    p.add_argument("--api-key", help="API key or token (default: JADEVECTORDB_API_KEY)")
    p.add_argument("--timeout", type=float, default=60.0,
                   help="seconds to wait for the server to connect or answer (default 60)")


def server_url(given: str | None, environ: Mapping[str, str] = os.environ) -> str:
    """The server's base URL: ``given``, else ``JADEVECTORDB_URL``, else the host and port a
    server in this environment listens on."""
    url = given or environ.get("JADEVECTORDB_URL", "")
    if not url:
        host = environ.get("JADEVECTORDB_HOST", DEFAULT_HOST).strip()
        host = DEFAULT_HOST if host in WILDCARDS else host
        if ":" in host and not host.startswith("["):
            host = f"[{host}]"
        raw = environ.get("JADEVECTORDB_PORT", str(DEFAULT_PORT)).strip()
        if not raw.isdigit() or not 1 <= int(raw) <= 65535:
            raise CliError(f"JADEVECTORDB_PORT: {raw!r} is not a port number", USAGE)
        url = f"http://{host}:{int(raw)}"
    if not url.startswith(("http://", "https://")):
        raise CliError(f"not an http:// or https:// URL: {url!r} (--url, JADEVECTORDB_URL)",
                       USAGE)
    return url.rstrip("/")


def api_key(given: str | None, environ: Mapping[str, str] = os.environ) -> str:
    return given if given is not None else environ.get("JADEVECTORDB_API_KEY", "")


def warn_legacy(environ: Mapping[str, str] = os.environ) -> None:
    """The variables of an earlier version are not read: say so once, not silently."""
    for old, new in LEGACY.items():
        if environ.get(old) and not environ.get(new):
            print(f"jade: warning: {old} is not read any more; set {new}", file=sys.stderr)


def message_of(body: bytes) -> str:
    """The server's error message in an error answer (``{"error", "message"}``), else the text."""
    try:
        obj = orjson.loads(body)
    except orjson.JSONDecodeError:
        return " ".join(body.decode(errors="replace").split())[:300]
    if isinstance(obj, dict):
        return str(obj.get("message") or obj.get("error") or obj)
    return str(obj)


class Client:
    """An HTTP session on one server with one credential (``async with Client(args)``)."""

    def __init__(self, args: argparse.Namespace) -> None:
        warn_legacy()
        self.base = server_url(args.url)
        key = api_key(args.api_key)
        self.headers = {"Authorization": f"Bearer {key}"} if key else {}
        self.timeout = aiohttp.ClientTimeout(total=None, connect=args.timeout,
                                             sock_connect=args.timeout, sock_read=args.timeout)
        self.session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Client:
        self.session = aiohttp.ClientSession(headers=self.headers, timeout=self.timeout)
        return self

    async def __aexit__(self, t: type[BaseException] | None, e: BaseException | None,
                        tb: TracebackType | None) -> None:
        if self.session is not None:
            await self.session.close()

    @property
    def s(self) -> aiohttp.ClientSession:
        assert self.session is not None, "use the client in 'async with'"
        return self.session

    def url(self, path: str) -> str:
        return self.base + path

    async def get_json(self, path: str, **params: str) -> tuple[int, bytes]:
        async with self.s.get(self.url(path), params=params) as r:
            return r.status, await r.read()

    def refused(self, status: int, body: bytes, what: str) -> CliError:
        """The error for an answer other than success to ``what`` the command asked."""
        msg = message_of(body)
        if status == 401:
            return CliError(f"the server at {self.base} refused the credentials ({msg}): give "
                            "--api-key or set JADEVECTORDB_API_KEY")
        if status == 403:
            return CliError(f"not allowed to {what} ({msg})")
        return CliError(f"could not {what}: the server answered {status} ({msg})")

    async def resolve_db(self, ref: str) -> dict[str, Any]:
        """The database ``ref`` names (its id, else its name): checks the server, the
        credential and the database before anything is streamed."""
        if not ref:
            raise CliError("--db is empty: give a database id or name", USAGE)
        status, body = await self.get_json(f"/v1/databases/{quote(ref, safe='')}")
        if status == 200:
            db: dict[str, Any] = orjson.loads(body)
            return db
        if status != 404:
            raise self.refused(status, body, f"read database {ref!r}")
        named = [d for d in await self.databases() if d.get("name") == ref]
        if len(named) == 1:
            return named[0]
        if not named:
            raise CliError(f"no database with the id or name {ref!r} at {self.base} (among "
                           "those this credential can see)")
        ids = ", ".join(str(d["databaseId"]) for d in named)
        raise CliError(f"{len(named)} databases are named {ref!r}: give one of their ids ({ids})")

    async def databases(self) -> list[dict[str, Any]]:
        """Every database the credential can see (``GET /v1/databases``, page by page)."""
        out: list[dict[str, Any]] = []
        while True:
            status, body = await self.get_json("/v1/databases", limit="1000",
                                               offset=str(len(out)))
            if status != 200:
                raise self.refused(status, body, "list the databases")
            page = orjson.loads(body)
            items = page.get("databases", [])
            out.extend(items)
            if not items or len(out) >= int(page.get("total", 0)):
                return out
