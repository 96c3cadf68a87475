"""Issue 15, classes 2 and 3: what is accepted can be served, and one request cannot take the
memory.

- Metadata nested ~255 levels deep was stored, then every read of that database answered 500
  (orjson stops at 255 levels): a write grant broke someone else's database. Now every write path
  refuses metadata deeper than 32 levels (400 naming the limit).
- A batch search of 10,000 queries x topK 1,000 took 3.5 GiB: queries x topK (and a page's limit,
  a batch-get's ids, a search's topK) are bounded by ``max_results_per_request`` (400), and an
  answer's bytes by ``max_response_bytes`` (413), checked as it is encoded.
"""

from __future__ import annotations

import asyncio
import base64
import time
from typing import Any

import numpy as np
import orjson
import pytest

from tests.conftest import Api, make_settings, running_server

MAX_DEPTH = 32  # jade.http.validate.MAX_METADATA_DEPTH (imported where used: the old code lacks it)


def nested(levels: int) -> dict[str, Any]:
    """Metadata ``levels`` containers deep (the metadata object itself is level 1)."""
    inner: Any = "bottom"
    for i in range(levels - 1):
        inner = {"k": inner} if i % 2 else [inner]
    return {"top": inner}


def nested_json(levels: int) -> bytes:
    """``nested(levels)`` as JSON, written by hand: orjson itself refuses to write it beyond 254."""
    opens, closes = [], []
    for i in range(levels - 1):
        opens.append('{"k":' if i % 2 else "[")
        closes.append("}" if i % 2 else "]")
    return ('{"top":' + "".join(reversed(opens)) + '"bottom"' + "".join(closes) + "}").encode()


def depth(v: object) -> int:
    if isinstance(v, dict):
        return 1 + max((depth(x) for x in v.values()), default=0)
    if isinstance(v, list):
        return 1 + max((depth(x) for x in v), default=0)
    return 0


async def reads_of(api: Api, db: str) -> dict[str, int | str]:
    """The status of every read of a database that serves metadata."""
    p = f"/v1/databases/{db}"
    out: dict[str, int | str] = {}
    out["get"], _ = await api.get(p + "/vectors/ok")
    out["list"], _ = await api.get(p + "/vectors?limit=100")
    out["batch-get"], _ = await api.post(p + "/vectors/batch-get", {"ids": ["ok", "deep"]})
    out["search"], _ = await api.post(p + "/search", {"queryVector": [1, 0], "topK": 5,
                                                      "includeMetadata": True})
    out["batch-search"], _ = await api.post(p + "/search/batch", {
        "queries": [[1, 0]], "topK": 5, "includeMetadata": True})
    try:  # a failure in the middle of the stream left it without an end
        st, body = await asyncio.wait_for(api.get(p + "/vectors/export"), 20)
    except TimeoutError:
        out["export"] = "stream never ended"
        return out
    lines = body.splitlines() if isinstance(body, str) else [orjson.dumps(body).decode()]
    out["export"] = st if all(_is_vector_line(x) for x in lines if x) else "not JSON lines"
    return out


def _is_vector_line(line: str) -> bool:
    try:
        return "id" in orjson.loads(line)
    except orjson.JSONDecodeError:
        return False


async def test_deep_metadata_is_refused_on_every_write_path(api: Api) -> None:
    db = await api.create_db(2)
    p = f"/v1/databases/{db}"
    st, body = await api.post(p + "/vectors", {"id": "ok", "values": [1, 0],
                                               "metadata": {"a": 1}})
    assert st == 201, body
    deep = nested_json(300)  # 300 levels: orjson (every answer) stops at 255
    vector = b'{"id": "deep", "values": [1, 0], "metadata": ' + deep + b"}"
    writes = {}
    writes["store"] = await api.post(p + "/vectors", raw=vector)
    writes["batch"] = await api.post(p + "/vectors/batch", raw=b'{"vectors": ['
                                     b'{"id": "deep2", "values": [1, 0]}, ' + vector + b"]}")
    writes["update"] = await api.put(p + "/vectors/ok",
                                     raw=b'{"values": [1, 0], "metadata": ' + deep + b"}")
    writes["import"] = await api.post(p + "/vectors/import", raw=vector + b"\n")

    # the harm first: one write grant must not break every read of the database
    assert await reads_of(api, db) == dict.fromkeys(
        ("get", "list", "batch-get", "search", "batch-search", "export"), 200)
    for path, (st, body) in writes.items():
        assert st == 400, (path, st, str(body)[:300])
        text = body["message"] if "message" in body else " ".join(body["errors"])
        assert f"deeper than {MAX_DEPTH} levels" in text, (path, text)
    st, got = await api.get(p + "/vectors/ok")
    assert got["metadata"] == {"a": 1}  # the refused update changed nothing
    st, _ = await api.get(p + "/vectors/deep2")
    assert st == 404  # the batch is all or nothing


async def test_metadata_depth_limit_is_exact(api: Api) -> None:
    from jade.http.validate import MAX_METADATA_DEPTH

    assert MAX_METADATA_DEPTH == MAX_DEPTH
    db = await api.create_db(2)
    p = f"/v1/databases/{db}"
    md = nested(MAX_DEPTH)
    assert depth(md) == MAX_DEPTH
    st, body = await api.post(p + "/vectors", {"id": "edge", "values": [1, 0], "metadata": md})
    assert st == 201, body
    st, got = await api.get(p + "/vectors/edge")
    assert st == 200 and got["metadata"] == md
    st, body = await api.post(p + "/vectors", {"id": "over", "values": [1, 0],
                                               "metadata": nested(MAX_DEPTH + 1)})
    assert st == 400 and body["error"] == "metadata_too_deep" and body["limit"] == MAX_DEPTH


async def test_siblings_stored_values_stay_servable(api: Api) -> None:
    db = await api.create_db(2)
    p = f"/v1/databases/{db}"
    for raw in (b'{"id": "n", "values": [1, 0], "metadata": {"x": NaN}}',
                b'{"id": "n", "values": [1, 0], "metadata": {"x": 1e400}}',
                b'{"id": "n", "values": [1, Infinity]}',
                b'{"id": "n", "values": [1, 0], "metadata": {"x": "\\ud800"}}',
                b'{"id": "n", "values": [1, 0], "metadata": {"\\udfff": 1}}'):
        st, body = await api.post(p + "/vectors", raw=raw)
        assert st == 400 and body["error"] == "invalid_json", (raw, body)
    for bad_id in ("a\u0000b", "x" * 300, "a/b", "..", ""):
        st, body = await api.post(p + "/vectors", {"id": bad_id, "values": [1, 0]})
        assert st == 400, (bad_id, body)
    odd = {"k" * 100_000: "huge key", "big": 2**64, "neg": -(2**63) - 1, "nul": "a\u0000b",
           "tiny": 5e-324, "": "empty key"}
    raw = b'{"id": "odd", "values": [1, 0], "metadata": {' + b", ".join(  # orjson: no 2**64
        orjson.dumps(k) + b": " + str(v).encode() if isinstance(v, int) else
        orjson.dumps(k) + b": " + orjson.dumps(v) for k, v in odd.items()) + b"}}"
    st, body = await api.post(p + "/vectors", raw=raw)
    assert st == 201, body
    st, got = await api.get(p + "/vectors/odd")
    assert st == 200 and got["metadata"]["nul"] == "a\u0000b"
    assert got["metadata"]["big"] == float(2**64) and len(got["metadata"]) == len(odd)
    assert (await reads_of(api, db))["list"] == 200


async def test_import_refuses_a_dimension_mismatch_in_base64(api: Api) -> None:
    db = await api.create_db(2)
    p = f"/v1/databases/{db}"
    two_rows = base64.b64encode(np.array([1, 0, 0, 1], dtype="<f4").tobytes()).decode()
    one_row = base64.b64encode(np.array([0.5, 0.5], dtype="<f4").tobytes()).decode()
    lines = b"\n".join(orjson.dumps(x) for x in (
        {"id": "twice", "valuesB64": two_rows}, {"id": "fine", "valuesB64": one_row}))
    st, body = await api.post(p + "/vectors/import", raw=lines)
    assert st == 201 and body["imported"] == 1 and body["failed"] == 1, body
    assert "dimension mismatch" in body["errors"][0], body
    st, _ = await api.get(p + "/vectors/twice")
    assert st == 404  # never stored as its first row


async def store_many(api: Api, db: str, n: int, dim: int, metadata: Any = None,
                     per_request: int = 500) -> None:
    rng = np.random.default_rng(3)
    rows = rng.standard_normal((n, dim)).astype(np.float32).tolist()
    for i in range(0, n, per_request):  # < 1 MB a request (aiohttp warns beyond)
        vectors = [{"id": f"v{j}", "values": rows[j],
                    **({"metadata": metadata(j)} if metadata else {})}
                   for j in range(i, min(n, i + per_request))]
        st, body = await api.post(f"/v1/databases/{db}/vectors/batch", {"vectors": vectors})
        assert st == 201, body


async def test_batch_search_queries_times_topk_is_bounded(api: Api) -> None:
    """The default bound, 100,000 results: 200 queries x topK 1,000 is refused before any
    work (it was answered, ~10 MB; 10,000 x 1,000 took 3.5 GiB), 100 x 1,000 is served."""
    db = await api.create_db(4)
    await store_many(api, db, 1000, 4)
    p = f"/v1/databases/{db}/search/batch"
    queries = np.random.default_rng(4).standard_normal((200, 4)).round(3).tolist()
    st, body = await api.post(p, {"queries": queries, "topK": 1000})
    assert st == 400, (st, str(body)[:200])
    assert body["error"] == "too_many_results" and body["limit"] == 100_000
    assert "200 queries x topK 1000" in body["message"]
    assert "max_results_per_request" in body["message"]
    st, body = await api.post(p, {"queries": queries[:100], "topK": 1000})
    assert st == 200 and body["count"] == 100 and len(body["results"][0]["results"]) == 1000


async def test_answers_are_bounded_in_results_and_bytes(tmp_path: Any) -> None:
    settings = make_settings(tmp_path, max_results_per_request=500,
                             max_response_bytes=256 * 1024)
    async with running_server(settings) as srv:
        api = srv.user
        db = await api.create_db(4)
        p = f"/v1/databases/{db}"
        await store_many(api, db, 600, 4, metadata=lambda j: {"text": f"{j:05d}" * 1600},
                         per_request=100)
        q = [1.0, 0.5, 0.25, 0.0]
        ids = [f"v{j}" for j in range(600)]

        # results: more than 500 asked for is refused before any work
        refused = {
            "list": await api.get(p + "/vectors?limit=501"),
            "batch-get": await api.post(p + "/vectors/batch-get", {"ids": ids[:501]}),
            "search": await api.post(p + "/search", {"queryVector": q, "topK": 501}),
            "batch-search": await api.post(p + "/search/batch",
                                           {"queries": [q, q, q], "topK": 200}),
        }
        for what, (st, body) in refused.items():
            assert st == 400 and body["error"] == "too_many_results", (what, st, body)
            assert body["limit"] == 500 and "max_results_per_request" in body["message"]

        # bytes: 8 KB of metadata a vector, 256 KiB an answer: 30 fit, 60 do not
        too_big = {
            "list": await api.get(p + "/vectors?limit=60"),
            "batch-get": await api.post(p + "/vectors/batch-get", {"ids": ids[:60]}),
            "search": await api.post(p + "/search", {"queryVector": q, "topK": 60,
                                                     "includeMetadata": True}),
            "batch-search": await api.post(p + "/search/batch", {
                "queries": [q, [0, 0, 1, 1]], "topK": 60, "includeMetadata": True}),
        }
        for what, (st, body) in too_big.items():
            assert st == 413 and body["error"] == "response_too_large", (what, st, body)
            assert body["limit"] == 256 * 1024 and "max_response_bytes" in body["message"]
        fine = {
            "list": await api.get(p + "/vectors?limit=30"),
            "batch-get": await api.post(p + "/vectors/batch-get", {"ids": ids[:30]}),
            "search": await api.post(p + "/search", {"queryVector": q, "topK": 30,
                                                     "includeMetadata": True}),
            "search-ids": await api.post(p + "/search", {"queryVector": q, "topK": 500,
                                                         "threshold": -1}),
            "batch-search": await api.post(p + "/search/batch", {
                "queries": [q], "topK": 30, "includeMetadata": True}),
        }
        for what, (st, body) in fine.items():
            assert st == 200, (what, st, str(body)[:200])
        assert len(fine["list"][1]["vectors"]) == 30
        assert fine["list"][1]["vectors"][0]["metadata"]["text"].startswith("00000")
        assert len(fine["batch-get"][1]["vectors"]) == 30
        results = fine["batch-search"][1]["results"][0]["results"]
        assert len(results) == 30 and len(results[0]["vector"]["metadata"]["text"]) == 8000
        assert len(fine["search-ids"][1]["results"]) == 500
        st, one = await api.get(p + "/vectors/v1")  # one vector is always served
        assert st == 200 and one["metadata"]["text"].startswith("00001")


def test_batch_search_slices_stop_at_the_deadline() -> None:
    from jade.http.bulk import _search_slices
    from jade.indexes.flat import FlatIndex
    from jade.indexes.live import QueryTimeout

    rng = np.random.default_rng(5)
    index = FlatIndex(64, "cosine", capacity=20_000)
    index.add(np.arange(20_000, dtype=np.int64),
              rng.standard_normal((20_000, 64)).astype(np.float32))
    qs = rng.standard_normal((300, 64)).astype(np.float32)
    labels, scores = _search_slices(index, qs, 5, None, time.monotonic() + 60)
    assert labels.shape == (300, 5) and scores.shape == (300, 5)
    assert np.array_equal(labels[7], index.search(qs[7], 5)[0])
    with pytest.raises(QueryTimeout):
        _search_slices(index, qs, 5, None, time.monotonic() - 1)
    many = np.repeat(qs, 40, axis=0)  # 12,000 exact scans of 20,000 vectors: seconds
    t0 = time.monotonic()
    with pytest.raises(QueryTimeout):
        _search_slices(index, many, 5, None, time.monotonic() + 0.2)
    assert time.monotonic() - t0 < 1.5


async def test_an_export_failing_midway_is_cut_short_not_left_open(
        api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    """A vector that cannot be encoded (metadata stored before the depth bound) fails the export
    after its 200 is sent: the connection is cut, so the client sees an incomplete stream at
    once instead of one that never ends."""
    import aiohttp

    from jade.errors import Internal
    from jade.http import bulk

    db = await api.create_db(2)
    st, _ = await api.post(f"/v1/databases/{db}/vectors", {"id": "a", "values": [1, 0]})
    assert st == 201

    def unservable(v: Any, **kw: Any) -> bytes:
        raise Internal(f"vector {v.id!r} cannot be encoded", code="unservable_vector")

    monkeypatch.setattr(bulk, "encode_vector", unservable)
    with pytest.raises(aiohttp.ClientPayloadError):
        await asyncio.wait_for(api.get(f"/v1/databases/{db}/vectors/export"), 20)
