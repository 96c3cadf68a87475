"""The small ones of issue 15 (class 8): bytes that are not UTF-8 in a credential, an LSN past
64 bits, the console's headers and its trailing slash."""

from __future__ import annotations

import asyncio
import time
from urllib.parse import quote

import pytest

from tests.conftest import Server


async def raw_request(srv: Server, head: bytes) -> tuple[int, bytes]:
    """Send ``head`` (request line and headers, no body) over a socket: what a client that
    does not encode its headers sends."""
    host, port = srv.base.rsplit("/", 1)[1].split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(head + b"Connection: close\r\n\r\n")
    await writer.drain()
    data = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    status = int(data.split(b" ", 2)[1])
    return status, data


@pytest.mark.parametrize("value", [b"Bearer \xff\xfe", b"Bearer jvdb_\xc3\x28abc",
                                   b"\xff", b"Bearer eyJ\x80.x.y"])
async def test_a_credential_that_is_not_utf8_is_401(server: Server, value: bytes) -> None:
    for path in (b"/v1/databases", b"/status", b"/v1/admin/ip-blocks"):
        status, data = await raw_request(
            server, b"GET " + path + b" HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: " + value
            + b"\r\n")
        assert status == 401, (path, value, data[:300])
    # an API key header too
    status, data = await raw_request(
        server, b"GET /v1/databases HTTP/1.1\r\nHost: 127.0.0.1\r\nX-API-Key: \xff\xfe\r\n")
    assert status in (400, 401), data[:300]


@pytest.mark.parametrize("lsn", [str(2 ** 64), str(2 ** 63), "9" * 40, "-1", "1e5", "+5", "1_000"])
async def test_an_lsn_out_of_range_is_400_at_once(server: Server, lsn: str) -> None:
    t0 = time.monotonic()
    status, body = await server.user.get("/v1/databases", headers={"X-Min-LSN": lsn})
    assert status == 400, (lsn, status, body)
    assert body["error"] == "invalid_argument", body
    status, body = await server.user.get(f"/v1/databases?min_lsn={quote(lsn)}")
    assert status == 400, (lsn, status, body)
    assert time.monotonic() - t0 < 2.0


async def test_the_console_forbids_framing_and_foreign_scripts(server: Server) -> None:
    for path in ("/ui", "/ui/", "/ui/app.js", "/ui/style.css"):
        async with server.anon.session.get(server.base + path) as resp:
            assert resp.status == 200, path
            csp = resp.headers.get("Content-Security-Policy", "")
            assert "frame-ancestors 'none'" in csp and "default-src 'self'" in csp, (path, csp)
            assert "script-src 'self'" in csp and "'unsafe-inline'" not in csp, csp
            assert resp.headers.get("X-Frame-Options") == "DENY", path
            assert resp.headers.get("X-Content-Type-Options") == "nosniff", path
            assert resp.headers.get("Referrer-Policy") == "no-referrer", path
    async with server.anon.session.get(server.base + "/ui/") as resp:
        assert "<title>JadeVectorDB console</title>" in await resp.text()


async def test_every_answer_says_nosniff(server: Server) -> None:
    """JSON answers too: a browser must not sniff an error body that echoes input as HTML."""
    for path in ("/health", "/v1/databases", "/no-such-route"):
        async with server.anon.session.get(server.base + path) as resp:
            assert resp.headers.get("X-Content-Type-Options") == "nosniff", (path, resp.status)


@pytest.mark.parametrize("ctype", [None, "text/plain", "text/plain;charset=UTF-8",
                                   "application/x-www-form-urlencoded", "multipart/form-data",
                                   "application/octet-stream"])
async def test_a_json_route_takes_only_json(server: Server, ctype: str | None) -> None:
    """A web page on another site can send text/plain, a form, or a body with no type at all
    without a CORS preflight: a JSON route refuses them (415), whatever the bytes."""
    db = await server.user.create_db(4)
    body = b'{"id": "planted", "values": [1, 0, 0, 0]}'
    headers = dict(server.user.headers)
    if ctype is not None:
        headers["Content-Type"] = ctype
    async with server.anon.session.post(f"{server.base}/v1/databases/{db}/vectors", data=body,
                                        headers=headers, skip_auto_headers=["Content-Type"]
                                        ) as resp:
        assert resp.status == 415, (ctype, resp.status, await resp.text())
        assert (await resp.json())["error"] == "unsupported_media_type"
    st, _ = await server.user.get(f"/v1/databases/{db}/vectors/planted")
    assert st == 404
    # JSON, and the JSON family, still work; an empty body needs no type
    for good in ("application/json", "application/json; charset=utf-8",
                 "application/merge-patch+json"):
        st, got = await server.user.post(f"/v1/databases/{db}/vectors",
                                         {"id": "ok", "values": [1, 0, 0, 0]},
                                         headers={"Content-Type": good})
        assert st == 201, (good, got)
    async with server.anon.session.post(f"{server.base}/v1/auth/logout",
                                        headers=server.user.headers) as resp:
        assert resp.status == 200, await resp.text()
