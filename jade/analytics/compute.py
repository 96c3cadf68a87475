"""Query analytics computed from records (API.md §11): pure functions, no clock, no I/O.

A ``QueryRecord`` is what one search was (database, kind, latency, result count, outcome,
user, a few top result ids, the query's shape). Everything the analytics routes answer is a
function of a list of records and the window asked for: time buckets with counts and latency
percentiles (``buckets``), groups of queries with the same shape (``patterns``), shapes whose
share grew between the two halves of a window (``trending``), and the ``insights`` summary.

A query's *signature* groups queries that are "the same question": for vector searches its
kind, ``topK`` and the shape of its filter (fields and operators, never the values: the
filter ``{"price": {"$lt": 10}}`` and ``{"price": {"$lt": 99}}`` share a signature); for text
searches (hybrid, BM25, reranked) the text lower-cased with its whitespace collapsed. The
shape is derived from the filter's canonical form (``Filter.canonical``), kept as is in the
record: the search pays nothing for it, the analytics routes derive it when they group.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec

KINDS = ("vector", "filtered", "batch", "hybrid", "bm25", "reranked")
TEXT_KINDS = frozenset({"hybrid", "bm25", "reranked"})
GRANULARITY = {"hourly": 3600, "daily": 86400, "weekly": 7 * 86400}
MAX_TEXT = 1000  # characters of query text kept per record
TOP_IDS = 3  # result ids kept per record
MAX_ID = 128  # characters kept of each (a record stays under about 2 KB)
# 1970-01-05 was a Monday: weekly buckets start on Mondays 00:00 UTC
_WEEK_ORIGIN = 4 * 86400


class QueryRecord(msgspec.Struct, array_like=True, gc=False):
    """One search as it was answered. ``filt`` is the canonical filter ("" without one),
    ``sig`` a signature the handler chose ("" for the default one), ``status`` the HTTP status
    and ``error`` the error code of a failed search."""

    qid: str
    ts: float  # seconds since the epoch
    db: str
    kind: str
    latency_ms: float
    results: int
    ok: bool
    user: str = ""
    top_k: int = 0
    filt: str = ""
    text: str = ""
    sig: str = ""
    top: tuple[str, ...] = ()
    status: int = 200
    error: str = ""


class Feedback(msgspec.Struct, array_like=True, gc=False):
    """A user's feedback on one query (``POST /analytics/feedback``)."""

    ts: float
    db: str
    qid: str
    user: str  # the user id the client named (or the caller's)
    actor: str  # the authenticated caller
    rating: int | None = None
    text: str = ""
    clicked_id: str = ""
    clicked_rank: int | None = None


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def iso_ms(ts: float) -> str:
    return datetime.fromtimestamp(ts, tz=UTC).isoformat(timespec="milliseconds").replace(
        "+00:00", "Z")


def normalise_text(text: str) -> str:
    return " ".join(text.lower().split())


def _shape(node: Any) -> str:
    """A canonical filter node without its operands: ``and(eq:color,gt:price)``."""
    if not isinstance(node, list) or not node:
        return "?"
    op = node[0]
    if op in ("and", "or") and len(node) == 2 and isinstance(node[1], list):
        parts = sorted({_shape(c) for c in node[1]})
        return f"{op}({','.join(parts)})"
    if op == "not" and len(node) == 2:
        return f"not({_shape(node[1])})"
    if op == "all":
        return ""
    if len(node) >= 2:
        return f"{op}:{node[1]}"
    return str(op)


def filter_shape(canonical: str, _cache: dict[str, str] = {}) -> str:  # noqa: B006
    """The fields and operators of a filter (its values left out), from ``Filter.canonical``."""
    if not canonical:
        return ""
    got = _cache.get(canonical)
    if got is None:
        try:
            got = _shape(json.loads(canonical))
        except ValueError:
            got = "?"
        if len(_cache) > 10_000:
            _cache.clear()
        _cache[canonical] = got
    return got


def signature(r: QueryRecord) -> str:
    """What groups ``r`` with the queries that asked the same question (module docstring)."""
    if r.sig:
        return r.sig
    if r.kind in TEXT_KINDS and r.text:
        return f"{r.kind}: {normalise_text(r.text)}"
    if not r.ok and not r.top_k:
        return f"{r.kind} (rejected: {r.error or r.status})"
    shape = filter_shape(r.filt)
    return f"{r.kind} topK={r.top_k}" + (f" filter={shape}" if shape else "")


def in_window(records: Iterable[QueryRecord], start: float, end: float) -> list[QueryRecord]:
    return [r for r in records if start <= r.ts <= end]


def percentile(sorted_values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile of ascending ``sorted_values`` (0.0 when empty)."""
    if not sorted_values:
        return 0.0
    rank = max(1, math.ceil(p / 100.0 * len(sorted_values)))
    return float(sorted_values[min(rank, len(sorted_values)) - 1])


def _r(x: float) -> float:
    return round(x, 3)


def summary(records: Sequence[QueryRecord]) -> dict[str, Any]:
    """Counts, rates and latency percentiles of ``records``. Latency is over the successful
    searches: a refused one (a bad request) costs microseconds and would only hide slowness."""
    total = len(records)
    ok = [r for r in records if r.ok]
    lat = sorted(r.latency_ms for r in ok)
    zero = sum(1 for r in ok if r.results == 0)
    out: dict[str, Any] = {
        "total_queries": total,
        "successful_queries": len(ok),
        "failed_queries": total - len(ok),
        "zero_result_queries": zero,
        "success_rate": _r(len(ok) / total) if total else 0.0,
        "zero_result_rate": _r(zero / len(ok)) if ok else 0.0,
        "avg_latency_ms": _r(sum(lat) / len(lat)) if lat else 0.0,
        "p50_latency_ms": _r(percentile(lat, 50)),
        "p95_latency_ms": _r(percentile(lat, 95)),
        "p99_latency_ms": _r(percentile(lat, 99)),
        "max_latency_ms": _r(lat[-1]) if lat else 0.0,
        "avg_results": _r(sum(r.results for r in ok) / len(ok)) if ok else 0.0,
        "unique_users": len({r.user for r in records}),
    }
    for kind in KINDS:
        out[f"{kind}_queries"] = sum(1 for r in records if r.kind == kind)
    return out


def bucket_start(ts: float, granularity: str) -> float:
    size = GRANULARITY[granularity]
    origin = _WEEK_ORIGIN if granularity == "weekly" else 0
    return math.floor((ts - origin) / size) * size + origin


def buckets(records: Sequence[QueryRecord], granularity: str) -> list[dict[str, Any]]:
    """One entry per time bucket that holds queries, oldest first (buckets without queries are
    left out: a window of years at an hourly granularity stays as small as its data)."""
    groups: dict[float, list[QueryRecord]] = {}
    for r in records:
        groups.setdefault(bucket_start(r.ts, granularity), []).append(r)
    out = []
    for start in sorted(groups):
        end = start + GRANULARITY[granularity]
        out.append({"time_bucket": iso(start), "bucket_end": iso(end), **summary(groups[start])})
    return out


def patterns(records: Sequence[QueryRecord], min_count: int = 1) -> list[dict[str, Any]]:
    """Queries grouped by signature, the most frequent first (ties: the most recent first)."""
    groups: dict[str, list[QueryRecord]] = {}
    for r in records:
        groups.setdefault(signature(r), []).append(r)
    out: list[dict[str, Any]] = []
    for sig, rs in groups.items():
        if len(rs) < min_count:
            continue
        ok = [r for r in rs if r.ok]
        lat = sorted(r.latency_ms for r in ok)
        out.append({
            "pattern": sig,
            "kind": rs[-1].kind,
            "count": len(rs),
            "failed_count": len(rs) - len(ok),
            "zero_result_count": sum(1 for r in ok if r.results == 0),
            "avg_latency_ms": _r(sum(lat) / len(lat)) if lat else 0.0,
            "p95_latency_ms": _r(percentile(lat, 95)),
            "avg_results": _r(sum(r.results for r in ok) / len(ok)) if ok else 0.0,
            "unique_users": len({r.user for r in rs}),
            "first_seen": iso(min(r.ts for r in rs)),
            "last_seen": iso(max(r.ts for r in rs)),
            "example_query_id": rs[-1].qid,
            "_last": max(r.ts for r in rs),
        })
    out.sort(key=lambda p: (-p["count"], -p["_last"], p["pattern"]))
    for p in out:
        del p["_last"]
    return out


def trending(records: Sequence[QueryRecord], start: float, end: float,
             min_growth: float = 0.5) -> list[dict[str, Any]]:
    """Signatures asked more often in the second half of [start, end] than in the first:
    ``growth_rate`` = (recent - previous) / previous, or the recent count itself for a
    signature the first half never saw (``new``). Fastest growing first."""
    mid = start + (end - start) / 2
    prev: dict[str, int] = {}
    recent: dict[str, int] = {}
    kinds: dict[str, str] = {}
    for r in records:
        if not start <= r.ts <= end:
            continue
        sig = signature(r)
        kinds[sig] = r.kind
        if r.ts < mid:
            prev[sig] = prev.get(sig, 0) + 1
        else:
            recent[sig] = recent.get(sig, 0) + 1
    out: list[dict[str, Any]] = []
    for sig, n in recent.items():
        before = prev.get(sig, 0)
        growth = (n - before) / before if before else float(n)
        if growth < min_growth:
            continue
        out.append({"pattern": sig, "kind": kinds[sig], "recent_count": n,
                    "previous_count": before, "growth_rate": _r(growth), "new": before == 0})
    out.sort(key=lambda t: (-t["growth_rate"], -t["recent_count"], t["pattern"]))
    return out


def query_json(r: QueryRecord) -> dict[str, Any]:
    return {
        "query_id": r.qid,
        "timestamp": iso_ms(r.ts),
        "query_type": r.kind,
        "latency_ms": _r(r.latency_ms),
        "result_count": r.results,
        "success": r.ok,
        "status": r.status,
        "error": r.error or None,
        "user_id": r.user,
        "top_k": r.top_k or None,
        "filter_shape": filter_shape(r.filt) or None,
        "query_text": r.text or None,
        "signature": signature(r),
        "top_result_ids": list(r.top),
    }


CSV_COLUMNS = ("query_id", "timestamp", "query_type", "latency_ms", "result_count", "success",
               "status", "error", "user_id", "top_k", "filter_shape", "query_text",
               "signature", "top_result_ids")


def csv_row(r: QueryRecord) -> list[Any]:
    """``query_json`` as CSV cells: booleans as true/false, the ids as a JSON array."""
    q = query_json(r)
    q["top_result_ids"] = json.dumps(list(r.top), ensure_ascii=False)
    q["success"] = "true" if r.ok else "false"
    return ["" if q[c] is None else q[c] for c in CSV_COLUMNS]


def feedback_json(f: Feedback) -> dict[str, Any]:
    return {"query_id": f.qid, "timestamp": iso_ms(f.ts), "user_id": f.user,
            "submitted_by": f.actor, "rating": f.rating, "feedback_text": f.text or None,
            "clicked_result_id": f.clicked_id or None, "clicked_rank": f.clicked_rank}


def feedback_summary(feedback: Sequence[Feedback], queries: int) -> dict[str, Any]:
    rated = [f.rating for f in feedback if f.rating is not None]
    ranks = [f.clicked_rank for f in feedback if f.clicked_rank is not None]
    clicked = {f.qid for f in feedback if f.clicked_id or f.clicked_rank is not None}
    return {
        "feedback_count": len(feedback),
        "avg_rating": _r(sum(rated) / len(rated)) if rated else None,
        "clicked_queries": len(clicked),
        "click_through_rate": _r(len(clicked) / queries) if queries else 0.0,
        "avg_clicked_rank": _r(sum(ranks) / len(ranks)) if ranks else None,
    }


def insights(records: Sequence[QueryRecord], feedback: Sequence[Feedback], start: float,
             end: float, top: int = 10) -> dict[str, Any]:
    """The summary, the most common patterns, the slowest and the latest zero-result queries,
    what is trending, and plain-language recommendations drawn from them."""
    s = summary(records)
    s.update(feedback_summary(feedback, s["total_queries"]))
    ok = [r for r in records if r.ok]
    slow = sorted(ok, key=lambda r: -r.latency_ms)[:top]
    zero = [r for r in reversed(records) if r.ok and r.results == 0][:top]
    common = patterns(records, 1)[:top]
    trend = trending(records, start, end)[:top]
    recs = []
    if s["total_queries"] and s["zero_result_rate"] >= 0.1:
        recs.append(f"{s['zero_result_rate']:.0%} of successful queries returned nothing: "
                    "check the threshold and the filters of the zero_result_queries")
    if s["failed_queries"] and s["failed_queries"] >= 0.05 * s["total_queries"]:
        recs.append(f"{s['failed_queries']} of {s['total_queries']} queries failed: see the "
                    "errors in /analytics/queries")
    if s["p99_latency_ms"] > 100:
        recs.append(f"p99 latency is {s['p99_latency_ms']} ms: see slow_queries (filters that "
                    "scan, large topK)")
    return {
        "summary": s,
        "common_patterns": common,
        "slow_queries": [query_json(r) for r in slow],
        "zero_result_queries": [query_json(r) for r in zero],
        "trending": trend,
        "recommendations": recs,
        "start_time": iso(start),
        "end_time": iso(end),
    }


def parse_time(raw: str) -> float:
    """ISO 8601 (``2025-01-02``, ``2025-01-02T03:04:05Z``, with an offset; naive = UTC) or
    seconds/milliseconds since the epoch. Raises ``ValueError``."""
    s = raw.strip()
    try:
        x = float(s)
    except ValueError:
        pass
    else:
        if not math.isfinite(x) or x < 0:
            raise ValueError(raw)
        return x / 1000.0 if x > 1e11 else x
    if s.endswith(("Z", "z")):
        s = s[:-1] + "+00:00"
    dt = datetime.fromisoformat(s)
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return (dt - datetime(1970, 1, 1, tzinfo=UTC)) / timedelta(seconds=1)
