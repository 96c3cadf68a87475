"""API.md §1 (system endpoints, basic shape) and §5 (databases) against a real server."""

from __future__ import annotations

import re
from typing import Any

import pytest

from tests.conftest import Api, Server
from tests.test_http_errors import Strict

ISO = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z$")


@pytest.fixture
def strict(api: Api) -> Strict:
    return Strict(api)


# -- §1 system ---------------------------------------------------------------------------------


async def test_health_without_credentials(server: Server) -> None:
    for headers in ({}, {"Authorization": "Bearer not-a-token"}):
        st, body = await Strict(server.anon).get("/health", headers=headers)
        assert st == 200, body
        assert body["status"] == "healthy"
        assert isinstance(body["timestamp"], int) and body["timestamp"] > 1_600_000_000_000
        assert isinstance(body["version"], str) and body["version"]
        assert set(body["checks"]) >= {"database", "storage", "network"}


async def test_health_db_shape(server: Server) -> None:
    st, body = await Strict(server.anon).get("/health/db")
    assert st == 200, body
    assert body["status"] == "healthy" and body["healthy"] is True
    for part in ("authentication_db", "vector_db"):
        assert body["checks"][part]["healthy"] is True
        assert isinstance(body["checks"][part]["status"], str)


async def test_metrics_is_prometheus_text(server: Server, api: Api) -> None:
    s = Strict(api)
    db = await s.create_db(2)
    await s.expect(200, "POST", f"/v1/databases/{db}/search", {"queryVector": [1, 0]})
    async with server.anon.session.get(server.base + "/metrics") as r:
        assert r.status == 200
        assert r.headers["Content-Type"].startswith("text/plain")
        assert "version=0.0.4" in r.headers["Content-Type"]
        text = await r.text()
    for name in (
        "jadevectordb_db_operations_total",
        "jadevectordb_auth_requests_total",
        "similarity_search_requests_total",
        "similarity_search_duration_seconds",
        "filtered_similarity_search_requests_total",
    ):
        assert re.search(rf"^# TYPE {name} ", text, re.M), name
    m = re.search(r"^similarity_search_requests_total (\S+)$", text, re.M)
    assert m and float(m.group(1)) >= 1


async def test_status_shape_and_credential(server: Server, api: Api) -> None:
    st, body = await Strict(server.anon).get("/status")
    assert st == 401 and body["error"] and body["message"]
    s = Strict(api)
    db = await s.create_db(2)
    await s.expect(201, "POST", f"/v1/databases/{db}/vectors", {"id": "a", "values": [1, 2]})
    st, body = await s.get("/status")
    assert st == 200, body
    assert body["status"] == "operational"
    assert isinstance(body["version"], str)
    assert re.match(r"^\d+h \d+m \d+s$", body["uptime"])
    assert isinstance(body["uptime_seconds"], int)
    assert set(body["system"]) >= {
        "cpu_usage_percent",
        "memory_usage_percent",
        "disk_usage_percent",
    }
    perf = body["performance"]
    assert perf["database_count"] >= 1 and perf["total_vectors"] >= 1
    assert {"avg_query_time_ms", "active_connections"} <= set(perf)
    assert body["mode"] == "readwrite" and body["role"] == "primary"


# -- §5 create -----------------------------------------------------------------------------------


async def test_create_is_201_with_database_id(strict: Strict) -> None:
    st, body = await strict.post(
        "/v1/databases",
        {
            "name": "docs",
            "description": "d",
            "vectorDimension": 128,
            "indexType": "hnsw",
            "indexParameters": {"M": 8},
            "sharding": {"shards": 1},
            "metadataSchema": {"a": "str"},
        },
    )
    assert st == 201, body
    assert body["status"] == "success"
    db = body["databaseId"]
    assert isinstance(db, str) and re.fullmatch(r"[A-Za-z0-9_\-]+", db)
    st, got = await strict.get(f"/v1/databases/{db}")
    assert st == 200
    assert got["databaseId"] == db and got["name"] == "docs" and got["description"] == "d"
    assert got["vectorDimension"] == 128 and got["indexType"] == "HNSW"
    assert ISO.match(got["created_at"]) and ISO.match(got["updated_at"])
    assert got["index"]["servedBy"] == "hnsw" and got["index"]["parameters"]["M"] == 8
    assert got["stats"]["vectorCount"] == 0


async def test_every_index_type_in_any_case(strict: Strict) -> None:
    served = {"hnsw": "hnsw", "ivf": "hnsw", "lsh": "hnsw", "flat": "flat"}
    for name in ("hnsw", "HNSW", "Hnsw", "ivf", "IVF", "lsh", "Lsh", "flat", "FLAT"):
        st, body = await strict.post(
            "/v1/databases", {"name": name, "vectorDimension": 3, "indexType": name}
        )
        assert st == 201, (name, body)
        st, got = await strict.get(f"/v1/databases/{body['databaseId']}")
        assert got["indexType"] == name.upper()
        assert got["index"]["servedBy"] == served[name.lower()]


async def test_default_index_is_hnsw_and_metrics_are_accepted(strict: Strict) -> None:
    db = await strict.create_db(3)
    st, got = await strict.get(f"/v1/databases/{db}")
    assert got["indexType"] == "HNSW" and got["metric"] == "cosine"
    for raw, metric in (
        ("euclidean", "euclidean"),
        ("L2", "euclidean"),
        ("dot", "dot"),
        ("inner_product", "dot"),
        ("COSINE", "cosine"),
    ):
        db = await strict.create_db(3, metric=raw)
        st, got = await strict.get(f"/v1/databases/{db}")
        assert got["metric"] == metric, raw
    db = await strict.create_db(3, distanceMetric="dot")
    st, got = await strict.get(f"/v1/databases/{db}")
    assert got["metric"] == "dot"


BAD_CREATES: list[dict[str, Any]] = [
    {"vectorDimension": 3},
    {"name": "", "vectorDimension": 3},
    {"name": "   ", "vectorDimension": 3},
    {"name": 5, "vectorDimension": 3},
    {"name": None, "vectorDimension": 3},
    {"name": "x" * 257, "vectorDimension": 3},
    {"name": "x"},
    {"name": "x", "vectorDimension": 0},
    {"name": "x", "vectorDimension": -3},
    {"name": "x", "vectorDimension": 10001},
    {"name": "x", "vectorDimension": "128"},
    {"name": "x", "vectorDimension": 1.5},
    {"name": "x", "vectorDimension": True},
    {"name": "x", "vectorDimension": None},
    {"name": "x", "vectorDimension": 3, "indexType": "annoy"},
    {"name": "x", "vectorDimension": 3, "indexType": 5},
    {"name": "x", "vectorDimension": 3, "indexType": ""},
    {"name": "x", "vectorDimension": 3, "metric": "hamming"},
    {"name": "x", "vectorDimension": 3, "metric": 1},
    {"name": "x", "vectorDimension": 3, "description": 7},
    {"name": "x", "vectorDimension": 3, "indexParameters": {"M": 1}},
    {"name": "x", "vectorDimension": 3, "indexParameters": {"M": "16"}},
    {"name": "x", "vectorDimension": 3, "indexParameters": {"efSearch": 0}},
    {"name": "x", "vectorDimension": 3, "indexParameters": [16]},
]


async def test_bad_creates_are_400_and_create_nothing(strict: Strict) -> None:
    for body in BAD_CREATES:
        await strict.expect(400, "POST", "/v1/databases", body)
    st, listing = await strict.get("/v1/databases")
    assert listing["databases"] == [] and listing["total"] == 0


async def test_dimension_bounds(strict: Strict) -> None:
    for dim in (1, 10000):
        db = await strict.create_db(dim)
        st, got = await strict.get(f"/v1/databases/{db}")
        assert got["vectorDimension"] == dim


# -- §5 list, get ------------------------------------------------------------------------------


async def test_list_always_has_databases_and_includes_ids(strict: Strict) -> None:
    st, body = await strict.get("/v1/databases")
    assert st == 200 and body["databases"] == [] and body["total"] == 0
    ids = [await strict.create_db(2) for _ in range(5)]
    await strict.post(f"/v1/databases/{ids[0]}/vectors", {"id": "a", "values": [1, 2]})
    st, body = await strict.get("/v1/databases")
    assert st == 200 and body["total"] == 5
    assert [d["databaseId"] for d in body["databases"]] == ids  # oldest first
    first = body["databases"][0]
    assert first["stats"]["vectorCount"] == 1 and first["stats"]["indexCount"] == 1
    assert first["stats"]["storageSize"] > 0
    st, page = await strict.get("/v1/databases?limit=2&offset=1")
    assert [d["databaseId"] for d in page["databases"]] == ids[1:3] and page["total"] == 5
    st, page = await strict.get("/v1/databases?offset=10")
    assert page["databases"] == [] and page["total"] == 5
    for q in ("limit=0", "limit=-1", "limit=abc", "offset=-1", "offset=1.5"):
        await strict.expect(400, "GET", "/v1/databases?" + q)


async def test_get_unknown_database_is_404(strict: Strict) -> None:
    data = await strict.expect(404, "GET", "/v1/databases/nonexistent_db_id")
    assert data["message"] == "Database not found"


async def test_databases_of_other_users_are_not_listed(server: Server, api: Api) -> None:
    user, admin = Strict(api), Strict(server.admin)
    mine = await user.create_db(2)
    theirs = await admin.create_db(2)
    await user.expect(403, "GET", f"/v1/databases/{theirs}")
    await user.expect(403, "POST", f"/v1/databases/{theirs}/vectors", {"id": "a", "values": [1, 2]})
    st, body = await user.get("/v1/databases")
    assert [d["databaseId"] for d in body["databases"]] == [mine]
    st, body = await admin.get("/v1/databases")
    assert {d["databaseId"] for d in body["databases"]} == {mine, theirs}


# -- §5 update -----------------------------------------------------------------------------------


async def test_put_changes_show_in_the_next_get(strict: Strict) -> None:
    db = await strict.create_db(3, description="old")
    st, before = await strict.get(f"/v1/databases/{db}")
    st, body = await strict.put(f"/v1/databases/{db}", {"description": "Updated description"})
    assert st == 200 and body["status"] == "success" and body["message"]
    st, got = await strict.get(f"/v1/databases/{db}")
    assert got["description"] == "Updated description" and got["name"] == "t"
    st, body = await strict.put(f"/v1/databases/{db}", {"name": "renamed", "description": ""})
    assert st == 200
    st, got = await strict.get(f"/v1/databases/{db}")
    assert got["name"] == "renamed" and got["description"] == ""
    assert got["created_at"] == before["created_at"]


async def test_put_dimension_only_while_empty(strict: Strict) -> None:
    db = await strict.create_db(3)
    await strict.expect(200, "PUT", f"/v1/databases/{db}", {"vectorDimension": 4})
    st, got = await strict.get(f"/v1/databases/{db}")
    assert got["vectorDimension"] == 4
    await strict.expect(
        201, "POST", f"/v1/databases/{db}/vectors", {"id": "a", "values": [1, 2, 3, 4]}
    )
    await strict.expect(
        400, "PUT", f"/v1/databases/{db}", {"vectorDimension": 5}, code="dimension_locked"
    )
    await strict.expect(200, "PUT", f"/v1/databases/{db}", {"vectorDimension": 4})
    st, got = await strict.get(f"/v1/databases/{db}")
    assert got["vectorDimension"] == 4 and got["stats"]["vectorCount"] == 1
    st, res = await strict.post(f"/v1/databases/{db}/search", {"queryVector": [1, 2, 3, 4]})
    assert [r["vectorId"] for r in res["results"]] == ["a"]


async def test_put_index_type_switches_the_serving_index(strict: Strict) -> None:
    db = await strict.create_db(3)
    await strict.expect(
        201, "POST", f"/v1/databases/{db}/vectors", {"id": "a", "values": [1, 0, 0]}
    )
    await strict.expect(200, "PUT", f"/v1/databases/{db}", {"indexType": "flat"})
    st, got = await strict.get(f"/v1/databases/{db}")
    assert got["indexType"] == "FLAT" and got["index"]["servedBy"] == "flat"
    st, res = await strict.post(f"/v1/databases/{db}/search", {"queryVector": [1, 0, 0]})
    assert res["strategy"] == "flat" and res["results"][0]["vectorId"] == "a"
    await strict.expect(200, "PUT", f"/v1/databases/{db}", {"indexType": "LSH"})
    st, got = await strict.get(f"/v1/databases/{db}")
    assert got["indexType"] == "LSH" and got["index"]["servedBy"] == "hnsw"
    assert "note" in got["index"]
    st, res = await strict.post(f"/v1/databases/{db}/search", {"queryVector": [1, 0, 0]})
    assert res["strategy"] == "hnsw" and res["results"][0]["vectorId"] == "a"
    await strict.expect(200, "PUT", f"/v1/databases/{db}", {"indexParameters": {"efSearch": 77}})
    st, got = await strict.get(f"/v1/databases/{db}")
    assert got["index"]["parameters"]["efSearch"] == 77
    st, listed = await strict.get(f"/v1/databases/{db}/indexes")
    assert st == 200 and [i["indexId"] for i in listed] == [got["index"]["indexId"]]
    assert listed[0]["type"] == "LSH" and listed[0]["parameters"]["efSearch"] == 77
    assert isinstance(listed[0]["createdAt"], int) and listed[0]["createdAt"] > 1_600_000_000_000


async def test_bad_updates_are_400_and_change_nothing(strict: Strict) -> None:
    db = await strict.create_db(3, description="keep")
    for body in (
        {},
        {"unknown": 1},
        {"name": ""},
        {"name": 3},
        {"description": 5},
        {"vectorDimension": 0},
        {"vectorDimension": "4"},
        {"indexType": "annoy"},
        {"name": "ok", "vectorDimension": 0},
    ):
        await strict.expect(400, "PUT", f"/v1/databases/{db}", body)
    st, got = await strict.get(f"/v1/databases/{db}")
    assert got["name"] == "t" and got["description"] == "keep" and got["vectorDimension"] == 3


async def test_put_unknown_database_is_404(strict: Strict) -> None:
    await strict.expect(404, "PUT", "/v1/databases/nonexistent_db_id", {"description": "x"})


# -- §5 delete -----------------------------------------------------------------------------------


async def test_delete_is_200_then_get_is_404(strict: Strict) -> None:
    db = await strict.create_db(2)
    other = await strict.create_db(2)
    await strict.expect(201, "POST", f"/v1/databases/{db}/vectors", {"id": "a", "values": [1, 2]})
    st, body = await strict.delete(f"/v1/databases/{db}")
    assert st == 200 and body["status"] == "success" and body["message"]
    await strict.expect(404, "GET", f"/v1/databases/{db}")
    await strict.expect(404, "GET", f"/v1/databases/{db}/vectors/a")
    await strict.expect(404, "DELETE", f"/v1/databases/{db}")
    st, listing = await strict.get("/v1/databases")
    assert [d["databaseId"] for d in listing["databases"]] == [other]


async def test_duplicate_names_are_allowed(strict: Strict) -> None:
    a = await strict.create_db(2)
    b = await strict.create_db(2)
    assert a != b
    st, listing = await strict.get("/v1/databases")
    assert [d["name"] for d in listing["databases"]] == ["t", "t"]
