"""API.md §6: vectors — store, batch, batch-get, list, get, update, delete."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from tests.conftest import Api
from tests.test_http_errors import Strict


@pytest.fixture
def strict(api: Api) -> Strict:
    return Strict(api)


def same_f32(a: list[float], b: list[float]) -> bool:
    """Equal as float32 (the server stores float32 and prints their shortest form)."""
    return bool(np.array_equal(np.asarray(a, dtype=np.float32), np.asarray(b, dtype=np.float32)))


async def test_store_is_201_and_get_returns_id_and_full_values(strict: Strict) -> None:
    db = await strict.create_db(128)
    p = f"/v1/databases/{db}"
    values = [((i * 37) % 101) / 101 - 0.5 for i in range(128)]
    st, body = await strict.post(
        p + "/vectors", {"id": "vec_1", "values": values, "metadata": {"category": "test"}}
    )
    assert st == 201 and body == {"status": "success", "vectorId": "vec_1"}
    st, got = await strict.get(p + "/vectors/vec_1")
    assert st == 200
    assert got["id"] == "vec_1" and len(got["values"]) == 128
    assert same_f32(got["values"], values)
    assert got["metadata"] == {"category": "test"}
    assert await strict.count(db) == 1


async def test_metadata_is_optional_and_any_json_round_trips(strict: Strict) -> None:
    db = await strict.create_db(2)
    p = f"/v1/databases/{db}"
    await strict.expect(201, "POST", p + "/vectors", {"id": "plain", "values": [1, 2]})
    st, got = await strict.get(p + "/vectors/plain")
    assert got["metadata"] == {}
    md = {
        "price": "9.99",
        "n": 3,
        "f": 2.5,
        "ok": True,
        "no": False,
        "none": None,
        "tags": ["a", 1, None],
        "nested": {"deep": {"x": [1, {"y": "z"}]}},
        "ü": "ñ",
        "empty": {},
        "big": 2**53,
    }
    await strict.expect(
        201, "POST", p + "/vectors", {"id": "rich", "values": [1, 2], "metadata": md}
    )
    st, got = await strict.get(p + "/vectors/rich")
    assert got["metadata"] == md
    await strict.expect(
        201, "POST", p + "/vectors", {"id": "nullmd", "values": [1, 2], "metadata": None}
    )
    st, got = await strict.get(p + "/vectors/nullmd")
    assert got["metadata"] == {}
    for bad in ("str", 5, [1], True):
        await strict.expect(
            400, "POST", p + "/vectors", {"id": "x", "values": [1, 2], "metadata": bad}
        )
    assert await strict.count(db) == 3


async def test_five_values_into_a_128_dim_database_is_400(strict: Strict) -> None:
    db = await strict.create_db(128)
    p = f"/v1/databases/{db}"
    data = await strict.expect(
        400,
        "POST",
        p + "/vectors",
        {"id": "short", "values": [0.1, 0.2, 0.3, 0.4, 0.5]},
        code="dimension_mismatch",
    )
    assert "128" in data["message"]
    await strict.expect(400, "POST", p + "/vectors", {"id": "long", "values": [0.0] * 129})
    await strict.expect(404, "GET", p + "/vectors/short")
    assert await strict.count(db) == 0


async def test_integer_values_are_accepted_as_floats(strict: Strict) -> None:
    db = await strict.create_db(3)
    p = f"/v1/databases/{db}"
    await strict.expect(201, "POST", p + "/vectors", {"id": "i", "values": [1, -2, 0]})
    st, got = await strict.get(p + "/vectors/i")
    assert got["values"] == [1.0, -2.0, 0.0]


async def test_store_on_existing_id_overwrites(strict: Strict) -> None:
    db = await strict.create_db(2)
    p = f"/v1/databases/{db}"
    await strict.expect(
        201, "POST", p + "/vectors", {"id": "a", "values": [1, 0], "metadata": {"v": 1}}
    )
    await strict.expect(201, "POST", p + "/vectors", {"id": "a", "values": [0, 1]})
    st, got = await strict.get(p + "/vectors/a")
    assert got["values"] == [0.0, 1.0] and got["metadata"] == {}
    assert await strict.count(db) == 1
    st, res = await strict.post(p + "/search", {"queryVector": [0, 1], "topK": 5})
    assert [r["vectorId"] for r in res["results"]] == ["a"]
    assert res["results"][0]["score"] == pytest.approx(1.0, abs=1e-5)


async def test_missing_vector_is_exactly_404_before_and_after_delete(strict: Strict) -> None:
    db = await strict.create_db(3)
    p = f"/v1/databases/{db}"
    data = await strict.expect(404, "GET", p + "/vectors/nonexistent_vector")
    assert "not found" in data["message"].lower()
    await strict.expect(201, "POST", p + "/vectors", {"id": "v", "values": [1, 2, 3]})
    await strict.expect(201, "POST", p + "/vectors", {"id": "w", "values": [3, 2, 1]})
    st, body = await strict.delete(p + "/vectors/v")
    assert st == 200 and body["status"] == "success"
    await strict.expect(404, "GET", p + "/vectors/v")
    await strict.expect(404, "DELETE", p + "/vectors/v")
    await strict.expect(404, "PUT", p + "/vectors/v", {"values": [1, 2, 3]})
    assert await strict.count(db) == 1
    st, res = await strict.post(p + "/search", {"queryVector": [1, 2, 3], "topK": 10})
    assert [r["vectorId"] for r in res["results"]] == ["w"]
    st, res = await strict.post(p + "/vectors/batch-get", {"ids": ["v", "w"]})
    assert [v["id"] for v in res["vectors"]] == ["w"]
    # a deleted id can be stored again
    await strict.expect(201, "POST", p + "/vectors", {"id": "v", "values": [1, 2, 3]})
    st, res = await strict.post(p + "/search", {"queryVector": [1, 2, 3], "topK": 1})
    assert res["results"][0]["vectorId"] == "v"
    assert await strict.count(db) == 2


async def test_put_vector_replaces_values_and_keeps_or_replaces_metadata(strict: Strict) -> None:
    db = await strict.create_db(128)
    p = f"/v1/databases/{db}"
    await strict.expect(
        201, "POST", p + "/vectors", {"id": "u", "values": [0.1] * 128, "metadata": {"tag": "old"}}
    )
    st, body = await strict.put(p + "/vectors/u", {"values": [0.9] * 128})
    assert st == 200 and body["status"] == "success"
    st, got = await strict.get(p + "/vectors/u")
    assert abs(got["values"][0] - 0.9) < 0.01 and len(got["values"]) == 128
    assert got["metadata"] == {"tag": "old"}  # kept when absent
    await strict.expect(
        200, "PUT", p + "/vectors/u", {"values": [0.5] * 128, "metadata": {"tag": "new"}}
    )
    st, got = await strict.get(p + "/vectors/u")
    assert got["values"][0] == 0.5 and got["metadata"] == {"tag": "new"}
    assert await strict.count(db) == 1


async def test_put_errors_change_nothing(strict: Strict) -> None:
    db = await strict.create_db(3)
    p = f"/v1/databases/{db}"
    await strict.expect(
        201, "POST", p + "/vectors", {"id": "u", "values": [1, 2, 3], "metadata": {"k": 1}}
    )
    await strict.expect(404, "PUT", p + "/vectors/absent", {"values": [1, 2, 3]})
    await strict.expect(404, "GET", p + "/vectors/absent")
    for body in (
        {},
        {"metadata": {"k": 2}},
        {"values": [1, 2]},
        {"values": "1,2,3"},
        {"values": [1, 2, 3], "metadata": "x"},
    ):
        await strict.expect(400, "PUT", p + "/vectors/u", body)
    st, got = await strict.get(p + "/vectors/u")
    assert got["values"] == [1.0, 2.0, 3.0] and got["metadata"] == {"k": 1}
    assert await strict.count(db) == 1


async def test_list_vectors_with_limit_and_offset(strict: Strict) -> None:
    db = await strict.create_db(2)
    p = f"/v1/databases/{db}"
    ids = [f"v{i:02d}" for i in range(60)]
    await strict.expect(
        201,
        "POST",
        p + "/vectors/batch",
        {"vectors": [{"id": v, "values": [i, 1], "metadata": {"i": i}} for i, v in enumerate(ids)]},
    )
    st, body = await strict.get(p + "/vectors")
    assert st == 200 and body["total"] == 60 and body["limit"] == 50 and body["offset"] == 0
    assert len(body["vectors"]) == 50
    first = body["vectors"][0]
    assert set(first) == {"id", "values", "metadata"} and len(first["values"]) == 2
    seen: list[str] = []
    for offset in range(0, 60, 7):
        st, page = await strict.get(f"{p}/vectors?limit=7&offset={offset}")
        assert page["limit"] == 7 and page["offset"] == offset and page["total"] == 60
        assert len(page["vectors"]) == min(7, 60 - offset)
        seen += [v["id"] for v in page["vectors"]]
    assert sorted(seen) == ids and len(set(seen)) == 60
    st, page = await strict.get(p + "/vectors?offset=60")
    assert page["vectors"] == [] and page["total"] == 60
    by_id = {v["id"]: v for v in (await strict.get(p + "/vectors?limit=100"))[1]["vectors"]}
    assert by_id["v07"]["values"] == [7.0, 1.0] and by_id["v07"]["metadata"] == {"i": 7}
    for q in (
        "limit=0",
        "limit=-5",
        "limit=x",
        "limit=10001",
        "offset=-1",
        "offset=a",
        "limit=1.5",
    ):
        await strict.expect(400, "GET", f"{p}/vectors?{q}")


async def test_batch_store_and_batch_get_with_every_key_spelling(strict: Strict) -> None:
    db = await strict.create_db(3)
    p = f"/v1/databases/{db}"
    vectors = [
        {"id": f"b{i}", "values": [i, i + 1, i + 2], "metadata": {"i": str(i)}} for i in range(10)
    ]
    vectors[3].pop("metadata")
    st, body = await strict.post(p + "/vectors/batch", {"vectors": vectors})
    assert st == 201 and body == {"status": "success", "count": 10}
    assert await strict.count(db) == 10
    for key in ("ids", "vector_ids", "vectorIds"):
        st, body = await strict.post(p + "/vectors/batch-get", {key: ["b1", "b3", "unknown", "b9"]})
        assert st == 200, key
        assert body["database_id"] == db and body["count"] == 3
        got = {v["id"]: v for v in body["vectors"]}
        assert set(got) == {"b1", "b3", "b9"}
        assert got["b9"]["values"] == [9.0, 10.0, 11.0] and got["b9"]["metadata"] == {"i": "9"}
        assert got["b3"]["metadata"] == {}
    st, body = await strict.post(p + "/vectors/batch-get", {"ids": ["nope"]})
    assert st == 200 and body["vectors"] == [] and body["count"] == 0
    bad: dict[str, Any]
    for bad in (
        {},
        {"ids": []},
        {"ids": "b1"},
        {"ids": [1]},
        {"ids": None},
        {"vector_ids": {"b1": 1}},
    ):
        await strict.expect(400, "POST", p + "/vectors/batch-get", bad)


async def test_batch_with_repeated_id_keeps_the_last(strict: Strict) -> None:
    db = await strict.create_db(2)
    p = f"/v1/databases/{db}"
    await strict.expect(
        201,
        "POST",
        p + "/vectors/batch",
        {
            "vectors": [
                {"id": "d", "values": [1, 0], "metadata": {"n": 1}},
                {"id": "e", "values": [0, 1]},
                {"id": "d", "values": [0, 5], "metadata": {"n": 2}},
            ]
        },
    )
    assert await strict.count(db) == 2
    st, got = await strict.get(p + "/vectors/d")
    assert got["values"] == [0.0, 5.0] and got["metadata"] == {"n": 2}
    st, res = await strict.post(p + "/search", {"queryVector": [1, 0], "topK": 5, "threshold": 0.5})
    assert res["results"] == []  # the old [1, 0] is gone from the index as well


async def test_batch_is_all_or_nothing(strict: Strict) -> None:
    db = await strict.create_db(8)
    p = f"/v1/databases/{db}"
    rng = np.random.default_rng(7)
    good = [
        {"id": f"g{i}", "values": rng.random(8).tolist(), "metadata": {"i": i}} for i in range(100)
    ]
    faults: list[Any] = [
        {"id": "bad", "values": [1.0] * 7},
        {"id": "bad", "values": [1.0] * 7 + ["x"]},
        {"id": "bad", "values": [1.0] * 7 + [1e39]},
        {"id": "", "values": [1.0] * 8},
        {"id": "a/b", "values": [1.0] * 8},
        {"id": "bad", "values": [1.0] * 8, "metadata": [1]},
        {"values": [1.0] * 8},
        {"id": "bad"},
        None,
    ]
    for fault in faults:
        for pos in (0, 57, 99):
            batch = list(good)
            batch[pos] = fault
            await strict.expect(400, "POST", p + "/vectors/batch", {"vectors": batch})
    assert await strict.count(db) == 0
    st, body = await strict.post(p + "/vectors/batch-get", {"ids": [g["id"] for g in good]})
    assert body["vectors"] == []
    st, res = await strict.post(p + "/search", {"queryVector": [1.0] * 8})
    assert res["results"] == []
    bad: dict[str, Any]
    for bad in ({}, {"vectors": []}, {"vectors": {"id": "x"}}, {"vectors": "x"}):
        await strict.expect(400, "POST", p + "/vectors/batch", bad)
    await strict.expect(201, "POST", p + "/vectors/batch", {"vectors": good})
    assert await strict.count(db) == 100
    st, page = await strict.get(p + "/vectors?limit=200")
    assert {v["id"] for v in page["vectors"]} == {g["id"] for g in good}


async def test_batch_into_a_deleted_database_is_404(strict: Strict) -> None:
    db = await strict.create_db(2)
    await strict.expect(200, "DELETE", f"/v1/databases/{db}")
    await strict.expect(
        404,
        "POST",
        f"/v1/databases/{db}/vectors/batch",
        {"vectors": [{"id": "a", "values": [1, 2]}]},
    )
    await strict.expect(404, "POST", f"/v1/databases/{db}/vectors", {"id": "a", "values": [1, 2]})


async def test_vectors_are_isolated_per_database(strict: Strict) -> None:
    a = await strict.create_db(2)
    b = await strict.create_db(2)
    await strict.expect(201, "POST", f"/v1/databases/{a}/vectors", {"id": "x", "values": [1, 2]})
    await strict.expect(404, "GET", f"/v1/databases/{b}/vectors/x")
    st, res = await strict.post(f"/v1/databases/{b}/search", {"queryVector": [1, 2]})
    assert res["results"] == []
    await strict.expect(200, "DELETE", f"/v1/databases/{b}")
    st, got = await strict.get(f"/v1/databases/{a}/vectors/x")
    assert st == 200 and got["values"] == [1.0, 2.0]


async def test_values_may_come_as_base64_float32(strict: Strict) -> None:
    """'valuesB64' (base64 of little-endian float32, as batch search's queriesB64 and import's
    lines take) stores exactly what the JSON numbers would, with no JSON floats to parse; bad
    input is a 400 and writes nothing."""
    import base64

    db = await strict.create_db(3)
    rows = np.array([[0.1, -2.5, 3e-5], [1.0, 0.0, 7.25]], dtype="<f4")
    b64 = [base64.b64encode(r.tobytes()).decode() for r in rows]
    st, body = await strict.post(f"/v1/databases/{db}/vectors/batch", {"vectors": [
        {"id": "a", "valuesB64": b64[0], "metadata": {"k": 1}},
        {"id": "b", "values": rows[1].tolist()}]})
    assert st == 201, body
    st, body = await strict.post(f"/v1/databases/{db}/vectors", {"id": "c", "valuesB64": b64[1]})
    assert st == 201, body
    for vid, row in (("a", rows[0]), ("b", rows[1]), ("c", rows[1])):
        st, got = await strict.get(f"/v1/databases/{db}/vectors/{vid}")
        assert st == 200 and np.array_equal(np.array(got["values"], dtype="<f4"), row), got
    two_rows = base64.b64encode(rows.tobytes()).decode()
    nan = base64.b64encode(np.array([np.nan, 0, 0], dtype="<f4").tobytes()).decode()
    for bad, code in ((two_rows, "dimension_mismatch"), (b64[0][:-4], None), ("%%%", None),
                      (nan, None), (17, None)):
        st, body = await strict.post(f"/v1/databases/{db}/vectors/batch", {"vectors": [
            {"id": "x", "values": [0, 0, 1]}, {"id": "y", "valuesB64": bad}]})
        assert st == 400, (bad, body)
        if code:
            assert body["error"] == code, body
    st, _ = await strict.get(f"/v1/databases/{db}/vectors/x")
    assert st == 404  # all or nothing
