"""The attack walk (issue 15): every route of the one route table, called by every kind of
attacker, with the answer each must get.

Attackers (against the resources of ``tester``, the owner: a database with a vector, its user
id, its API key):

  none   no credential
  other  another plain user's login token (``mallory``)
  ro     the owner's own read-only API key (a leaked CI key)
  wkey   another user's write key, used on the owner's database
  xsite  no credential, from a browser page on another site (development mode's token-less
         loopback admin is what it is after)

Expectations are written out per route in ``EXPECT``, one letter per attacker in the order
above: ``D`` denied (401/403/404, never 2xx and never a 5xx), ``A`` allowed (the credential
is accepted: anything but 401/403/5xx; it acts on the attacker's own account or data), ``-``
not sent (allowed but it would change the attacker's own session, e.g. a logout). Every route
of ``ROUTES`` must have its row: a new route cannot be added without deciding who may call it.
The first four attackers are walked against a production-mode server, ``xsite`` against a
development-mode one (where token-less admin from loopback is on).
"""

from __future__ import annotations

import re
from typing import Any

from jade.http.routes import ROUTES
from tests.conftest import USER_PASSWORD, Api, Server, make_settings, running_server
from tests.test_auth_production import prod_settings

ATTACKERS = ("none", "other", "ro", "wkey", "xsite")
DB = "/v1/databases/{db}"
PUBLIC = "AAAAA"
ADMIN = "DDDDD"

EXPECT: dict[tuple[str, str], str] = {
    ("GET", "/health"): PUBLIC,
    ("GET", "/health/db"): PUBLIC,
    ("GET", "/health/cluster"): PUBLIC,
    ("GET", "/metrics"): PUBLIC,
    ("GET", "/status"): "DAAAD",
    ("GET", "/openapi.json"): PUBLIC,
    ("GET", "/docs"): PUBLIC,
    ("GET", "/docs/{name}"): PUBLIC,
    ("GET", "/ui"): PUBLIC,
    ("GET", "/ui/"): PUBLIC,
    ("GET", "/ui/{name}"): PUBLIC,
    # auth: public ones answer on their own terms (a body error, a bad password)
    ("POST", "/v1/auth/register"): PUBLIC,
    ("POST", "/v1/auth/login"): PUBLIC,
    ("POST", "/v1/auth/logout"): "D-A-D",  # a key has no session: 400, nothing ends
    ("POST", "/v1/auth/forgot-password"): PUBLIC,
    ("POST", "/v1/auth/reset-password"): PUBLIC,
    ("POST", "/v1/auth/2fa/enroll"): "D-DDD",  # other: its own account (not sent)
    ("POST", "/v1/auth/2fa/confirm"): "D-DDD",
    # users: production keeps managing others to admins; a key never changes its own account
    ("POST", "/v1/users"): "DDDDD",
    ("GET", "/v1/users"): "DDDDD",
    ("GET", "/v1/users/{uid}"): "DDADD",  # the owner's key reads the owner
    ("PUT", "/v1/users/{uid}"): "DDDDD",
    ("DELETE", "/v1/users/{uid}"): "DDDDD",
    ("PUT", "/v1/users/{uid}/password"): "DDDDD",
    ("PUT", "/v1/admin/users/{uid}/reset-password"): ADMIN,
    ("POST", "/v1/admin/users/{uid}/reset-password"): ADMIN,
    ("POST", "/v1/api-keys"): "DDDDD",  # a key for the owner
    ("GET", "/v1/api-keys"): "DAAAD",  # each lists its own
    ("DELETE", "/v1/api-keys/{key_id}"): "DDDDD",  # the owner's other key
    ("GET", "/v1/security/audit-log"): "DAAAD",  # each sees its own
    ("GET", "/v1/security/sessions"): "DAAAD",
    ("GET", "/v1/security/audit-stats"): "DAAAD",
    ("GET", "/v1/admin/ip-blocks"): ADMIN,
    ("DELETE", "/v1/admin/ip-blocks/{ip}"): ADMIN,
    ("POST", "/v1/admin/readonly"): ADMIN,
    ("POST", "/admin/readonly"): ADMIN,
    ("POST", "/v1/admin/readwrite"): ADMIN,
    ("POST", "/admin/readwrite"): ADMIN,
    ("POST", "/v1/admin/promote"): ADMIN,
    ("GET", "/v1/replication/stream"): ADMIN,
    ("POST", "/v1/replication/ack"): ADMIN,
    ("GET", "/v1/replication/snapshot"): ADMIN,
    ("GET", "/v1/replication/status"): "DAAAD",
    ("GET", "/v1/cluster"): "DAAAD",  # any credential: who is the primary
    ("DELETE", "/v1/replication/replicas/{rid}"): ADMIN,
    ("POST", "/v1/admin/shutdown"): ADMIN,
    ("POST", "/admin/shutdown"): ADMIN,
    ("POST", "/v1/admin/snapshots"): ADMIN,
    ("GET", "/v1/admin/snapshots"): ADMIN,
    ("GET", "/v1/admin/snapshots/{name}"): ADMIN,
    ("GET", "/v1/admin/snapshots/{name}/download"): ADMIN,
    ("DELETE", "/v1/admin/snapshots/{name}"): ADMIN,
    ("GET", "/v1/admin/backup/window"): ADMIN,
    # databases: the owner's read-only key reads; nobody else touches the owner's database
    ("POST", DB + "/search"): "DDADD",
    ("POST", DB + "/search/advanced"): "DDADD",
    ("POST", DB + "/search/batch"): "DDADD",
    # text: searches and status read; build, rebuild and documents write
    ("POST", DB + "/search/hybrid"): "DDADD",
    ("POST", DB + "/search/rerank"): "DDADD",
    ("GET", DB + "/bm25-index/status"): "DDADD",
    ("POST", DB + "/bm25-index/build"): "DDDDD",
    ("POST", DB + "/bm25-index/rebuild"): "DDDDD",
    ("POST", DB + "/bm25-index/documents"): "DDDDD",
    ("POST", "/v1/databases"): "DADAD",  # creates the caller's own; a read key may not
    ("GET", "/v1/databases"): "DAAAD",  # each lists what it may see
    ("GET", DB): "DDADD",
    ("PUT", DB): "DDDDD",
    ("DELETE", DB): "DDDDD",
    ("GET", DB + "/grants"): "DDADD",
    ("POST", DB + "/grants"): "DDDDD",
    ("DELETE", DB + "/grants/{uid}"): "DDDDD",
    ("POST", DB + "/vectors"): "DDDDD",
    ("POST", DB + "/vectors/batch"): "DDDDD",
    ("POST", DB + "/vectors/batch-get"): "DDADD",
    ("GET", DB + "/vectors"): "DDADD",
    ("GET", DB + "/vectors/export"): "DDADD",
    ("GET", DB + "/vectors/{vid}"): "DDADD",
    ("PUT", DB + "/vectors/{vid}"): "DDDDD",
    ("DELETE", DB + "/vectors/{vid}"): "DDDDD",
    ("POST", DB + "/vectors/import"): "DDDDD",
    ("POST", DB + "/indexes"): "DDDDD",
    ("GET", DB + "/indexes"): "DDADD",
    ("GET", DB + "/indexes/{iid}"): "DDADD",
    ("PUT", DB + "/indexes/{iid}"): "DDDDD",
    ("DELETE", DB + "/indexes/{iid}"): "DDDDD",
    ("POST", DB + "/indexes/{iid}/tune"): "DDDDD",
    # text models: any credential embeds and reranks; a database's config is its own
    ("POST", "/v1/embeddings/generate"): "DAAAD",
    ("POST", "/v1/rerank"): "DAAAD",
    ("GET", DB + "/reranking/config"): "DDADD",
    ("PUT", DB + "/reranking/config"): "DDDDD",
    # query analytics: reads of the database (feedback too: the owner's read key may rate)
    ("GET", DB + "/analytics/stats"): "DDADD",
    ("GET", DB + "/analytics/queries"): "DDADD",
    ("GET", DB + "/analytics/patterns"): "DDADD",
    ("GET", DB + "/analytics/insights"): "DDADD",
    ("GET", DB + "/analytics/trending"): "DDADD",
    ("GET", DB + "/analytics/export"): "DDADD",
    ("POST", DB + "/analytics/feedback"): "DDADD",
}

XSITE = {"Origin": "http://evil.example", "Sec-Fetch-Site": "cross-site"}


def test_every_route_has_its_row() -> None:
    routes = {(r.method, r.path) for r in ROUTES}
    assert sorted(routes - EXPECT.keys()) == [], "add the new routes to EXPECT"
    assert sorted(EXPECT.keys() - routes) == [], "EXPECT names routes that are gone"
    assert all(len(v) == len(ATTACKERS) and set(v) <= set("AD-") for v in EXPECT.values())


def fill(path: str, ids: dict[str, str]) -> str:
    return re.sub(r"\{(\w+)\}", lambda m: ids[m.group(1)], path)


def body_for(method: str, path: str, ids: dict[str, str]) -> Any:
    if method not in ("POST", "PUT"):
        return None
    if path.endswith("/search") or path.endswith("/advanced"):
        return {"queryVector": [1, 0, 0, 0], "topK": 1}
    if path.endswith("/search/batch"):
        return {"queries": [[1, 0, 0, 0]], "topK": 1}
    if path.endswith("/batch-get"):
        return {"ids": ["v1"]}
    if path == "/v1/databases":
        return {"name": "walk", "vectorDimension": 4}
    if path == "/v1/api-keys":
        return {"user_id": ids["uid"], "description": "walk"}
    if path.endswith("/grants"):
        return {"user_id": ids["other_uid"], "permission": "write"}
    if path.endswith("/vectors"):
        return {"id": "planted", "values": [0, 0, 0, 1]}
    return {}


async def setup(srv: Server) -> tuple[dict[str, str], dict[str, Api]]:
    owner = srv.user
    db = await owner.create_db(4)
    st, _ = await owner.post(f"/v1/databases/{db}/vectors", {"id": "v1", "values": [1, 0, 0, 0]})
    assert st == 201
    st, idx = await owner.get(f"/v1/databases/{db}/indexes")
    assert st == 200
    iid = idx[0]["indexId"]
    st, ro = await owner.post("/v1/api-keys", {"user_id": srv.user_id, "permissions": ["read"],
                                               "description": "ro"})
    assert st == 201, ro
    st, full = await owner.post("/v1/api-keys", {"user_id": srv.user_id, "description": "ci"})
    assert st == 201, full
    st, reg = await srv.anon.post("/v1/auth/register", {"username": "mallory",
                                                         "password": USER_PASSWORD})
    assert st == 201, reg
    other = await srv.client_for("mallory", USER_PASSWORD)
    st, wk = await other.post("/v1/api-keys", {"user_id": reg["user_id"],
                                               "permissions": ["write"], "description": "w"})
    assert st == 201, wk
    ids = {"db": db, "vid": "v1", "iid": iid, "uid": srv.user_id, "key_id": full["key_id"],
           "other_uid": reg["user_id"], "name": "snap-none", "ip": "203.0.113.9", "rid": "r1"}
    s, base = srv.anon.session, srv.base
    apis = {
        "none": srv.anon,
        "other": other,
        "ro": Api(base, s, {"Authorization": f"Bearer {ro['api_key']}"}),
        "wkey": Api(base, s, {"Authorization": f"Bearer {wk['api_key']}"}),
        "xsite": Api(base, s, dict(XSITE)),
    }
    return ids, apis


async def walk(srv: Server, attackers: tuple[str, ...]) -> list[str]:
    ids, apis = await setup(srv)
    wrong = []
    for route in ROUTES:
        want = EXPECT[(route.method, route.path)]
        for i, who in enumerate(ATTACKERS):
            if who not in attackers or want[i] == "-":
                continue
            path = fill(route.path, {**ids, "name": "app.js"} if route.path.startswith("/ui")
                        else ids)
            status, body = await apis[who].call(route.method, path,
                                                body_for(route.method, route.path, ids))
            if status >= 500:
                wrong.append(f"{who} {route.method} {path}: {status} {body}")
            elif want[i] == "D" and status not in (401, 403, 404):
                wrong.append(f"{who} {route.method} {path}: {status}, want denied: {body}")
            elif want[i] == "A" and status in (401, 403):
                wrong.append(f"{who} {route.method} {path}: {status}, want allowed: {body}")
    # nothing the walk was denied changed the owner's data
    st, got = await srv.user.get(f"/v1/databases/{ids['db']}/vectors/v1")
    if st != 200:
        wrong.append(f"the owner's vector is gone: {st} {got}")
    st, got = await srv.user.get(f"/v1/databases/{ids['db']}/vectors/planted")
    if st != 404:
        wrong.append(f"an attacker planted a vector: {st} {got}")
    return wrong


async def test_the_walk_in_production(tmp_path: Any) -> None:
    async with running_server(prod_settings(tmp_path)) as srv:
        wrong = await walk(srv, ("none", "other", "ro", "wkey"))
    assert wrong == [], "\n".join(wrong)


async def test_the_walk_across_sites_in_development(tmp_path: Any) -> None:
    # loopback admin on: a person at the terminal (``none`` from 127.0.0.1) may administer,
    # a page on another site may not
    async with running_server(make_settings(tmp_path)) as srv:
        wrong = await walk(srv, ("xsite",))
        st, status = await srv.admin.get("/status")
        assert status["mode"] == "readwrite", status
    assert wrong == [], "\n".join(wrong)
