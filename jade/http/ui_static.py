"""The web console (``/ui``): static files shipped in the package, no build step at run time.
It talks to the same REST API as every client, with the token it gets from /v1/auth/login."""

from __future__ import annotations

import os

from aiohttp import web

from jade.errors import NotFound

UI_DIR = os.path.join(os.path.dirname(__file__), "ui")
TYPES = {".html": "text/html", ".js": "text/javascript", ".css": "text/css"}
# The console loads only its own files and talks only to this server; no page may frame it
# (clickjacking), and nothing inline runs (an injected string cannot become a script).
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
       "frame-ancestors 'none'")
HEADERS = {
    "Cache-Control": "no-cache",
    "Content-Security-Policy": CSP,
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
}


async def index(request: web.Request) -> web.Response:
    return _file("index.html")


async def asset(request: web.Request) -> web.Response:
    return _file(request.match_info["name"])


def _file(name: str) -> web.Response:
    ext = os.path.splitext(name)[1]
    if "/" in name or name.startswith(".") or ext not in TYPES:
        raise NotFound("no such file", name=name)
    path = os.path.join(UI_DIR, name)
    if not os.path.isfile(path):
        raise NotFound("no such file", name=name)
    with open(path, "rb") as fh:
        body = fh.read()
    return web.Response(body=body, content_type=TYPES[ext], charset="utf-8", headers=HEADERS)
