"""Error rows of API.md (§0, §5–§8): malformed bodies, wrong types, NaN/Infinity, ids, oversize
bodies, unknown databases/routes/methods, bad filters — each answered with the exact status and
the JSON envelope ``{"error", "message"}``, never a 500, and never leaving a write half-done.

``Strict`` (used by every ``test_http_*`` file) wraps the ``api`` client: any 5xx fails the test
on the spot, and every error answer must carry the envelope.
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson
import pytest

from jade.http.routes import DB, ROUTES
from jade.http.validate import MAX_ID_BYTES
from tests.conftest import Api, make_settings, running_server


@dataclass
class Strict:
    """The ``api`` client, failing on any 5xx and on any error body without the envelope."""

    api: Api

    async def call(self, method: str, path: str, body: Any = None, **kw: Any) -> tuple[int, Any]:
        status, data = await self.api.call(method, path, body, **kw)
        assert status < 500, f"{method} {path} -> {status} {data}"
        if status >= 400:
            assert isinstance(data, dict), f"{method} {path} -> {status} non-JSON body {data!r}"
            assert isinstance(data.get("error"), str) and data["error"], data
            assert isinstance(data.get("message"), str) and data["message"], data
        return status, data

    async def get(self, path: str, **kw: Any) -> tuple[int, Any]:
        return await self.call("GET", path, **kw)

    async def post(self, path: str, body: Any = None, **kw: Any) -> tuple[int, Any]:
        return await self.call("POST", path, body, **kw)

    async def put(self, path: str, body: Any = None, **kw: Any) -> tuple[int, Any]:
        return await self.call("PUT", path, body, **kw)

    async def delete(self, path: str, **kw: Any) -> tuple[int, Any]:
        return await self.call("DELETE", path, **kw)

    async def create_db(self, dim: int = 4, **extra: Any) -> str:
        status, body = await self.post(
            "/v1/databases", {"name": "t", "vectorDimension": dim, **extra}
        )
        assert status == 201, body
        assert isinstance(body["databaseId"], str) and body["databaseId"]
        return str(body["databaseId"])

    async def count(self, db: str) -> int:
        status, body = await self.get(f"/v1/databases/{db}")
        assert status == 200, body
        return int(body["stats"]["vectorCount"])

    async def expect(
        self,
        status: int,
        method: str,
        path: str,
        body: Any = None,
        *,
        code: str | None = None,
        **kw: Any,
    ) -> Any:
        got, data = await self.call(method, path, body, **kw)
        assert got == status, f"{method} {path} {body!r:.200} -> {got} {data}"
        if code is not None:
            assert data["error"] == code, data
        return data


@pytest.fixture
def strict(api: Api) -> Strict:
    return Strict(api)


# -- request bodies ----------------------------------------------------------------------------


async def _db_with_vector(s: Strict, dim: int = 3) -> str:
    db = await s.create_db(dim)
    await s.expect(201, "POST", f"/v1/databases/{db}/vectors", {"id": "v1", "values": [1, 0, 0]})
    return db


def _write_routes(db: str) -> list[tuple[str, str]]:
    p = f"/v1/databases/{db}"
    return [
        ("POST", "/v1/databases"),
        ("PUT", p),
        ("POST", p + "/vectors"),
        ("POST", p + "/vectors/batch"),
        ("POST", p + "/vectors/batch-get"),
        ("PUT", p + "/vectors/v1"),
        ("POST", p + "/search"),
        ("POST", p + "/search/advanced"),
        ("POST", p + "/indexes"),
    ]


MALFORMED = [
    b"{",
    b"{'a': 1}",
    b'{"id": "x",}',
    b"nul",
    b"\xff\xfe",
    b'{"a": NaN}',
    b'{"a": Infinity}',
    b'{"a": "\\ud800"}',
    b'{"a": 1} {"b": 2}',
]


async def test_malformed_json_is_400_on_every_body_route(strict: Strict) -> None:
    db = await _db_with_vector(strict)
    for raw in MALFORMED:
        for method, path in _write_routes(db):
            await strict.expect(400, method, path, raw=raw, code="invalid_json")
    assert await strict.count(db) == 1


async def test_body_that_is_not_an_object_is_400(strict: Strict) -> None:
    db = await _db_with_vector(strict)
    for body in ([], [1, 2], "text", 3, True, None):
        for method, path in _write_routes(db):
            await strict.expect(400, method, path, raw=orjson.dumps(body), code="invalid_json")
    assert await strict.count(db) == 1


async def test_empty_body_on_a_post_that_needs_one_is_400(strict: Strict) -> None:
    db = await _db_with_vector(strict)
    for method, path in _write_routes(db):
        await strict.expect(400, method, path)
    assert await strict.count(db) == 1


BAD_VALUES: list[Any] = [
    "1,0,0",
    {"0": 1},
    5,
    None,
    [1, "0", 0],
    [1, True, 0],
    [1, None, 0],
    [[1], 0, 0],
    [1, {"x": 1}, 0],
    [1e39, 0, 0],
    [-1e39, 0, 0],
    [1e308, 0, 0],
    [0, 0],
    [0, 0, 0, 0],
    [],
    [3.5e38, 0, 0],
    [0, -3.5e38, 0],
]


async def test_bad_values_are_400_on_store_update_batch_and_search(strict: Strict) -> None:
    db = await _db_with_vector(strict)
    p = f"/v1/databases/{db}"
    for values in BAD_VALUES:
        await strict.expect(400, "POST", p + "/vectors", {"id": "v2", "values": values})
        await strict.expect(400, "PUT", p + "/vectors/v1", {"values": values})
        await strict.expect(
            400,
            "POST",
            p + "/vectors/batch",
            {"vectors": [{"id": "v3", "values": [0, 1, 0]}, {"id": "v4", "values": values}]},
        )
        await strict.expect(400, "POST", p + "/search", {"queryVector": values})
        await strict.expect(400, "POST", p + "/search/advanced", {"queryVector": values})
    assert await strict.count(db) == 1
    st, v = await strict.get(p + "/vectors/v1")
    assert st == 200 and v["values"] == [1.0, 0.0, 0.0]
    for vid in ("v2", "v3", "v4"):
        await strict.expect(404, "GET", f"{p}/vectors/{vid}")


async def test_nan_and_infinity_literals_are_rejected(strict: Strict) -> None:
    db = await _db_with_vector(strict)
    p = f"/v1/databases/{db}"
    for raw in (
        b"[1, NaN, 0]",
        b"[1, Infinity, 0]",
        b"[-Infinity, 0, 0]",
        b"[1, nan, 0]",
        b"[1, 1e999, 0]",
        b"[1, " + b"9" * 80 + b", 0]",
    ):
        await strict.expect(
            400, "POST", p + "/vectors", raw=b'{"id": "v2", "values": ' + raw + b"}"
        )
        await strict.expect(
            400,
            "POST",
            p + "/vectors/batch",
            raw=b'{"vectors": [{"id": "v2", "values": ' + raw + b"}]}",
        )
        await strict.expect(400, "PUT", p + "/vectors/v1", raw=b'{"values": ' + raw + b"}")
        await strict.expect(400, "POST", p + "/search", raw=b'{"queryVector": ' + raw + b"}")
    assert await strict.count(db) == 1
    await strict.expect(404, "GET", p + "/vectors/v2")


async def test_values_at_the_float32_limits_are_kept(strict: Strict) -> None:
    db = await strict.create_db(3)
    p = f"/v1/databases/{db}"
    await strict.expect(201, "POST", p + "/vectors", {"id": "big", "values": [3.0e38, -3.0e38, 0]})
    await strict.expect(201, "POST", p + "/vectors", {"id": "tiny", "values": [1e-45, 5, 1]})
    st, v = await strict.get(p + "/vectors/big")
    assert st == 200 and v["values"][0] == pytest.approx(3.0e38, rel=1e-6)


BAD_IDS: list[Any] = [
    "",
    "a/b",
    "x" * 600,
    "é" * 300,
    "tab\there",
    "nl\n",
    "\x7f",
    ".",
    "..",
    5,
    None,
    ["a"],
    True,
    {"id": "a"},
]


async def test_bad_vector_ids_are_400(strict: Strict) -> None:
    db = await _db_with_vector(strict)
    p = f"/v1/databases/{db}"
    for vid in BAD_IDS:
        await strict.expect(400, "POST", p + "/vectors", {"id": vid, "values": [0, 1, 0]})
        await strict.expect(
            400,
            "POST",
            p + "/vectors/batch",
            {"vectors": [{"id": "ok", "values": [0, 1, 0]}, {"id": vid, "values": [0, 1, 0]}]},
        )
        await strict.expect(400, "POST", p + "/vectors/batch-get", {"ids": ["v1", vid]})
    assert await strict.count(db) == 1
    await strict.expect(404, "GET", p + "/vectors/ok")


async def test_unstorable_ids_in_the_path_are_404(strict: Strict) -> None:
    db = await _db_with_vector(strict)
    p = f"/v1/databases/{db}/vectors/"
    for vid in ("x" * 600, "%C3%A9" * 300, "tab%09", "%7F"):
        await strict.expect(404, "GET", p + vid)
        await strict.expect(404, "DELETE", p + vid)
        await strict.expect(404, "PUT", p + vid, {"values": [1, 0, 0]})
    assert await strict.count(db) == 1


async def test_missing_id_is_400_and_the_longest_id_works(strict: Strict) -> None:
    db = await _db_with_vector(strict)
    p = f"/v1/databases/{db}"
    await strict.expect(400, "POST", p + "/vectors", {"values": [0, 1, 0]})
    await strict.expect(400, "POST", p + "/vectors", {"id": "v2"})
    long_id = "é" * (MAX_ID_BYTES // 2)  # exactly MAX_ID_BYTES UTF-8 bytes
    await strict.expect(201, "POST", p + "/vectors", {"id": long_id, "values": [0, 1, 0]})
    st, v = await strict.get(p + "/vectors/" + long_id)
    assert st == 200 and v["id"] == long_id
    st, res = await strict.post(p + "/vectors/batch-get", {"ids": [long_id]})
    assert st == 200 and res["vectors"][0]["id"] == long_id
    await strict.expect(400, "POST", p + "/vectors", {"id": long_id + "x", "values": [0, 1, 0]})
    assert await strict.count(db) == 2


async def test_ids_with_url_specials_round_trip(strict: Strict) -> None:
    db = await strict.create_db(2)
    p = f"/v1/databases/{db}"
    for vid in ("a b", "a?b", "a#b", "100%", "ünï", "a+b", "...", ".a", "a.b:c@d", "a\\b"):
        await strict.expect(201, "POST", p + "/vectors", {"id": vid, "values": [1, 2]})
        path = p + "/vectors/" + aiohttp.helpers.quote(vid, safe="")  # type: ignore[attr-defined]
        st, v = await strict.get(path)
        assert st == 200 and v["id"] == vid, (vid, v)
        await strict.expect(200, "DELETE", path)
        await strict.expect(404, "GET", path)
    assert await strict.count(db) == 0


BAD_SEARCH: list[tuple[str, Any]] = [
    ("topK", 0),
    ("topK", -1),
    ("topK", 1.5),
    ("topK", "5"),
    ("topK", True),
    ("topK", [5]),
    ("topK", 10001),
    ("threshold", 1.5),
    ("threshold", -1.5),
    ("threshold", "0.5"),
    ("threshold", True),
    ("includeMetadata", "yes"),
    ("includeValues", 1),
    ("includeVectorData", "true"),
    ("efSearch", 0),
    ("efSearch", "big"),
]


async def test_bad_search_parameters_are_400(strict: Strict) -> None:
    db = await _db_with_vector(strict)
    for field, value in BAD_SEARCH:
        for route in ("/search", "/search/advanced"):
            await strict.expect(
                400, "POST", f"/v1/databases/{db}{route}", {"queryVector": [1, 0, 0], field: value}
            )


async def test_search_without_query_vector_is_400(strict: Strict) -> None:
    db = await _db_with_vector(strict)
    await strict.expect(400, "POST", f"/v1/databases/{db}/search", {"topK": 3})


BAD_FILTERS: list[Any] = [
    [],
    "category=even",
    5,
    True,
    {"category": {"$foo": 1}},
    {"category": {}},
    {"n": {"$in": 3}},
    {"n": {"$gt": [1]}},
    {"n": {"$exists": "yes"}},
    {"$and": {}},
    {"$or": []},
    {"$not": [1]},
    {"$bogus": 1},
    {"": 1},
    {"n": {"$eq": 1, "$foo": 2}},
    {"combination": "XOR", "conditions": [{"field": "a", "op": "EQUALS", "value": 1}]},
    {"combination": "AND", "conditions": []},
    {"combination": "AND", "conditions": [{"field": "a", "op": "BOGUS", "value": 1}]},
    {"conditions": [{"field": "a", "op": "IN", "value": 1}]},
    {"conditions": [{"field": "a", "op": "EQUALS"}]},
    {"conditions": [{"op": "EQUALS", "value": 1}]},
    {"conditions": [{"field": "a", "op": "EQUALS", "value": 1, "extra": 2}]},
    {"conditions": [{"field": "a", "op": "MATCHES_REGEX", "value": "("}]},
    {"conditions": [{"field": "a", "op": "IN", "values": [[1]]}]},
]


async def test_bad_filters_are_400_invalid_filter(strict: Strict) -> None:
    db = await _db_with_vector(strict)
    for filters in BAD_FILTERS:
        for route in ("/search", "/search/advanced"):
            await strict.expect(
                400,
                "POST",
                f"/v1/databases/{db}{route}",
                {"queryVector": [1, 0, 0], "filters": filters},
                code="invalid_filter",
            )


async def test_deeply_nested_filter_is_400_not_a_crash(strict: Strict) -> None:
    db = await _db_with_vector(strict)
    raw = orjson.dumps({"queryVector": [1, 0, 0], "filters": {"$and": [{"a": 1}]}})
    await strict.expect(200, "POST", f"/v1/databases/{db}/search", raw=raw)
    # 5000 levels: orjson refuses more than 1024 nesting levels -> malformed JSON, 400
    deep = (
        b'{"queryVector": [1, 0, 0], "filters": '
        + b'{"$not": ' * 5000
        + b'{"a": 1}'
        + b"}" * 5000
        + b"}"
    )
    await strict.expect(400, "POST", f"/v1/databases/{db}/search", raw=deep)
    # 200 levels parse as JSON; the filter parser's own depth limit answers
    mid = (
        b'{"queryVector": [1, 0, 0], "filters": '
        + b'{"$not": ' * 200
        + b'{"a": 1}'
        + b"}" * 200
        + b"}"
    )
    await strict.expect(400, "POST", f"/v1/databases/{db}/search", raw=mid, code="invalid_filter")


# -- body size ---------------------------------------------------------------------------------


@pytest.fixture
async def small(tmp_path: Any) -> AsyncIterator[Strict]:
    async with running_server(make_settings(tmp_path, max_body_bytes=1000)) as srv:
        yield Strict(srv.user)


async def test_oversize_body_is_413_and_nothing_is_written(small: Strict) -> None:
    db = await small.create_db(200)
    p = f"/v1/databases/{db}"
    big = {"id": "big", "values": [0.123456789] * 200}
    assert len(orjson.dumps(big)) > 1000
    await small.expect(413, "POST", p + "/vectors", big)
    await small.expect(413, "POST", p + "/vectors/batch", {"vectors": [big]})
    await small.expect(413, "POST", p + "/search", {"queryVector": big["values"]})
    await small.expect(413, "POST", "/v1/databases", {"name": "x" * 2000, "vectorDimension": 3})
    await small.expect(404, "GET", p + "/vectors/big")
    assert await small.count(db) == 0
    # a body just under the limit is fine
    ok = {"id": "ok", "values": [0.5] * 200}
    assert len(orjson.dumps(ok)) < 1000
    await small.expect(201, "POST", p + "/vectors", ok)


async def test_oversize_chunked_body_without_length_is_413(small: Strict) -> None:
    db = await small.create_db(200)
    payload = orjson.dumps({"id": "big", "values": [0.123456789] * 200})

    async def chunks() -> AsyncIterator[bytes]:
        for i in range(0, len(payload), 100):
            yield payload[i : i + 100]

    api = small.api
    url = f"{api.base}/v1/databases/{db}/vectors"
    async with api.session.post(
        url, data=chunks(), headers={**api.headers, "Content-Type": "application/json"}
    ) as r:
        assert r.status == 413
        body = await r.json()
        assert body["error"] and body["message"]
    assert await small.count(db) == 0


# -- unknown databases, routes, methods --------------------------------------------------------


def _fill(path: str, db: str) -> str:
    return (
        path.replace("{db}", db)
        .replace("{vid}", "v1")
        .replace("{iid}", "index_x")
        .replace("{uid}", "u1")
    )


_BODIES: dict[str, Any] = {
    "/vectors": {"id": "v1", "values": [1, 0, 0]},
    "/vectors/batch": {"vectors": [{"id": "v1", "values": [1, 0, 0]}]},
    "/vectors/batch-get": {"ids": ["v1"]},
    "/vectors/{vid}": {"values": [1, 0, 0]},
    "/search": {"queryVector": [1, 0, 0]},
    "/search/advanced": {"queryVector": [1, 0, 0], "filters": {"a": 1}},
    "/indexes": {"type": "HNSW"},
    "/indexes/{iid}": {"parameters": {"efSearch": 10}},
    "/grants": {"user_id": "u1", "permission": "read"},
    "": {"description": "x"},
}

DB_ROUTES = [r for r in ROUTES if r.path == DB or r.path.startswith(DB + "/")]


async def test_unknown_database_is_404_on_every_db_route(strict: Strict) -> None:
    for route in DB_ROUTES:
        body = _BODIES.get(route.path[len(DB) :]) if route.method in ("POST", "PUT") else None
        for db in ("nonexistent_db_id", "db_0_000000", "a" * 600, "%C3%A9", "%00"):
            data = await strict.expect(404, route.method, _fill(route.path, db), body)
            assert "not found" in data["message"].lower(), (route, data)


async def test_the_db_route_walk_covers_the_data_api() -> None:
    paths = {(r.method, r.path[len(DB) :]) for r in DB_ROUTES}
    for needed in [
        ("GET", ""),
        ("PUT", ""),
        ("DELETE", ""),
        ("POST", "/vectors"),
        ("POST", "/vectors/batch"),
        ("POST", "/vectors/batch-get"),
        ("GET", "/vectors"),
        ("GET", "/vectors/{vid}"),
        ("PUT", "/vectors/{vid}"),
        ("DELETE", "/vectors/{vid}"),
        ("POST", "/search"),
        ("POST", "/search/advanced"),
        ("POST", "/indexes"),
        ("GET", "/indexes"),
        ("PUT", "/indexes/{iid}"),
        ("DELETE", "/indexes/{iid}"),
    ]:
        assert needed in paths


async def test_unknown_route_is_404_json(strict: Strict) -> None:
    for method, path in [
        ("GET", "/v1/nothing"),
        ("GET", "/nothing"),
        ("POST", "/v1/databases/x/nothing"),
        ("GET", "/v1/databases/x/vectors/a/b"),
        ("GET", "/v2/databases"),
    ]:
        await strict.expect(404, method, path, code="not_found")
        await strict.expect(404, method, path, code="not_found", headers={"Authorization": ""})


async def test_wrong_method_is_405_json(strict: Strict) -> None:
    for method, path in [
        ("PATCH", "/v1/databases"),
        ("DELETE", "/v1/databases"),
        ("PUT", "/v1/databases"),
        ("GET", "/v1/databases/x/search"),
        ("PATCH", "/v1/databases/x/vectors/v"),
        ("POST", "/health"),
        ("DELETE", "/v1/databases/x/vectors"),
    ]:
        await strict.expect(405, method, path, code="method_not_allowed")


async def test_unsupported_content_type_is_refused_with_json(strict: Strict) -> None:
    db = await _db_with_vector(strict)
    data = await strict.expect(
        415,
        "POST",
        f"/v1/databases/{db}/vectors",
        raw=b"id=v2&values=1",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert data["error"] == "unsupported_media_type"
    assert await strict.count(db) == 1


async def test_json_content_type_with_empty_body_on_get_and_delete(strict: Strict) -> None:
    """The reference client sends Content-Type: application/json on every call (API.md §0)."""
    db = await _db_with_vector(strict)
    p = f"/v1/databases/{db}"
    hdr = {"Content-Type": "application/json"}
    for path in (
        "/v1/databases",
        p,
        p + "/vectors",
        p + "/vectors/v1",
        p + "/indexes",
        "/status",
        "/health",
    ):
        st, _ = await strict.get(path, headers=hdr, raw=b"")
        assert st == 200, path
    await strict.expect(200, "DELETE", p + "/vectors/v1", headers=hdr, raw=b"")
    await strict.expect(200, "DELETE", p, headers=hdr, raw=b"")
    await strict.expect(404, "GET", p, headers=hdr, raw=b"")


async def test_rejected_writes_leave_nothing_half_written(strict: Strict) -> None:
    db = await strict.create_db(3)
    p = f"/v1/databases/{db}"
    good = [{"id": f"g{i}", "values": [i, 1, 0], "metadata": {"i": i}} for i in range(20)]
    await strict.expect(201, "POST", p + "/vectors/batch", {"vectors": good})
    bad_batches = [
        good[:5] + [{"id": "x", "values": [1, 2]}],
        good[:5] + [{"id": "x", "values": [1, 2, 3], "metadata": "not-an-object"}],
        good[:5] + [{"id": "x"}],
        good[:5] + ["not-an-object"],
        [{"id": "new1", "values": [9, 9, 9]}, {"id": "", "values": [1, 2, 3]}],
    ]
    for vectors in bad_batches:
        await strict.expect(400, "POST", p + "/vectors/batch", {"vectors": vectors})
    await strict.expect(404, "GET", p + "/vectors/new1")
    await strict.expect(400, "PUT", p + "/vectors/g3", {"values": [1, 2, 3], "metadata": 7})
    await strict.expect(404, "PUT", p + "/vectors/absent", {"values": [1, 2, 3]})
    await strict.expect(404, "DELETE", p + "/vectors/absent")
    assert await strict.count(db) == 20
    st, page = await strict.get(p + "/vectors?limit=100")
    assert {v["id"] for v in page["vectors"]} == {f"g{i}" for i in range(20)}
    st, v = await strict.get(p + "/vectors/g3")
    assert v["values"] == [3.0, 1.0, 0.0] and v["metadata"] == {"i": 3}
    # searches still see exactly the good vectors (the index was not touched either)
    st, res = await strict.post(p + "/search", {"queryVector": [9, 9, 9], "topK": 100})
    assert st == 200 and {r["vectorId"] for r in res["results"]} <= {f"g{i}" for i in range(20)}
    assert len(res["results"]) == 20


# -- seeded fuzz: mutated bodies on every body route --------------------------------------------

_ATOMS: list[Any] = [
    None,
    True,
    False,
    0,
    -1,
    1,
    1.5,
    -1e30,
    1e38,
    2**63,
    -(2**63),
    "",
    "x",
    "é/",
    "\x00",
    [],
    {},
    [1],
    [[]],
    {"a": {}},
    ["a"],
    "1e999",
    2**64 - 1,
]
_KEYS = [
    "a",
    "$and",
    "$or",
    "$not",
    "$in",
    "$gt",
    "$exists",
    "$contains",
    "$all",
    "conditions",
    "combination",
    "field",
    "op",
    "value",
    "values",
    "metadata.a",
    "EQUALS",
]


def _random_json(rng: random.Random, depth: int = 0) -> Any:
    r = rng.random()
    if depth > 2 or r < 0.6:
        return rng.choice(_ATOMS)
    if r < 0.8:
        return [_random_json(rng, depth + 1) for _ in range(rng.randint(0, 4))]
    return {rng.choice(_KEYS): _random_json(rng, depth + 1) for _ in range(rng.randint(0, 3))}


async def test_mutated_bodies_never_get_a_500(strict: Strict) -> None:
    rng = random.Random(20240611)
    db = await strict.create_db(3)
    p = f"/v1/databases/{db}"
    await strict.expect(
        201,
        "POST",
        p + "/vectors/batch",
        {
            "vectors": [
                {"id": f"v{i}", "values": [i, 1, -i], "metadata": {"a": i, "b": str(i)}}
                for i in range(30)
            ]
        },
    )
    [idx] = (await strict.get(p + "/indexes"))[1]
    valid: list[tuple[str, str, dict[str, Any]]] = [
        (
            "POST",
            "/v1/databases",
            {
                "name": "n",
                "vectorDimension": 3,
                "indexType": "hnsw",
                "metric": "cosine",
                "indexParameters": {"M": 8},
            },
        ),
        (
            "PUT",
            p,
            {
                "name": "n",
                "description": "d",
                "indexType": "flat",
                "indexParameters": {"efSearch": 5},
            },
        ),
        ("POST", p + "/vectors", {"id": "z", "values": [1, 2, 3], "metadata": {"a": 1}}),
        ("PUT", p + "/vectors/v1", {"values": [1, 2, 3], "metadata": {"a": 1}}),
        ("POST", p + "/vectors/batch", {"vectors": [{"id": "q", "values": [1, 2, 3]}]}),
        ("POST", p + "/vectors/batch-get", {"ids": ["v1"]}),
        (
            "POST",
            p + "/search",
            {
                "queryVector": [1, 2, 3],
                "topK": 5,
                "threshold": 0.1,
                "filters": {"a": 1},
                "includeMetadata": True,
                "efSearch": 10,
            },
        ),
        ("POST", p + "/search/advanced", {"queryVector": [1, 2, 3], "filters": {"a": {"$gt": 1}}}),
        ("POST", p + "/indexes", {"type": "hnsw", "parameters": {"M": 8}, "name": "x"}),
        ("PUT", p + "/indexes/" + idx["indexId"], {"parameters": {"efSearch": 20}}),
    ]
    for i in range(600):
        method, path, body = rng.choice(valid)
        mutated = dict(body)
        key = rng.choice([*mutated, "extra"])
        if rng.random() < 0.2:
            mutated.pop(key, None)
        else:
            mutated[key] = _random_json(rng)
        if "filters" in body and rng.random() < 0.5:
            mutated["filters"] = _random_json(rng)
        await strict.call(method, path, raw=orjson.dumps(mutated))  # Strict fails on a 5xx
        if i % 100 == 0:
            for read in (p, p + "/indexes", p + "/vectors?limit=100", "/v1/databases"):
                await strict.expect(200, "GET", read)
