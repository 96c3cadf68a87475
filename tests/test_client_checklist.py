"""API.md §14 (the reference client's test suite) as HTTP tests, one test per checklist row,
driven the way the client drives the server: a freshly self-registered plain ``user``."""

from __future__ import annotations

from typing import Any

from tests.conftest import USER_PASSWORD, Api, Server


async def test_health_without_credentials(server: Server) -> None:
    status, body = await server.anon.get("/health")
    assert status == 200
    assert isinstance(body, dict) and "healthy" in str(body)


async def test_register_then_409_on_rerun_and_login_twice(server: Server) -> None:
    creds = {"username": "client_run", "password": USER_PASSWORD, "email": "c@example.com"}
    status, body = await server.anon.post("/v1/auth/register", creds)
    assert status == 201, body
    assert body["user_id"] and body["username"] == "client_run" and body["roles"] == ["user"]
    status, again = await server.anon.post("/v1/auth/register", creds)
    assert status == 409, again
    assert again["error"] and again["message"]
    tokens = []
    for _ in range(2):  # the suite logs in twice per session
        status, login = await server.anon.post(
            "/v1/auth/login", {"username": "client_run", "password": USER_PASSWORD})
        assert status == 200, login
        assert login["user_id"] == body["user_id"] and login["token_type"] == "Bearer"
        tokens.append(login["token"])
    assert tokens[0] != tokens[1]
    for token in tokens:  # both sessions stay valid
        status, _ = await server.anon.get(
            "/status", headers={"Authorization": f"Bearer {token}"})
        assert status == 200


async def test_plain_user_database_vector_search_index_calls(server: Server) -> None:
    api = server.user
    status, body = await api.post(
        "/v1/databases", {"name": "cl", "vectorDimension": 8, "indexType": "hnsw"})
    assert status == 201, body
    db = body["databaseId"]
    assert " " not in db
    status, listing = await api.get("/v1/databases")
    assert status == 200 and db in [d["databaseId"] for d in listing["databases"]]
    status, got = await api.get(f"/v1/databases/{db}")
    assert status == 200 and got["databaseId"] == db
    status, _ = await api.put(f"/v1/databases/{db}", {"description": "changed"})
    assert status == 200
    status, got = await api.get(f"/v1/databases/{db}")
    assert got["description"] == "changed"

    for i in range(4):
        status, body = await api.post(f"/v1/databases/{db}/vectors", {
            "id": f"v{i}", "values": [float(i + 1)] + [0.1] * 7,
            "metadata": {"category": "even" if i % 2 == 0 else "odd"}})
        assert status == 201, body
    status, _ = await api.post(f"/v1/databases/{db}/vectors", {"id": "bad", "values": [1.0] * 5})
    assert 400 <= status < 500
    status, v = await api.get(f"/v1/databases/{db}/vectors/v1")
    assert status == 200 and v["id"] == "v1" and len(v["values"]) == 8
    status, _ = await api.put(f"/v1/databases/{db}/vectors/v1", {"values": [0.9] + [0.2] * 7})
    assert status == 200
    status, v = await api.get(f"/v1/databases/{db}/vectors/v1")
    assert abs(v["values"][0] - 0.9) < 0.01
    status, page = await api.get(f"/v1/databases/{db}/vectors?limit=50")
    assert status == 200 and {x["id"] for x in page["vectors"]} == {"v0", "v1", "v2", "v3"}
    status, bg = await api.post(f"/v1/databases/{db}/vectors/batch-get", {"ids": ["v0", "v2"]})
    assert status == 200 and len(bg["vectors"]) == 2
    status, res = await api.post(f"/v1/databases/{db}/search",
                                 {"queryVector": [1.0] * 8, "topK": 2})
    assert status == 200 and 0 < len(res["results"]) <= 2
    status, res = await api.post(f"/v1/databases/{db}/search/advanced", {
        "queryVector": [1.0] * 8, "topK": 5, "filters": {"category": "even"}})
    assert status == 200 and len(res["results"]) == 2
    status, idx = await api.post(f"/v1/databases/{db}/indexes", {"type": "FLAT"})
    assert status == 201, idx
    status, idxs = await api.get(f"/v1/databases/{db}/indexes")
    assert status == 200 and idx["indexId"] in [i["indexId"] for i in idxs]
    status, _ = await api.delete(f"/v1/databases/{db}/vectors/v3")
    assert status == 200
    status, _ = await api.get(f"/v1/databases/{db}/vectors/v3")
    assert status == 404
    status, _ = await api.delete(f"/v1/databases/{db}")
    assert status == 200
    status, _ = await api.get(f"/v1/databases/{db}")
    assert not 200 <= status < 300
    status, _ = await api.get("/v1/databases/nonexistent_db_id")
    assert not 200 <= status < 300


async def test_plain_user_manages_users(server: Server) -> None:
    api = server.user
    status, body = await api.post("/v1/users", {
        "username": "cli_made", "password": USER_PASSWORD, "roles": ["user"],
        "email": "m@example.com"})
    assert status == 201, body
    uid = body.get("user_id") or body.get("id")
    assert uid
    status, listing = await api.get("/v1/users")
    assert status == 200 and isinstance(listing["users"], list)
    assert "cli_made" in [u["username"] for u in listing["users"]]
    status, got = await api.get(f"/v1/users/{uid}")
    assert status == 200 and got["username"] == "cli_made"
    status, body = await api.put(f"/v1/users/{uid}", {"is_active": False})
    assert status == 200 and body["is_active"] is False
    status, body = await api.put(f"/v1/users/{uid}", {"is_active": True})
    assert status == 200 and body["is_active"] is True
    status, body = await api.put(f"/v1/users/{uid}", {"roles": ["developer"]})
    assert status == 200 and body["roles"] == ["developer"]
    status, body = await api.delete(f"/v1/users/{uid}")
    assert status == 200 and body["user_id"] == uid
    status, _ = await api.get(f"/v1/users/{uid}")
    assert status == 404


async def _key_for(api: Api, user_id: str, description: str) -> dict[str, Any]:
    status, body = await api.post("/v1/api-keys", {
        "user_id": user_id, "description": description, "permissions": ["read", "write"],
        "validity_days": 30})
    assert status in (200, 201), body
    assert body["api_key"].startswith("jadevdb_") and body["key_id"]
    return body  # type: ignore[no-any-return]


async def test_api_key_lifecycle(server: Server) -> None:
    api = server.user
    created = await _key_for(api, server.user_id, "checklist key")
    status, listing = await api.get("/v1/api-keys")
    assert status == 200
    mine = [k for k in listing["api_keys"] if k["description"] == "checklist key"]
    assert len(mine) == 1 and mine[0]["key_id"] == created["key_id"]
    assert "api_key" not in mine[0] and created["api_key"] not in str(listing)
    with_key = {"Authorization": f"Bearer {created['api_key']}"}
    status, st = await server.anon.get("/status", headers=with_key)
    assert status == 200 and st["status"] == "operational"
    status, body = await api.delete(f"/v1/api-keys/{created['key_id']}")
    assert status == 200 and body["key_id"] == created["key_id"]
    status, body = await server.anon.get("/status", headers=with_key)
    assert status == 401, body


async def test_audit_log_honours_limit(server: Server) -> None:
    api = server.user
    for _ in range(3):  # a few events of the user's own
        await server.anon.post("/v1/auth/login", {"username": "tester", "password": "wrong-pw"})
    status, body = await api.get("/v1/security/audit-log?limit=2")
    assert status == 200 and isinstance(body["events"], list)
    assert 0 < len(body["events"]) <= 2
    status, body = await api.get("/v1/security/audit-log?limit=1000")
    assert status == 200 and len(body["events"]) >= 4


async def test_status_with_and_without_token(server: Server) -> None:
    status, body = await server.user.get("/status")
    assert status == 200 and isinstance(body, dict)
    assert {"version", "uptime", "status"} & set(body)
    status, body = await server.anon.get("/status")
    assert status == 401 and body["error"]
