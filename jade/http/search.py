"""/v1/databases/{db}/search and /search/advanced (API.md §7.1, filters §7.2).

Bounds on one search (issue 15): ``topK`` at most the ``max_results_per_request`` setting, the
answer at most ``max_response_bytes`` (413), and its work at most ``query_timeout_seconds``: a
filter's scan of the metadata checks the deadline as it goes and stops there (``LiveDb.search``),
answered with 503 ``query_timeout``. 503, not 504: no gateway timed out, this server refused to
go on, as it does with its other 503s (not loaded, read-only); the code tells them apart. No
Retry-After: the same search would take as long again.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Callable
from typing import Any, TypeVar

import orjson
from aiohttp import web

from jade.core.filters import Filter, FilterError, parse_filter
from jade.errors import InvalidArgument, Unavailable
from jade.http.databases import engine_of, get_db
from jade.http.keys import METRICS, SETTINGS
from jade.http.middleware import json_response
from jade.http.validate import (
    check_results,
    opt_bool,
    opt_int,
    opt_number,
    read_json,
    vector_values,
)
from jade.http.vectors import Budget, encode_vector, encoded_vectors
from jade.indexes.live import QueryTimeout
from jade.settings import Settings
from jade.stores.data import StoredVector

MAX_TOP_K = 10000
T = TypeVar("T")


async def run_search(fn: Callable[..., T], *args: Any, bounded: bool, offload: str = "auto",
                     **kwargs: Any) -> T:
    """Run a search where it finishes soonest. A ``bounded`` one (an unfiltered graph search:
    well under a millisecond) alone on the event loop (nothing else ready to run) runs inline:
    no thread hand-off, the lowest latency. Otherwise on the loop's thread pool, where hnswlib
    and numpy release the GIL: the other cores search while the loop parses the next requests,
    and a slow filter (a full metadata scan, a large exact scan) never holds up the loop.
    ``_ready`` is asyncio's queue of runnable callbacks (a loop without it runs bounded
    searches inline). ``offload`` (the ``search_offload`` setting) overrides this for bounded
    searches: "never" runs them inline under load too (where a second core adds little: on
    the 2-vCPU benchmark VM, 16 clients got 1,440-1,720 searches/s inline against 1,110-1,460
    with the hand-off), "always" hands every one off."""
    loop = asyncio.get_running_loop()
    if bounded and (offload == "never"
                    or (offload == "auto" and not getattr(loop, "_ready", None))):
        return fn(*args, **kwargs)
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
    raw = body.get("filters")
    if raw is None:
        return None
    try:
        f = parse_filter(raw)
    except FilterError as exc:
        raise InvalidArgument(str(exc), code="invalid_filter") from None
    return None if f.is_match_all else f


def _with_vectors(engine: Any, db_id: str, ids: list[str | None],
                  pairs: list[tuple[int, float]], include_meta: bool, include_values: bool,
                  budget: Budget) -> list[dict[str, Any]]:
    wanted = [i for i in ids if i]

    def fetch(pos: int, n: int) -> tuple[list[StoredVector], int]:
        return engine.store.vectors(db_id, wanted[pos : pos + n]), n

    def encode(v: StoredVector) -> bytes:
        return encode_vector(v, values=include_values, metadata=include_meta)

    stored = dict(encoded_vectors(fetch, len(wanted), budget, encode))
    results: list[dict[str, Any]] = []
    for vid, (_, score) in zip(ids, pairs, strict=True):
        b = stored.get(vid) if vid is not None else None
        if b is None:
            continue  # deleted between the index answer and the lookup
        results.append({"vectorId": vid, "score": score, "vector": orjson.Fragment(b)})
    return results


async def search(request: web.Request) -> web.Response:
    t0 = time.perf_counter()
    settings = request.app[SETTINGS]
    deadline = deadline_of(settings)
    db = get_db(request, fresh=False)
    body = await read_json(request)
    if "queryVector" not in body:
        raise InvalidArgument("missing required field 'queryVector'", code="missing_field")
    q = vector_values(body["queryVector"], db["dimension"], "queryVector")
    k = opt_int(body, "topK", 10, lo=1, hi=MAX_TOP_K)
    check_results(k, settings, f"topK={k}")
    threshold = opt_number(body, "threshold", 0.0, lo=-1.0, hi=1.0)
    include_meta = opt_bool(body, "includeMetadata", False)
    include_values = opt_bool(body, "includeValues", False) or opt_bool(
        body, "includeVectorData", False
    )
    ef = body.get("efSearch")
    if ef is not None:
        ef = opt_int(body, "efSearch", 0, lo=1, hi=10000)
    f = parse_filters(body)
    engine = engine_of(request)
    live = engine.indexes.get(db["id"])
    if live is None:
        raise Unavailable("the index of this database is not loaded yet")
    metrics = request.app[METRICS]
    metrics.searches_in_flight += 1
    try:
        labels, scores, stats = await run_search(
            live.search, q, k, f, ef=ef, bounded=f is None, offload=settings.search_offload,
            exact_scan_max=settings.exact_scan_max,
            cache_size=settings.filter_cache_size if settings.enable_query_cache else 0,
            overfetch_percent=settings.filter_overfetch_percent, deadline=deadline,
        )
    except QueryTimeout:
        raise query_timeout(settings) from None
    finally:
        metrics.searches_in_flight -= 1
    pairs = [(x, sc) for x, sc in zip(labels.tolist(), scores.tolist(), strict=True)
             if sc >= threshold]
    ids = live.ids_for([x for x, _ in pairs], engine.store)
    if include_meta or include_values:
        results = _with_vectors(engine, db["id"], ids, pairs, include_meta, include_values,
                                Budget(settings.max_response_bytes))
    else:  # deleted between the index answer and the lookup: left out
        results = [{"vectorId": vid, "score": sc}
                   for vid, (_, sc) in zip(ids, pairs, strict=True) if vid is not None]
    elapsed = time.perf_counter() - t0
    metrics.search_requests.inc()
    metrics.search_duration.observe(elapsed)
    if f is not None:
        metrics.filtered_search_requests.inc()
        metrics.filtered_search_duration.observe(elapsed)
        (metrics.filter_cache_hits if stats.filter_cache_hit else metrics.filter_cache_misses).inc()
    return json_response({"count": len(results), "results": results, "strategy": stats.strategy})
