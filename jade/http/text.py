"""/v1/databases/{db}/bm25-index/* and /search/hybrid, /search/rerank (API.md §7.3).

The BM25 index of a database is a projection of the log (``jade.text.projection``): build and
rebuild append a ``text.index.set`` record, documents a ``text.docs`` record. The index is then
built from the store in bounded steps that never hold other writes for long; build and
rebuild answer once it is built (``documentCount`` is what the index holds) or, for a build
longer than ``BUILD_WAIT_SECONDS``, with ``status: "building"`` and its progress (the status
route follows it). Searches read the projection and the vector index off the event loop
(``run_search``), filters applied before either ranking is cut; during a build they answer
from what is built and say so (``bm25Building``).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson
from aiohttp import web

from jade.core.decide import Command
from jade.core.filters import Filter
from jade.errors import InvalidArgument, NotFound, Unavailable
from jade.http import schemas as S
from jade.http.analytics import observed, record
from jade.http.databases import actor_of, engine_of, get_db
from jade.http.keys import SETTINGS
from jade.http.middleware import json_response
from jade.http.search import (
    MAX_TOP_K,
    deadline_of,
    parse_filters,
    query_timeout,
    run_search,
)
from jade.http.validate import (
    check_id,
    check_results,
    opt_bool,
    opt_int,
    opt_number,
    parsed,
    read_json,
    vector_values,
)
from jade.http.vectors import Budget, encode_vector, encoded_vectors
from jade.indexes.live import QueryTimeout
from jade.settings import Settings
from jade.stores.data import StoredVector
from jade.text import fusion
from jade.text.bm25 import TOKENIZER
from jade.text.projection import TextProjection

DEFAULT_FIELD = "text"
MAX_FIELD = 256
MAX_DOCS = 10_000  # documents per /bm25-index/documents request
MAX_DOC_CHARS = 1_000_000
MAX_QUERY_CHARS = 10_000
MAX_RRF_K = 100_000
MAX_RERANK_TOP_N = 1000
MIN_CANDIDATES = 50  # each side of a hybrid search ranks at least this many before fusion
BUILD_WAIT_SECONDS = 30.0  # build/rebuild answer when the build is done or after this long


def _text(request: web.Request) -> TextProjection:
    proj = engine_of(request).text
    if proj is None:
        raise Unavailable("the server is shutting down")
    return proj


def _field(given: str | None, default: str) -> str:
    field = default if given is None else given
    if len(field) > MAX_FIELD:
        raise InvalidArgument(f"'textField' is longer than {MAX_FIELD} characters")
    if not field.strip():
        raise InvalidArgument("'textField' must be a non-empty string")
    return field


def _no_index(db_id: str) -> NotFound:
    return NotFound("this database has no BM25 index: build one with POST "
                    f"/v1/databases/{db_id}/bm25-index/build", code="bm25_index_not_found",
                    database_id=db_id)


async def _in_thread(fn: Any, *args: Any) -> Any:
    return await asyncio.get_running_loop().run_in_executor(None, fn, *args)


# -- the index -------------------------------------------------------------------------------


async def _built(proj: TextProjection, db_id: str) -> None:
    """Wait (at most ``BUILD_WAIT_SECONDS``) for the database's index build to finish: the
    writer runs it in steps between groups, so nothing else waits on it."""
    deadline = time.monotonic() + BUILD_WAIT_SECONDS
    while proj.building(db_id) and time.monotonic() < deadline:
        await asyncio.sleep(0.02)


async def _define(request: web.Request, db: dict[str, Any], field: str, incremental: bool,
                  verb: str) -> web.Response:
    proj = _text(request)
    cmd = Command("text.index.set", {"db": db["id"], "field": field, "tokenizer": TOKENIZER,
                                     "incremental": incremental}, actor=actor_of(request))
    records = await engine_of(request).submit(cmd)
    await _built(proj, db["id"])
    status = await _in_thread(proj.status, db["id"])
    if status is None:  # deleted meanwhile
        raise NotFound("Database not found", database_id=db["id"])
    if status["status"] == "building":
        return json_response({
            "status": "building",
            "message": f"BM25 index over metadata.{field} is being built: "
                       f"{status['processedDocuments']} of {status['totalDocuments']} "
                       f"documents so far; GET /v1/databases/{db['id']}/bm25-index/status "
                       "follows it",
            "documentCount": status["processedDocuments"],
            "totalDocuments": status["totalDocuments"],
            "textField": field,
        })
    n = int(status["totalDocuments"])
    done = "indexed" if records else "already follows every write; nothing to do"
    out: dict[str, Any] = {
        "status": "success",
        "message": f"BM25 index {verb} over metadata.{field}: {n} documents {done}"
        if records else f"BM25 index over metadata.{field} {done} ({n} documents)",
        "documentCount": n,
        "textField": field,
    }
    if "durationMs" in status:
        out["durationMs"] = status["durationMs"]
    return json_response(out)


async def build(request: web.Request) -> web.Response:
    db = get_db(request)
    req = await parsed(request, S.Bm25Build, required=False)
    field = _field(req.textField, DEFAULT_FIELD)
    incremental = bool(req.incremental)
    return await _define(request, db, field, incremental, "built")


async def rebuild(request: web.Request) -> web.Response:
    db = get_db(request)
    req = await parsed(request, S.Bm25Rebuild, required=False)
    current = db.get("text_index")
    field = _field(req.textField, str(current["field"]) if current else DEFAULT_FIELD)
    return await _define(request, db, field, False, "rebuilt")


async def status(request: web.Request) -> web.Response:
    db = get_db(request, fresh=False)
    out = await _in_thread(_text(request).status, db["id"])
    if out is None:
        raise _no_index(db["id"])
    return json_response(out)


def _documents(req: S.Bm25Documents) -> tuple[list[str], list[str]]:
    """The documents' ids and texts (their shape and count checked by the declaration)."""
    ids: list[str] = []
    texts: list[str] = []
    for n, d in enumerate(req.documents):
        doc_id = d.doc_id if d.doc_id is not None else d.id
        check_id(doc_id, f"documents[{n}].doc_id")
        text = d.text
        if len(text) > MAX_DOC_CHARS:
            raise InvalidArgument(f"documents[{n}].text is longer than {MAX_DOC_CHARS} "
                                  "characters")
        ids.append(str(doc_id))
        texts.append(text)
    return ids, texts


async def documents(request: web.Request) -> web.Response:
    db = get_db(request)
    proj = _text(request)
    ids, texts = _documents(await parsed(request, S.Bm25Documents))
    cmd = Command("text.docs", {"db": db["id"], "ids": ids, "texts": texts,
                                "default_field": DEFAULT_FIELD, "tokenizer": TOKENIZER},
                  actor=actor_of(request), size=sum(map(len, texts)) + 64 * len(ids))
    records = await engine_of(request).submit(cmd)
    if any(r.type == "text.index.set" for r in records):  # the index was made for them
        await _built(proj, db["id"])
    st = await _in_thread(proj.status, db["id"])
    added = len(dict.fromkeys(ids))
    return json_response({
        "status": "success",
        "message": f"{added} documents added to the BM25 index",
        "addedCount": added,
        "totalDocuments": st["totalDocuments"] if st else added,
        "totalTerms": st["indexedTerms"] if st else 0,
    })


# -- hybrid search ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class HybridQuery:
    text: str | None
    vector: np.ndarray | None
    k: int
    method: str
    alpha: float
    rrf_k: int
    f: Filter | None


def _hybrid_query(body: dict[str, Any], dim: int, settings: Settings, *,
                  default_k: int = 10, text_required: bool = False) -> HybridQuery:
    text = body.get("queryText")
    if text is not None and not isinstance(text, str):
        raise InvalidArgument("'queryText' must be a string")
    if text is not None and len(text) > MAX_QUERY_CHARS:
        raise InvalidArgument(f"'queryText' is longer than {MAX_QUERY_CHARS} characters")
    if text is not None and not text.strip():
        text = None
    if text_required and text is None:
        raise InvalidArgument("missing required field 'queryText'", code="missing_field")
    raw_vector = body.get("queryVector")
    vector = vector_values(raw_vector, dim, "queryVector") if raw_vector is not None else None
    if text is None and vector is None:
        raise InvalidArgument("give 'queryText', 'queryVector' or both", code="missing_field")
    k = opt_int(body, "topK", default_k, lo=1, hi=MAX_TOP_K)
    check_results(k, settings, f"topK={k}")
    method = body.get("fusionMethod", "rrf")
    if method is None:
        method = "rrf"
    if not isinstance(method, str) or method.lower() not in fusion.METHODS:
        raise InvalidArgument(f"'fusionMethod' must be one of {', '.join(fusion.METHODS)}",
                              code="invalid_fusion_method")
    alpha = opt_number(body, "alpha", fusion.DEFAULT_ALPHA, lo=0.0, hi=1.0)
    rrf_k = opt_int(body, "k", fusion.DEFAULT_K, lo=1, hi=MAX_RRF_K)
    return HybridQuery(text, vector, k, method.lower(), alpha, rrf_k, parse_filters(body))


def _rank(request: web.Request, db: dict[str, Any], q: HybridQuery, depth: int
          ) -> list[fusion.Fused]:
    """Both rankings (each ``depth`` deep, the filter applied first) fused; runs off the loop.
    """
    settings = request.app[SETTINGS]
    engine = engine_of(request)
    proj = _text(request)
    deadline = deadline_of(settings)
    cache = settings.filter_cache_size if settings.enable_query_cache else 0
    live = engine.indexes.get(db["id"])
    if live is None and (q.vector is not None or q.f is not None):
        raise Unavailable("the index of this database is not loaded yet")
    vec: list[tuple[str, float]] = []
    if q.vector is not None:
        assert live is not None
        labels, scores, _ = live.search(
            q.vector, depth, q.f, exact_scan_max=settings.exact_scan_max, cache_size=cache,
            overfetch_percent=settings.filter_overfetch_percent, deadline=deadline)
        ids = live.ids_for(labels.tolist(), engine.store)
        vec = [(i, float(s)) for i, s in zip(ids, scores.tolist(), strict=True)
               if i is not None]
    bm: list[tuple[str, float]] = []
    if q.text is not None:
        admit = None
        if q.f is not None:
            assert live is not None
            match, _ = live.matching(q.f, cache, deadline)
            admit = match.contains.__contains__

        def check() -> None:
            if time.monotonic() > deadline:
                raise QueryTimeout

        bm = [(h.id, h.score) for h in proj.search(db["id"], q.text, depth, admit, check)]
    return fusion.fuse(vec, bm, q.method, q.alpha, q.rrf_k)


async def _ranked(request: web.Request, db: dict[str, Any], q: HybridQuery, depth: int
                  ) -> list[fusion.Fused]:
    proj = _text(request)
    if q.text is not None:
        if proj.index_of(db["id"]) is None and proj.defs.get(db["id"]) is None:
            raise _no_index(db["id"])
        if proj.behind is not None:
            raise Unavailable(f"the BM25 index is behind the log ({proj.behind}); retry")
    settings = request.app[SETTINGS]
    try:
        return await run_search(_rank, request, db, q, depth, bounded=False,
                                offload=settings.search_offload)
    except QueryTimeout:
        raise query_timeout(settings) from None


def _vectors(request: web.Request, db_id: str, ids: list[str], values: bool, metadata: bool
             ) -> dict[str, bytes]:
    store = engine_of(request).store
    budget = Budget(request.app[SETTINGS].max_response_bytes)

    def fetch(pos: int, n: int) -> tuple[list[StoredVector], int]:
        return store.vectors(db_id, ids[pos:pos + n]), min(n, len(ids) - pos)

    return dict(encoded_vectors(fetch, len(ids), budget,
                                lambda v: encode_vector(v, values=values, metadata=metadata)))


@observed("hybrid")
async def hybrid(request: web.Request) -> web.Response:
    t0 = time.perf_counter()
    settings = request.app[SETTINGS]
    db = get_db(request, fresh=False)
    body = await read_json(request)
    q = _hybrid_query(body, db["dimension"], settings)
    include_meta = opt_bool(body, "includeMetadata", False)
    include_values = (opt_bool(body, "includeVectorData", False)
                      or opt_bool(body, "includeValues", False))
    include_scores = opt_bool(body, "includeScores", True)
    depth = min(MAX_TOP_K, max(2 * q.k, MIN_CANDIDATES))
    building = q.text is not None and _text(request).building(db["id"])
    fused = (await _ranked(request, db, q, depth))[:q.k]
    encoded: dict[str, bytes] = {}
    if include_meta or include_values:
        encoded = await _in_thread(_vectors, request, db["id"], [f.id for f in fused],
                                   include_values, include_meta)
    results = []
    for f in fused:
        r: dict[str, Any] = {"vectorId": f.id, "hybridScore": f.score}
        if include_scores:
            if f.vector_score is not None:
                r["vectorScore"] = f.vector_score
            if f.bm25_score is not None:
                r["bm25Score"] = f.bm25_score
        b = encoded.get(f.id)
        if b is not None:
            r["vector"] = orjson.Fragment(b)
        results.append(r)
    out: dict[str, Any] = {"count": len(results), "fusionMethod": q.method}
    if building:  # the BM25 side ranked what its build has reached so far
        out["bm25Building"] = True
    # a text-only query is a BM25 search
    record(request, db_id=db["id"], kind="hybrid" if q.vector is not None else "bm25",
           latency_ms=(time.perf_counter() - t0) * 1000, results=len(results), text=q.text,
           top_k=q.k, filters=q.f, top_ids=[f.id for f in fused[:3]])
    return json_response({**out, "results": results})


# -- rerank search ---------------------------------------------------------------------------


@observed("reranked")
async def rerank(request: web.Request) -> web.Response:
    t0 = time.perf_counter()
    settings = request.app[SETTINGS]
    db = get_db(request, fresh=False)
    body = await read_json(request)
    q = _hybrid_query(body, db["dimension"], settings, text_required=True)
    enable = opt_bool(body, "enableReranking", True)
    top_n = opt_int(body, "rerankTopN", 100, lo=1, hi=MAX_RERANK_TOP_N)
    depth = min(MAX_TOP_K, max(top_n, q.k, MIN_CANDIDATES))
    fused = await _ranked(request, db, q, depth)
    t1 = time.perf_counter()
    candidates = fused[:max(top_n, q.k)] if enable else fused[:q.k]
    ids = [f.id for f in candidates]
    timings: dict[str, float] = {"retrievalMs": round((t1 - t0) * 1000.0, 3)}
    out: dict[str, Any] = {"reranked": False}
    if _text(request).building(db["id"]):
        out["bm25Building"] = True
    scores: np.ndarray | None = None
    config: dict[str, Any] = {}
    if enable and candidates:
        from jade.text import models

        config = models.rerank_config(db)
        # its first call loads the model (~0.5 s of file reading and ONNX set-up): off the loop
        model = await _in_thread(models.reranker)  # ModelUnavailable (503) when missing
        texts = await _in_thread(_text(request).texts, db["id"], ids)
        try:
            scores = await _in_thread(model.score, q.text or "", [texts.get(i, "") for i in ids])
        except Exception:
            models.record_rerank(db["id"], (time.perf_counter() - t1) * 1000.0, len(ids),
                                 failed=True)
            raise
        models.record_rerank(db["id"], (time.perf_counter() - t1) * 1000.0, len(ids))
        timings["rerankMs"] = round((time.perf_counter() - t1) * 1000.0, 3)
        out = {**out, "reranked": True, "modelName": model.name}
    rows = _rerank_rows(candidates, scores, config, q.k)
    stored = {v.id: v for v in await _in_thread(engine_of(request).store.vectors, db["id"],
                                                [r["docId"] for r in rows])}
    for r in rows:
        v = stored.get(r["docId"])
        if v is not None:
            r["metadata"] = v.metadata if v.metadata is not None else {}
    timings["totalMs"] = round((time.perf_counter() - t0) * 1000.0, 3)
    record(request, db_id=db["id"], kind="reranked", latency_ms=timings["totalMs"],
           results=len(rows), text=q.text, top_k=q.k, filters=q.f,
           top_ids=[r["docId"] for r in rows[:3]])
    return json_response({"count": len(rows), "timings": timings, **out, "results": rows})


def _rerank_rows(candidates: list[fusion.Fused], scores: np.ndarray | None,
                 config: dict[str, Any], k: int) -> list[dict[str, Any]]:
    """The result rows: by the reranker's score (or, with ``combineScores``, by
    ``rerankWeight`` * rerank score + (1 - weight) * the hybrid score scaled to 0..1), those
    under ``scoreThreshold`` left out; without scores, the hybrid order."""
    rows: list[dict[str, Any]] = []
    top = max((f.score for f in candidates), default=0.0) or 1.0
    weight = float(config.get("rerankWeight", 0.7))
    combine = bool(config.get("combineScores", True))
    threshold = config.get("scoreThreshold")
    for n, f in enumerate(candidates):
        r: dict[str, Any] = {"docId": f.id, "vectorScore": f.vector_score or 0.0,
                             "bm25Score": f.bm25_score or 0.0, "hybridScore": f.score}
        if scores is not None:
            s = float(scores[n])
            if threshold is not None and s < float(threshold):
                continue
            r["rerankScore"] = s
            if combine:
                r["combinedScore"] = weight * s + (1.0 - weight) * (f.score / top)
        rows.append(r)
    if scores is not None:
        key = "combinedScore" if combine else "rerankScore"
        rows.sort(key=lambda r: (-r[key], r["docId"]))
    return rows[:k]
