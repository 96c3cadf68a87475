"""/v1/databases/{db}/indexes (API.md §8). A database serves searches from its most recently
created index; creating one rebuilds the serving index, updating ``efSearch`` applies at once,
updating ``M``/``efConstruction`` rebuilds, deleting the last one falls back to exact search.
``POST .../indexes/{iid}/tune`` chooses ``efSearch`` from a recall target (``jade/indexes/tune.py``)
and, with ``apply``, sets it like an update."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from aiohttp import web

from jade.core.decide import Command
from jade.errors import Conflict, InvalidArgument, NotFound, Unavailable
from jade.http import schemas as S
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
from jade.http.search import deadline_of, query_timeout
from jade.http.validate import parsed, present, vector_rows
from jade.indexes.live import QueryTimeout
from jade.indexes.projection import catalog_spec
from jade.indexes.tune import tune_ef
from jade.stores.data import serving_index

MAX_TUNE_QUERIES = 2000


def index_json(db: dict[str, Any], idx: dict[str, Any], request: web.Request) -> dict[str, Any]:
    serving = serving_index(db)
    params = dict(idx["parameters"])
    if serving is not None and serving["id"] == idx["id"] and idx["kind"] == "hnsw":
        spec = catalog_spec(db)
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
    req = await parsed(request, S.CreateIndex)
    requested, kind = index_type(req.type)
    params = index_parameters(present(req.parameters), "parameters")
    if req.name is not None and len(req.name) > 256:
        raise InvalidArgument("'name' is longer than 256 characters")
    idx = new_index(requested, kind, params, req.name or "")
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
    req = await parsed(request, S.UpdateIndex)
    params = index_parameters(present(req.parameters), "parameters")
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


async def tune(request: web.Request) -> web.Response:
    """Measure recall@topK of the caller's sample ``queries`` against exact search, and find
    the smallest ``efSearch`` reaching ``targetRecall``; ``apply`` sets it (an index update
    through the log, so replicas and restarts keep it)."""
    db = get_db(request)
    iid = request.match_info["iid"]
    idx = _find(db, iid)
    req = await parsed(request, S.Tune)  # targetRecall in (0, 1], 1 to 2000 queries
    target = req.targetRecall
    k = 10 if req.topK is None else req.topK
    apply = bool(req.apply)
    queries = vector_rows(req.queries, db["dimension"], "queries")
    serving = serving_index(db)
    if serving is None or serving["id"] != iid:
        raise Conflict("only the index serving the database's searches can be tuned",
                       code="index_not_serving")
    if idx["kind"] != "hnsw":
        raise InvalidArgument(f"a {idx['kind']} index answers exactly: nothing to tune",
                              code="not_applicable")
    live = engine_of(request).indexes.get(db["id"])
    if live is None:
        raise Unavailable("the index of this database is not loaded yet")
    if len(live) < k:
        raise InvalidArgument(f"tuning needs at least topK={k} vectors; the database has "
                              f"{len(live)}", code="not_enough_vectors")
    before = catalog_spec(db).ef_search
    t0 = time.perf_counter()
    settings = request.app[SETTINGS]
    try:
        result = await asyncio.get_running_loop().run_in_executor(
            None, tune_ef, live.index, live.metric, live.meta, queries, target, k,
            deadline_of(settings))
    except QueryTimeout:
        raise query_timeout(settings) from None
    applied = False
    if apply and result.ef is not None and result.ef != before:
        await engine_of(request).submit(Command(
            "index.update",
            {"db": db["id"], "index_id": iid, "parameters": {"efSearch": result.ef}},
            actor_of(request),
        ))
        applied = True
    return json_response({
        "indexId": iid,
        "databaseId": db["id"],
        "targetRecall": target,
        "topK": k,
        "queries": result.queries,
        "reached": result.ef is not None,
        "efSearch": result.ef,
        "recall": result.recall,
        "previousEfSearch": before,
        "applied": applied,
        "curve": [{"efSearch": p.ef, "recall": p.recall, "queriesPerSecond": p.qps}
                  for p in result.curve],
        "seconds": round(time.perf_counter() - t0, 3),
    })
