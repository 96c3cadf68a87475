"""/v1/databases/{db}/indexes (API.md §8). A database serves searches from its most recently
created index; creating one rebuilds the serving index, updating ``efSearch`` applies at once,
updating ``M``/``efConstruction`` rebuilds, deleting the last one falls back to exact search."""

from __future__ import annotations

import time
from typing import Any

from aiohttp import web

from jade.core.decide import Command
from jade.errors import InvalidArgument, NotFound
from jade.http.databases import (
    actor_of,
    engine_of,
    get_db,
    index_parameters,
    index_type,
    new_index,
)
from jade.http.keys import SETTINGS
from jade.http.middleware import json_response
from jade.http.validate import opt_str, read_json
from jade.indexes.manager import spec_of
from jade.stores.data import serving_index


def index_json(db: dict[str, Any], idx: dict[str, Any], request: web.Request) -> dict[str, Any]:
    serving = serving_index(db)
    params = dict(idx["parameters"])
    if serving is not None and serving["id"] == idx["id"] and idx["kind"] == "hnsw":
        spec = spec_of(db, request.app[SETTINGS])
        params = {
            "M": spec.m,
            "efConstruction": spec.ef_construction,
            "efSearch": spec.ef_search,
            **params,
        }
    return {
        "indexId": idx["id"],
        "databaseId": db["id"],
        "name": idx.get("name", ""),
        "type": idx["requested"],
        "servedBy": idx["kind"],
        "status": "active" if serving is not None and serving["id"] == idx["id"] else "inactive",
        "parameters": params,
        # indexes made by a database PUT before new_index carried timestamps have none
        "createdAt": idx.get("created_at", db["updated_at"]),
        "updatedAt": idx.get("updated_at", idx.get("created_at", db["updated_at"])),
    }


def _find(db: dict[str, Any], iid: str) -> dict[str, Any]:
    for idx in db["indexes"]:
        if idx["id"] == iid:
            return idx  # type: ignore[no-any-return]
    raise NotFound("Index not found", index_id=iid)


async def create(request: web.Request) -> web.Response:
    db = get_db(request)
    body = await read_json(request)
    if "type" not in body:
        raise InvalidArgument("missing required field 'type'", code="missing_field")
    requested, kind = index_type(body["type"])
    params = index_parameters(body.get("parameters"), "parameters")
    idx = new_index(requested, kind, params, opt_str(body, "name", max_len=256))
    await engine_of(request).submit(
        Command("index.create", {"db": db["id"], "index": idx}, actor_of(request))
    )
    db = get_db(request)
    return json_response(index_json(db, _find(db, idx["id"]), request), status=201)


async def list_(request: web.Request) -> web.Response:
    db = get_db(request)
    return json_response([index_json(db, i, request) for i in db["indexes"]])


async def get(request: web.Request) -> web.Response:
    db = get_db(request)
    return json_response(index_json(db, _find(db, request.match_info["iid"]), request))


async def update(request: web.Request) -> web.Response:
    db = get_db(request)
    iid = request.match_info["iid"]
    _find(db, iid)
    body = await read_json(request)
    if "parameters" not in body:
        raise InvalidArgument("missing required field 'parameters'", code="missing_field")
    params = index_parameters(body["parameters"], "parameters")
    if not params:
        raise InvalidArgument("'parameters' must set M, efConstruction or efSearch")
    await engine_of(request).submit(
        Command(
            "index.update",
            {"db": db["id"], "index_id": iid, "parameters": params},
            actor_of(request),
        )
    )
    return json_response(
        {
            "indexId": iid,
            "databaseId": db["id"],
            "status": "updated",
            "updatedAt": int(time.time() * 1000),
        }
    )


async def delete(request: web.Request) -> web.Response:
    db = get_db(request)
    iid = request.match_info["iid"]
    await engine_of(request).submit(
        Command("index.delete", {"db": db["id"], "index_id": iid}, actor_of(request))
    )
    return json_response(
        {
            "indexId": iid,
            "databaseId": db["id"],
            "status": "deleted",
            "deletedAt": int(time.time() * 1000),
        }
    )
