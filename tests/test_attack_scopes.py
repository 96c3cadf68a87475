"""Issue 15, class 2: API-key scopes bind outside the data routes too. A leaked key, even a
read-only one, must not hand its owner's database to another account (grants), lock the owner
out (password, 2FA) or take the account (name, email, keys). The rule lives in the route table
(``Route.keys``: any | admin | none) and is applied in one place (admission); these tests walk
the table, so a new route cannot escape it. Also class 8 (e): a user manages their own API
keys in production (API.md §4), someone else's needs an admin."""

from __future__ import annotations

import json
import os
import re
from typing import Any

from jade.http.routes import ROUTES, Route
from tests.conftest import ROOT, USER_PASSWORD, Api, Server, running_server
from tests.test_auth_production import prod_settings

NEW_PASSWORD = "Changed_Secure456#"
DB = "/v1/databases/{db}"
# POSTs that only read a database (search-like): a read-only key may call them
READ_POSTS = {DB + "/search", DB + "/search/advanced", DB + "/search/batch",
              DB + "/vectors/batch-get"}
READ_POSTS |= {"/v1/embeddings/generate", "/v1/rerank"}  # compute, change nothing
READ_POSTS |= {DB + "/analytics/feedback"}  # a reader rates results: not in the log
READ_POSTS |= {DB + "/search/hybrid", DB + "/search/rerank"}  # searches


def as_key(srv: Server, raw_key: str) -> Api:
    return Api(srv.base, srv.anon.session, {"Authorization": f"Bearer {raw_key}"})


async def new_key(api: Api, user_id: str, **extra: Any) -> dict[str, Any]:
    status, body = await api.post("/v1/api-keys", {"user_id": user_id, **extra})
    assert status == 201, body
    return body  # type: ignore[no-any-return]


async def register(srv: Server, username: str) -> str:
    status, body = await srv.anon.post("/v1/auth/register",
                                       {"username": username, "password": USER_PASSWORD})
    assert status == 201, body
    return str(body["user_id"])


def fill(path: str, ids: dict[str, str]) -> str:
    return re.sub(r"\{(\w+)\}", lambda m: ids[m.group(1)], path)


# -- the named instances --------------------------------------------------------------------------
async def test_a_read_only_key_cannot_give_the_database_or_the_account_away(
        server: Server) -> None:
    owner = server.user
    db = await owner.create_db(4)
    mallory_id = await register(server, "mallory")
    mallory = await server.client_for("mallory", USER_PASSWORD)
    ro_key = await new_key(owner, server.user_id, permissions=["read"], description="ro")
    other_key = await new_key(owner, server.user_id, description="ci")
    ro = as_key(server, ro_key["api_key"])
    status, _ = await ro.get(f"/v1/databases/{db}")
    assert status == 200  # what the key is for

    # grants: another account could then write to the owner's database
    status, body = await ro.post(f"/v1/databases/{db}/grants",
                                 {"user_id": mallory_id, "permission": "write"})
    assert status == 403 and body["error"] == "permission_denied", body
    status, body = await mallory.post(f"/v1/databases/{db}/vectors",
                                      {"id": "m", "values": [1] * 4})
    assert status == 403, body
    status, body = await owner.post(f"/v1/databases/{db}/grants",
                                    {"user_id": mallory_id, "permission": "read"})
    assert status == 201, body
    status, body = await ro.delete(f"/v1/databases/{db}/grants/{mallory_id}")
    assert status == 403 and body["error"] == "permission_denied", body

    # the account's security: 2FA (locks the owner out of password login), password
    for path, req in (("/v1/auth/2fa/enroll", None), ("/v1/auth/2fa/confirm", {"code": "123456"}),
                      (f"/v1/users/{server.user_id}/password",
                       {"old_password": USER_PASSWORD, "new_password": NEW_PASSWORD})):
        method = "PUT" if path.endswith("/password") else "POST"
        status, body = await ro.call(method, path, req)
        assert status == 403 and body["error"] == "token_required", (path, body)
    # its name, email, roles, activation
    for change in ({"email": "mallory@example.com"}, {"username": "taken_over"},
                   {"roles": ["developer"]}, {"is_active": False}):
        status, body = await ro.put(f"/v1/users/{server.user_id}", change)
        assert status == 403 and body["error"] == "token_required", (change, body)
    status, body = await ro.delete(f"/v1/users/{server.user_id}")
    assert status == 403 and body["error"] == "token_required", body
    # its keys: no new one, and the owner's other keys stay
    status, body = await ro.post("/v1/api-keys",
                                 {"user_id": server.user_id, "permissions": ["read"]})
    assert status == 403 and body["error"] == "admin_key_required", body
    status, body = await ro.delete(f"/v1/api-keys/{other_key['key_id']}")
    assert status == 403 and body["error"] == "token_required", body

    # nothing changed
    status, me = await owner.get(f"/v1/users/{server.user_id}")
    assert (me["username"], me["email"], me["roles"], me["is_active"], me["totp_enabled"]) == (
        "tester", "t@example.com", ["user"], True, False), me
    status, body = await owner.get(f"/v1/databases/{db}/grants")
    assert body["grants"] == [{"user_id": mallory_id, "permission": "read"}], body
    status, body = await as_key(server, other_key["api_key"]).get("/status")
    assert status == 200, body
    status, body = await server.anon.post("/v1/auth/login",
                                          {"username": "tester", "password": USER_PASSWORD})
    assert status == 200, body
    # a key may still revoke itself
    status, body = await ro.delete(f"/v1/api-keys/{ro_key['key_id']}")
    assert status == 200, body
    status, _ = await ro.get("/status")
    assert status == 401
    # and the owner's login token does all of it
    status, body = await owner.put(f"/v1/users/{server.user_id}", {"email": "new@example.com"})
    assert status == 200 and body["email"] == "new@example.com", body
    status, body = await owner.delete(f"/v1/databases/{db}/grants/{mallory_id}")
    assert status == 200, body


async def test_a_plain_users_key_manages_no_one(server: Server) -> None:
    """Development lets any user's login token manage users (the reference client's tests);
    their API keys, even unrestricted, may not."""
    victim_id = await register(server, "victim")
    full = as_key(server, (await new_key(server.user, server.user_id))["api_key"])
    for method, path, req in (
        ("POST", "/v1/users", {"username": "made_by_key", "password": USER_PASSWORD}),
        ("PUT", f"/v1/users/{victim_id}", {"is_active": False}),
        ("PUT", f"/v1/users/{victim_id}", {"email": "x@example.com"}),
        ("DELETE", f"/v1/users/{victim_id}", None),
        ("POST", "/v1/api-keys", {"user_id": server.user_id}),
    ):
        status, body = await full.call(method, path, req)
        assert status == 403 and body["error"] == "admin_key_required", (method, path, body)
    status, body = await server.user.get(f"/v1/users/{victim_id}")
    assert body["is_active"] is True and body["email"] == "", body
    # its data powers are intact
    status, body = await full.post("/v1/databases", {"name": "k", "vectorDimension": 2})
    assert status == 201, body
    db = body["databaseId"]
    status, body = await full.post(f"/v1/databases/{db}/vectors", {"id": "a", "values": [1, 2]})
    assert status == 201, body
    # and the token keeps development's convenience
    status, body = await server.user.post("/v1/users", {"username": "made_by_token",
                                                        "password": USER_PASSWORD})
    assert status == 201, body


async def test_an_admin_key_manages_others_but_not_its_own_account(server: Server) -> None:
    admin_key = await new_key(server.admin, server.admin_id, permissions=["admin"])
    ak = as_key(server, admin_key["api_key"])
    db = await server.user.create_db(4)
    status, body = await ak.post("/v1/users", {"username": "by_admin_key",
                                               "password": USER_PASSWORD})
    assert status == 201, body
    made = body["user_id"]
    status, body = await ak.put(f"/v1/users/{server.user_id}", {"email": "fixed@example.com"})
    assert status == 200, body
    status, body = await ak.post("/v1/api-keys",
                                 {"user_id": server.user_id, "permissions": ["read"]})
    assert status == 201, body
    status, body = await ak.post(f"/v1/databases/{db}/grants",  # "admin" implies "write"
                                 {"user_id": made, "permission": "read"})
    assert status == 201, body
    status, body = await ak.post(f"/v1/admin/users/{made}/reset-password",
                                 {"new_password": NEW_PASSWORD})
    assert status == 200, body
    # its own account: a login token only
    for method, path, req in (
        ("PUT", f"/v1/users/{server.admin_id}", {"email": "admin@evil.example"}),
        ("PUT", f"/v1/users/{server.admin_id}", {"roles": ["admin", "x"]}),
        ("DELETE", f"/v1/users/{server.admin_id}", None),
        ("PUT", f"/v1/users/{server.admin_id}/password",
         {"old_password": "Admin_Secure123@", "new_password": NEW_PASSWORD}),
        ("PUT", f"/v1/admin/users/{server.admin_id}/reset-password",
         {"new_password": NEW_PASSWORD}),
        ("POST", f"/v1/admin/users/{server.admin_id}/reset-password",
         {"new_password": NEW_PASSWORD}),
        ("POST", "/v1/auth/2fa/enroll", None),
    ):
        status, body = await ak.call(method, path, req)
        assert status == 403 and body["error"] == "token_required", (method, path, body)
    # an admin's key scoped to reading is no admin credential
    ro = as_key(server, (await new_key(server.admin, server.admin_id,
                                       permissions=["read"]))["api_key"])
    status, body = await ro.post("/v1/users", {"username": "nope", "password": USER_PASSWORD})
    assert status == 403 and body["error"] == "admin_key_required", body
    status, body = await ro.post(f"/v1/databases/{db}/grants",
                                 {"user_id": made, "permission": "write"})
    assert status == 403, body


# -- the table walks ------------------------------------------------------------------------------
async def _world(srv: Server) -> dict[str, Any]:
    """tester owns a database (a vector, an index) and two API keys: a read-only one (the
    caller of the walk) and another; mallory is another account."""
    owner = srv.user
    db = await owner.create_db(4)
    status, body = await owner.post(f"/v1/databases/{db}/vectors", {"id": "v1", "values": [1] * 4})
    assert status == 201, body
    status, idx = await owner.post(f"/v1/databases/{db}/indexes", {"type": "FLAT"})
    assert status == 201, idx
    mallory_id = await register(srv, "mallory")
    ro = await new_key(owner, srv.user_id, permissions=["read"])
    other = await new_key(owner, srv.user_id)
    ids = {"db": db, "vid": "v1", "iid": idx["indexId"], "uid": srv.user_id,
           "key_id": other["key_id"], "ip": "10.9.9.9", "rid": "some-replica",
           "name": "snap-none"}
    return {"ids": ids, "ro": as_key(srv, ro["api_key"]), "mallory_id": mallory_id,
            "other": as_key(srv, other["api_key"])}


def _body(r: Route, mallory_id: str, own_id: str) -> dict[str, Any]:
    """A body that would succeed if the route let the caller through."""
    if r.path.endswith("/grants"):
        return {"user_id": mallory_id, "permission": "write"}
    if r.path.endswith("/password"):
        return {"old_password": USER_PASSWORD, "new_password": NEW_PASSWORD}
    if r.path.endswith("/reset-password"):
        return {"new_password": NEW_PASSWORD}
    if r.path == "/v1/users/{uid}":
        return {"email": "mallory@example.com"}
    if r.path == "/v1/users":
        return {"username": "made_by_key", "password": USER_PASSWORD}
    if r.path == "/v1/api-keys":
        return {"user_id": own_id, "permissions": ["read"]}
    if r.path == "/v1/auth/2fa/confirm":
        return {"code": "123456"}
    if r.path == "/v1/databases":
        return {"name": "x", "vectorDimension": 4}
    if r.path.endswith("/vectors"):
        return {"id": "v9", "values": [1] * 4}
    return {}


async def test_a_read_only_key_changes_nothing_anywhere(server: Server) -> None:
    """Every route that can change something (every method but GET, but the search-like POSTs),
    called with the owner's read-only key on the owner's own database, account and keys, is
    refused with 403; logout answers that a key is not a token."""
    srv = server
    w = await _world(srv)
    ro: Api = w["ro"]
    routes = [r for r in ROUTES if r.access != "public" and r.method != "GET"
              and r.path not in READ_POSTS]
    routes.sort(key=lambda r: r.path == "/v1/users/{uid}" and r.method == "DELETE")  # last
    assert len(routes) > 30
    failures = []
    for r in routes:
        status, body = await ro.call(r.method, fill(r.path, w["ids"]),
                                     _body(r, w["mallory_id"], srv.user_id))
        expected = (400, "not_a_token") if r.path == "/v1/auth/logout" else (403, None)
        if status != expected[0] or not isinstance(body, dict) or (
                expected[1] and body.get("error") != expected[1]):
            failures.append((r.method, r.path, status, body))
    assert not failures, failures
    # and indeed nothing changed
    status, me = await srv.user.get(f"/v1/users/{srv.user_id}")
    assert (me["email"], me["roles"], me["is_active"], me["totp_enabled"]) == (
        "t@example.com", ["user"], True, False), me
    status, body = await srv.user.get(f"/v1/databases/{w['ids']['db']}/grants")
    assert body["grants"] == [], body
    status, _ = await w["other"].get("/status")
    assert status == 200


async def test_no_key_touches_its_own_accounts_security(server: Server) -> None:
    """Every route whose key rule is "none", and every "admin" route acting on a ``{uid}``, is
    refused to the admin's own unrestricted key on the admin's own account."""
    key = as_key(server, (await new_key(server.admin, server.admin_id))["api_key"])
    routes = [r for r in ROUTES if r.keys == "none" or (r.keys == "admin" and "{uid}" in r.path)]
    assert len(routes) == 7, routes
    failures = []
    for r in routes:
        status, body = await key.call(r.method, fill(r.path, {"uid": server.admin_id}),
                                      _body(r, server.user_id, server.admin_id))
        if status != 403 or body.get("error") != "token_required":
            failures.append((r.method, r.path, status, body))
    assert not failures, failures
    status, me = await server.admin.get(f"/v1/users/{server.admin_id}")
    assert me["roles"] == ["admin"] and me["is_active"] and not me["totp_enabled"], me


# Routes that change something, are neither database nor administration routes, and still let
# any key through: each one reviewed (see the report of issue 15, class 2).
REVIEWED_ANY = {
    ("POST", "/v1/auth/register"),  # public: a key's caller is honoured only as an admin key
    ("POST", "/v1/auth/login"),
    ("POST", "/v1/auth/logout"),  # a key is not a token: 400 not_a_token
    ("POST", "/v1/auth/forgot-password"),
    ("POST", "/v1/auth/reset-password"),
    ("DELETE", "/v1/api-keys/{key_id}"),  # the key itself only (or an admin key)
    ("POST", "/v1/databases"),  # the "create" scope
    ("POST", "/v1/replication/ack"),  # the "replicate" scope
}
REVIEWED_ANY |= {("POST", "/v1/embeddings/generate"), ("POST", "/v1/rerank")}  # compute only


def test_every_route_has_a_reviewed_key_rule() -> None:
    from jade.http.routes import KEY_RULES

    assert {r.keys for r in ROUTES} <= set(KEY_RULES)
    assert all(r.keys == "any" for r in ROUTES if r.access == "public")
    unreviewed = {
        (r.method, r.path) for r in ROUTES
        if r.method != "GET" and r.keys == "any" and r.access not in ("admin", "read", "write")
    } - REVIEWED_ANY
    assert not unreviewed, f"decide these routes' key rule (routes.py KEY_RULES): {unreviewed}"
    # what the rule is for: the account's security is never "any"
    account = [r for r in ROUTES if r.method != "GET" and (
        r.path.startswith(("/v1/users", "/v1/admin/users", "/v1/auth/2fa"))
        or r.path == "/v1/api-keys")]
    assert len(account) == 9 and all(r.keys != "any" for r in account), account
    # grants need write authority on the database
    grants = [r for r in ROUTES if "/grants" in r.path and r.method != "GET"]
    assert len(grants) == 2 and all(r.access == "write" for r in grants)


def test_the_openapi_document_says_the_key_rule() -> None:
    with open(os.path.join(ROOT, "openapi.json")) as fh:
        spec = json.load(fh)
    for r in ROUTES:
        assert spec["paths"][r.path][r.method.lower()]["x-keys"] == r.keys, (r.method, r.path)


# -- class 8 (e): one's own API keys in production ------------------------------------------------
async def test_a_user_manages_their_own_keys_in_production(tmp_path: Any) -> None:
    settings = prod_settings(tmp_path, login_rate_per_minute=100, register_rate_per_hour=100,
                             require_admin_totp=False)
    async with running_server(settings) as srv:
        user = srv.user
        status, body = await user.post("/v1/api-keys", {"user_id": srv.user_id,
                                                        "description": "mine"})
        assert status == 201, body
        mine = body
        status, body = await as_key(srv, mine["api_key"]).get("/status")
        assert status == 200, body
        status, body = await user.get("/v1/api-keys")
        assert status == 200 and [k["key_id"] for k in body["api_keys"]] == [mine["key_id"]]
        # someone else's: refused, and not even shown
        status, body = await user.post("/v1/api-keys", {"user_id": srv.admin_id})
        assert status == 403, body
        admins = await new_key(srv.admin, srv.admin_id)
        status, body = await user.get(f"/v1/api-keys?user_id={srv.admin_id}")
        assert status == 200 and body["api_keys"] == [], body
        status, body = await user.delete(f"/v1/api-keys/{admins['key_id']}")
        assert status == 404, body
        status, _ = await as_key(srv, admins["api_key"]).get("/status")
        assert status == 200
        # user management stays the admin's
        status, body = await user.get("/v1/users")
        assert status == 403, body
        # the admin reaches every key
        status, body = await srv.admin.get("/v1/api-keys")
        assert {mine["key_id"], admins["key_id"]} <= {k["key_id"] for k in body["api_keys"]}
        status, body = await user.delete(f"/v1/api-keys/{mine['key_id']}")
        assert status == 200, body
        status, _ = await as_key(srv, mine["api_key"]).get("/status")
        assert status == 401
