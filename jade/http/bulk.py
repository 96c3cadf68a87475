"""Bulk routes: many queries in one request, streaming import and export.

- ``POST /v1/databases/{db}/search/batch``: ``{"queries": [[...], ...]}`` (or ``queriesB64``:
  base64 of little-endian float32 rows), ``topK``, ``includeMetadata``; hnswlib answers the whole
  batch with its threaded ``knn_query`` off the event loop.
- ``POST /v1/databases/{db}/vectors/import``: a JSON-lines body (one ``{id, values, metadata?}``
  per line, or ``{id, valuesB64, ...}``) read as a stream and committed in chunks of
  ``chunk`` vectors (query parameter, default 1000): each chunk is one log record, all or
  nothing; bad lines are counted and reported, the rest is imported.
- ``GET /v1/databases/{db}/vectors/export``: the database as JSON lines, streamed.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
from typing import Any

import numpy as np
import orjson
from aiohttp import web

from jade.errors import InvalidArgument, PayloadTooLarge, Unavailable
from jade.http.databases import actor_of, engine_of, get_db
from jade.http.keys import METRICS, SETTINGS
from jade.http.middleware import json_response
from jade.http.search import run_search
from jade.http.validate import opt_bool, opt_int, query_int, read_json, vector_rows
from jade.http.vectors import _upsert_command, vector_json

MAX_BATCH_QUERIES = 10_000


def b64_rows(value: object, dim: int, what: str) -> np.ndarray:
    """Base64 of little-endian float32 → (n, dim) array, finite values only."""
    if not isinstance(value, str):
        raise InvalidArgument(f"'{what}' must be a base64 string of float32 values")
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidArgument(f"'{what}' is not valid base64") from None
    if len(raw) == 0 or len(raw) % (4 * dim):
        raise InvalidArgument(
            f"dimension mismatch: '{what}' holds {len(raw) // 4} floats, not a multiple of {dim}",
            code="dimension_mismatch",
        )
    arr = np.frombuffer(raw, dtype="<f4").reshape(-1, dim)
    if not np.isfinite(arr).all():
        raise InvalidArgument(f"'{what}' must contain only finite numbers")
    return arr


async def search_batch(request: web.Request) -> web.Response:
    db = get_db(request, fresh=False)
    body = await read_json(request)
    dim = db["dimension"]
    if "queriesB64" in body:
        qs = b64_rows(body["queriesB64"], dim, "queriesB64")
    else:
        raw = body.get("queries")
        if not isinstance(raw, list) or not raw:
            raise InvalidArgument(
                "'queries' must be a non-empty list of vectors", code="missing_field"
            )
        if len(raw) > MAX_BATCH_QUERIES:
            raise InvalidArgument(f"at most {MAX_BATCH_QUERIES} queries per request")
        qs = vector_rows(raw, dim, "queries")
    if len(qs) > MAX_BATCH_QUERIES:
        raise InvalidArgument(f"at most {MAX_BATCH_QUERIES} queries per request")
    k = opt_int(body, "topK", 10, lo=1, hi=1000)
    ef = opt_int(body, "efSearch", 0, lo=1, hi=10000) if body.get("efSearch") is not None else None
    include_meta = opt_bool(body, "includeMetadata", False)
    engine = engine_of(request)
    live = engine.indexes.get(db["id"])
    if live is None:
        raise Unavailable("the index of this database is not loaded yet")
    labels, scores = await run_search(live.index.search_batch, qs, k, ef, bounded=False)
    rows_l, rows_s = labels.tolist(), scores.tolist()
    flat_ids = live.ids_for([x for row in rows_l for x in row if x >= 0], engine.store)
    meta: dict[str, Any] = {}
    if include_meta:
        meta = {
            v.id: v.metadata for v in engine.store.vectors(db["id"], [i for i in flat_ids if i])
        }
    out: list[dict[str, Any]] = []
    width = labels.shape[1] if labels.ndim == 2 else 0
    if not include_meta and len(flat_ids) == len(qs) * width and None not in flat_ids:
        # the usual case (every row full, nothing deleted meanwhile): no per-item branching
        for i, row_s in enumerate(rows_s):
            ids = flat_ids[i * width : (i + 1) * width]
            out.append({"count": width, "results": [
                {"vectorId": vid, "score": sc} for vid, sc in zip(ids, row_s, strict=True)]})
    else:
        it = iter(flat_ids)
        for row_l, row_s in zip(rows_l, rows_s, strict=True):
            res = []
            for label, score in zip(row_l, row_s, strict=True):
                if label < 0:
                    continue
                vid = next(it)
                if vid is None:
                    continue  # deleted between the index answer and the lookup
                item: dict[str, Any] = {"vectorId": vid, "score": score}
                if include_meta:
                    item["vector"] = {"id": vid, "metadata": meta.get(vid) or {}}
                res.append(item)
            out.append({"count": len(res), "results": res})
    m = request.app[METRICS]
    m.search_requests.inc(len(qs))
    return json_response({"count": len(out), "results": out})


def _line_item(line: bytes, n: int, dim: int) -> dict[str, Any]:
    try:
        item = orjson.loads(line)
    except orjson.JSONDecodeError as exc:
        raise InvalidArgument(f"line {n}: malformed JSON ({exc})") from None
    if not isinstance(item, dict):
        raise InvalidArgument(f"line {n}: expected an object with id and values")
    if "valuesB64" in item and "values" not in item:
        item["values"] = b64_rows(item.pop("valuesB64"), dim, "valuesB64")[0].tolist()
    return item


async def import_(request: web.Request) -> web.Response:
    db = get_db(request)
    chunk = query_int(request, "chunk", 1000, lo=1, hi=100_000)
    engine = engine_of(request)
    limit = request.app[SETTINGS].max_body_bytes
    imported = failed = 0
    errors: list[str] = []
    pending: list[dict[str, Any]] = []
    line_no = 0

    async def flush() -> None:
        nonlocal imported, failed, pending
        if not pending:
            return
        good: list[dict[str, Any]] = []
        for item in pending:
            try:
                _upsert_command(db, [item], "check")  # validate one by one
                good.append(item)
            except InvalidArgument as exc:
                failed += 1
                if len(errors) < 20:
                    errors.append(f"id {str(item.get('id'))[:64]!r}: {exc.message}")
        pending = []
        if good:
            cmd = _upsert_command(db, good, actor_of(request))
            await engine.submit(cmd)
            imported += len(good)

    buf = b""
    line_bytes = 0
    async for data in request.content.iter_chunked(1 << 16):
        buf += data
        *lines, buf = buf.split(b"\n")
        for line in lines:
            line_no += 1
            line_bytes = len(line)
            if line_bytes > limit:
                raise PayloadTooLarge(f"line {line_no} exceeds {limit} bytes")
            if not line.strip():
                continue
            try:
                pending.append(_line_item(line, line_no, db["dimension"]))
            except InvalidArgument as exc:
                failed += 1
                if len(errors) < 20:
                    errors.append(exc.message)
            if len(pending) >= chunk:
                await flush()
        if len(buf) > limit:
            raise PayloadTooLarge(f"a line exceeds {limit} bytes")
    if buf.strip():
        line_no += 1
        try:
            pending.append(_line_item(buf, line_no, db["dimension"]))
        except InvalidArgument as exc:
            failed += 1
            errors.append(exc.message)
    await flush()
    return json_response(
        {
            "status": "success" if not failed else "partial",
            "imported": imported,
            "failed": failed,
            "errors": errors,
        },
        status=201 if imported else 400 if failed else 200,
    )


async def export(request: web.Request) -> web.StreamResponse:
    db = get_db(request)
    store = engine_of(request).store
    values = request.query.get("values", "true").lower() != "false"
    resp = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
    await resp.prepare(request)
    chunks = store.scan(db["id"], chunk=2048)  # each chunk read in its own short transaction
    while True:
        chunk = await asyncio.to_thread(next, chunks, None)
        if chunk is None:
            break
        lines = b"".join(
            orjson.dumps(vector_json(v, values=values), option=orjson.OPT_SERIALIZE_NUMPY) + b"\n"
            for v in chunk
        )
        await resp.write(lines)
    await resp.write_eof()
    return resp
