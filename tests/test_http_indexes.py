"""API.md §8: indexes — create, list (bare array), update (efSearch in place, M rebuilds),
delete (exact search fallback); IVF/LSH are served by HNSW and say so."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import pytest

from tests.conftest import Api
from tests.test_http_errors import Strict

DIM = 8


@pytest.fixture
def strict(api: Api) -> Strict:
    return Strict(api)


@pytest.fixture
async def loaded(strict: Strict) -> tuple[str, np.ndarray]:
    rng = np.random.default_rng(3)
    data = rng.normal(size=(300, DIM)).astype(np.float32)
    db = await strict.create_db(DIM)
    await strict.expect(
        201,
        "POST",
        f"/v1/databases/{db}/vectors/batch",
        {
            "vectors": [
                {"id": f"v{i}", "values": data[i].tolist(), "metadata": {"g": i % 3}}
                for i in range(len(data))
            ]
        },
    )
    return db, data


def _truth(data: np.ndarray, q: np.ndarray, k: int) -> list[str]:
    n = data / np.linalg.norm(data, axis=1, keepdims=True)
    scores = n @ (q / np.linalg.norm(q))
    return [f"v{i}" for i in np.argsort(-scores)[:k]]


async def _check_search(
    s: Strict, db: str, data: np.ndarray, strategy: str | None = None, *, filtered: bool = False
) -> None:
    """Searches still answer with the true nearest neighbours."""
    for i in (0, 17, 123):
        body: dict[str, Any] = {"queryVector": data[i].tolist(), "topK": 5}
        if filtered:
            body["filters"] = {"g": i % 3}
        st, res = await s.post(f"/v1/databases/{db}/search", body)
        assert st == 200, res
        assert res["results"][0]["vectorId"] == f"v{i}"
        if not filtered:
            assert [r["vectorId"] for r in res["results"]] == _truth(data, data[i], 5)
        if strategy is not None:
            assert res["strategy"] == strategy


async def _indexes(s: Strict, db: str) -> list[dict[str, Any]]:
    st, body = await s.get(f"/v1/databases/{db}/indexes")
    assert st == 200 and isinstance(body, list), body
    return body


async def test_a_new_database_lists_its_default_index(strict: Strict) -> None:
    db = await strict.create_db(DIM)
    [idx] = await _indexes(strict, db)
    assert idx["databaseId"] == db and idx["type"] == "HNSW" and idx["status"] == "active"
    assert idx["indexId"].startswith("index_")
    assert {"M", "efConstruction", "efSearch"} <= set(idx["parameters"])
    assert isinstance(idx["createdAt"], int) and isinstance(idx["updatedAt"], int)


async def test_create_is_201_and_becomes_the_serving_index(
    strict: Strict, loaded: tuple[str, Any]
) -> None:
    db, data = loaded
    [old] = await _indexes(strict, db)
    before = int(time.time() * 1000) - 1000
    st, idx = await strict.post(
        f"/v1/databases/{db}/indexes",
        {
            "type": "hnsw",
            "name": "main",
            "parameters": {"M": 12, "efConstruction": 100, "efSearch": 50},
        },
    )
    assert st == 201, idx
    assert idx["databaseId"] == db and idx["type"] == "HNSW" and idx["status"] == "active"
    assert idx["parameters"] == {"M": 12, "efConstruction": 100, "efSearch": 50}
    assert idx["createdAt"] >= before and idx["indexId"] != old["indexId"]
    listed = {i["indexId"]: i for i in await _indexes(strict, db)}
    assert set(listed) == {old["indexId"], idx["indexId"]}
    assert listed[idx["indexId"]]["status"] == "active"
    assert listed[old["indexId"]]["status"] == "inactive"
    st, one = await strict.get(f"/v1/databases/{db}/indexes/{idx['indexId']}")
    assert st == 200 and one["indexId"] == idx["indexId"] and one["name"] == "main"
    st, got = await strict.get(f"/v1/databases/{db}")
    assert got["index"]["indexId"] == idx["indexId"]
    assert got["index"]["parameters"] == {"M": 12, "efConstruction": 100, "efSearch": 50}
    await _check_search(strict, db, data, "hnsw")
    await _check_search(strict, db, data, filtered=True)


async def test_update_ef_search_applies_in_place(strict: Strict, loaded: tuple[str, Any]) -> None:
    db, data = loaded
    [idx] = await _indexes(strict, db)
    iid = idx["indexId"]
    st, body = await strict.put(
        f"/v1/databases/{db}/indexes/{iid}", {"parameters": {"efSearch": 123}}
    )
    assert st == 200, body
    assert body["indexId"] == iid and body["databaseId"] == db and body["status"] == "updated"
    assert isinstance(body["updatedAt"], int)
    [idx] = await _indexes(strict, db)
    assert idx["parameters"]["efSearch"] == 123
    st, got = await strict.get(f"/v1/databases/{db}")
    assert got["index"]["parameters"]["efSearch"] == 123
    await _check_search(strict, db, data, "hnsw")


async def test_update_m_rebuilds_and_search_still_works(
    strict: Strict, loaded: tuple[str, Any]
) -> None:
    db, data = loaded
    [idx] = await _indexes(strict, db)
    iid = idx["indexId"]
    await strict.expect(
        200,
        "PUT",
        f"/v1/databases/{db}/indexes/{iid}",
        {"parameters": {"M": 6, "efConstruction": 64}},
    )
    [idx] = await _indexes(strict, db)
    assert idx["parameters"]["M"] == 6 and idx["parameters"]["efConstruction"] == 64
    st, got = await strict.get(f"/v1/databases/{db}")
    assert got["index"]["parameters"]["M"] == 6
    assert got["stats"]["indexedVectors"] == 300
    await _check_search(strict, db, data, "hnsw")
    # writes after the rebuild land in the new index
    await strict.expect(
        201, "POST", f"/v1/databases/{db}/vectors", {"id": "late", "values": [9.0] * DIM}
    )
    st, res = await strict.post(
        f"/v1/databases/{db}/search", {"queryVector": [9.0] * DIM, "topK": 1}
    )
    assert res["results"][0]["vectorId"] == "late"


async def test_delete_falls_back_to_exact_search(strict: Strict, loaded: tuple[str, Any]) -> None:
    db, data = loaded
    [idx] = await _indexes(strict, db)
    st, body = await strict.delete(f"/v1/databases/{db}/indexes/{idx['indexId']}")
    assert st == 200, body
    assert body["indexId"] == idx["indexId"] and body["databaseId"] == db
    assert body["status"] == "deleted" and isinstance(body["deletedAt"], int)
    assert await _indexes(strict, db) == []
    st, got = await strict.get(f"/v1/databases/{db}")
    assert got["index"]["type"] == "FLAT" and got["index"]["servedBy"] == "flat"
    assert got["stats"]["indexCount"] == 0 and got["stats"]["indexedVectors"] == 300
    await _check_search(strict, db, data, "flat")
    await _check_search(strict, db, data, filtered=True)
    await strict.expect(404, "DELETE", f"/v1/databases/{db}/indexes/{idx['indexId']}")
    # and a new index can be created again
    st, new = await strict.post(f"/v1/databases/{db}/indexes", {"type": "HNSW"})
    assert st == 201 and new["status"] == "active"
    await _check_search(strict, db, data, "hnsw")


async def test_deleting_an_older_index_keeps_the_serving_one(
    strict: Strict, loaded: tuple[str, Any]
) -> None:
    db, data = loaded
    [old] = await _indexes(strict, db)
    st, new = await strict.post(f"/v1/databases/{db}/indexes", {"type": "FLAT"})
    assert st == 201 and new["type"] == "FLAT"
    await _check_search(strict, db, data, "flat")
    await strict.expect(200, "DELETE", f"/v1/databases/{db}/indexes/{old['indexId']}")
    [left] = await _indexes(strict, db)
    assert left["indexId"] == new["indexId"] and left["status"] == "active"
    await _check_search(strict, db, data, "flat")


async def test_ivf_and_lsh_are_served_by_hnsw(strict: Strict, loaded: tuple[str, Any]) -> None:
    db, data = loaded
    for kind in ("IVF", "lsh"):
        st, idx = await strict.post(
            f"/v1/databases/{db}/indexes", {"type": kind, "parameters": {"efSearch": 80}}
        )
        assert st == 201, idx
        assert idx["type"] == kind.upper() and idx["servedBy"] == "hnsw"
        st, got = await strict.get(f"/v1/databases/{db}")
        info = got["index"]
        assert info["indexId"] == idx["indexId"] and info["type"] == kind.upper()
        assert info["servedBy"] == "hnsw" and "HNSW" in info["note"]
        assert info["parameters"]["efSearch"] == 80
        await _check_search(strict, db, data, "hnsw")


async def test_index_errors(strict: Strict, loaded: tuple[str, Any]) -> None:
    db, data = loaded
    p = f"/v1/databases/{db}/indexes"
    [idx] = await _indexes(strict, db)
    iid = idx["indexId"]
    body: dict[str, Any]
    for body in (
        {},
        {"name": "x"},
        {"type": "annoy"},
        {"type": 3},
        {"type": None},
        {"type": "HNSW", "parameters": {"M": 1}},
        {"type": "HNSW", "parameters": {"M": 129}},
        {"type": "HNSW", "parameters": {"M": "16"}},
        {"type": "HNSW", "parameters": {"efSearch": 0}},
        {"type": "HNSW", "parameters": {"efConstruction": 2.5}},
        {"type": "HNSW", "parameters": "M=16"},
        {"type": "HNSW", "name": 5},
    ):
        await strict.expect(400, "POST", p, body)
    for body in (
        {},
        {"parameters": {}},
        {"parameters": {"other": 1}},
        {"parameters": [1]},
        {"parameters": {"efSearch": -1}},
        {"parameters": {"M": True}},
    ):
        await strict.expect(400, "PUT", f"{p}/{iid}", body)
    await strict.expect(404, "GET", f"{p}/index_missing")
    await strict.expect(404, "PUT", f"{p}/index_missing", {"parameters": {"efSearch": 10}})
    await strict.expect(404, "DELETE", f"{p}/index_missing")
    assert [i["indexId"] for i in await _indexes(strict, db)] == [iid]
    [again] = await _indexes(strict, db)
    assert again["parameters"] == idx["parameters"]
    await _check_search(strict, db, data, "hnsw")


async def test_search_ef_override(strict: Strict, loaded: tuple[str, Any]) -> None:
    db, data = loaded
    for ef in (1, 10, 500):
        st, res = await strict.post(
            f"/v1/databases/{db}/search",
            {"queryVector": data[7].tolist(), "topK": 5, "efSearch": ef},
        )
        assert st == 200 and len(res["results"]) == 5
        assert res["results"][0]["vectorId"] == "v7"
