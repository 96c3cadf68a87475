"""Ingest and search over HTTP, next to raw hnswlib on the same vectors in the same run.

    .venv/bin/python bench/ingest_search.py            # 100k x 128, 1000 queries
    .venv/bin/python bench/ingest_search.py --quick    # 20k x 128
    .venv/bin/python bench/ingest_search.py --quick --dim 384 --ingest-only

Prints four tables (see bench/README.md for what each figure means):
1. durable batch ingest (POST /vectors/batch, 1,000 per request, HNSW M=16 efConstruction=200)
   in vectors/s, JSON numbers and ``valuesB64``, against hnswlib ``add_items`` in the same
   batches with the same parameters. Two times each: "acknowledged" (the last answer: the
   batches are durable and stored) and "indexed" (the gauge ``jadevectordb_index_lag_records``
   back at 0: every batch searchable; the same time when the server indexes before it
   acknowledges and so has no such gauge);
2. durable single-vector writes/s with 1 and 32 concurrent clients, with the requests per
   durable commit read from /metrics (``jadevectordb_wal_group_commit_size``);
3. search QPS, p50/p99 latency and recall@10 over HTTP (one client, top-10) per efSearch,
   against hnswlib ``knn_query`` (one query at a time, one thread) with the same ef;
4. the time each part took.
Never asserts: it measures.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from collections.abc import Callable

import aiohttp
import hnswlib
import numpy as np
import orjson
from numpy.typing import NDArray

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.common import (  # noqa: E402 - runnable as a script
    EF_CONSTRUCTION,
    F32,
    BenchServer,
    Client,
    M,
    Table,
    batch_bodies,
    batch_bodies_b64,
    dataset,
    dumps,
    fmt,
    ground_truth,
    login,
    machine,
    metric_sum_count,
    percentile_ms,
    recall_at_k,
    row_of,
)

BATCH, K = 1000, 10
EFS = (10, 20, 40, 80, 160, 320)
GROUP = "jadevectordb_wal_group_commit_size"
LAG = "jadevectordb_index_lag_records"
LAG_POLL = 0.05  # seconds between /metrics reads while the index catches up


def raw_hnswlib(data: F32) -> tuple[hnswlib.Index, float]:
    """hnswlib with the server's parameters, fed in the same 1,000-vector batches with all
    cores (what the server's index does per batch record)."""
    idx = hnswlib.Index(space="cosine", dim=data.shape[1])
    idx.init_index(max_elements=len(data), M=M, ef_construction=EF_CONSTRUCTION, random_seed=100)
    t0 = time.perf_counter()
    for s in range(0, len(data), BATCH):
        chunk = data[s : s + BATCH]
        idx.add_items(chunk, np.arange(s, s + len(chunk)), num_threads=os.cpu_count() or 1)
    return idx, time.perf_counter() - t0


def http_ingest(c: Client, db: str, data: F32, b64: bool = False
                ) -> tuple[float, float, float, int]:
    """(seconds until the last batch was acknowledged, seconds until it was indexed, seconds of
    client encoding, batches refused 503 ``index_behind`` and sent again); bodies are encoded
    first so the timed part is the server's: parse, validate, log append + fsync, store, HNSW
    insert. ``b64``: the values as ``valuesB64`` (no JSON floats for the server to parse)."""
    t0 = time.perf_counter()
    bodies = list((batch_bodies_b64 if b64 else batch_bodies)(data, BATCH))
    encode = time.perf_counter() - t0
    path = f"/v1/databases/{db}/vectors/batch"
    refused = 0
    t0 = time.perf_counter()
    for _count, body in bodies:
        while (answer := c.raw("POST", path, body))[0] != 201:
            status, text = answer
            if status != 503 or b'"index_behind"' not in text:
                raise RuntimeError(f"POST {path} -> {status} {text[:300]!r}")
            refused += 1  # the graphs are too far behind: the server asks to retry
            time.sleep(LAG_POLL)
    acked = time.perf_counter() - t0
    while (lag := index_lag(c)) is not None and lag > 0:
        time.sleep(LAG_POLL)
    return acked, time.perf_counter() - t0, encode, refused


def index_lag(c: Client) -> float | None:
    """Records acknowledged but not yet in the in-memory indexes (``LAG`` summed over its
    series), or None when the server has no such gauge (it indexes before it acknowledges)."""
    status, text = c.raw("GET", "/metrics")
    if status != 200:
        raise RuntimeError(f"/metrics -> {status}")
    total = None
    for line in text.decode().splitlines():
        if line.startswith(LAG) and line[len(LAG)] in " {":
            total = (total or 0.0) + float(line.split()[-1])
    return total


async def single_writes(
    base: str, token: str, db: str, vectors: F32, clients: int, seconds: float, prefix: str
) -> tuple[int, float]:
    """``clients`` tasks, each its own keep-alive connection, POST /vectors one at a time for
    ``seconds``; returns (acknowledged writes, elapsed)."""
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    bodies = [dumps({"id": f"{prefix}{i}", "values": v}) for i, v in enumerate(vectors)]
    done = 0
    next_i = 0
    deadline = 0.0

    async def one(session: aiohttp.ClientSession) -> None:
        nonlocal done, next_i
        url = f"{base}/v1/databases/{db}/vectors"
        while time.perf_counter() < deadline and next_i < len(bodies):
            body = bodies[next_i]
            next_i += 1
            async with session.post(url, data=body, headers=headers) as r:
                await r.read()
                if r.status != 201:
                    raise RuntimeError(f"store -> {r.status}")
            done += 1

    conn = aiohttp.TCPConnector(limit=clients)
    async with aiohttp.ClientSession(connector=conn) as session:
        async with session.get(f"{base}/health") as r:  # open a connection before timing
            await r.read()
        t0 = time.perf_counter()
        deadline = t0 + seconds
        await asyncio.gather(*(one(session) for _ in range(clients)))
        return done, time.perf_counter() - t0


def group_size(c: Client) -> tuple[float, float]:
    status, text = c.raw("GET", "/metrics")
    return metric_sum_count(text.decode(), GROUP) if status == 200 else (0.0, 0.0)


def http_search(c: Client, db: str, queries: F32, ef: int) -> tuple[list[list[int]], list[float]]:
    bodies = [dumps({"queryVector": q, "topK": K, "efSearch": ef}) for q in queries]
    path = f"/v1/databases/{db}/search"
    for body in bodies[:50]:  # warm up (connection, caches, code paths)
        c.raw("POST", path, body)
    found: list[list[int]] = []
    lat: list[float] = []
    for body in bodies:
        t0 = time.perf_counter()
        status, text = c.raw("POST", path, body)
        lat.append(time.perf_counter() - t0)
        if status != 200:
            raise RuntimeError(f"search -> {status} {text[:200]!r}")
        found.append([row_of(r["vectorId"]) for r in orjson.loads(text)["results"]])
    return found, lat


def raw_search(idx: hnswlib.Index, queries: F32, ef: int) -> tuple[list[list[int]], list[float]]:
    idx.set_ef(ef)
    found: list[list[int]] = []
    lat: list[float] = []
    for q in queries[:50]:
        idx.knn_query(q, k=K, num_threads=1)
    for q in queries:
        t0 = time.perf_counter()
        labels, _ = idx.knn_query(q, k=K, num_threads=1)
        lat.append(time.perf_counter() - t0)
        found.append(labels[0].tolist())
    return found, lat


def writes_table(c: Client, base: str, token: str, dim: int, writes: F32, seconds: float,
                 took: Callable[[str, float], None]) -> None:
    """Single-vector writes with 1 and 32 clients into a separate database."""
    wdb = c.create_hnsw_db("writes", dim)
    rows = []
    t0 = time.perf_counter()
    for clients in (1, 32):
        s0, n0 = group_size(c)
        done, secs = asyncio.run(
            single_writes(base, token, wdb, writes, clients, seconds, f"w{clients}-")
        )
        s1, n1 = group_size(c)
        per_commit = (s1 - s0) / (n1 - n0) if n1 > n0 else float("nan")
        rows.append(
            [
                str(clients),
                fmt(done),
                f"{secs:.1f}",
                fmt(done / secs),
                f"{per_commit:.1f}",
                f"{secs / done * 1000 * clients:.2f}",
            ]
        )
    took("single-vector writes", t0)
    print(
        Table(
            f"Durable single-vector writes (POST /vectors, {dim}-dim, HNSW), separate database",
            [
                "clients",
                "writes",
                "seconds",
                "writes/s",
                "requests per commit",
                "mean latency ms",
            ],
            rows,
        ).render(),
        flush=True,
    )


def search_table(c: Client, db: str, queries: F32, truth: NDArray[np.int64],
                 raw_idx: hnswlib.Index, took: Callable[[str, float], None]) -> None:
    """The efSearch sweep over HTTP next to raw hnswlib."""
    t0 = time.perf_counter()
    rows = []
    for ef in EFS:
        found, lat = http_search(c, db, queries, ef)
        rfound, rlat = raw_search(raw_idx, queries, ef)
        rows.append(
            [
                str(ef),
                fmt(len(lat) / sum(lat)),
                f"{percentile_ms(lat, 50):.2f}",
                f"{percentile_ms(lat, 99):.2f}",
                f"{recall_at_k(found, truth):.3f}",
                fmt(len(rlat) / sum(rlat)),
                f"{percentile_ms(rlat, 50):.3f}",
                f"{recall_at_k(rfound, truth):.3f}",
            ]
        )
        print(f"  efSearch {ef}: done", flush=True)
    took("search sweep", t0)
    print(
        Table(
            f"Search top-{K}, one client, sequential, {len(queries):,} queries per row "
            f"(recall@{K} vs exact)",
            [
                "efSearch",
                "HTTP QPS",
                "HTTP p50 ms",
                "HTTP p99 ms",
                "HTTP recall@10",
                "hnswlib QPS",
                "hnswlib p50 ms",
                "hnswlib recall@10",
            ],
            rows,
        ).render()
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--n", type=int, default=100_000, help="vectors to ingest (default 100000)")
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--quick", action="store_true", help="n=20000")
    ap.add_argument("--ingest-only", action="store_true",
                    help="batch ingest only (no single writes, no search sweep)")
    ap.add_argument(
        "--write-seconds",
        type=float,
        default=5.0,
        help="duration of each single-write run (default 5)",
    )
    args = ap.parse_args()
    n = 20_000 if args.quick else args.n
    timings: list[list[str]] = []

    def took(what: str, t0: float) -> None:
        timings.append([what, f"{time.perf_counter() - t0:.1f}"])

    print(
        f"# ingest/search benchmark: n={n:,} dim={args.dim} queries={args.queries} "
        f"k={K} · {machine()}",
        flush=True,
    )
    t0 = time.perf_counter()
    data, queries = dataset(n, args.dim, args.queries)
    took("dataset (100 gaussian clusters, normalised)", t0)

    t0 = time.perf_counter()
    raw_idx, raw_secs = raw_hnswlib(data)
    took("raw hnswlib build", t0)

    server = BenchServer()
    try:
        t0 = time.perf_counter()
        server.start()
        token = login(server.base)
        c = Client(server.base, token)
        db = c.create_hnsw_db("ingest", args.dim)
        took("server start + login + create db", t0)
        print("ingesting over HTTP...", flush=True)
        t0 = time.perf_counter()
        http_acked, http_secs, encode_secs, http_refused = http_ingest(c, db, data)
        took("HTTP ingest (incl. client JSON encoding)", t0)
        count = c.call("GET", f"/v1/databases/{db}")["stats"]["vectorCount"]
        bdb = c.create_hnsw_db("ingest-b64", args.dim)
        t0 = time.perf_counter()
        b64_acked, b64_secs, _, b64_refused = http_ingest(c, bdb, data, b64=True)
        took("HTTP ingest, valuesB64 (incl. client encoding)", t0)

        def row(path: str, acked: float, indexed: float) -> list[str]:
            return [path, f"{acked:.1f}", f"{indexed:.1f}", fmt(n / indexed),
                    f"{raw_secs / acked:.2f}x", f"{raw_secs / indexed:.2f}x"]

        ingest = Table(
            f"Durable batch ingest, {n:,} x {args.dim}, batches of {BATCH:,}, "
            f"HNSW M={M} efConstruction={EF_CONSTRUCTION}",
            ["path", "acknowledged s", "indexed s", "vectors/s (indexed)",
             "vs raw (acknowledged)", "vs raw (indexed)"],
            [
                row("HTTP POST /vectors/batch (durable)", http_acked, http_secs),
                row("HTTP POST /vectors/batch, valuesB64 (durable)", b64_acked, b64_secs),
                row("raw hnswlib add_items (same batches)", raw_secs, raw_secs),
            ],
        )
        print(ingest.render())
        print(
            f"(client JSON encoding, not timed above: {encode_secs:.1f} s; "
            f"server count after ingest: {count:,}; batches refused 503 index_behind and sent "
            f"again: {http_refused} JSON, {b64_refused} valuesB64)",
            flush=True,
        )
        if not args.ingest_only:
            writes = dataset(50_000, args.dim, 0, seed=7)[0]
            writes_table(c, server.base, token, args.dim, writes, args.write_seconds, took)
            t0 = time.perf_counter()
            truth = ground_truth(data, queries, K)
            took("exact ground truth (numpy)", t0)
            search_table(c, db, queries, truth, raw_idx, took)
        c.close()
    finally:
        server.stop()
        server.cleanup()
    print(Table("Time per part", ["part", "seconds"], timings).render(), flush=True)


if __name__ == "__main__":
    main()
