"""Text search quality and latency over HTTP: BM25 alone, vectors alone, each fusion, reranking.

    .venv/bin/python bench/hybrid.py              # 372 documents, 64 queries, 3 timed rounds
    .venv/bin/python bench/hybrid.py --quick      # one timed round

The labelled set is ``bench/data/hybrid_docs.jsonl`` (short documents written for this
benchmark, 31 topics with deliberate near-misses across them) and
``bench/data/hybrid_queries.jsonl`` (queries with graded relevant documents: 2 answers the
query, 1 is related). Each query has a kind: ``keyword`` (rare names, codes, numbers),
``mixed`` (shares words with the answer and with a near-miss in another topic) or ``meaning``
(a paraphrase that shares no content word with the documents that answer it).

The script starts a real server, embeds every document with ``POST /v1/embeddings/generate``
(batch input), stores them as vectors with metadata ``text`` in a 384-dimension database, builds
the BM25 index (``POST /bm25-index/build``), embeds the queries the same way, then:

1. quality: nDCG@10 (gain 2^grade - 1) and recall@10 (share of the documents graded >= 1 found
   in the top 10) per method, over all queries and per kind, and the ratio of each nDCG@10 to
   vector-only search in the same run;
2. latency: every method's round trip per query (median, p95) over ``--rounds`` interleaved
   rounds (each query runs every method in turn, so a drifting load hits all alike), next to
   vector-only ``/search``; one client, keep-alive, request bodies encoded before the clock.

Methods: ``/search`` with the query's embedding (vector), ``/search/hybrid`` with ``queryText``
only (BM25: one ranking, fusion keeps its order), ``/search/hybrid`` with both (rrf; linear
and weighted at alpha 0.3, 0.5, 0.7, alpha being the vector side's weight) and
``/search/rerank`` (the default rrf candidates, ``rerankTopN`` 100 as the reference client sends,
rescored by the server's reranker) with text only, as the reference CLI sends it, and with text
and vector; table 1 repeats the two rerank rows with the database's ``combineScores`` set to
false (the reranker's score alone orders the candidates). Never asserts: it measures.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.common import (  # noqa: E402 - runnable as a script
    BenchServer,
    Client,
    RawConn,
    Table,
    cpu_ticks,
    dumps,
    login,
    machine,
    percentile_ms,
    request_bytes,
    steal_since,
    wait_caught_up,
)

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")
K = 10
DIM = 384
EMBED_BATCH = 128  # the server's limit of texts per /v1/embeddings/generate request
STORE_BATCH = 200
ALPHAS = (0.3, 0.5, 0.7)
KINDS = ("keyword", "mixed", "meaning")


@dataclass(frozen=True)
class Query:
    id: str
    kind: str
    text: str
    relevant: dict[str, int]


@dataclass(frozen=True)
class Method:
    name: str
    path: str  # under /v1/databases/{db}
    body: Callable[[Query, list[float]], dict[str, Any]]
    ids: Callable[[dict[str, Any]], list[str]]


def load_jsonl(name: str) -> list[dict[str, Any]]:
    with open(os.path.join(DATA, name), "rb") as fh:
        return [orjson.loads(line) for line in fh if line.strip()]


# -- the measures ------------------------------------------------------------------------------
def ndcg_at_k(found: list[str], relevant: dict[str, int], k: int = K) -> float:
    """Normalised discounted cumulative gain of the top ``k``, gain 2^grade - 1."""
    dcg = sum((2 ** relevant.get(d, 0) - 1) / math.log2(i + 2) for i, d in enumerate(found[:k]))
    ideal = sorted(relevant.values(), reverse=True)[:k]
    idcg = sum((2 ** g - 1) / math.log2(i + 2) for i, g in enumerate(ideal))
    return dcg / idcg if idcg > 0 else 0.0


def recall_at(found: list[str], relevant: dict[str, int], k: int = K) -> float:
    wanted = {d for d, g in relevant.items() if g > 0}
    return len(wanted & set(found[:k])) / len(wanted) if wanted else 0.0


# -- the methods -------------------------------------------------------------------------------
def vector_ids(r: dict[str, Any]) -> list[str]:
    return [x["vectorId"] for x in r["results"]]


def rerank_ids(r: dict[str, Any]) -> list[str]:
    return [x["docId"] for x in r["results"]]


def methods() -> list[Method]:
    out = [
        Method("vector (/search)", "/search",
               lambda q, v: {"queryVector": v, "topK": K}, vector_ids),
        Method("BM25 (hybrid, text only)", "/search/hybrid",
               lambda q, v: {"queryText": q.text, "topK": K}, vector_ids),
        Method("hybrid rrf (k 60)", "/search/hybrid",
               lambda q, v: {"queryText": q.text, "queryVector": v, "topK": K,
                             "fusionMethod": "rrf"}, vector_ids),
    ]
    for method in ("linear", "weighted"):
        for a in ALPHAS:
            out.append(Method(
                f"hybrid {method} alpha {a}", "/search/hybrid",
                lambda q, v, method=method, a=a: {  # type: ignore[misc]
                    "queryText": q.text, "queryVector": v, "topK": K,
                    "fusionMethod": method, "alpha": a}, vector_ids))
    out += [
        Method("rerank, text only (as the CLI)", "/search/rerank",
               lambda q, v: {"queryText": q.text, "topK": K, "enableReranking": True,
                             "rerankTopN": 100}, rerank_ids),
        Method("rerank, text + vector", "/search/rerank",
               lambda q, v: {"queryText": q.text, "queryVector": v, "topK": K,
                             "enableReranking": True, "rerankTopN": 100}, rerank_ids),
    ]
    return out


# -- setup -------------------------------------------------------------------------------------
def embed(c: Client, texts: list[str]) -> tuple[list[list[float]], str, float]:
    """Embeddings of ``texts`` via the batch input of /v1/embeddings/generate; also the model's
    name and the seconds taken."""
    out: list[list[float]] = []
    model = ""
    t0 = time.perf_counter()
    for s in range(0, len(texts), EMBED_BATCH):
        chunk = texts[s : s + EMBED_BATCH]
        r = c.call("POST", "/v1/embeddings/generate", {"input": chunk, "input_type": "text"})
        got = r["embeddings"] if len(chunk) > 1 else [r["embedding"]]
        assert len(got) == len(chunk) and r["dimension"] == DIM, (len(got), r["dimension"])
        out += got
        model = r["model"]
    return out, model, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="one timed round")
    ap.add_argument("--rounds", type=int, default=3, help="timed rounds over every query")
    args = ap.parse_args()
    rounds = 1 if args.quick else args.rounds

    docs = load_jsonl("hybrid_docs.jsonl")
    queries = [Query(q["id"], q["kind"], q["text"], q["relevant"])
               for q in load_jsonl("hybrid_queries.jsonl")]
    print(f"# bench/hybrid.py: {len(docs)} documents, {len(queries)} queries "
          f"({', '.join(f'{sum(q.kind == k for q in queries)} {k}' for k in KINDS)}), "
          f"{rounds} timed rounds")
    print(f"# {machine()}", flush=True)
    ticks = cpu_ticks()
    server = BenchServer()
    try:
        server.start()
        token = login(server.base)
        c = Client(server.base, token)
        db = c.create_hnsw_db("hybrid", DIM)
        parts: list[list[str]] = []

        doc_vecs, model, secs = embed(c, [d["text"] for d in docs])
        parts.append(["embed the documents (/v1/embeddings/generate, batches of "
                      f"{EMBED_BATCH})", f"{secs:.2f}", f"{len(docs) / secs:,.0f} texts/s"])
        t0 = time.perf_counter()
        for s in range(0, len(docs), STORE_BATCH):
            c.call("POST", f"/v1/databases/{db}/vectors/batch", {"vectors": [
                {"id": d["id"], "values": v, "metadata": {"text": d["text"], "topic": d["topic"]}}
                for d, v in zip(docs[s : s + STORE_BATCH], doc_vecs[s : s + STORE_BATCH],
                                strict=True)]})
        parts.append(["store them (/vectors/batch)", f"{time.perf_counter() - t0:.2f}", ""])
        t0 = time.perf_counter()
        built = c.call("POST", f"/v1/databases/{db}/bm25-index/build", {"textField": "text"})
        status = c.call("GET", f"/v1/databases/{db}/bm25-index/status")
        parts.append(["build the BM25 index (/bm25-index/build)",
                      f"{time.perf_counter() - t0:.2f}",
                      f"{built['documentCount']} documents, {status.get('indexedTerms')} terms"])
        q_vecs, _, secs = embed(c, [q.text for q in queries])
        parts.append(["embed the queries", f"{secs:.2f}", ""])
        wait_caught_up(server.base)
        config = c.call("GET", f"/v1/databases/{db}/reranking/config")
        print(f"\nembedding model: {model}; reranker: {config['modelName']} "
              f"(combineScores {config['combineScores']}, rerankWeight {config['rerankWeight']})")
        print(Table("0. Setup", ["step", "s", "note"], parts).render(), flush=True)
        c.close()

        ms = methods()
        found: dict[str, list[list[str]]] = {m.name: [] for m in ms}
        reqs = [[request_bytes(server.port, f"/v1/databases/{db}{m.path}", token,
                               dumps(m.body(q, v))) for m in ms]
                for q, v in zip(queries, q_vecs, strict=True)]
        conn = RawConn(server.port)
        for qi, row in enumerate(reqs):  # the answers (and a warm-up of every path)
            for m, req in zip(ms, row, strict=True):
                st, body = conn.send(req)
                if st != 200:
                    raise RuntimeError(f"{m.name} {queries[qi].id} -> {st} {body[:300]!r}")
                found[m.name].append(m.ids(orjson.loads(body)))
        # the reranker's own order: the same rerank calls with combineScores off (a config
        # record), then back on for the timings
        cfg = f"/v1/databases/{db}/reranking/config"
        pure = [m for m in ms if m.path == "/search/rerank"]
        Client(server.base, token).call("PUT", cfg, {"combineScores": False})
        for m in pure:
            name = m.name + ", combineScores false"
            found[name] = []
            for q, v in zip(queries, q_vecs, strict=True):
                st, body = conn.send(request_bytes(server.port, f"/v1/databases/{db}{m.path}",
                                                   token, dumps(m.body(q, v))))
                found[name].append(m.ids(orjson.loads(body)))
        Client(server.base, token).call("PUT", cfg, {"combineScores": True})

        # -- 1. quality ------------------------------------------------------------------------
        def mean(xs: list[float]) -> float:
            return float(np.mean(xs)) if xs else 0.0

        base = mean([ndcg_at_k(f, q.relevant) for f, q in zip(found[ms[0].name], queries,
                                                             strict=True)])
        rows = []
        for name in found:
            nd = [ndcg_at_k(f, q.relevant) for f, q in zip(found[name], queries, strict=True)]
            rc = [recall_at(f, q.relevant) for f, q in zip(found[name], queries, strict=True)]
            per_kind = [mean([n for n, q in zip(nd, queries, strict=True) if q.kind == k])
                        for k in KINDS]
            rows.append([name, f"{mean(nd):.3f}", f"{mean(rc):.3f}",
                         *(f"{x:.3f}" for x in per_kind), f"{mean(nd) / base:.2f}x"])
        print(Table(f"1. Quality, top-{K}: nDCG@10 and recall@10 over all {len(queries)} "
                    "queries, nDCG@10 per kind", ["method", "nDCG@10", "recall@10",
                                                  *(f"nDCG {k}" for k in KINDS),
                                                  "nDCG vs vector"], rows).render(), flush=True)

        # -- 2. latency ------------------------------------------------------------------------
        lat: dict[str, list[float]] = {m.name: [] for m in ms}
        embed_req = [request_bytes(server.port, "/v1/embeddings/generate", token,
                                   dumps({"input": q.text})) for q in queries]
        embed_lat: list[float] = []
        for _ in range(rounds):
            for qi, row in enumerate(reqs):
                t0 = time.perf_counter()
                st, _b = conn.send(embed_req[qi])
                embed_lat.append(time.perf_counter() - t0)
                for m, req in zip(ms, row, strict=True):
                    t0 = time.perf_counter()
                    st, body = conn.send(req)
                    lat[m.name].append(time.perf_counter() - t0)
                    if st != 200:
                        raise RuntimeError(f"{m.name} -> {st} {body[:300]!r}")
        conn.close()
        v50 = percentile_ms(lat[ms[0].name], 50)
        e50 = percentile_ms(embed_lat, 50)
        rows = [["embed one query (/v1/embeddings/generate)", f"{e50:.2f}",
                 f"{percentile_ms(embed_lat, 95):.2f}", f"{e50 / v50:.1f}x"]]
        for m in ms:
            rows.append([m.name, f"{percentile_ms(lat[m.name], 50):.2f}",
                         f"{percentile_ms(lat[m.name], 95):.2f}",
                         f"{percentile_ms(lat[m.name], 50) / v50:.1f}x"])
        print(Table(f"2. Latency per query over HTTP, one client, {rounds} x {len(queries)} "
                    "requests per row (query embedding precomputed except in the first row)",
                    ["method", "median ms", "p95 ms", "median vs vector"], rows).render())
        print(f"\nCPU time stolen by the hypervisor during the run: {steal_since(ticks)}")
    finally:
        server.stop()
        server.cleanup()


if __name__ == "__main__":
    main()
