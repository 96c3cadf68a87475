"""Readonly mode by the route table (API.md §12): with the server readonly, every route that
changes state answers 503 ``read_only`` even to an admin, every read still answers, search and
batch-get still work, login works, and readwrite brings writes back. Walking ``ROUTES`` means a
new route cannot escape the check."""

from __future__ import annotations

from typing import Any

from jade.http.routes import ROUTES, Route
from tests.conftest import USER_PASSWORD, Server, login

# what a real caller would send, so a public route cannot pass by failing validation first
BODIES: dict[str, Any] = {
    "/v1/auth/register": {"username": "newcomer", "password": "Newcomer_Pass1!"},
    "/v1/auth/forgot-password": {"email": "t@example.com"},
    "/v1/users": {"username": "created", "password": "Created_Pass1!"},
    "/v1/databases": {"name": "ro", "vectorDimension": 4},
    "/v1/databases/{db}": {"description": "changed"},
    "/v1/databases/{db}/vectors": {"id": "w", "values": [1, 2, 3, 4]},
    "/v1/databases/{db}/vectors/batch": {"vectors": [{"id": "w", "values": [1, 2, 3, 4]}]},
    "/v1/databases/{db}/vectors/{vid}": {"values": [4, 3, 2, 1]},
    "/v1/databases/{db}/indexes": {"type": "FLAT"},
    "/v1/databases/{db}/indexes/{iid}": {"parameters": {"efSearch": 10}},
    "/v1/databases/{db}/grants": {"user_id": "{uid}", "permission": "read"},
    "/v1/users/{uid}": {"email": "changed@example.com"},
    "/v1/users/{uid}/password": {"old_password": USER_PASSWORD,
                                 "new_password": "Changed_Pass1!"},
    "/v1/admin/users/{uid}/reset-password": {"new_password": "Changed_Pass1!"},
    "/v1/api-keys": {"user_id": "{uid}", "description": "ro"},
    "/v1/auth/2fa/confirm": {"code": "123456"},
}
# long-lived or expensive GETs get arguments that make them answer at once
QUERIES = {"/v1/replication/stream": "?after=1000000000"}


def fill(path: str, ids: dict[str, str]) -> str:
    for k, v in ids.items():
        path = path.replace("{" + k + "}", v)
    assert "{" not in path, path
    return path


def body_for(route: Route, ids: dict[str, str]) -> Any:
    body = BODIES.get(route.path)
    if body is None:
        return {} if route.method in ("POST", "PUT") else None
    return {k: fill(v, ids) if isinstance(v, str) and v.startswith("{") else v
            for k, v in body.items()}


async def status_only(server: Server, method: str, path: str, body: Any) -> tuple[int, Any]:
    """Status (and JSON body when there is one) without reading a stream to its end."""
    api = server.admin
    headers = {**api.headers, "Content-Type": "application/json"}
    async with api.session.request(method, api.base + path, json=body,
                                   headers=headers) as r:
        if r.content_type == "application/json":
            return r.status, await r.json()
        return r.status, None


async def test_readonly_refuses_every_mutating_route(server: Server) -> None:
    admin, user = server.admin, server.user
    db = await admin.create_db(4)
    st, _ = await admin.post(f"/v1/databases/{db}/vectors/batch", {"vectors": [
        {"id": f"v{i}", "values": [1.0, float(i), 0.0, 0.0], "metadata": {"k": "a"}}
        for i in range(3)]})
    assert st == 201
    st, body = await admin.post(f"/v1/databases/{db}/indexes", {"type": "FLAT"})
    assert st in (200, 201), body
    iid = body["indexId"]
    st, body = await admin.post("/v1/api-keys", {"user_id": server.user_id, "description": "k"})
    assert st == 201, body
    key_id, api_key = body["key_id"], body["api_key"]
    ids = {"db": db, "vid": "v1", "uid": server.user_id, "iid": iid, "key_id": key_id,
           "ip": "10.9.8.7", "name": "no-such-snapshot", "rid": "no-such-replica"}
    st, status_before = await admin.get("/status")
    lsn_before = status_before["log"]["last_lsn"]

    st, body = await admin.post("/v1/admin/readonly")
    assert st == 200 and body["mode"] == "readonly", body

    mutating = [r for r in ROUTES if r.mutates]
    assert len(mutating) >= 20  # the table is what is walked: it must not be empty
    wrong = []
    for r in mutating:
        path = fill(r.path, ids)
        st, body = await status_only(server, r.method, path, body_for(r, ids))
        if st != 503 or not isinstance(body, dict) or body.get("error") != "read_only":
            wrong.append((r.method, r.path, st, body))
    assert not wrong, "served in readonly mode:\n" + "\n".join(map(str, wrong))

    reads = [r for r in ROUTES if r.method == "GET" and not r.mutates]
    wrong = []
    for r in reads:
        path = fill(r.path, ids) + QUERIES.get(r.path, "")
        st, body = await status_only(server, r.method, path, None)
        if st == 503 or st >= 500:
            wrong.append((r.method, r.path, st, body))
    assert not wrong, "reads refused in readonly mode:\n" + "\n".join(map(str, wrong))

    # search-like POSTs, login and logout stay allowed; so do API keys
    for path, payload in (
        (f"/v1/databases/{db}/search", {"queryVector": [1, 1, 0, 0], "topK": 2}),
        (f"/v1/databases/{db}/search/advanced",
         {"queryVector": [1, 1, 0, 0], "topK": 2, "filters": {"k": "a"}}),
    ):
        st, body = await admin.post(path, payload)
        assert st == 200 and body["count"] == 2, (path, body)
    st, body = await admin.post(f"/v1/databases/{db}/vectors/batch-get", {"ids": ["v0", "v2"]})
    assert st == 200 and body["count"] == 2, body
    token = await login(server.anon, "tester", USER_PASSWORD)
    st, body = await server.anon.get("/status", headers={"Authorization": f"Bearer {token}"})
    assert st == 200 and body["mode"] == "readonly", body
    st, body = await server.anon.post("/v1/auth/logout",
                                      headers={"Authorization": f"Bearer {token}"})
    assert st == 200, body
    st, body = await server.anon.get("/status", headers={"Authorization": f"Bearer {api_key}"})
    assert st == 200, body
    st, body = await server.anon.get("/health")
    assert st == 200 and body["status"] == "healthy"

    # nothing the walk sent changed any data
    st, body = await admin.get(f"/v1/databases/{db}/vectors/v1")
    assert st == 200 and body["values"] == [1.0, 1.0, 0.0, 0.0]
    st, body = await admin.get(f"/v1/databases/{db}")
    assert st == 200 and body["description"] != "changed"
    st, body = await admin.get(f"/v1/users/{server.user_id}")
    assert st == 200 and body["email"] == "t@example.com" and body["is_active"]
    st, body = await admin.get("/v1/databases")
    assert [d["databaseId"] for d in body["databases"]] == [db]
    await login(server.anon, "tester", USER_PASSWORD)  # the password was not changed

    st, body = await admin.post("/v1/admin/readwrite")
    assert st == 200 and body["mode"] == "readwrite", body
    st, body = await user.post("/v1/databases", {"name": "after", "vectorDimension": 2})
    assert st == 201, body
    st, body = await admin.post(f"/v1/databases/{db}/vectors",
                                {"id": "v9", "values": [1, 2, 3, 4]})
    assert st == 201, body
    st, body = await admin.get("/status")
    assert body["mode"] == "readwrite" and body["log"]["last_lsn"] > lsn_before


async def test_readonly_route_itself_needs_admin(server: Server) -> None:
    for path in ("/v1/admin/readonly", "/v1/admin/readwrite"):
        st, body = await server.user.post(path)
        assert st == 403, (path, body)
    st, body = await server.user.get("/status")
    assert body["mode"] == "readwrite"

