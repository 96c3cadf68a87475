"""/v1/databases: create, list, get, update, delete (API.md §5)."""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from jade.core.decide import Command
from jade.engine import Engine
from jade.errors import InvalidArgument, NotFound
from jade.http import schemas as S
from jade.http.keys import ACTOR, ENGINE, VISIBLE_DATABASES
from jade.http.middleware import json_response
from jade.http.validate import opt_str, parsed, present, query_of, read_json, req_str
from jade.indexes.projection import catalog_spec
from jade.stores.data import serving_index

MAX_DIMENSION = 10000
INDEX_TYPES = {"hnsw": "hnsw", "flat": "flat", "ivf": "hnsw", "lsh": "hnsw"}
DISTANCE_METRICS = {
    "cosine": "cosine",
    "euclidean": "euclidean",
    "l2": "euclidean",
    "dot": "dot",
    "dot_product": "dot",
    "dotproduct": "dot",
    "ip": "dot",
    "inner_product": "dot",
}
PARAM_RANGES = {"M": (2, 128), "efConstruction": (4, 4096), "efSearch": (1, 10000)}


def iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def engine_of(request: web.Request) -> Engine:
    return request.app[ENGINE]


def actor_of(request: web.Request) -> str:
    return str(request.get(ACTOR, "anonymous"))


def get_db(request: web.Request, key: str = "db", *, fresh: bool = True) -> dict[str, Any]:
    """The database named in the path, or ``NotFound``. ``fresh=False`` may answer from the
    catalog cache, whose ``count`` can lag: for paths that need only the database's shape."""
    db_id = request.match_info[key]
    store = engine_of(request).store
    db = store.database(db_id) if fresh else store.database_cached(db_id)
    if db is None:
        raise NotFound("Database not found", database_id=db_id)
    return db


def index_type(value: object) -> tuple[str, str]:
    """(requested type as the client named it, upper-case; the kind we build)."""
    if not isinstance(value, str) or value.lower() not in INDEX_TYPES:
        raise InvalidArgument(
            "indexType must be one of HNSW, IVF, LSH, FLAT", code="invalid_index_type"
        )
    return value.upper(), INDEX_TYPES[value.lower()]


def index_parameters(value: object, where: str = "indexParameters") -> dict[str, int]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidArgument(f"'{where}' must be an object")
    out: dict[str, int] = {}
    for key, (lo, hi) in PARAM_RANGES.items():
        if key in value:
            v = value[key]
            if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
                raise InvalidArgument(f"'{where}.{key}' must be an integer in {lo}..{hi}")
            out[key] = v
    return out


def new_index(requested: str, kind: str, params: dict[str, int], name: str = "") -> dict[str, Any]:
    # timestamps travel in the record (db.update stores this dict as is; index.create and
    # db.create overwrite them with the record's time)
    now = int(time.time() * 1000)
    return {
        "id": "index_" + uuid.uuid4().hex[:16],
        "name": name,
        "requested": requested,
        "kind": kind,
        "parameters": params,
        "created_at": now,
        "updated_at": now,
    }


def index_info(db: dict[str, Any], request: web.Request) -> dict[str, Any]:
    idx = serving_index(db)
    spec = catalog_spec(db)
    if idx is None:
        return {"type": "FLAT", "servedBy": "flat", "note": "no index: exact search"}
    info: dict[str, Any] = {"indexId": idx["id"], "type": idx["requested"], "servedBy": idx["kind"]}
    if idx["kind"] == "hnsw":
        info["parameters"] = {
            "M": spec.m,
            "efConstruction": spec.ef_construction,
            "efSearch": spec.ef_search,
        }
    if idx["requested"].lower() != idx["kind"]:
        info["note"] = (
            f"{idx['requested']} is served by the {idx['kind'].upper()} index "
            "(the nearest index this server implements)"
        )
    return info


def db_json(db: dict[str, Any], request: web.Request) -> dict[str, Any]:
    live = engine_of(request).indexes.get(db["id"])
    return {
        "databaseId": db["id"],
        "name": db["name"],
        "description": db["description"],
        "vectorDimension": db["dimension"],
        "indexType": db["index_type"],
        "metric": db["metric"],
        "index": index_info(db, request),
        "created_at": iso(db["created_at"]),
        "updated_at": iso(db["updated_at"]),
        "stats": {
            "vectorCount": db["count"],
            "indexCount": len(db["indexes"]),
            "storageSize": (db["count"] * (db["dimension"] * 4 + 64)),
            "indexedVectors": len(live) if live is not None else 0,
        },
    }


def _dimension(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidArgument("vectorDimension must be an integer", code="invalid_dimension")
    if not 1 <= value <= MAX_DIMENSION:
        raise InvalidArgument(
            f"vectorDimension must be in 1..{MAX_DIMENSION}", code="invalid_dimension"
        )
    return value


async def create(request: web.Request) -> web.Response:
    req = await parsed(request, S.CreateDatabase)  # types and bounds: the declaration's
    name = req.name
    if not name.strip():
        raise InvalidArgument("'name' must be a non-empty string")
    dim = req.vectorDimension
    requested, kind = index_type("HNSW" if req.indexType is None else req.indexType)
    metric_raw = next((m for m in (req.metric, req.distanceMetric) if m is not None), "cosine")
    if metric_raw.lower() not in DISTANCE_METRICS:
        raise InvalidArgument("metric must be cosine, euclidean or dot", code="invalid_metric")
    params = index_parameters(present(req.indexParameters))
    extra = {k: v for k in ("sharding", "replication", "metadataSchema")
             if (v := getattr(req, k)) is not None}
    db_id = f"db_{time.time_ns()}_{uuid.uuid4().hex[:6]}"
    cmd = Command(
        "db.create",
        {
            "db": db_id,
            "name": name,
            "description": req.description or "",
            "dimension": dim,
            "metric": DISTANCE_METRICS[metric_raw.lower()],
            "index_type": requested,
            "index": new_index(requested, kind, params),
            "extra": extra,
        },
        actor_of(request),
    )
    await engine_of(request).submit(cmd)
    return json_response(
        {
            "databaseId": db_id,
            "status": "success",
            "name": name,
            "vectorDimension": dim,
            "indexType": requested,
        },
        status=201,
    )


async def list_(request: web.Request) -> web.Response:
    q = query_of(request, S.DatabasePage)
    limit, offset = q.limit, q.offset
    dbs = sorted(engine_of(request).store.databases(), key=lambda d: (d["created_at"], d["id"]))
    visible = request.app.get(VISIBLE_DATABASES)
    if visible is not None:
        dbs = visible(request, dbs)
    page = dbs[offset : offset + limit]
    return json_response(
        {
            "databases": [db_json(d, request) for d in page],
            "total": len(dbs),
            "limit": limit,
            "offset": offset,
        }
    )


async def get(request: web.Request) -> web.Response:
    return json_response(db_json(get_db(request), request))


async def update(request: web.Request) -> web.Response:
    db = get_db(request)
    body = await read_json(request)
    changes: dict[str, Any] = {}
    if "name" in body:
        changes["name"] = req_str(body, "name", max_len=256)
    if "description" in body:
        changes["description"] = opt_str(body, "description", max_len=4096)
    if "vectorDimension" in body:
        changes["dimension"] = _dimension(body["vectorDimension"])
    if "indexType" in body or "indexParameters" in body:
        requested, kind = index_type(body.get("indexType", db["index_type"]))
        params = index_parameters(body.get("indexParameters"))
        current = serving_index(db)
        if requested != db["index_type"] or current is None or params:
            changes["index_type"] = requested
            base = dict(current["parameters"]) if current and kind == current["kind"] else {}
            changes["new_index"] = new_index(requested, kind, {**base, **params})
    if not changes:
        raise InvalidArgument(
            "nothing to update: give name, description, vectorDimension or indexType"
        )
    await engine_of(request).submit(
        Command("db.update", {"db": db["id"], "changes": changes}, actor_of(request))
    )
    return json_response(
        {"status": "success", "message": "Database updated", "databaseId": db["id"]}
    )


async def delete(request: web.Request) -> web.Response:
    db_id = request.match_info["db"]
    await engine_of(request).submit(Command("db.delete", {"db": db_id}, actor_of(request)))
    return json_response({"status": "success", "message": "Database deleted", "databaseId": db_id})
