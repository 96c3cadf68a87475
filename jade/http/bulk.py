"""Bulk routes: many queries in one request, streaming import and export.

- ``POST /v1/databases/{db}/search/batch``: ``{"queries": [[...], ...]}`` (or ``queriesB64``:
  base64 of little-endian float32 rows), ``topK``, ``includeMetadata``; hnswlib answers the whole
  batch with its threaded ``knn_query`` off the event loop.
- ``POST /v1/databases/{db}/vectors/import``: a JSON-lines body (one ``{id, values, metadata?}``
  per line, or ``{id, valuesB64, ...}``) read as a stream and committed in chunks of
  ``chunk`` vectors (query parameter, default 1000): each chunk is one log record, all or
  nothing; bad lines are counted and reported, the rest is imported.
- ``GET /v1/databases/{db}/vectors/export``: the database as JSON lines, streamed.

A batch search is bounded like a search (``jade/http/search.py``): queries x topK at most the
``max_results_per_request`` setting (10,000 queries x topK 1,000 took the server from 295 MiB to
3.5 GiB and answered 455 MiB), the answer at most ``max_response_bytes``, and its work at most
``query_timeout_seconds``: hnswlib answers the queries in slices (each ~50 ms) with the deadline
checked between them. The export is not a search: its work and its length are the database's,
so no deadline applies, but it reads in chunks of about 4 MiB of values (fewer vectors per chunk
as the dimension grows) and waits for the client to take each one.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import numpy as np
import orjson
from aiohttp import web

from jade.errors import InvalidArgument, PayloadTooLarge, Unavailable
from jade.http import schemas as S
from jade.http.analytics import observed, record
from jade.http.databases import actor_of, engine_of, get_db
from jade.http.keys import METRICS, SETTINGS
from jade.http.middleware import json_response
from jade.http.search import deadline_of, query_timeout, run_search
from jade.http.validate import (
    b64_rows,
    check_results,
    parsed,
    query_of,
    vector_rows,
)
from jade.http.vectors import Budget, _command, _vector_item, encode_vector, encoded_vectors
from jade.indexes.base import VectorIndex
from jade.indexes.live import QueryTimeout
from jade.stores.data import StoredVector

log = logging.getLogger(__name__)

MAX_BATCH_QUERIES = 10_000
EXPORT_CHUNK_BYTES = 4 << 20  # of float32 values per chunk read


def _search_slices(index: VectorIndex, qs: np.ndarray, k: int, ef: int | None, deadline: float
                   ) -> tuple[np.ndarray, np.ndarray]:
    """``index.search_batch`` over ``qs`` in slices sized to take about 50 ms each, the deadline
    checked before each (``QueryTimeout``). Rows are padded with label -1 to one width (a write
    between slices may change how many neighbours the index can return)."""
    parts: list[tuple[np.ndarray, np.ndarray]] = []
    pos, step = 0, 64
    while pos < len(qs):
        t = time.monotonic()
        if t > deadline:
            raise QueryTimeout
        labels, scores = index.search_batch(qs[pos : pos + step], k, ef)
        parts.append((np.asarray(labels, dtype=np.int64), np.asarray(scores)))
        pos += step
        spent = time.monotonic() - t
        if spent < 0.025:
            step = min(step * 2, 8192)
        elif spent > 0.1:
            step = max(step // 2, 1)
    if len(parts) == 1:
        return parts[0]
    width = max(lab.shape[1] if lab.ndim == 2 else 0 for lab, _ in parts)
    rows_l, rows_s = [], []
    for lab, sc in parts:
        lab = lab.reshape(len(lab), -1)
        sc = sc.reshape(len(sc), -1)
        pad = width - lab.shape[1]
        rows_l.append(np.pad(lab, ((0, 0), (0, pad)), constant_values=-1))
        rows_s.append(np.pad(sc, ((0, 0), (0, pad)), constant_values=-np.inf))
    return np.concatenate(rows_l), np.concatenate(rows_s)


@observed("batch")
async def search_batch(request: web.Request) -> web.Response:
    t0 = time.perf_counter()
    settings = request.app[SETTINGS]
    deadline = deadline_of(settings)
    db = get_db(request, fresh=False)
    req = await parsed(request, S.BatchSearch)  # types and bounds: the declaration's
    dim = db["dimension"]
    if req.queriesB64 is not None:
        qs = b64_rows(req.queriesB64, dim, "queriesB64")
    else:
        raw = req.queries
        if not raw:
            raise InvalidArgument(
                "'queries' must be a non-empty list of vectors", code="missing_field"
            )
        if len(raw) > MAX_BATCH_QUERIES:
            raise InvalidArgument(f"at most {MAX_BATCH_QUERIES} queries per request")
        qs = vector_rows(raw, dim, "queries")
    if len(qs) > MAX_BATCH_QUERIES:
        raise InvalidArgument(f"at most {MAX_BATCH_QUERIES} queries per request")
    k = 10 if req.topK is None else req.topK
    check_results(len(qs) * k, settings, f"{len(qs)} queries x topK {k}")
    ef = req.efSearch
    include_meta = bool(req.includeMetadata)
    engine = engine_of(request)
    live = engine.indexes.get(db["id"])
    if live is None:
        raise Unavailable("the index of this database is not loaded yet")
    try:
        labels, scores = await run_search(_search_slices, live.index, qs, k, ef, deadline,
                                          bounded=False)
    except QueryTimeout:
        raise query_timeout(settings) from None
    rows_l, rows_s = labels.tolist(), scores.tolist()
    flat_ids = live.ids_for([x for row in rows_l for x in row if x >= 0], engine.store)
    budget = Budget(settings.max_response_bytes)
    # ids and scores: about 40 bytes of JSON around each id
    budget.charge(sum(len(i) + 40 for i in flat_ids if i))
    meta: dict[str, Any] = {}
    if include_meta:
        wanted = list(dict.fromkeys(i for i in flat_ids if i))

        def fetch(pos: int, n: int) -> tuple[list[StoredVector], int]:
            return engine.store.vectors(db["id"], wanted[pos : pos + n]), n

        def encode(v: StoredVector) -> bytes:
            return orjson.dumps(v.metadata if v.metadata is not None else {})

        meta = {vid: orjson.Fragment(b)
                for vid, b in encoded_vectors(fetch, len(wanted), budget, encode)}
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
                    item["vector"] = {"id": vid, "metadata": meta.get(vid, {})}
                res.append(item)
            out.append({"count": len(res), "results": res})
    m = request.app[METRICS]
    m.search_requests.inc(len(qs))
    first = out[0]["results"] if out else []  # one record for the batch: its first query's ids
    record(request, db_id=db["id"], kind="batch", latency_ms=(time.perf_counter() - t0) * 1000,
           results=sum(o["count"] for o in out), top_k=k,
           top_ids=[r["vectorId"] for r in first[:3]])
    return json_response({"count": len(out), "results": out})


def _line_item(line: bytes, n: int, dim: int) -> dict[str, Any]:
    try:
        item = orjson.loads(line)
    except orjson.JSONDecodeError as exc:
        raise InvalidArgument(f"line {n}: malformed JSON ({exc})") from None
    if not isinstance(item, dict):
        raise InvalidArgument(f"line {n}: expected an object with id and values")
    if "valuesB64" in item and "values" not in item:
        rows = b64_rows(item.pop("valuesB64"), dim, "valuesB64")
        if len(rows) != 1:  # never silently the first of several rows
            raise InvalidArgument(
                f"line {n}: dimension mismatch: 'valuesB64' holds {rows.size} floats, the "
                f"database expects {dim}", code="dimension_mismatch",
            )
        item["values"] = rows[0]  # checked and decoded once (``_vector_item`` takes it as is)
    return item


async def import_(request: web.Request) -> web.Response:
    db = get_db(request)
    chunk = query_of(request, S.ImportQuery).chunk
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
        good: list[tuple[str, np.ndarray, Any]] = []
        for item in pending:
            try:
                good.append(_vector_item(item, "vector", db["dimension"]))  # one by one
            except InvalidArgument as exc:
                failed += 1
                if len(errors) < 20:
                    errors.append(f"id {str(item.get('id'))[:64]!r}: {exc.message}")
        pending = []
        if good:
            await engine.submit(_command(db, good, actor_of(request)))
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
    # each chunk read in its own short transaction
    per_chunk = max(1, min(2048, EXPORT_CHUNK_BYTES // (4 * db["dimension"])))
    chunks = store.scan(db["id"], chunk=per_chunk)
    try:
        while True:
            chunk = await asyncio.to_thread(next, chunks, None)
            if chunk is None:
                break
            lines = b"".join(encode_vector(v, values=values) + b"\n" for v in chunk)
            await resp.write(lines)
    except Exception as exc:
        # the status line is sent: no error answer can follow. Cut the connection, so the
        # client sees a stream cut short instead of one that never ends, and say why here
        log.error("export of database %s cut short: %s", db["id"], exc, extra={"db": db["id"]})
        if request.transport is not None:
            request.transport.close()
        raise
    await resp.write_eof()
    return resp
