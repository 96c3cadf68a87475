"""/v1/databases/{db}/vectors: store, batch, batch-get, list, get, update, delete (API.md §6)."""

from __future__ import annotations

from typing import Any

import numpy as np
from aiohttp import web

from jade.core.decide import MISSING, Command
from jade.errors import InvalidArgument, NotFound
from jade.http.databases import actor_of, engine_of, get_db
from jade.http.middleware import json_response
from jade.http.validate import (
    check_id,
    metadata_value,
    path_id,
    query_int,
    read_json,
    vector_values,
)
from jade.stores.data import StoredVector

MAX_BATCH = 100_000


def vector_json(v: StoredVector, *, values: bool = True, metadata: bool = True) -> dict[str, Any]:
    out: dict[str, Any] = {"id": v.id}
    if values:
        out["values"] = v.array()
    if metadata:
        out["metadata"] = v.metadata if v.metadata is not None else {}
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
        if "values" not in item:
            raise InvalidArgument(f"{where}: missing required field 'values'", code="missing_field")
        values[i] = vector_values(item["values"], dim)
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
    ids = [check_id(x, "ids[]") for x in ids]
    found = engine_of(request).store.vectors(db["id"], ids)
    return json_response(
        {"database_id": db["id"], "count": len(found), "vectors": [vector_json(v) for v in found]}
    )


async def list_(request: web.Request) -> web.Response:
    db = get_db(request)
    limit = query_int(request, "limit", 50, lo=1, hi=10000)
    offset = query_int(request, "offset", 0, lo=0, hi=10**9)
    page = engine_of(request).store.page(db["id"], offset, limit)
    return json_response(
        {
            "vectors": [vector_json(v) for v in page],
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
    return json_response(vector_json(v))


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
