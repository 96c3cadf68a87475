"""API.md §7.1 (search and /search/advanced) and §7.2 (the three filter dialects, coercion)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from tests.conftest import Api, make_settings
from tests.test_http_errors import Strict

ROUTES = ("/search", "/search/advanced")


@pytest.fixture
def strict(api: Api) -> Strict:
    return Strict(api)


def cosine(a: Any, b: Any) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


async def _search(s: Strict, db: str, body: dict[str, Any], route: str = "/search") -> Any:
    st, res = await s.post(f"/v1/databases/{db}{route}", body)
    assert st == 200, res
    assert isinstance(res["results"], list) and res["count"] == len(res["results"])
    scores = [r["score"] for r in res["results"]]
    assert scores == sorted(scores, reverse=True), scores
    assert len({r["vectorId"] for r in res["results"]}) == len(res["results"])
    return res


# -- basic search ------------------------------------------------------------------------------


async def test_empty_database_gives_empty_results(strict: Strict) -> None:
    for kind in ("hnsw", "flat"):
        db = await strict.create_db(4, indexType=kind)
        for route in ROUTES:
            res = await _search(strict, db, {"queryVector": [1, 2, 3, 4], "topK": 5}, route)
            assert res["results"] == [] and res["count"] == 0
            res = await _search(
                strict, db, {"queryVector": [1, 2, 3, 4], "filters": {"category": "even"}}, route
            )
            assert res["results"] == []


async def test_results_are_the_exact_nearest_sorted_and_at_most_top_k(strict: Strict) -> None:
    rng = np.random.default_rng(1)
    data = rng.normal(size=(200, 8)).astype(np.float32)
    for kind in ("hnsw", "flat"):
        db = await strict.create_db(8, indexType=kind)
        await strict.expect(
            201,
            "POST",
            f"/v1/databases/{db}/vectors/batch",
            {"vectors": [{"id": f"v{i}", "values": data[i].tolist()} for i in range(200)]},
        )
        for _ in range(5):
            q = rng.normal(size=8)
            truth = sorted(((cosine(q, data[i]), f"v{i}") for i in range(200)), reverse=True)
            for k in (1, 7, 10):
                res = await _search(
                    strict, db, {"queryVector": q.tolist(), "topK": k, "threshold": -1}
                )
                assert len(res["results"]) == k
                assert [r["vectorId"] for r in res["results"]] == [v for _, v in truth[:k]]
                for r, (score, _) in zip(res["results"], truth, strict=False):
                    assert r["score"] == pytest.approx(score, abs=1e-4)
                    assert set(r) == {"vectorId", "score"}
        res = await _search(strict, db, {"queryVector": data[5].tolist()})
        assert len(res["results"]) == 10  # default topK
        assert res["results"][0]["vectorId"] == "v5"
        assert res["results"][0]["score"] == pytest.approx(1.0, abs=1e-5)
        res = await _search(
            strict, db, {"queryVector": data[5].tolist(), "topK": 1000, "threshold": -1}
        )
        assert len(res["results"]) == 200


async def test_threshold_drops_lower_scores(strict: Strict) -> None:
    db = await strict.create_db(2)
    vectors = {
        "same": [1, 0],
        "near": [1, 0.3],
        "diag": [1, 1],
        "ortho": [0, 1],
        "back": [-1, 0.1],
        "opposite": [-1, 0],
    }
    await strict.expect(
        201,
        "POST",
        f"/v1/databases/{db}/vectors/batch",
        {"vectors": [{"id": k, "values": v} for k, v in vectors.items()]},
    )
    q = [1, 0]
    for threshold, expected in (
        (None, ["same", "near", "diag", "ortho"]),
        (0.0, ["same", "near", "diag", "ortho"]),
        (0.9, ["same", "near"]),
        (0.99999, ["same"]),
        (1.0, ["same"]),
        (-1.0, ["same", "near", "diag", "ortho", "back", "opposite"]),
    ):
        body: dict[str, Any] = {"queryVector": q, "topK": 10}
        if threshold is not None:
            body["threshold"] = threshold
        res = await _search(strict, db, body)
        got = [r["vectorId"] for r in res["results"]]
        if threshold == 1.0:  # float32 rounding may put 'same' a hair under 1.0
            assert got in (["same"], [])
            continue
        assert got == expected, (threshold, res)
        assert all(r["score"] >= (threshold or 0.0) for r in res["results"])


async def test_include_flags(strict: Strict) -> None:
    db = await strict.create_db(3)
    await strict.expect(
        201,
        "POST",
        f"/v1/databases/{db}/vectors/batch",
        {
            "vectors": [
                {"id": "a", "values": [1, 0, 0], "metadata": {"tag": "x"}},
                {"id": "b", "values": [0, 1, 0]},
            ]
        },
    )
    q = {"queryVector": [1, 0.1, 0], "topK": 2}
    for route in ROUTES:
        res = await _search(strict, db, q, route)
        assert all("vector" not in r for r in res["results"])
        res = await _search(strict, db, {**q, "includeMetadata": True}, route)
        top = res["results"][0]
        assert top["vector"] == {"id": "a", "metadata": {"tag": "x"}}
        assert res["results"][1]["vector"] == {"id": "b", "metadata": {}}
        for flag in ("includeValues", "includeVectorData"):
            res = await _search(strict, db, {**q, flag: True}, route)
            assert res["results"][0]["vector"] == {"id": "a", "values": [1.0, 0.0, 0.0]}
            res = await _search(strict, db, {**q, flag: True, "includeMetadata": True}, route)
            assert res["results"][0]["vector"] == {
                "id": "a",
                "values": [1.0, 0.0, 0.0],
                "metadata": {"tag": "x"},
            }
        # the CLI's advanced call
        res = await _search(
            strict, db, {**q, "includeMetadata": True, "includeValues": False}, route
        )
        assert "values" not in res["results"][0]["vector"]
        res = await _search(
            strict,
            db,
            {**q, "includeMetadata": False, "includeValues": False, "includeVectorData": False},
            route,
        )
        assert all("vector" not in r for r in res["results"])


async def test_euclidean_database(strict: Strict) -> None:
    for kind in ("hnsw", "flat"):
        db = await strict.create_db(2, metric="euclidean", indexType=kind)
        points = {"origin": [0, 0], "one": [1, 0], "three": [3, 0], "ten": [10, 0], "up": [0, 4]}
        await strict.expect(
            201,
            "POST",
            f"/v1/databases/{db}/vectors/batch",
            {"vectors": [{"id": k, "values": v} for k, v in points.items()]},
        )
        res = await _search(strict, db, {"queryVector": [2.9, 0], "topK": 5})
        got = [r["vectorId"] for r in res["results"]]
        q = np.array([2.9, 0])
        expected = sorted(points, key=lambda k: float(np.linalg.norm(q - np.array(points[k]))))
        assert got == expected
        for r in res["results"]:
            d = float(np.linalg.norm(q - np.array(points[r["vectorId"]])))
            assert r["score"] == pytest.approx(1 / (1 + d), abs=1e-5)
        res = await _search(strict, db, {"queryVector": [2.9, 0], "topK": 5, "threshold": 0.5})
        assert [r["vectorId"] for r in res["results"]] == ["three"]


async def test_dot_database(strict: Strict) -> None:
    for kind in ("hnsw", "flat"):
        db = await strict.create_db(2, metric="dot", indexType=kind)
        points = {"long": [5, 0], "unit": [1, 0], "side": [0.5, 3], "back": [-1, 0]}
        await strict.expect(
            201,
            "POST",
            f"/v1/databases/{db}/vectors/batch",
            {"vectors": [{"id": k, "values": v} for k, v in points.items()]},
        )
        res = await _search(strict, db, {"queryVector": [1, 0.1], "topK": 4})
        got = [(r["vectorId"], r["score"]) for r in res["results"]]
        assert [g[0] for g in got] == ["long", "unit", "side"]  # "back" is negative: dropped
        assert got[0][1] == pytest.approx(5.0, abs=1e-5)
        assert got[2][1] == pytest.approx(0.8, abs=1e-5)
        res = await _search(strict, db, {"queryVector": [1, 0.1], "topK": 4, "threshold": -1})
        assert [r["vectorId"] for r in res["results"]] == ["long", "unit", "side", "back"]


async def test_zero_vectors_do_not_break_cosine(strict: Strict) -> None:
    for kind in ("hnsw", "flat"):
        db = await strict.create_db(3, indexType=kind)
        await strict.expect(
            201,
            "POST",
            f"/v1/databases/{db}/vectors/batch",
            {"vectors": [{"id": "zero", "values": [0, 0, 0]}, {"id": "x", "values": [1, 0, 0]}]},
        )
        res = await _search(strict, db, {"queryVector": [1, 0, 0], "topK": 5, "threshold": -1})
        assert res["results"][0]["vectorId"] == "x"
        for r in res["results"]:
            assert isinstance(r["score"], float)
        res = await _search(strict, db, {"queryVector": [0, 0, 0], "topK": 5, "threshold": -1})
        for r in res["results"]:
            assert isinstance(r["score"], float)


async def test_search_after_deletes_and_updates(strict: Strict) -> None:
    db = await strict.create_db(2)
    p = f"/v1/databases/{db}"
    await strict.expect(
        201,
        "POST",
        p + "/vectors/batch",
        {"vectors": [{"id": f"v{i}", "values": [1, i / 10]} for i in range(20)]},
    )
    for i in range(0, 20, 2):
        await strict.expect(200, "DELETE", f"{p}/vectors/v{i}")
    res = await _search(strict, db, {"queryVector": [1, 0], "topK": 20})
    assert {r["vectorId"] for r in res["results"]} == {f"v{i}" for i in range(1, 20, 2)}
    await strict.expect(200, "PUT", p + "/vectors/v19", {"values": [1, 0]})
    res = await _search(strict, db, {"queryVector": [1, 0], "topK": 1})
    assert res["results"][0]["vectorId"] == "v19"
    for i in range(1, 20, 2):
        await strict.expect(200, "DELETE", f"{p}/vectors/v{i}")
    res = await _search(strict, db, {"queryVector": [1, 0], "topK": 20})
    assert res["results"] == []


async def test_search_validates_the_query(strict: Strict) -> None:
    db = await strict.create_db(4)
    p = f"/v1/databases/{db}"
    await strict.expect(
        400, "POST", p + "/search", {"queryVector": [1, 2, 3]}, code="dimension_mismatch"
    )
    await strict.expect(400, "POST", p + "/search", {"queryVector": "1,2,3,4"})
    await strict.expect(400, "POST", p + "/search", {"queryVector": None})
    await strict.expect(400, "POST", p + "/search", {"vector": [1, 2, 3, 4]})


# -- filters -----------------------------------------------------------------------------------

N = 24


def _meta(i: int) -> dict[str, Any]:
    """Metadata the way the reference client sends it (every value ``str()``-ed), plus a few
    native JSON values."""
    md: dict[str, Any] = {
        "category": "even" if i % 2 == 0 else "odd",
        "index": str(i),
        "price": str(i * 1.5),
        "n": i,
        "flag": str(i % 3 == 0),  # "True" / "False"
        "native_flag": i % 4 == 0,
        "tags": [f"t{i % 3}", "all"],
        "name": f"item-{i}",
    }
    if i % 5 == 0:
        md["opt"] = "here"
    return md


P = Callable[[int], bool]
CASES: list[tuple[Any, P]] = [
    # 1. equality map
    ({"category": "even"}, lambda i: i % 2 == 0),
    ({"category": "even", "index": "2"}, lambda i: i == 2),
    ({"metadata.category": "odd"}, lambda i: i % 2 == 1),
    ({"index": 4}, lambda i: i == 4),  # number against a stringified number
    ({"n": "7"}, lambda i: i == 7),  # string against a number
    ({"price": 3}, lambda i: i == 2),  # "3.0" == 3
    ({"flag": True}, lambda i: i % 3 == 0),  # "True"
    ({"flag": "true"}, lambda i: i % 3 == 0),
    ({"native_flag": "True"}, lambda i: i % 4 == 0),
    ({"tags": "t2"}, lambda i: i % 3 == 2),  # a list field matches any element
    ({"nope": "x"}, lambda i: False),
    ({}, lambda i: True),
    # 2. operator map
    ({"n": {"$gt": 15}}, lambda i: i > 15),
    ({"index": {"$gt": 15}}, lambda i: i > 15),  # numeric, not lexicographic ("9" > "15")
    ({"price": {"$gte": 15}}, lambda i: i * 1.5 >= 15),
    ({"price": {"$lt": "3"}}, lambda i: i * 1.5 < 3),
    ({"n": {"$lte": 2, "$ne": 1}}, lambda i: i in (0, 2)),
    ({"index": {"$in": ["1", 3, 5.0]}}, lambda i: i in (1, 3, 5)),
    ({"category": {"$nin": ["even"]}}, lambda i: i % 2 == 1),
    ({"opt": {"$nin": ["x"]}}, lambda i: True),  # missing field matches $nin
    ({"opt": {"$ne": "x"}}, lambda i: True),  # ... and $ne
    ({"opt": {"$eq": "here"}}, lambda i: i % 5 == 0),
    ({"opt": {"$exists": True}}, lambda i: i % 5 == 0),
    ({"opt": {"$exists": False}}, lambda i: i % 5 != 0),
    ({"opt": {"$gt": "a"}}, lambda i: i % 5 == 0),  # missing never matches an order op
    ({"name": {"$contains": "-1"}}, lambda i: "-1" in f"item-{i}"),
    ({"tags": {"$contains": "t1"}}, lambda i: i % 3 == 1),
    ({"tags": {"$all": ["t0", "all"]}}, lambda i: i % 3 == 0),
    ({"flag": {"$eq": "TRUE"}}, lambda i: i % 3 == 0),
    ({"$or": [{"n": {"$lt": 2}}, {"n": {"$gt": 21}}]}, lambda i: i < 2 or i > 21),
    ({"$and": [{"category": "even"}, {"n": {"$gte": 10}}]}, lambda i: i % 2 == 0 and i >= 10),
    ({"$not": {"category": "even"}}, lambda i: i % 2 == 1),
    (
        {"$or": [{"$and": [{"category": "even"}, {"n": {"$lt": 4}}]}, {"n": 19}]},
        lambda i: i in (0, 2, 19),
    ),
    ({"category": "odd", "$or": [{"n": 1}, {"n": {"$gt": 20}}]}, lambda i: i in (1, 21, 23)),
    # 3. condition list
    (
        {
            "combination": "AND",
            "conditions": [
                {"field": "metadata.category", "op": "EQUALS", "value": "even"},
                {"field": "n", "op": "GREATER_THAN", "value": "10"},
            ],
        },
        lambda i: i % 2 == 0 and i > 10,
    ),
    (
        {
            "combination": "OR",
            "conditions": [
                {"field": "category", "op": "EQUALS", "value": "odd"},
                {"field": "n", "op": "LESS_THAN", "value": 2},
            ],
        },
        lambda i: i % 2 == 1 or i == 0,
    ),
    (
        {"conditions": [{"field": "index", "op": "IN", "values": ["2", "4", 6]}]},
        lambda i: i in (2, 4, 6),
    ),
    (
        {"conditions": [{"field": "index", "op": "NOT_IN", "values": ["2", "4"]}]},
        lambda i: i not in (2, 4),
    ),
    (
        {"conditions": [{"field": "category", "op": "NOT_EQUALS", "value": "even"}]},
        lambda i: i % 2 == 1,
    ),
    (
        {"conditions": [{"field": "price", "op": "GREATER_THAN_OR_EQUAL", "value": 30}]},
        lambda i: i * 1.5 >= 30,
    ),
    (
        {"conditions": [{"field": "price", "op": "LESS_THAN_OR_EQUAL", "value": "1.5"}]},
        lambda i: i * 1.5 <= 1.5,
    ),
    (
        {"conditions": [{"field": "name", "op": "CONTAINS", "value": "m-2"}]},
        lambda i: "m-2" in f"item-{i}",
    ),
    (
        {"conditions": [{"field": "name", "op": "NOT_CONTAINS", "value": "1"}]},
        lambda i: "1" not in f"item-{i}",
    ),
    ({"conditions": [{"field": "opt", "op": "EXISTS"}]}, lambda i: i % 5 == 0),
    ({"conditions": [{"field": "opt", "op": "NOT_EXISTS"}]}, lambda i: i % 5 != 0),
    (
        {"conditions": [{"field": "name", "op": "MATCHES_REGEX", "value": "^item-1[0-2]$"}]},
        lambda i: i in (10, 11, 12),
    ),
    (
        {"conditions": [{"field": "category", "op": "equals", "value": "even"}]},
        lambda i: i % 2 == 0,
    ),
    (
        {
            "combination": "OR",
            "conditions": [
                {"field": "n", "op": "EQUALS", "value": 3},
                {
                    "combination": "AND",
                    "conditions": [
                        {"field": "category", "op": "EQUALS", "value": "even"},
                        {"field": "n", "op": "GREATER_THAN", "value": 19},
                    ],
                },
            ],
        },
        lambda i: i in (3, 20, 22),
    ),
]


@pytest.fixture
async def filter_db(strict: Strict) -> str:
    db = await strict.create_db(2)
    # every vector in the first quadrant: all cosines with [1, 1] are positive
    await strict.expect(
        201,
        "POST",
        f"/v1/databases/{db}/vectors/batch",
        {
            "vectors": [
                {"id": f"v{i}", "values": [1.0, (i + 1) / N], "metadata": _meta(i)}
                for i in range(N)
            ]
        },
    )
    return db


async def test_all_three_filter_dialects(strict: Strict, filter_db: str) -> None:
    for filters, pred in CASES:
        expected = {f"v{i}" for i in range(N) if pred(i)}
        for route in ROUTES:
            res = await _search(
                strict,
                filter_db,
                {"queryVector": [1, 1], "topK": 100, "filters": filters, "includeMetadata": True},
                route,
            )
            got = {r["vectorId"] for r in res["results"]}
            assert got == expected, (route, filters, sorted(got ^ expected))
            for r in res["results"]:
                assert r["vector"]["metadata"] == _meta(int(r["vectorId"][1:]))


async def test_filter_then_rank(strict: Strict, filter_db: str) -> None:
    q = [1.0, 0.0]  # nearest are the smallest i
    for filters, pred in CASES:
        matching = [i for i in range(N) if pred(i)]
        ranked = sorted(matching, key=lambda i: -cosine(q, [1.0, (i + 1) / N]))
        res = await _search(
            strict, filter_db, {"queryVector": q, "topK": 3, "filters": filters}, "/search/advanced"
        )
        assert [r["vectorId"] for r in res["results"]] == [f"v{i}" for i in ranked[:3]], filters


async def test_filters_follow_writes(strict: Strict, filter_db: str) -> None:
    p = f"/v1/databases/{filter_db}"
    body = {"queryVector": [1, 1], "topK": 100, "filters": {"category": "even"}}
    res = await _search(strict, filter_db, body)
    assert len(res["results"]) == N // 2
    await strict.expect(
        200, "PUT", p + "/vectors/v0", {"values": [1, 0.5], "metadata": {"category": "odd"}}
    )
    await strict.expect(200, "DELETE", p + "/vectors/v2")
    await strict.expect(
        201,
        "POST",
        p + "/vectors",
        {"id": "new", "values": [1, 1], "metadata": {"category": "even"}},
    )
    res = await _search(strict, filter_db, body)
    got = {r["vectorId"] for r in res["results"]}
    assert "v0" not in got and "v2" not in got and "new" in got
    assert len(got) == N // 2 - 1
    # PUT without metadata keeps it: still matches
    await strict.expect(200, "PUT", p + "/vectors/new", {"values": [1, 0.9]})
    res = await _search(strict, filter_db, body)
    assert "new" in {r["vectorId"] for r in res["results"]}


async def test_null_filters_mean_no_filter(strict: Strict, filter_db: str) -> None:
    res = await _search(
        strict, filter_db, {"queryVector": [1, 1], "topK": 100, "filters": None}, "/search/advanced"
    )
    assert len(res["results"]) == N


async def test_advanced_search_like_the_reference_test(strict: Strict) -> None:
    db = await strict.create_db(128)
    vectors = [
        {
            "id": f"adv_{i}",
            "values": [0.1 * (i + 1)] * 128,
            "metadata": {"category": "even" if i % 2 == 0 else "odd", "index": str(i)},
        }
        for i in range(5)
    ]
    for v in vectors:
        await strict.expect(201, "POST", f"/v1/databases/{db}/vectors", v)
    res = await _search(
        strict,
        db,
        {
            "queryVector": [0.1] * 128,
            "topK": 5,
            "filters": {"category": "even"},
            "includeMetadata": True,
            "includeValues": False,
        },
        "/search/advanced",
    )
    assert {r["vectorId"] for r in res["results"]} == {"adv_0", "adv_2", "adv_4"}
    assert all(r["vector"]["metadata"]["category"] == "even" for r in res["results"])


@pytest.mark.parametrize("kind", ["flat", "hnsw"])
async def test_filtered_searches_racing_writes_never_fail(strict: Strict, kind: str) -> None:
    """Filtered searches run off the event loop while the writer thread deletes and re-adds:
    a label that matched a moment ago may be gone when its vector is read. Never a 500, and
    never a vector deleted before the search began in the answer."""
    n, dim = 2000, 8
    rng = np.random.default_rng(11)
    db = await strict.create_db(dim, indexType=kind)
    p = f"/v1/databases/{db}"
    await strict.expect(
        201,
        "POST",
        p + "/vectors/batch",
        {
            "vectors": [
                {"id": f"v{i}", "values": rng.normal(size=dim).tolist(), "metadata": {"g": i % 2}}
                for i in range(n)
            ]
        },
    )
    deleted: set[str] = set()
    body = {
        "queryVector": [1.0] * dim,
        "topK": 20,
        "threshold": -1,
        "filters": {"g": {"$in": [0, 1]}, "x": {"$exists": False}},
    }

    async def searcher() -> None:
        for _ in range(30):
            gone = set(deleted)
            res = await _search(strict, db, body)
            assert res["strategy"] == "exact_filtered"
            assert not gone & {r["vectorId"] for r in res["results"]}

    async def deleter() -> None:
        for i in range(0, n, 20):
            await strict.expect(200, "DELETE", f"{p}/vectors/v{i}")
            deleted.add(f"v{i}")

    async def writer() -> None:
        for i in range(1, n, 40):
            await strict.expect(
                201,
                "POST",
                p + "/vectors",
                {"id": f"v{i}", "values": rng.normal(size=dim).tolist(), "metadata": {"g": 0}},
            )

    outcomes = await asyncio.gather(
        searcher(), searcher(), deleter(), writer(), return_exceptions=True
    )
    for outcome in outcomes:
        if isinstance(outcome, BaseException):
            raise outcome
    assert await strict.count(db) == n - len(deleted)


# -- where a search runs (run_search, the search_offload setting) -------------------------------
@pytest.mark.parametrize("offload, busy, inline", [
    ("auto", False, True), ("auto", True, False),
    ("never", False, True), ("never", True, True),
    ("always", False, False), ("always", True, False),
])
async def test_run_search_place(offload: str, busy: bool, inline: bool) -> None:
    import threading

    from jade.http.search import run_search

    # busy: another request is being handled (the middleware's count; the handler says so)
    here = threading.get_ident()
    ran = await run_search(threading.get_ident, bounded=True, offload=offload, alone=not busy)
    assert (ran == here) is inline
    # a filtered (unbounded) search always leaves the loop
    assert await run_search(threading.get_ident, bounded=False, offload=offload,
                            alone=not busy) != here


async def test_search_offload_setting_is_checked(tmp_path: Any) -> None:
    from jade.settings import ConfigError

    with pytest.raises(ConfigError, match="SEARCH_OFFLOAD"):
        make_settings(tmp_path, search_offload="sometimes")
    assert make_settings(tmp_path, search_offload="never").search_offload == "never"
