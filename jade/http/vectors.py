"""/v1/databases/{db}/vectors: store, batch, batch-get, list, get, update, delete (API.md §6).

Answers holding many vectors (a list page, a batch-get, and search results with values or
metadata) are encoded vector by vector as they are read, in chunks sized to what the answer may
still hold (``Budget``, the ``max_response_bytes`` setting): one too big is refused (413
``response_too_large``) having decoded about that much, never the whole of what was asked.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import orjson
from aiohttp import web

from jade.core.decide import MISSING, Command
from jade.errors import Internal, InvalidArgument, NotFound, PayloadTooLarge
from jade.http.databases import actor_of, engine_of, get_db
from jade.http.keys import SETTINGS
from jade.http.middleware import json_response
from jade.http.validate import (
    b64_rows,
    check_id,
    check_results,
    metadata_value,
    path_id,
    query_int,
    read_json,
    vector_values,
)
from jade.stores.data import StoredVector

MAX_BATCH = 100_000
MAX_PAGE = 10_000


def vector_json(v: StoredVector, *, values: bool = True, metadata: bool = True) -> dict[str, Any]:
    out: dict[str, Any] = {"id": v.id}
    if values:
        out["values"] = v.array()
    if metadata:
        out["metadata"] = v.metadata if v.metadata is not None else {}
    return out


class Budget:
    """The bytes an answer may still hold (the ``max_response_bytes`` setting), charged as its
    parts are encoded."""

    __slots__ = ("limit", "left")

    def __init__(self, limit: int) -> None:
        self.limit = self.left = limit

    def charge(self, size: int) -> None:
        self.left -= size
        if self.left < 0:
            raise PayloadTooLarge(
                f"the answer would hold more than {self.limit} bytes (the max_response_bytes "
                "setting): ask for fewer vectors (topK, limit, ids) or leave out values or "
                "metadata; GET /vectors/export streams a whole database",
                code="response_too_large", limit=self.limit,
            )


def encode_vector(v: StoredVector, *, values: bool = True, metadata: bool = True) -> bytes:
    """``vector_json(v)`` as JSON bytes; a vector stored before its metadata's depth was bounded
    and too deep to encode is named (500), not an anonymous internal error."""
    try:
        return orjson.dumps(vector_json(v, values=values, metadata=metadata),
                            option=orjson.OPT_SERIALIZE_NUMPY)
    except orjson.JSONEncodeError as exc:
        raise Internal(
            f"vector {v.id!r} cannot be encoded ({exc}): its metadata was stored before it was "
            "bounded; overwrite or delete it", code="unservable_vector", vector_id=v.id,
        ) from None


Fetch = Callable[[int, int], tuple[list[StoredVector], int]]


def encoded_vectors(fetch: Fetch, count: int, budget: Budget,
                    encode: Callable[[StoredVector], bytes]) -> list[tuple[str, bytes]]:
    """``(id, encode(v))`` of the vectors at positions ``0 .. count`` of some sequence, read
    with ``fetch(position, n) -> (vectors, positions consumed)`` (fewer consumed than asked: the
    end) in chunks: 8 first, then as many as the budget left holds at the mean size so far, so
    about the budget is decoded before an answer too big is refused."""
    out: list[tuple[str, bytes]] = []
    pos, step, size = 0, 8, 0
    while pos < count:
        want = min(step, count - pos)
        vectors, used = fetch(pos, want)
        for v in vectors:
            b = encode(v)
            budget.charge(len(b) + 1)
            size += len(b) + 1
            out.append((v.id, b))
        pos += used
        if used < want:
            break
        step = max(1, int(budget.left / max(1.0, size / max(1, len(out)))))
    return out


def _upsert_command(
    db: dict[str, Any],
    items: list[Any],
    actor: str,
    *,
    must_exist: bool = False,
    keep_metadata: bool = False,
) -> Command:
    dim = db["dimension"]
    ids: list[str] = []
    metas: list[Any] = []
    values = np.empty((len(items), dim), dtype=np.float32)
    for i, item in enumerate(items):
        where = f"vectors[{i}]" if len(items) > 1 else "vector"
        if not isinstance(item, dict):
            raise InvalidArgument(f"{where} must be an object with id and values")
        ids.append(check_id(item.get("id"), "id"))
        if "values" in item:
            values[i] = vector_values(item["values"], dim)
        elif "valuesB64" in item:  # base64 of dim little-endian float32: no JSON floats to parse
            row = b64_rows(item["valuesB64"], dim, "valuesB64")
            if len(row) != 1:
                raise InvalidArgument(
                    f"dimension mismatch: {where}: 'valuesB64' holds {row.size} floats, the "
                    f"database expects {dim}", code="dimension_mismatch")
            values[i] = row[0]
        else:
            raise InvalidArgument(f"{where}: missing required field 'values' (or 'valuesB64')",
                                  code="missing_field")
        if "metadata" in item:
            metas.append(metadata_value(item["metadata"]))
        else:
            metas.append(MISSING if keep_metadata else None)
    raw = values.astype("<f4", copy=False).tobytes()
    return Command(
        "vec.upsert",
        {"db": db["id"], "ids": ids, "values": raw, "metadata": metas, "must_exist": must_exist},
        actor,
        size=len(raw),
    )


async def store(request: web.Request) -> web.Response:
    db = get_db(request)
    body = await read_json(request)
    cmd = _upsert_command(db, [body], actor_of(request))
    await engine_of(request).submit(cmd)
    return json_response({"status": "success", "vectorId": cmd.body["ids"][0]}, status=201)


async def batch(request: web.Request) -> web.Response:
    db = get_db(request)
    body = await read_json(request)
    vectors = body.get("vectors")
    if not isinstance(vectors, list):
        raise InvalidArgument(
            "'vectors' must be a list of {id, values, metadata?}", code="missing_field"
        )
    if not vectors:
        raise InvalidArgument("'vectors' must not be empty")
    if len(vectors) > MAX_BATCH:
        raise InvalidArgument(f"at most {MAX_BATCH} vectors per batch")
    cmd = _upsert_command(db, vectors, actor_of(request))  # all validated before anything is sent
    await engine_of(request).submit(cmd)  # one record: all of it or none of it
    return json_response({"status": "success", "count": len(vectors)}, status=201)


async def batch_get(request: web.Request) -> web.Response:
    db = get_db(request)
    body = await read_json(request)
    ids = next((body[k] for k in ("ids", "vector_ids", "vectorIds") if k in body), None)
    if ids is None:
        raise InvalidArgument("give the ids to fetch as 'ids'", code="missing_field")
    if not isinstance(ids, list) or not ids:
        raise InvalidArgument("'ids' must be a non-empty list of strings")
    if len(ids) > MAX_BATCH:
        raise InvalidArgument(f"at most {MAX_BATCH} ids per request")
    settings = request.app[SETTINGS]
    check_results(len(ids), settings, f"a batch-get of {len(ids)} ids")
    ids = [check_id(x, "ids[]") for x in ids]
    store = engine_of(request).store

    def fetch(pos: int, n: int) -> tuple[list[StoredVector], int]:
        return store.vectors(db["id"], ids[pos : pos + n]), n

    found = encoded_vectors(fetch, len(ids), Budget(settings.max_response_bytes), encode_vector)
    return json_response({"database_id": db["id"], "count": len(found),
                          "vectors": [orjson.Fragment(b) for _, b in found]})


async def list_(request: web.Request) -> web.Response:
    db = get_db(request)
    settings = request.app[SETTINGS]
    limit = query_int(request, "limit", 50, lo=1, hi=MAX_PAGE)
    offset = query_int(request, "offset", 0, lo=0, hi=10**9)
    check_results(limit, settings, f"a page of limit={limit}")
    store = engine_of(request).store

    def fetch(pos: int, n: int) -> tuple[list[StoredVector], int]:
        page = store.page(db["id"], offset + pos, n)
        return page, len(page)

    page = encoded_vectors(fetch, limit, Budget(settings.max_response_bytes), encode_vector)
    return json_response(
        {
            "vectors": [orjson.Fragment(b) for _, b in page],
            "total": db["count"],
            "limit": limit,
            "offset": offset,
        }
    )


async def get(request: web.Request) -> web.Response:
    db = get_db(request)
    vid = path_id(request)
    v = engine_of(request).store.vector(db["id"], vid)
    if v is None:
        raise NotFound("Vector not found", vector_id=vid)
    return json_response(orjson.Fragment(encode_vector(v)))


async def update(request: web.Request) -> web.Response:
    db = get_db(request)
    vid = path_id(request)
    body = await read_json(request)
    item = {"id": vid, "values": body.get("values")}
    if "values" not in body:
        raise InvalidArgument("missing required field 'values'", code="missing_field")
    if "metadata" in body:
        item["metadata"] = body["metadata"]
    cmd = _upsert_command(db, [item], actor_of(request), must_exist=True, keep_metadata=True)
    await engine_of(request).submit(cmd)
    return json_response({"status": "success", "vectorId": vid})


async def delete(request: web.Request) -> web.Response:
    db = get_db(request)
    vid = path_id(request)
    await engine_of(request).submit(
        Command("vec.delete", {"db": db["id"], "ids": [vid], "must_exist": True}, actor_of(request))
    )
    return json_response({"status": "success", "vectorId": vid})
