"""Durable single-vector writes: throughput, latency, group commit and index lag, against the
floor and the disk's raw fsync rate measured in the same run.

    .venv/bin/python bench/writes.py                  # into 100k x 128, 5 s per row
    .venv/bin/python bench/writes.py --dim 384        # into 100k x 384
    .venv/bin/python bench/writes.py --quick          # into 5k x 128, 2 s per row (~20 s)

Loads ``--n`` vectors (HNSW M=16 efConstruction=200, batches of 1,000), then for 1, 8 and 32
concurrent clients (``--clients``; aiohttp, one keep-alive connection each) sends
``POST /v1/databases/{db}/vectors`` with one new vector per request for ``--seconds``. A 201
means the write is durable (in the log, fsynced). Interleaved with each row, the same clients
send the same bodies to the floor (``bench/floor_server.py``, a trivial aiohttp endpoint).
Before each row of ours, a loop of small LMDB put + commit with sync (``--fsync-seconds``), in a
temp dir next to the server's data dir (same filesystem), gives the raw fsync rate of this disk
at that moment.

Tables (see bench/README.md):
1. per client count, floor and ours: acknowledged writes/s, ours / floor, p50 and p99 latency,
   requests per durable commit (``jadevectordb_wal_group_commit_size``: sum/count delta over
   the row), durable commits/s (the histogram's count delta / seconds) and commits / the raw
   fsync rate measured just before, and the issue 16 goals (>= 2,500 writes/s
   at 32 clients, p50 <= 1 ms at 1 client);
2. the index lag during each row (``jadevectordb_index_lag_records`` and ``_seconds`` sampled
   from /metrics every ``--sample-ms``, max and mean) and after it (seconds from the last 201
   until the lag is 0 records); "n/a" while the server does not export the gauges;
3. the raw fsync rate measured before each row, with its p50 and p99.
Never asserts: it measures.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time

import lmdb

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.common import (  # noqa: E402 - runnable as a script
    EF_CONSTRUCTION,
    BenchServer,
    Client,
    Floor,
    LagSampler,
    M,
    Table,
    WriteRun,
    batch_bodies,
    catch_up_cell,
    clustered,
    cpu_ticks,
    fmt,
    group_commit,
    lag_cells,
    login,
    machine,
    percentile_ms,
    post_retrying,
    single_writes,
    steal_since,
    values_json,
    wait_caught_up,
)

BATCH = 1000
GOAL_WRITES_32 = 2500.0  # acknowledged writes/s at 32 clients (issue 16)
GOAL_P50_1 = 1.0  # ms, p50 at 1 client (issue 16)


def raw_fsync(parent: str, seconds: float, record_bytes: int) -> tuple[float, list[float]]:
    """(commits/s, seconds per commit) of a loop of one small put + commit in LMDB with sync
    and metasync on (as the log's environment), in a temp dir under ``parent``: the rate this
    filesystem makes a tiny write durable, the ceiling of one-request-per-commit writes."""
    tmp = tempfile.mkdtemp(prefix="fsync-", dir=parent)
    env = lmdb.open(os.path.join(tmp, "fsync.lmdb"), subdir=False, map_size=64 << 20,
                    sync=True, metasync=True, lock=True)
    payload = os.urandom(record_bytes)
    lat: list[float] = []
    try:
        for i in range(20):  # warm: file growth, first pages
            with env.begin(write=True) as txn:
                txn.put(b"warm%d" % i, payload)
        t_end = time.perf_counter() + seconds
        i = 0
        while (t0 := time.perf_counter()) < t_end:
            with env.begin(write=True) as txn:
                txn.put(i.to_bytes(8, "big"), payload)
            lat.append(time.perf_counter() - t0)
            i += 1
    finally:
        env.close()
        for name in os.listdir(tmp):
            os.unlink(os.path.join(tmp, name))
        os.rmdir(tmp)
    return len(lat) / sum(lat), lat


def run_writes(url: str, token: str, values: list[bytes], first_row: int, clients: int,
               seconds: float, ok: int) -> WriteRun:
    return asyncio.run(single_writes(url, token, values, first_row, clients, seconds, ok=ok))


def met(ok: bool) -> str:
    return "met" if ok else "missed"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--n", type=int, default=100_000, help="vectors loaded before the writes")
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--seconds", type=float, default=5.0, help="each row (default 5)")
    ap.add_argument("--clients", default="1,8,32", help="client counts (default 1,8,32)")
    ap.add_argument("--fsync-seconds", type=float, default=1.0,
                    help="raw fsync loop before each row (default 1)")
    ap.add_argument("--sample-ms", type=float, default=100.0, help="lag sampling period")
    ap.add_argument("--pool", type=int, default=20_000,
                    help="distinct vectors for the writes (cycled past that; default 20000)")
    ap.add_argument("--quick", action="store_true", help="n=5000, 2 s per row, fsync 0.5 s")
    args = ap.parse_args()
    if args.quick:
        args.n, args.seconds, args.fsync_seconds = 5000, 2.0, 0.5
        args.pool = min(args.pool, 10_000)
    counts = [int(x) for x in args.clients.split(",")]
    print(f"# writes benchmark: n={args.n:,} dim={args.dim} clients={counts} "
          f"{args.seconds:g} s per row · {machine()}", flush=True)
    ticks = cpu_ticks()
    both = clustered(args.n + args.pool, args.dim, seed=42)  # the writes: same clusters
    data, pool = both[: args.n], values_json(both[args.n :])

    server = BenchServer()
    floor = Floor()
    try:
        server.start()
        token = login(server.base)
        c = Client(server.base, token)
        db = c.create_hnsw_db("writes", args.dim)
        t0 = time.perf_counter()
        for _count, body in batch_bodies(data, BATCH):
            post_retrying(c, f"/v1/databases/{db}/vectors/batch", body)
        print(f"loaded {args.n:,} x {args.dim} in {time.perf_counter() - t0:.1f} s "
              f"(HNSW M={M} efConstruction={EF_CONSTRUCTION})", flush=True)
        wait_caught_up(server.base)
        c.close()

        parent = os.path.dirname(server.data_dir)  # the data dir's filesystem
        print(f"raw fsync: LMDB put + commit with sync in a temp dir under {parent}, "
              f"{args.fsync_seconds:g} s before each row of ours, server idle", flush=True)

        url = f"{server.base}/v1/databases/{db}/vectors"
        sampler = LagSampler(server.base, args.sample_ms / 1000).start()
        rows: list[list[str]] = []
        lag_rows: list[list[str]] = []
        fsync_rows: list[list[str]] = []
        row = args.n  # ids v<row>: the loaded data is v0..v<n-1>
        try:
            for clients in counts:
                fl = run_writes(floor.base + floor.path, "", cycled(pool, 0, args.seconds), 0,
                                clients, args.seconds, 200)
                fsync_rate, fsync_lat = raw_fsync(parent, args.fsync_seconds, 4 * args.dim + 64)
                s0, n0 = group_commit(server.base)
                w = run_writes(url, token, cycled(pool, row - args.n, args.seconds), row,
                               clients, args.seconds, 201)
                s1, n1 = group_commit(server.base)
                t_end = float(w.acked.max()) if len(w.acked) else time.monotonic()
                catch_up = wait_caught_up(server.base, since=t_end)
                row += len(w.rows) + w.errors
                f_rate = len(fl.rows) / fl.elapsed
                rate = len(w.rows) / w.elapsed
                per_commit = (s1 - s0) / (n1 - n0) if n1 > n0 else float("nan")
                commits = (n1 - n0) / w.elapsed
                lat, flat = w.latencies, fl.latencies
                p50 = percentile_ms(lat, 50) if lat else float("nan")
                goal = "-"
                if clients == 32:
                    goal = f">= {fmt(GOAL_WRITES_32)} writes/s: {met(rate >= GOAL_WRITES_32)}"
                elif clients == 1:
                    goal = f"p50 <= {GOAL_P50_1:g} ms: {met(p50 <= GOAL_P50_1)}"
                rows.append([str(clients), "floor", fmt(f_rate), "1.00x",
                             f"{percentile_ms(flat, 50):.2f}", f"{percentile_ms(flat, 99):.2f}",
                             "-", "-", "-", "-", str(fl.errors), "-"])
                rows.append([str(clients), "ours", fmt(rate), f"{rate / f_rate:.2f}x",
                             f"{p50:.2f}", f"{percentile_ms(lat, 99):.2f}" if lat else "-",
                             f"{per_commit:.1f}", fmt(commits), fmt(fsync_rate),
                             f"{commits / fsync_rate:.2f}x", str(w.errors), goal])
                fsync_rows.append([str(clients), fmt(fsync_rate),
                                   f"{percentile_ms(fsync_lat, 50):.3f}",
                                   f"{percentile_ms(fsync_lat, 99):.3f}"])
                stats = sampler.between(w.started, w.started + w.elapsed)
                lag_rows.append([str(clients), fmt(len(w.rows)),
                                 *lag_cells(stats, sampler.present), catch_up_cell(catch_up)])
                if w.first_error:
                    print(f"  {clients} clients: first error {w.first_error}", flush=True)
                print(f"  {clients} clients: done", flush=True)
        finally:
            sampler.stop()

        print(Table(f"1. Durable single-vector writes, POST /vectors, {args.dim}-dim, into "
                    f"{args.n:,} vectors (HNSW), {args.seconds:g} s per row",
                    ["clients", "server", "writes/s", "vs floor", "p50 ms", "p99 ms",
                     "requests per commit", "commits/s", "raw fsync commits/s",
                     "commits / raw fsync", "errors", "goal (issue 16)"], rows).render(),
              flush=True)
        print(Table(f"2. Index lag during each row of ours (/metrics every "
                    f"{args.sample_ms:g} ms) and after it",
                    ["clients", "writes", "lag records max", "lag records mean",
                     "lag s max", "lag s mean", "s from last 201 to lag 0"],
                    lag_rows).render(), flush=True)
        print(Table("3. Raw fsync of this disk before each row (LMDB put + commit, sync)",
                    ["before clients", "commits/s", "p50 ms", "p99 ms"], fsync_rows).render(),
              flush=True)
        print(f"\nCPU time stolen by the hypervisor during the run: {steal_since(ticks)}")
    finally:
        floor.stop()
        server.stop()
        server.cleanup()


def cycled(pool: list[bytes], start: int, seconds: float) -> list[bytes]:
    """The pool from ``start`` on, repeated to more writes than any client set sends in
    ``seconds`` (50,000/s): each write of a run gets the next distinct vector, and past the
    pool's end the vectors repeat under new ids."""
    start %= len(pool)
    ring = pool[start:] + pool[:start]
    need = int(seconds * 50_000) + 1
    return ring * (need // len(ring) + 1)


if __name__ == "__main__":
    main()
