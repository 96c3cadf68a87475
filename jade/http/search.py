"""/v1/databases/{db}/search and /search/advanced (API.md §7.1, filters §7.2).

Bounds on one search (issue 15): ``topK`` at most the ``max_results_per_request`` setting, the
answer at most ``max_response_bytes`` (413), and its work at most ``query_timeout_seconds``: a
filter's scan of the metadata checks the deadline as it goes and stops there (``LiveDb.search``),
answered with 503 ``query_timeout``. 503, not 504: no gateway timed out, this server refused to
go on, as it does with its other 503s (not loaded, read-only); the code tells them apart. No
Retry-After: the same search would take as long again.

The request is decoded in one pass into typed, bounded fields (msgspec, ``_decode``); whatever
that declines goes through the field-by-field checks (``_checked``), which own every error
message (issue 16).
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Callable
from typing import Annotated, Any, TypeVar

import msgspec
import numpy as np
import orjson
from aiohttp import web

from jade.core.filters import Filter, FilterError, parse_filter
from jade.errors import InvalidArgument, Unavailable
from jade.http.analytics import observed, record
from jade.http.databases import engine_of, get_db
from jade.http.keys import INFLIGHT, METRICS, SETTINGS
from jade.http.middleware import json_response
from jade.http.validate import (
    F32_MAX,
    check,
    check_results,
    opt_bool,
    opt_int,
    opt_number,
    parse_json,
    read_body,
    route_of,
    vector_values,
)
from jade.http.vectors import Budget, encode_vector, encoded_vectors
from jade.indexes.live import QueryTimeout
from jade.settings import Settings
from jade.stores.data import StoredVector

MAX_TOP_K = 10000
MAX_EF = 10000
T = TypeVar("T")


async def run_search(fn: Callable[..., T], *args: Any, bounded: bool, offload: str = "auto",
                     alone: bool = True, **kwargs: Any) -> T:
    """Run a search where it finishes soonest. A ``bounded`` one (an unfiltered graph search:
    well under a millisecond) runs inline when its request is ``alone``: no other request
    is being handled and no other search runs (the caller reads the middleware's ``InFlight``
    count and ``Metrics.searches_in_flight``): no thread hand-off, the lowest latency.
    Otherwise on the loop's thread pool, where hnswlib and numpy release the GIL: the other
    cores search while the loop serves the other requests, and a slow filter (a full metadata
    scan, a large exact scan) never holds up the loop. ``offload`` (the ``search_offload``
    setting) overrides this for bounded searches: "never" runs them inline under load too
    (where a second core adds little: on the 2-vCPU benchmark VM, 16 clients got 1,440-1,720
    searches/s inline against 1,110-1,460 with the hand-off), "always" hands every one off.

    Requests that arrive while one runs inline wait in the loop, not in the count: under a
    load of bounded searches alone "auto" mostly runs them inline, as "never" does; a request
    that waits (a body still arriving, a write's commit, a search in the pool) sends the
    searches beside it to the pool. The signal is ours, not the loop's: the loop's queue of
    ready callbacks (asyncio's private ``_ready``) does not exist on uvloop."""
    if bounded and (offload == "never" or (offload == "auto" and alone)):
        return fn(*args, **kwargs)
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(None, functools.partial(fn, *args, **kwargs))


def deadline_of(settings: Settings) -> float:
    """When a search starting now must stop (``time.monotonic()``)."""
    return time.monotonic() + settings.query_timeout_seconds


def query_timeout(settings: Settings) -> Unavailable:
    return Unavailable(
        f"the search was stopped after {settings.query_timeout_seconds} s (the "
        "query_timeout_seconds setting): narrow the filter (equality conditions use the "
        "index, regexes and ranges scan every vector) or ask for fewer queries",
        code="query_timeout", limit_seconds=settings.query_timeout_seconds,
    )


def parse_filters(body: dict[str, Any]) -> Filter | None:
    return _filter_of(body.get("filters"))


def _filter_of(raw: object) -> Filter | None:
    if raw is None:
        return None
    try:
        f = parse_filter(raw)
    except FilterError as exc:
        raise InvalidArgument(str(exc), code="invalid_filter") from None
    return None if f.is_match_all else f


class SearchQuery(msgspec.Struct, frozen=True):
    """One search request, checked: the query vector, ``topK``, the score threshold, what to
    include with each result, efSearch (None: the index's) and the filter (None: none)."""

    q: np.ndarray
    k: int
    threshold: float
    include_meta: bool
    include_values: bool
    ef: int | None
    f: Filter | None


_F32 = Annotated[float, msgspec.Meta(ge=-F32_MAX, le=F32_MAX)]  # finite in float32


class _Body(msgspec.Struct, forbid_unknown_fields=True):
    """The fields of a search request, typed and bounded, for ``_decode``. What does not fit
    (another field, another type: ``topK`` 10.0, a bool among the numbers; a value out of
    bounds) is left to ``_checked``."""

    queryVector: list[_F32] | None = None
    topK: Annotated[int, msgspec.Meta(ge=1, le=MAX_TOP_K)] | None = None
    threshold: Annotated[float, msgspec.Meta(ge=-1.0, le=1.0)] | None = None
    includeMetadata: bool | None = None
    includeValues: bool | None = None
    includeVectorData: bool | None = None
    efSearch: Annotated[int, msgspec.Meta(ge=1, le=MAX_EF)] | None = None
    filters: msgspec.Raw = msgspec.Raw()  # empty: absent; read by orjson, as every body


_decode_body = msgspec.json.Decoder(_Body).decode


def _decode(raw: bytes, dim: int, settings: Settings) -> SearchQuery | None:
    """The request in one pass, straight into typed, bounded fields, when it is well-formed:
    None otherwise, and ``_checked`` (the reference path) then finds what is wrong and says
    so. It accepts only what ``_checked`` accepts, with the same values (msgspec refuses what
    orjson refuses: invalid UTF-8, numbers beyond float64; and unknown fields; the filter goes
    through orjson itself), so every error, its status, code and message, comes from one
    place."""
    try:
        body = _decode_body(raw)
    except (msgspec.DecodeError, RecursionError):  # ValidationError included; deep nesting
        return None
    v = body.queryVector
    k = 10 if body.topK is None else body.topK
    if v is None or len(v) != dim or k > settings.max_results_per_request:
        return None
    f = None
    if body.filters:
        try:
            raw_filter = orjson.loads(memoryview(body.filters))
        except (orjson.JSONDecodeError, RecursionError):
            return None
        f = _filter_of(raw_filter)  # its errors: the last check on both paths
    # every value within float32's range: the conversion rounds, never overflows
    return SearchQuery(np.array(v, dtype=np.float32), k,
                       0.0 if body.threshold is None else body.threshold,
                       bool(body.includeMetadata),
                       bool(body.includeValues) or bool(body.includeVectorData),
                       body.efSearch, f)


def _checked(body: dict[str, Any], dim: int, settings: Settings) -> SearchQuery:
    """The reference path: each field checked in turn, the first error raised."""
    if "queryVector" not in body:
        raise InvalidArgument("missing required field 'queryVector'", code="missing_field")
    q = vector_values(body["queryVector"], dim, "queryVector")
    k = opt_int(body, "topK", 10, lo=1, hi=MAX_TOP_K)
    check_results(k, settings, f"topK={k}")
    threshold = opt_number(body, "threshold", 0.0, lo=-1.0, hi=1.0)
    include_meta = opt_bool(body, "includeMetadata", False)
    include_values = opt_bool(body, "includeValues", False) or opt_bool(
        body, "includeVectorData", False
    )
    ef = None
    if body.get("efSearch") is not None:
        ef = opt_int(body, "efSearch", 0, lo=1, hi=MAX_EF)
    return SearchQuery(q, k, threshold, include_meta, include_values, ef, parse_filters(body))


async def read_search(request: web.Request, dim: int, settings: Settings) -> SearchQuery:
    """The search in the request's body: read and checked as every JSON body is (``read_body``:
    size, emptiness, Content-Type), decoded in one pass (``_decode``); what that declines goes
    through ``parse_json`` and the field checks, which own every error."""
    raw = await read_body(request)
    query = _decode(raw, dim, settings)
    if query is not None:
        return query
    body = parse_json(raw)
    check(body, route_of(request).body)  # the route's declaration (S.Search): types, bounds
    return _checked(body, dim, settings)


def _with_vectors(engine: Any, db_id: str, ids: list[str | None],
                  scores: list[float], include_meta: bool, include_values: bool,
                  budget: Budget) -> list[dict[str, Any]]:
    wanted = [i for i in ids if i]

    def fetch(pos: int, n: int) -> tuple[list[StoredVector], int]:
        return engine.store.vectors(db_id, wanted[pos : pos + n]), n

    def encode(v: StoredVector) -> bytes:
        return encode_vector(v, values=include_values, metadata=include_meta)

    stored = dict(encoded_vectors(fetch, len(wanted), budget, encode))
    results: list[dict[str, Any]] = []
    for vid, score in zip(ids, scores, strict=True):
        b = stored.get(vid) if vid is not None else None
        if b is None:
            continue  # deleted between the index answer and the lookup
        results.append({"vectorId": vid, "score": score, "vector": orjson.Fragment(b)})
    return results


def _kind(request: web.Request, f: Filter | None = None) -> str:
    """The analytics kind: "filtered" with a filter or on /search/advanced."""
    return "filtered" if f is not None or request.path.endswith("/advanced") else "vector"


@observed(_kind)
async def search(request: web.Request) -> web.Response:
    t0 = time.perf_counter()
    app = request.app
    settings = app[SETTINGS]
    deadline = deadline_of(settings)
    db = get_db(request, fresh=False)
    sq = await read_search(request, db["dimension"], settings)
    f = sq.f
    engine = engine_of(request)
    live = engine.indexes.get(db["id"])
    if live is None:
        raise Unavailable("the index of this database is not loaded yet")
    metrics = app[METRICS]
    alone = app[INFLIGHT].count <= 1 and not metrics.searches_in_flight
    metrics.searches_in_flight += 1
    try:
        labels, scores, stats = await run_search(
            live.search, sq.q, sq.k, f, ef=sq.ef, bounded=f is None,
            offload=settings.search_offload, alone=alone,
            exact_scan_max=settings.exact_scan_max,
            cache_size=settings.filter_cache_size if settings.enable_query_cache else 0,
            overfetch_percent=settings.filter_overfetch_percent, deadline=deadline,
        )
    except QueryTimeout:
        raise query_timeout(settings) from None
    finally:
        metrics.searches_in_flight -= 1
    label_list: list[int] = labels.tolist()
    score_list: list[float] = scores.tolist()
    threshold = sq.threshold
    if score_list and min(score_list) < threshold:  # the threshold drops some
        kept = [i for i, sc in enumerate(score_list) if sc >= threshold]
        label_list = [label_list[i] for i in kept]
        score_list = [score_list[i] for i in kept]
    ids = live.ids_for(label_list, engine.store)
    if sq.include_meta or sq.include_values:
        results = _with_vectors(engine, db["id"], ids, score_list, sq.include_meta,
                                sq.include_values, Budget(settings.max_response_bytes))
    else:  # deleted between the index answer and the lookup: left out
        results = [{"vectorId": vid, "score": sc}
                   for vid, sc in zip(ids, score_list, strict=True) if vid is not None]
    elapsed = time.perf_counter() - t0
    metrics.search_requests.inc()
    metrics.search_duration.observe(elapsed)
    if f is not None:
        metrics.filtered_search_requests.inc()
        metrics.filtered_search_duration.observe(elapsed)
        (metrics.filter_cache_hits if stats.filter_cache_hit else metrics.filter_cache_misses).inc()
    record(request, db_id=db["id"], kind=_kind(request, f), latency_ms=elapsed * 1000,
           results=len(results), top_k=sq.k, filters=f,
           top_ids=[r["vectorId"] for r in results[:3]])
    return json_response({"count": len(results), "results": results, "strategy": stats.strategy})
