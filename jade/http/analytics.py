"""Query analytics over HTTP (API.md §11): recording each search, and the routes under
``/v1/databases/{db}/analytics``.

Recording. A search handler is wrapped in ``observed(kind)`` and calls ``record(request,
...)`` once it has its answer: one record appended to the in-memory ring (``Analytics.add``:
no I/O, a few microseconds), its id answered in the ``X-Query-Id`` header so that feedback can
name it. A search that fails (a bad request, a timeout: anything its handler raises) is
recorded by the wrapper as a failed query of that database; one on a database that does not
exist is not recorded (there is nothing to attach it to).

Routes (access class "read", as the database's other reads): ``stats`` (time buckets),
``queries`` (newest first), ``patterns``, ``insights``, ``trending``, ``export`` (json or csv)
and ``POST feedback``, which a reader may send (rating a result is not a write to the
database: it is not in the log, readonly mode and replicas accept it). Windows are
``start_time``/``end_time`` (ISO 8601 or seconds since the epoch; default: all that is
retained, and for ``trending`` the last 24 hours of it). The grouping runs off the event loop.
"""

from __future__ import annotations

import asyncio
import csv
import functools
import io
import math
import os
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from aiohttp import web

from jade.analytics import Analytics, Feedback, QueryRecord
from jade.analytics import compute as C
from jade.core.filters import Filter
from jade.errors import InvalidArgument, JadeError
from jade.http import schemas as S
from jade.http.databases import get_db
from jade.http.keys import ACTOR, ANALYTICS, ENGINE
from jade.http.middleware import json_response
from jade.http.validate import opt_int, query_int, query_of, read_json
from jade.settings import Settings

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
QUERY_ID = web.RequestKey("query_id", str)
HEADER = "X-Query-Id"
MAX_LIMIT = 1000
TRENDING_SPAN = 86400.0


# ---------------------------------------------------------------------- recording


def record(request: web.Request, *, db_id: str, kind: str, latency_ms: float, results: int,
           ok: bool = True, text: str | None = None, signature: str | None = None,
           top_ids: Sequence[str] = (), top_k: int = 0, filters: Filter | str | None = None,
           status: int = 200, error: str = "") -> str:
    """Record one search of ``db_id`` (``kind``: vector, filtered, batch, hybrid, bm25,
    reranked) and return its query id ("" when analytics are off). The default signature is
    the kind with ``topK`` and the filter's shape, or the normalised ``text`` for text kinds;
    ``signature`` replaces it. ``observed`` puts the id in the ``X-Query-Id`` header."""
    a = request.app.get(ANALYTICS)
    if a is None or not a.enabled:
        return ""
    qid = a.next_id()
    canon = filters.canonical if isinstance(filters, Filter) else (filters or "")
    a.add(QueryRecord(qid, time.time(), a.name(db_id), kind, latency_ms, results, ok,
                      a.name(str(request.get(ACTOR, "anonymous"))), top_k, canon,
                      text[: C.MAX_TEXT] if text else "", (signature or "")[: C.MAX_TEXT],
                      tuple(i[: C.MAX_ID] for i in top_ids[: C.TOP_IDS]), status, error))
    request[QUERY_ID] = qid
    return qid


def observed(kind: str | Callable[[web.Request], str]) -> Callable[[Handler], Handler]:
    """Wrap a search handler: the ``X-Query-Id`` header on its answer, and a failed query
    recorded when it raises (``kind``: the kind, or a function of the request giving it)."""

    def wrap(handler: Handler) -> Handler:
        @functools.wraps(handler)
        async def run(request: web.Request) -> web.StreamResponse:
            t0 = time.perf_counter()
            try:
                resp = await handler(request)
            except Exception as exc:
                if QUERY_ID not in request:
                    _failed(request, kind if isinstance(kind, str) else kind(request), exc,
                            (time.perf_counter() - t0) * 1000)
                raise
            qid = request.get(QUERY_ID)
            if qid and not resp.prepared:
                resp.headers[HEADER] = qid
            return resp

        return run

    return wrap


def _failed(request: web.Request, kind: str, exc: Exception, latency_ms: float) -> None:
    db_id = request.match_info.get("db", "")
    try:  # a database that does not exist has no analytics
        if not db_id or request.app[ENGINE].store.database_cached(db_id) is None:
            return
    except Exception:
        return
    if isinstance(exc, JadeError):
        status, code = exc.status, exc.code
    elif isinstance(exc, web.HTTPException):
        status, code = exc.status, "http_error"
    else:
        status, code = 500, "internal_error"
    qid = record(request, db_id=db_id, kind=kind, latency_ms=latency_ms, results=0, ok=False,
                 status=status, error=code)
    if qid and isinstance(exc, JadeError):
        exc.headers[HEADER] = qid


# ---------------------------------------------------------------------- life cycle


def install(app: web.Application, settings: Settings) -> Analytics:
    """The analytics of this server on ``app``: loaded from ``<data_dir>/analytics`` at start,
    flushed by the ``analytics_flush`` job (``flush_job``) and once more at clean-up."""
    a = Analytics(os.path.join(settings.data_dir, "analytics"),
                  max_queries=settings.analytics_max_queries,
                  retention_seconds=settings.analytics_retention_seconds,
                  enabled=settings.analytics_enabled)
    app[ANALYTICS] = a

    async def load(app: web.Application) -> None:
        if a.enabled:
            await asyncio.to_thread(a.load)

    async def final_flush(app: web.Application) -> None:
        if a.enabled:
            await asyncio.to_thread(a.write, a.plan(time.time()))

    app.on_startup.append(load)
    app.on_cleanup.append(final_flush)
    return a


def flush_job(app: web.Application) -> Callable[[], Awaitable[dict[str, int]]]:
    """The scheduled flush: what the rings gained goes to the files (in a thread)."""
    a = app[ANALYTICS]
    engine = app[ENGINE]

    def exists(db_id: str) -> bool:
        try:
            return engine.store.database_cached(db_id) is not None
        except Exception:  # the store is being re-opened: keep everything
            return True

    async def flush() -> dict[str, int]:
        if not a.enabled:
            return {"appended": 0, "rewritten": 0}
        return await asyncio.to_thread(a.write, a.plan(time.time(), exists))

    return flush


# ---------------------------------------------------------------------- parameters


def _time(request: web.Request, key: str) -> float | None:
    raw = request.query.get(key)
    if raw is None or raw == "":
        return None
    try:
        return C.parse_time(raw)
    except (ValueError, OverflowError):
        raise InvalidArgument(
            f"query parameter '{key}' must be an ISO 8601 time (2025-01-31T12:00:00Z) or "
            f"seconds since the epoch, not {raw[:64]!r}", code="invalid_time") from None


def _window(request: web.Request, a: Analytics, default_span: float | None = None,
            db_id: str = "") -> tuple[float, float]:
    now = time.time()
    end = _time(request, "end_time")
    start = _time(request, "start_time")
    end = now if end is None else end
    if start is None:
        start = end - a.retention_seconds
        if default_span is not None:  # trending: the last day, or from the first record
            first = a.oldest(db_id)
            start = max(end - default_span, first if first is not None else start)
    if start > end:
        raise InvalidArgument("start_time is after end_time", code="invalid_time")
    return start, end


def _choice(request: web.Request, key: str, options: Sequence[str], default: str) -> str:
    v = request.query.get(key) or default
    if v not in options:
        raise InvalidArgument(f"query parameter '{key}' must be one of {', '.join(options)}",
                              code=f"invalid_{key}")
    return v


def _number(request: web.Request, key: str, default: float, lo: float, hi: float) -> float:
    raw = request.query.get(key)
    if raw is None or raw == "":
        return default
    try:
        v = float(raw)
    except ValueError:
        v = math.nan
    if not math.isfinite(v) or not lo <= v <= hi:
        raise InvalidArgument(f"query parameter '{key}' must be a number between {lo} and {hi}")
    return v


async def _records(request: web.Request, start: float, end: float
                   ) -> tuple[str, Analytics, list[QueryRecord], list[Feedback]]:
    """The database (404 if it does not exist), and its records and feedback in the window,
    oldest first (selected off the loop)."""
    db = get_db(request, fresh=False)
    a = request.app[ANALYTICS]
    qs, fbs = a.snapshot()
    db_id = db["id"]

    def select() -> tuple[list[QueryRecord], list[Feedback]]:
        rs = [r for r in qs if r.db == db_id and start <= r.ts <= end]
        rs.sort(key=lambda r: r.ts)
        return rs, [f for f in fbs if f.db == db_id and start <= f.ts <= end]

    rs, fs = await _off_loop(select)
    return db_id, a, rs, fs


async def _off_loop(fn: Callable[[], Any]) -> Any:
    return await asyncio.get_running_loop().run_in_executor(None, fn)


def _head(db_id: str, start: float, end: float) -> dict[str, Any]:
    return {"database_id": db_id, "start_time": C.iso(start), "end_time": C.iso(end)}


def _analytics(request: web.Request) -> Analytics:
    get_db(request, fresh=False)  # 404 first, whatever the parameters
    return request.app[ANALYTICS]


# ---------------------------------------------------------------------- routes


async def stats(request: web.Request) -> web.Response:
    a = _analytics(request)
    granularity = _choice(request, "granularity", tuple(C.GRANULARITY), "hourly")
    start, end = _window(request, a)
    db_id, a, rs, _ = await _records(request, start, end)
    out = await _off_loop(lambda: (C.buckets(rs, granularity), C.summary(rs)))
    return json_response({**_head(db_id, start, end), "granularity": granularity,
                          "stats": out[0], "summary": out[1]})


async def queries(request: web.Request) -> web.Response:
    a = _analytics(request)
    q = query_of(request, S.QueriesQuery)  # limit: at most MAX_LIMIT
    limit, offset = q.limit, q.offset
    start, end = _window(request, a)
    db_id, a, rs, _ = await _records(request, start, end)
    page = rs[::-1][offset : offset + limit]
    return json_response({**_head(db_id, start, end), "total": len(rs), "limit": limit,
                          "offset": offset, "queries": [C.query_json(r) for r in page]})


async def patterns(request: web.Request) -> web.Response:
    a = _analytics(request)
    min_count = query_int(request, "min_count", 2, lo=1, hi=10**9)
    limit = query_int(request, "limit", 100, lo=1, hi=MAX_LIMIT)
    start, end = _window(request, a)
    db_id, a, rs, _ = await _records(request, start, end)
    found = await _off_loop(lambda: C.patterns(rs, min_count))
    return json_response({**_head(db_id, start, end), "min_count": min_count,
                          "total_patterns": len(found), "patterns": found[:limit]})


async def insights(request: web.Request) -> web.Response:
    a = _analytics(request)
    start, end = _window(request, a)
    db_id, a, rs, fs = await _records(request, start, end)
    got = await _off_loop(lambda: C.insights(rs, fs, start, end))
    return json_response({"database_id": db_id, **got})


async def trending(request: web.Request) -> web.Response:
    a = _analytics(request)
    min_growth = _number(request, "min_growth", 0.5, -1.0, 1e9)
    limit = query_int(request, "limit", 100, lo=1, hi=MAX_LIMIT)
    start, end = _window(request, a, TRENDING_SPAN, get_db(request, fresh=False)["id"])
    db_id, a, rs, _ = await _records(request, start, end)
    found = await _off_loop(lambda: C.trending(rs, start, end, min_growth))
    return json_response({**_head(db_id, start, end), "min_growth": min_growth,
                          "window_split": C.iso(start + (end - start) / 2),
                          "trending": found[:limit]})


async def export(request: web.Request) -> web.Response:
    """All the window's queries (and feedback, in json), oldest first: bounded by the ring
    (``analytics.max_queries`` records)."""
    a = _analytics(request)
    fmt = _choice(request, "format", ("json", "csv"), "json")
    start, end = _window(request, a)
    db_id, a, rs, fs = await _records(request, start, end)
    name = f"analytics-{db_id}.{fmt}"
    disposition = {"Content-Disposition": f'attachment; filename="{name}"'}
    if fmt == "csv":
        def to_csv() -> bytes:
            buf = io.StringIO()
            w = csv.writer(buf)
            w.writerow(C.CSV_COLUMNS)
            w.writerows(C.csv_row(r) for r in rs)
            return buf.getvalue().encode()

        body = await _off_loop(to_csv)
        return web.Response(body=body, content_type="text/csv", charset="utf-8",
                            headers=disposition)
    out = await _off_loop(lambda: {
        **_head(db_id, start, end), "format": "json", "exported_at": C.iso(time.time()),
        "total_queries": len(rs), "queries": [C.query_json(r) for r in rs],
        "feedback": [C.feedback_json(f) for f in fs]})
    return json_response(out, headers=disposition)


def _field(body: dict[str, Any], camel: str, snake: str) -> str:
    """Which spelling the client used (camelCase, as the reference client sends, or
    snake_case, as the reference server reads)."""
    return camel if body.get(camel) is not None else snake


def _text(body: dict[str, Any], key: str, max_len: int) -> str:
    v = body.get(key)
    if v is None:
        return ""
    if not isinstance(v, str):
        raise InvalidArgument(f"'{key}' must be a string")
    if len(v) > max_len:
        raise InvalidArgument(f"'{key}' is longer than {max_len} characters")
    return v


async def feedback(request: web.Request) -> web.Response:
    db = get_db(request, fresh=False)
    a = request.app[ANALYTICS]
    body = await read_json(request)
    qkey = _field(body, "queryId", "query_id")
    qid = _text(body, qkey, 128)
    if not qid.strip():
        raise InvalidArgument("missing required field 'queryId' (the X-Query-Id of a search)",
                              code="missing_field")
    actor = str(request.get(ACTOR, "anonymous"))
    user = _text(body, _field(body, "userId", "user_id"), 256) or actor
    rating = opt_int(body, "rating", 0, lo=1, hi=5) if body.get("rating") is not None else None
    text = _text(body, _field(body, "feedbackText", "feedback_text"), C.MAX_TEXT)
    clicked = _text(body, _field(body, "clickedResultId", "clicked_result_id"), 1024)
    ck = _field(body, "clickedRank", "clicked_rank")
    rank = opt_int(body, ck, 0, lo=0, hi=100_000) if body.get(ck) is not None else None
    if not a.enabled:
        return json_response({"success": False, "query_id": qid,
                              "message": "analytics are off on this server (analytics.enabled):"
                                         " the feedback was not kept"})
    known = a.find(db["id"], qid) is not None
    a.add_feedback(Feedback(time.time(), a.name(db["id"]), qid, user, actor, rating, text,
                            clicked, rank))
    msg = "feedback recorded" if known else (
        "feedback recorded (the query is not, or no longer, in this server's analytics)")
    return json_response({"success": True, "query_id": qid, "message": msg,
                          "query_known": known}, status=201)

