"""The route walk: every entry of ``jade.http.routes.ROUTES`` is proved to refuse callers without a
credential (401), callers whose credential lacks the permission (403), and — for every route
that changes state — to refuse in readonly mode (503 ``read_only``). A new route cannot be
added without this test noticing it."""

from __future__ import annotations

import re
from typing import Any

import pytest

from jade.http.routes import ROUTES, Route
from tests.conftest import USER_PASSWORD, Api, Server, make_settings, running_server

# Routes of the classes "auth", "create" and "list" that any authenticated user may call...
ANY_USER = {
    ("GET", "/status"),
    ("POST", "/v1/auth/logout"),
    ("POST", "/v1/auth/2fa/enroll"),
    ("POST", "/v1/auth/2fa/confirm"),
    ("GET", "/v1/security/audit-log"),
    ("GET", "/v1/security/sessions"),
    ("GET", "/v1/security/audit-stats"),
    ("GET", "/v1/replication/status"),
    ("GET", "/v1/cluster"),
    ("POST", "/v1/databases"),
    ("GET", "/v1/databases"),
    ("GET", "/v1/api-keys"),  # one's own keys
    ("POST", "/v1/embeddings/generate"),  # text models: no database involved
    ("POST", "/v1/rerank"),
}
# ...and those a user may call on its own account only.
SELF_ONLY = {
    ("GET", "/v1/users/{uid}"),
    ("PUT", "/v1/users/{uid}"),
    ("PUT", "/v1/users/{uid}/password"),
    ("POST", "/v1/api-keys"),
    ("DELETE", "/v1/api-keys/{key_id}"),
}
# Self-only routes that answer someone else's resource with 404, not 403 (its existence is not
# told).
HIDDEN = {("DELETE", "/v1/api-keys/{key_id}")}
# Routes a non-admin must never reach, whatever ``user_admin_only`` says, and which would be
# harmful to call successfully during the walk (they are only ever called to be refused).
NEVER_CALL_AUTHORIZED = {("POST", "/v1/admin/shutdown"), ("POST", "/admin/shutdown"),
                         ("GET", "/v1/replication/stream"), ("GET", "/v1/replication/snapshot")}

NON_PUBLIC = [r for r in ROUTES if r.access != "public"]
MUTATING = [r for r in ROUTES if r.mutates]


def route_id(r: Route) -> str:
    return f"{r.method} {r.path}"


def fill(path: str, ids: dict[str, str]) -> str:
    def sub(m: re.Match[str]) -> str:
        name = m.group(1)
        assert name in ids, f"the walk has no value for path parameter {{{name}}} in {path}"
        return ids[name]
    return re.sub(r"\{(\w+)\}", sub, path)


async def world(srv: Server) -> dict[str, Any]:
    """alice owns a database (with a vector and an index) and a key; repl is a replicator."""
    st, body = await srv.anon.post("/v1/auth/register",
                                   {"username": "alice", "password": USER_PASSWORD})
    assert st == 201, body
    alice_id = body["user_id"]
    alice = await srv.client_for("alice", USER_PASSWORD)
    db = await alice.create_db(4)
    st, body = await alice.post(f"/v1/databases/{db}/vectors", {"id": "v1", "values": [1] * 4})
    assert st == 201, body
    st, idx = await alice.post(f"/v1/databases/{db}/indexes", {"type": "FLAT"})
    assert st == 201, idx
    st, key = await srv.admin.post("/v1/api-keys", {"user_id": alice_id, "description": "k"})
    assert st == 201, key
    st, body = await srv.admin.post("/v1/users", {"username": "repl", "password": USER_PASSWORD,
                                                  "roles": ["replicator"]})
    assert st == 201, body
    repl = await srv.client_for("repl", USER_PASSWORD)
    st, _ = await srv.admin.post(f"/v1/databases/{db}/grants",
                                 {"user_id": alice_id, "permission": "read"})  # so {uid} exists
    assert st == 201
    ids = {"db": db, "vid": "v1", "iid": idx["indexId"], "uid": alice_id,
           "key_id": key["key_id"], "ip": "10.9.9.9", "rid": "some-replica",
           "name": "snap-none"}
    return {"ids": ids, "alice": alice, "alice_id": alice_id, "repl": repl}


def body_for(r: Route, ids: dict[str, str] | None = None) -> dict[str, Any]:
    if r.path == "/v1/api-keys" and ids:
        return {"user_id": ids["uid"]}  # a key for someone else
    if r.path == "/v1/auth/forgot-password":
        return {"username": "nobody_by_that_name"}
    if r.path == "/v1/auth/reset-password":
        return {"reset_token": "not-a-token", "new_password": "Whatever_Secure1!"}
    return {}


@pytest.fixture
async def walk_server(tmp_path: Any) -> Any:
    settings = make_settings(tmp_path, loopback_admin=False, user_admin_only=True)
    async with running_server(settings) as srv:
        yield srv


async def test_every_route_is_classified() -> None:
    unknown = []
    for r in NON_PUBLIC:
        key = (r.method, r.path)
        if r.access in ("auth", "create", "list") and key not in ANY_USER | SELF_ONLY:
            unknown.append(route_id(r))
    assert not unknown, f"classify these routes in test_auth_routes.py: {unknown}"
    assert {(r.method, r.path) for r in ROUTES} >= ANY_USER | SELF_ONLY | NEVER_CALL_AUTHORIZED
    assert {r.access for r in ROUTES} <= {"public", "auth", "create", "list", "read", "write",
                                          "users", "admin", "replicate"}


async def test_every_non_public_route_needs_a_credential(walk_server: Server) -> None:
    srv = walk_server
    w = await world(srv)
    bad = Api(srv.base, srv.anon.session, {"Authorization": "Bearer not-a-credential"})
    failures = []
    for r in NON_PUBLIC:
        path = fill(r.path, w["ids"])
        for client, code in ((srv.anon, "missing_credentials"), (bad, None)):
            status, body = await client.call(r.method, path, body_for(r))
            if status != 401 or not isinstance(body, dict) or not body.get("error"):
                failures.append((route_id(r), status, body))
            elif code and body["error"] != code:
                failures.append((route_id(r), status, body))
    assert not failures, failures
    # and public routes need none
    for r in ROUTES:
        if r.access == "public" and r.method == "GET":
            status, _ = await srv.anon.get(fill(r.path, {"name": "x"}))
            assert status not in (401, 403), route_id(r)


async def test_plain_user_is_refused_what_it_lacks(walk_server: Server) -> None:
    srv = walk_server
    w = await world(srv)
    ids = w["ids"]  # {db} is alice's, {uid} is alice: the plain user "tester" has neither
    denied, allowed = [], []
    for r in NON_PUBLIC:
        key = (r.method, r.path)
        if r.access in ("admin", "replicate", "users", "read", "write") or key in SELF_ONLY:
            denied.append(r)
        else:
            assert key in ANY_USER
            allowed.append(r)
    assert len(denied) > 40
    failures = []
    for r in denied:
        status, body = await srv.user.call(r.method, fill(r.path, ids), body_for(r, ids))
        refused = 404 if (r.method, r.path) in HIDDEN else 403
        if status != refused or not isinstance(body, dict) or not body.get("error"):
            failures.append((route_id(r), status, body))
    assert not failures, failures
    # the same user is let through where it may go (GETs only: no side effects)
    for r in allowed:
        if r.method == "GET":
            status, body = await srv.user.get(fill(r.path, ids))
            assert status not in (401, 403), (route_id(r), status, body)
    # on its own account it passes the self-only routes
    status, body = await srv.user.get(f"/v1/users/{srv.user_id}")
    assert status == 200, body
    # alice, the owner, passes the database routes the plain user was refused
    for r in denied:
        if r.access in ("read", "write") and r.method == "GET":
            status, body = await w["alice"].get(fill(r.path, ids))
            no_index = r.path.endswith("/bm25-index/status") and status == 404 and \
                body.get("error") == "bm25_index_not_found"  # admitted: none built yet
            assert status == 200 or no_index, (route_id(r), status, body)


async def test_replicator_is_refused_everything_but_replication(walk_server: Server) -> None:
    srv = walk_server
    w = await world(srv)
    repl: Api = w["repl"]
    failures = []
    for r in NON_PUBLIC:
        if r.access == "replicate":
            continue
        status, body = await repl.call(r.method, fill(r.path, w["ids"]), body_for(r))
        if status != 403:
            failures.append((route_id(r), status, body))
    assert not failures, failures
    status, body = await repl.post("/v1/replication/ack", {})
    assert status not in (401, 403), body


async def test_readonly_refuses_every_mutating_route(walk_server: Server) -> None:
    srv = walk_server
    w = await world(srv)
    ids = w["ids"]
    status, body = await srv.admin.post("/v1/admin/readonly")
    assert status == 200 and body["mode"] == "readonly"
    failures = []
    for r in MUTATING:
        # the admin is authorized everywhere: only the mode can refuse
        status, body = await srv.admin.call(r.method, fill(r.path, ids), body_for(r))
        if status != 503 or body.get("error") != "read_only":
            failures.append((route_id(r), status, body))
    assert not failures, failures
    assert len(MUTATING) > 20
    db = ids["db"]
    alice: Api = w["alice"]
    for method, path, body in (
        ("GET", "/v1/databases", None), ("GET", f"/v1/databases/{db}", None),
        ("GET", f"/v1/databases/{db}/vectors/v1", None),
        ("GET", f"/v1/databases/{db}/vectors", None),
        ("POST", f"/v1/databases/{db}/vectors/batch-get", {"ids": ["v1"]}),
        ("POST", f"/v1/databases/{db}/search", {"queryVector": [1, 0, 0, 0]}),
        ("POST", f"/v1/databases/{db}/search/advanced", {"queryVector": [1, 0, 0, 0]}),
        ("GET", f"/v1/databases/{db}/indexes", None),
    ):
        status, resp = await alice.call(method, path, body)
        assert status == 200, (path, resp)
    status, resp = await srv.anon.get("/health")
    assert status == 200
    status, resp = await srv.user.get("/status")
    assert status == 200 and resp["mode"] == "readonly"
    # people still log in and out, and failed logins still lock accounts
    api = await srv.client_for("tester", USER_PASSWORD)
    status, _ = await api.post("/v1/auth/logout")
    assert status == 200
    status, _ = await api.get("/status")
    assert status == 401
    for _ in range(5):
        await srv.anon.post("/v1/auth/login", {"username": "alice", "password": "wrong-wrong"})
    status, resp = await srv.anon.post("/v1/auth/login",
                                       {"username": "alice", "password": USER_PASSWORD})
    assert status == 401 and resp["error"] == "account_locked", resp
    status, resp = await srv.admin.delete("/v1/admin/ip-blocks/10.9.9.9")
    assert status == 404  # records-class admin routes run; nothing to unblock
    # readwrite restores writes
    status, resp = await srv.admin.post("/v1/admin/readwrite")
    assert status == 200 and resp["mode"] == "readwrite"
    status, resp = await alice.post(f"/v1/databases/{db}/vectors", {"id": "v2", "values": [2] * 4})
    assert status == 201, resp
    status, resp = await srv.anon.post("/v1/auth/register",
                                       {"username": "after_rw", "password": USER_PASSWORD})
    assert status == 201, resp


async def test_loopback_admin_without_token(tmp_path: Any) -> None:
    async with running_server(make_settings(tmp_path)) as srv:  # development: loopback_admin on
        for path, mode in (("/admin/readonly", "readonly"), ("/admin/readwrite", "readwrite"),
                           ("/v1/admin/readonly", "readonly"), ("/v1/admin/readwrite",
                                                                "readwrite")):
            status, body = await srv.anon.post(path)
            assert status == 200 and body["mode"] == mode, (path, body)
        status, body = await srv.anon.get("/v1/admin/ip-blocks")
        assert status == 200
        # only admin routes, and only for a caller that really is local
        for method, path in (("GET", "/v1/databases"), ("GET", "/v1/users"), ("GET", "/status")):
            status, _ = await srv.anon.call(method, path)
            assert status == 401, path
        for header in ("X-Forwarded-For", "X-Real-IP"):
            status, body = await srv.anon.post("/admin/readonly",
                                               headers={header: "203.0.113.9"})
            assert status == 401, (header, body)
        # a credential that is sent is what counts: a plain user stays a plain user
        status, _ = await srv.user.post("/admin/readonly")
        assert status == 403
        status, body = await srv.admin.get("/status")
        assert body["mode"] == "readwrite"
