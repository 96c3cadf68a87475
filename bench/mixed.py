"""Search while writing: one search client next to 32 single-vector writers, and right after a
burst of writes while the index catches up; recall against the exact top-10 of everything
acknowledged so far.

    .venv/bin/python bench/mixed.py                 # 100k x 128, 10 s of mixed load, 20k burst
    .venv/bin/python bench/mixed.py --dim 384       # 100k x 384
    .venv/bin/python bench/mixed.py --quick         # 5k x 128, 2 s, 2k burst

Loads ``--n`` vectors (HNSW M=16 efConstruction=200, batches of 1,000), then one search client
(the raw-socket client of bench/search.py, top-10, one query at a time) runs three phases:

1. idle: efSearch swept upwards until recall@10 >= 0.95 (``--queries`` per step); that efSearch
   is used for the rest, and this row is the baseline of every ratio below;
2. mixed: ``--writers`` aiohttp clients (default 32, in a child process so they do not share
   the search client's interpreter) write one new vector per request for ``--seconds`` while the
   search client loops over the queries;
3. burst: ``--burst`` new vectors sent as fast as one client can in batches of 1,000, then the
   search client starts at once, while the index catches up: an unindexed tail must be searched
   exactly, so recall must not drop. Searches run until the index lag is 0 and at least
   ``--queries`` have run (capped at ``--catch-up-timeout``);
4. idle again once the index has caught up, on the same data: the burst rows' recall baseline
   (the first idle row had fewer vectors; at the same efSearch a larger graph can lose a little
   recall by itself).

Every vector (loaded, written, burst) comes from the same clustered set as the queries, so new
writes do land in the true top-10. A search's truth is the exact top-10 over the loaded rows
and every write acknowledged before the search was sent; a write that was in flight during the
search (sent before its answer, acknowledged after it was sent) counts as visible only when the
search returned it. Recall is computed on up to ``--recall-sample`` searches per phase, evenly
spread. The index lag (``jadevectordb_index_lag_records`` and ``_seconds`` from /metrics, every
``--sample-ms``) is shown for each phase; "n/a" while the server does not export it.
Prints tables (see bench/README.md); never asserts.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection

import aiohttp  # noqa: F401 - imported before the writer child is forked
import numpy as np
import orjson
from numpy.typing import NDArray

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.common import (  # noqa: E402 - runnable as a script
    EF_CONSTRUCTION,
    F32,
    BenchServer,
    Client,
    LagSampler,
    LagStats,
    M,
    RawConn,
    Table,
    WriteRun,
    catch_up_cell,
    clustered,
    cpu_ticks,
    dumps,
    fmt,
    ground_truth,
    lag_cells,
    login,
    machine,
    percentile_ms,
    post_retrying,
    recall_at_k,
    request_bytes,
    row_of,
    single_writes,
    steal_since,
    values_json,
    wait_caught_up,
)
from bench.common import (
    EFS_SWEEP as EFS,
)
from bench.common import (
    TARGET_RECALL as TARGET,
)

BATCH, K = 1000, 10
NEVER = float("inf")


@dataclass
class Searches:
    """Sequential searches: the query index, when each was sent and answered (monotonic), and
    the rows it returned."""

    q: list[int] = field(default_factory=list)
    sent: list[float] = field(default_factory=list)
    recv: list[float] = field(default_factory=list)
    found: list[list[int]] = field(default_factory=list)

    def subset(self, keep: Callable[[float], bool]) -> Searches:
        out = Searches()
        for i, t in enumerate(self.sent):
            if keep(t):
                out.q.append(self.q[i])
                out.sent.append(t)
                out.recv.append(self.recv[i])
                out.found.append(self.found[i])
        return out

    @property
    def latencies(self) -> list[float]:
        return [r - s for s, r in zip(self.sent, self.recv, strict=True)]


def search_loop(port: int, reqs: list[bytes], stop: Callable[[Searches], bool],
                warm: int = 0) -> Searches:
    """One keep-alive raw socket, ``reqs`` in turn (cycled) until ``stop(searches)``."""
    conn = RawConn(port)
    out = Searches()
    try:
        for r in reqs[:warm]:
            conn.send(r)
        i = 0
        while not stop(out):
            qi = i % len(reqs)
            t0 = time.monotonic()
            status, body = conn.send(reqs[qi])
            t1 = time.monotonic()
            if status != 200:
                raise RuntimeError(f"search -> {status} {body[:300]!r}")
            out.q.append(qi)
            out.sent.append(t0)
            out.recv.append(t1)
            out.found.append([row_of(r["vectorId"]) for r in orjson.loads(body)["results"]])
            i += 1
        return out
    finally:
        conn.close()


def recall_visible(rows: F32, queries: F32, acked: NDArray[np.float64],
                   sent: NDArray[np.float64], s: Searches, sample: int) -> float:
    """Recall@10 of up to ``sample`` of the searches ``s`` (evenly spread), each against the
    exact top-10 of the rows visible to it: ``acked[row]`` before the search was sent (loaded
    rows: -inf), or returned by it while its write was in flight (``sent[row]`` before the
    search's answer). Rows never written have ``sent = acked = inf``."""
    if not s.q:
        return float("nan")
    pick = np.unique(np.linspace(0, len(s.q) - 1, min(sample, len(s.q))).astype(np.int64))
    written = np.nonzero(sent < NEVER)[0]
    x, a, w = rows[written], acked[written], sent[written]
    hits = 0
    for c0 in range(0, len(pick), 64):
        chunk = pick[c0 : c0 + 64]
        sims = queries[[s.q[i] for i in chunk]] @ x.T
        t_send = np.asarray([s.sent[i] for i in chunk])
        visible = a[None, :] < t_send[:, None]
        for j, i in enumerate(chunk):  # in-flight writes this search returned
            f = np.asarray(s.found[i], dtype=np.int64)
            pos = np.searchsorted(written, f)
            inside = pos < len(written)
            pos, f = pos[inside], f[inside]
            pos = pos[written[pos] == f]
            visible[j, pos[w[pos] < s.recv[i]]] = True
        sims[~visible] = -np.inf
        top = np.argpartition(-sims, K, axis=1)[:, :K]
        for j, i in enumerate(chunk):
            hits += len(set(written[top[j]].tolist()) & set(s.found[i][:K]))
    return hits / (K * len(pick))


def _writer(conn: Connection, url: str, token: str, vectors: F32, first_row: int,
            clients: int, seconds: float) -> None:
    """The child process of the mixed phase: encodes its vectors, says "ready" once its
    connections are open, then writes for ``seconds`` and sends back its ``WriteRun``."""
    values = values_json(vectors)
    run = asyncio.run(single_writes(url, token, values, first_row, clients, seconds,
                                    ready=lambda: conn.send("ready")))
    conn.send(run)
    conn.close()


def caught_up_text(seconds: float | None) -> str:
    if seconds is None:
        return "index lag n/a (the server exports no lag gauge)"
    return f"index lag 0 records {catch_up_cell(seconds)} s after the last 201"


def phase_row(name: str, s: Searches, recall: float, idle_qps: float, idle_recall: float,
              writes: str, lag: LagStats | None, present: bool) -> list[str]:
    if not s.q:
        return [name, "0", "-", "-", "-", "-", "-", "-", writes, *lag_cells(lag, present)]
    lat = s.latencies
    qps = len(lat) / sum(lat)
    return [name, fmt(len(lat)), fmt(qps), f"{qps / idle_qps:.2f}x",
            f"{percentile_ms(lat, 50):.2f}", f"{percentile_ms(lat, 99):.2f}", f"{recall:.3f}",
            f"{recall / idle_recall:.3f}x", writes, *lag_cells(lag, present)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--n", type=int, default=100_000, help="vectors loaded first")
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--queries", type=int, default=1000, help="distinct queries (default 1000)")
    ap.add_argument("--writers", type=int, default=32, help="concurrent writers (default 32)")
    ap.add_argument("--seconds", type=float, default=10.0, help="mixed phase (default 10)")
    ap.add_argument("--pool", type=int, default=40_000,
                    help="vectors available to the mixed writers (default 40000)")
    ap.add_argument("--burst", type=int, default=20_000, help="burst size (default 20000)")
    ap.add_argument("--catch-up-timeout", type=float, default=120.0)
    ap.add_argument("--recall-sample", type=int, default=1000,
                    help="searches per phase whose recall is computed (default 1000)")
    ap.add_argument("--sample-ms", type=float, default=100.0, help="lag sampling period")
    ap.add_argument("--quick", action="store_true",
                    help="n=5000, 200 queries, 2 s mixed, pool 10000, burst 2000")
    args = ap.parse_args()
    if args.quick:
        args.n, args.queries, args.seconds, args.pool, args.burst = 5000, 200, 2.0, 10_000, 2000
    n, w, b = args.n, args.pool, args.burst
    print(f"# mixed benchmark: n={n:,} dim={args.dim} queries={args.queries} k={K} "
          f"writers={args.writers} {args.seconds:g} s, burst {b:,} · {machine()}", flush=True)
    ticks = cpu_ticks()
    # one clustered set: loaded rows, the writers' pool, the burst, the queries
    everything = clustered(n + w + b + args.queries, args.dim, seed=42)
    rows, queries = everything[: n + w + b], everything[n + w + b :]
    acked = np.full(len(rows), NEVER)
    sent = np.full(len(rows), NEVER)
    acked[:n] = sent[:n] = -NEVER
    truth = ground_truth(rows[:n], queries, K)

    server = BenchServer()
    try:
        server.start()
        token = login(server.base)
        c = Client(server.base, token)
        db = c.create_hnsw_db("mixed", args.dim)
        t0 = time.perf_counter()
        for s0 in range(0, n, BATCH):
            post_retrying(c, f"/v1/databases/{db}/vectors/batch", dumps({"vectors": [
                {"id": f"v{s0 + i}", "values": r} for i, r in enumerate(rows[s0 : s0 + BATCH])]}))
        print(f"loaded {n:,} x {args.dim} in {time.perf_counter() - t0:.1f} s "
              f"(HNSW M={M} efConstruction={EF_CONSTRUCTION})", flush=True)
        wait_caught_up(server.base, timeout=args.catch_up_timeout)
        path = f"/v1/databases/{db}/search"

        def reqs(ef: int) -> list[bytes]:
            return [request_bytes(server.port, path, token,
                                  dumps({"queryVector": q, "topK": K, "efSearch": ef}))
                    for q in queries]

        def nq(count: int) -> Callable[[Searches], bool]:
            return lambda s: len(s.q) >= count

        # -- 1. idle: the efSearch that reaches the target, the baseline --------------------
        sampler = LagSampler(server.base, args.sample_ms / 1000).start()
        sweep = []
        ef, idle, idle_recall = EFS[-1], Searches(), 0.0
        for ef in EFS:
            idle = search_loop(server.port, reqs(ef), nq(len(queries)), warm=50)
            idle_recall = recall_at_k(idle.found, truth)
            lat = idle.latencies
            sweep.append([str(ef), f"{idle_recall:.3f}", fmt(len(lat) / sum(lat))])
            if idle_recall >= TARGET:
                break
        # the baseline: a fresh pass at that efSearch (the sweep's first rows run cold)
        idle = search_loop(server.port, reqs(ef), nq(len(queries)), warm=50)
        idle_recall = recall_at_k(idle.found, truth)
        sampler.stop()
        idle_qps = len(idle.q) / sum(idle.latencies)
        table = [phase_row(f"idle (efSearch {ef})", idle, idle_recall, idle_qps, idle_recall, "-",
                           sampler.between(idle.sent[0], idle.recv[-1]), sampler.present)]
        print(Table("1. Idle, efSearch swept until recall@10 >= 0.95",
                    ["efSearch", "recall@10", "QPS"], sweep).render(), flush=True)
        req_ef = reqs(ef)

        # -- 2. mixed: the writers in a child process, the search loop here -----------------
        ctx = mp.get_context("fork")  # forked before the sampler thread starts
        here, there = ctx.Pipe()
        url = f"{server.base}/v1/databases/{db}/vectors"
        child = ctx.Process(target=_writer, args=(there, url, token, rows[n : n + w], n,
                                                  args.writers, args.seconds))
        child.start()
        if here.recv() != "ready":
            raise RuntimeError("writer child did not start")
        sampler = LagSampler(server.base, args.sample_ms / 1000).start()
        mixed = search_loop(server.port, req_ef, lambda s: here.poll())
        run: WriteRun = here.recv()
        child.join()
        t_last = float(run.acked.max()) if len(run.acked) else time.monotonic()
        mixed_catch = wait_caught_up(server.base, since=t_last, timeout=args.catch_up_timeout)
        sampler.stop()
        acked[run.rows] = run.acked
        sent[run.rows] = run.sent
        # a write that failed may have been applied: in flight for ever (visible if returned)
        lost = np.setdiff1d(np.arange(n, n + len(run.rows) + run.errors), run.rows)
        sent[lost] = run.started
        wrate = len(run.rows) / run.elapsed
        mixed_recall = recall_visible(rows, queries, acked, sent, mixed, args.recall_sample)
        table.append(phase_row(f"during {args.writers} single-vector writers", mixed,
                               mixed_recall, idle_qps, idle_recall, fmt(wrate),
                               sampler.between(run.started, run.started + run.elapsed),
                               sampler.present))
        if len(run.rows) + run.errors >= w:
            print(f"(the writers used all {w:,} vectors of --pool before {args.seconds:g} s)")
        wl = run.latencies
        print(f"mixed: {args.writers} writers acknowledged {len(run.rows):,} writes "
              f"({fmt(wrate)}/s, p50 {percentile_ms(wl, 50) if wl else float('nan'):.2f} ms, "
              f"{run.errors} errors{': ' + run.first_error if run.first_error else ''}); "
              + caught_up_text(mixed_catch), flush=True)

        # -- 3. burst: batches as fast as one client can, then search at once ---------------
        first = n + w
        bodies = [dumps({"vectors": [{"id": f"v{first + s0 + i}", "values": r}
                                     for i, r in enumerate(rows[first + s0 : first + s0 + BATCH])
                                     ]}) for s0 in range(0, b, BATCH)]
        sampler = LagSampler(server.base, args.sample_ms / 1000).start()
        t0 = time.monotonic()
        refused = 0
        for j, body in enumerate(bodies):
            t_send = time.monotonic()  # its first attempt (a 503 wrote nothing)
            refused += post_retrying(c, f"/v1/databases/{db}/vectors/batch", body)
            lo = first + j * BATCH
            hi = min(lo + BATCH, first + b)
            sent[lo:hi] = t_send
            acked[lo:hi] = time.monotonic()
        t_burst = time.monotonic()
        deadline = t_burst + args.catch_up_timeout

        def burst_done(s: Searches) -> bool:
            if time.monotonic() > deadline:
                return True
            if len(s.q) < len(queries):
                return False
            last = sampler.samples[-1] if sampler.samples else None
            return not sampler.present or (last is not None and last[0] > t_burst
                                            and last[1] == 0)

        after = search_loop(server.port, req_ef, burst_done)
        sampler.stop()
        # caught up: the first sample after the last 201 that reads 0 (to within --sample-ms);
        # still behind when the searches ended: poll until it is
        t_zero = next((t for t, r, _ in sampler.samples if t >= t_burst and r == 0), NEVER)
        burst_catch = t_zero - t_burst if t_zero < NEVER else wait_caught_up(
            server.base, since=t_burst, timeout=args.catch_up_timeout)
        print(f"burst: {b:,} vectors in {t_burst - t0:.1f} s ({fmt(b / (t_burst - t0))}/s, "
              f"{refused} batches refused with 503 and resent); "
              + caught_up_text(burst_catch), flush=True)
        if sampler.present:
            parts = [("after the burst, index catching up", after.subset(lambda t: t < t_zero)),
                     ("after the burst, index caught up", after.subset(lambda t: t >= t_zero))]
        else:
            parts = [("right after the burst (lag n/a)", after)]
        for name, part in parts:
            rec = recall_visible(rows, queries, acked, sent, part, args.recall_sample)
            lag = sampler.between(part.sent[0], part.recv[-1]) if part.q else None
            table.append(phase_row(name, part, rec, idle_qps, idle_recall, "-", lag,
                                   sampler.present))

        # -- 4. idle again on the same data, everything indexed: the burst's recall baseline --
        sampler = LagSampler(server.base, args.sample_ms / 1000).start()
        final = search_loop(server.port, req_ef, nq(len(queries)))
        sampler.stop()
        total = int(np.count_nonzero(sent < NEVER))
        table.append(phase_row(f"idle again, all {total:,} rows written", final,
                               recall_visible(rows, queries, acked, sent, final,
                                              args.recall_sample),
                               idle_qps, idle_recall, "-",
                               sampler.between(final.sent[0], final.recv[-1]), sampler.present))
        c.close()

        print(Table(f"2. Search at efSearch {ef}, one client, top-{K}; recall@{K} against the "
                    "exact top-10 of everything acknowledged before each search",
                    ["phase", "searches", "QPS", "vs idle", "p50 ms", "p99 ms", "recall@10",
                     "vs idle", "writes/s", "lag records max", "lag records mean", "lag s max",
                     "lag s mean"], table).render(), flush=True)
        print(f"\nCPU time stolen by the hypervisor during the run: {steal_since(ticks)}")
    finally:
        server.stop()
        server.cleanup()


if __name__ == "__main__":
    main()
