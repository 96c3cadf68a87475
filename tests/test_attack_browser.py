"""Development mode answers a person at a terminal, not a web page (issue 15, class 3), and the
client address behind proxies is the one the proxies saw (class 7).

Token-less loopback admin (on in development) must refuse what a browser page can send:
a cross-site ``Origin`` or ``Sec-Fetch-Site``, and a foreign ``Host`` (DNS rebinding: a page on
``evil.example`` whose name resolves to 127.0.0.1 reaches the server with that Host).
"""

from __future__ import annotations

from typing import Any

import pytest
from multidict import CIMultiDict

from tests.conftest import Server, make_settings, running_server

PASSWORD = "PyTest_Secure123@"


@pytest.fixture
async def dev(tmp_path: Any) -> Any:
    async with running_server(make_settings(tmp_path)) as srv:  # development: loopback_admin
        yield srv


def own_origin(srv: Server) -> str:
    return srv.base  # http://127.0.0.1:PORT


BROWSER_CASES = [
    ("cross-site Origin", {"Origin": "http://evil.example"}),
    ("cross-site Origin on another local port", {"Origin": "http://127.0.0.1:1"}),
    ("Origin null (sandboxed frame, file:)", {"Origin": "null"}),
    ("Sec-Fetch-Site cross-site", {"Sec-Fetch-Site": "cross-site"}),
    ("Sec-Fetch-Site same-site", {"Sec-Fetch-Site": "same-site"}),
    ("DNS rebinding: foreign Host", {"Host": "evil.example:8080"}),
    ("foreign Host, no port", {"Host": "attacker.test"}),
]


@pytest.mark.parametrize("what,headers", BROWSER_CASES, ids=[c[0] for c in BROWSER_CASES])
async def test_loopback_admin_refuses_what_a_web_page_sends(dev: Server, what: str,
                                                           headers: dict[str, str]) -> None:
    for method, path in (("POST", "/admin/readonly"), ("POST", "/v1/admin/readonly"),
                         ("GET", "/v1/admin/ip-blocks"), ("GET", "/v1/admin/snapshots"),
                         ("POST", "/v1/admin/shutdown")):
        status, body = await dev.anon.call(method, path, headers=headers)
        assert status == 401, (what, method, path, status, body)
        assert "browser" in body["message"] or "cross-site" in body["message"], body
    status, body = await dev.admin.get("/status")
    assert body["mode"] == "readwrite", body  # nothing was switched


async def test_a_person_at_the_terminal_still_needs_no_token(dev: Server) -> None:
    """curl sends no Origin and a loopback Host; the console page is same-origin."""
    port = dev.base.rsplit(":", 1)[1]
    for headers in ({}, {"Host": f"localhost:{port}"}, {"Host": f"127.0.0.1:{port}"},
                    {"Origin": own_origin(dev), "Sec-Fetch-Site": "same-origin"},
                    {"Sec-Fetch-Site": "none"}):
        status, body = await dev.anon.post("/admin/readonly", headers=headers)
        assert status == 200 and body["mode"] == "readonly", (headers, body)
        status, body = await dev.anon.post("/admin/readwrite", headers=headers)
        assert status == 200, (headers, body)


async def test_a_token_still_works_from_a_page_it_was_given_to(dev: Server) -> None:
    """The refusal is of the token-less path only: a caller that sends a credential is judged
    by it (a page cannot make a browser attach a bearer token by itself)."""
    status, body = await dev.admin.post("/admin/readonly",
                                        headers={"Origin": "http://evil.example"})
    assert status == 200, body
    await dev.admin.post("/admin/readwrite")


async def _login_fails(srv: Server, ip_headers: dict[str, str]) -> int:
    status, _ = await srv.anon.post("/v1/auth/login", {"username": "tester",
                                                       "password": "wrong-password-1"},
                                    headers=ip_headers)
    return status


async def test_the_client_chosen_forwarded_entry_is_not_trusted(tmp_path: Any) -> None:
    """Behind a trusted proxy (127.0.0.1 here) the client is the rightmost address the trusted
    proxies did not add: a client that sends its own X-Forwarded-For cannot rotate its
    identity and escape the failed-login limit."""
    s = make_settings(tmp_path, trusted_proxies="127.0.0.1", login_rate_per_minute=5)
    async with running_server(s) as srv:
        statuses = []
        for i in range(12):
            # what the proxy sends on: the client's forged list, then the address it saw
            fwd = {"X-Forwarded-For": f"198.51.100.{i}, 203.0.113.7"}
            statuses.append(await _login_fails(srv, fwd))
        assert 429 in statuses or 403 in statuses, statuses


async def test_the_rightmost_untrusted_hop_is_the_client(tmp_path: Any) -> None:
    from jade.auth.addresses import Addresses

    s = make_settings(tmp_path, trusted_proxies="127.0.0.1, 10.0.0.0/8")
    a = Addresses(s, lambda: None)  # type: ignore[arg-type,return-value]
    peer = "127.0.0.1"
    assert a.client_ip(peer, {"X-Forwarded-For": "1.2.3.4"}) == "1.2.3.4"
    assert a.client_ip(peer, {"X-Forwarded-For": "6.6.6.6, 1.2.3.4"}) == "1.2.3.4"
    # a second trusted proxy (CIDR) between the client and us
    assert a.client_ip(peer, {"X-Forwarded-For": "6.6.6.6, 1.2.3.4, 10.1.2.3"}) == "1.2.3.4"
    # two headers are one list, in order
    two = CIMultiDict([("X-Forwarded-For", "6.6.6.6"), ("X-Forwarded-For", "1.2.3.4")])
    assert a.client_ip(peer, two) == "1.2.3.4"
    # a peer that is not trusted: its headers mean nothing
    assert a.client_ip("203.0.113.5", {"X-Forwarded-For": "1.2.3.4"}) == "203.0.113.5"
    # garbage where the proxy's entry should be: the proxy's own address is what we know
    assert a.client_ip(peer, {"X-Forwarded-For": "1.2.3.4, not-an-ip"}) == peer
    # every hop trusted: the leftmost
    assert a.client_ip(peer, {"X-Forwarded-For": "10.9.9.9, 10.1.1.1"}) == "10.9.9.9"
