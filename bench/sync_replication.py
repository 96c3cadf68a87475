"""Synchronous replication benchmark (issue 19, item 3), on real ``jade serve`` subprocesses on
this box: a primary and one replica, with ``replication.synchronous_replicas`` 0 (asynchronous,
the default) and 1 side by side, in the same run.

For each mode, a fresh primary + replica pair; then for each concurrency C, C closed-loop
clients insert single 128-d vectors into one HNSW database for ``--seconds``: throughput, write
latency p50/p99 (from the request to its 201), and the replica's lag meanwhile, sampled every
20 ms (the primary's last LSN minus the replica's durable LSN, both from
``/v1/replication/status``, read at once, in records). Ratios are against the asynchronous row
of the same C in this run. The modes alternate for ``--rounds`` rounds and each row keeps its
median round (a box shared with other work drifts; alternating spreads the drift over both).

    .venv/bin/python bench/sync_replication.py --quick   # C 1 and 16, 3 s per row, 1 round
    .venv/bin/python bench/sync_replication.py           # C 1, 8, 32, 5 s per row, 2 rounds

The replica and the primary share the machine's cores (and its disk: both fsync every group),
so the synchronous cost measured here includes the replica's CPU and fsync competing with the
primary's; across machines, add the network round trip to every synchronous write.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from typing import Any

import aiohttp
import numpy as np
import orjson

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench.common import Table, cpu_ticks, fmt, machine, steal_since  # noqa: E402
from tests.test_replication import Node, bootstrap_auth, client  # noqa: E402

DIM = 128


def pct(xs: list[float], p: float) -> float:
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


async def _status(s: aiohttp.ClientSession, base: str, auth: dict[str, str]) -> dict[str, Any]:
    async with s.get(base + "/v1/replication/status", headers=auth) as resp:
        body: dict[str, Any] = orjson.loads(await resp.read())
        return body


async def _caught_up(s: aiohttp.ClientSession, base: str, auth: dict[str, str],
                     n_sync: int) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        body = await _status(s, base, auth)
        reps = body.get("replicas", [])
        if (reps and all(r["connected"] and r["applied_lsn"] >= body["last_lsn"] for r in reps)
                and body["synchronous"]["connected"] >= n_sync):
            return
        await asyncio.sleep(0.05)
    raise TimeoutError("the replica did not catch up")


class _Row:
    """One row: closed-loop clients inserting for ``seconds``, and a lag sampler."""

    def __init__(self, s: aiohttp.ClientSession, url: str, headers: dict[str, str],
                 rng: np.random.Generator, prefix: str, seconds: float) -> None:
        self.s, self.url, self.headers, self.rng, self.prefix = s, url, headers, rng, prefix
        self.stop = time.perf_counter() + seconds
        self.seq = 0
        self.lat: list[float] = []
        self.errors: list[int] = []
        self.lags: list[int] = []

    async def one_client(self, w: int) -> None:
        while time.perf_counter() < self.stop:
            self.seq += 1
            body = orjson.dumps({"id": f"{self.prefix}-{w}-{self.seq}",
                                 "values": self.rng.random(DIM).tolist()})
            t0 = time.perf_counter()
            async with self.s.post(self.url, data=body, headers=self.headers) as resp:
                await resp.read()
                if resp.status != 201:
                    self.errors.append(resp.status)
                    continue
            self.lat.append(time.perf_counter() - t0)

    async def sample_lag(self, primary: str, replica: str, auth: dict[str, str]) -> None:
        """Every 20 ms: the primary's last LSN minus the replica's durable LSN, both read at
        once (the replica's own status, not the acknowledgements the primary has seen)."""
        while time.perf_counter() < self.stop:
            p, r = await asyncio.gather(_status(self.s, primary, auth),
                                        _status(self.s, replica, auth))
            self.lags.append(max(0, p["last_lsn"] - r["durable_lsn"]))
            await asyncio.sleep(0.02)


async def pair(root: str, sync: int) -> tuple[Node, Node, str]:
    """A primary and one replica; the primary restarted with ``sync`` synchronous replicas once
    the replicator's API key exists."""
    primary = await Node(root, "primary").astart()
    creds = await asyncio.to_thread(bootstrap_auth, primary.base)
    replica = await Node(root, "replica", follow=primary.base, key=creds.repl_key).astart()
    if sync:
        await asyncio.to_thread(primary.stop)
        primary.proc.env["JADEVECTORDB_SYNCHRONOUS_REPLICAS"] = str(sync)
        await primary.astart()
    return primary, replica, creds.admin_token


async def run_mode(root: str, sync: int, concurrencies: list[int],
                   seconds: float) -> dict[int, dict[str, float]]:
    primary, replica, token = await pair(root, sync)
    auth = {"Authorization": f"Bearer {token}"}
    out: dict[int, dict[str, float]] = {}
    try:
        conn = aiohttp.TCPConnector(limit=256, limit_per_host=128)
        async with aiohttp.ClientSession(connector=conn) as s:
            p = client(s, primary.base, token)
            st, db = await p.post("/v1/databases", {"name": "w", "vectorDimension": DIM,
                                                    "indexType": "HNSW"})
            assert st == 201, db
            url = f"{primary.base}/v1/databases/{db['databaseId']}/vectors"
            headers = {**auth, "Content-Type": "application/json"}
            rng = np.random.default_rng(sync)
            for c in concurrencies:
                await _caught_up(s, primary.base, auth, sync)
                run = _Row(s, url, headers, rng, prefix=f"c{c}", seconds=seconds)
                t0 = time.perf_counter()
                await asyncio.gather(run.sample_lag(primary.base, replica.base, auth),
                                     *(run.one_client(w) for w in range(c)))
                elapsed = time.perf_counter() - t0
                lags = [float(x) for x in run.lags]
                out[c] = {"writes_s": len(run.lat) / elapsed, "p50_ms": pct(run.lat, 50) * 1000,
                          "p99_ms": pct(run.lat, 99) * 1000, "errors": float(len(run.errors)),
                          "lag_p50": pct(lags, 50),
                          "lag_max": max(lags) if lags else float("nan")}
            st, metrics = await p.get("/metrics")
            for line in str(metrics).splitlines():
                if line.startswith("jadevectordb_replication_sync_wait_seconds_count"):
                    out[0] = {"sync_waits": float(line.split()[-1])}
    finally:
        for n in (replica, primary):
            try:
                n.stop()
            except Exception:  # noqa: BLE001 - one that does not drain in time is killed
                n.kill()
    return out


def median_round(rounds: list[dict[int, dict[str, float]]], c: int) -> dict[str, float]:
    by_rate = sorted((r[c] for r in rounds), key=lambda row: row["writes_s"])
    return by_rate[len(by_rate) // 2]


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--seconds", type=float, default=None)
    ap.add_argument("--rounds", type=int, default=None)
    ap.add_argument("--concurrency", type=str, default=None, help="e.g. 1,8,32")
    a = ap.parse_args()
    seconds = a.seconds or (3.0 if a.quick else 5.0)
    rounds = a.rounds or (1 if a.quick else 2)
    cs = [int(x) for x in (a.concurrency or ("1,16" if a.quick else "1,8,32")).split(",")]
    print(machine())
    ticks = cpu_ticks()
    results: dict[int, list[dict[int, dict[str, float]]]] = {0: [], 1: []}
    for r in range(rounds):
        for sync in (0, 1) if r % 2 == 0 else (1, 0):
            with tempfile.TemporaryDirectory(prefix="bench-sync-") as root:
                results[sync].append(await run_mode(root, sync, cs, seconds))
    rows: list[list[str]] = []
    for c in cs:
        base = median_round(results[0], c)
        for sync in (0, 1):
            m = median_round(results[sync], c)
            rows.append([
                str(sync), str(c), fmt(m["writes_s"]), fmt(m["p50_ms"], 2), fmt(m["p99_ms"], 2),
                f"{m['writes_s'] / base['writes_s']:.2f}", f"{m['p50_ms'] / base['p50_ms']:.2f}",
                f"{m['p99_ms'] / base['p99_ms']:.2f}", fmt(m["lag_p50"]), fmt(m["lag_max"]),
                fmt(m["errors"]),
            ])
    print(Table(
        f"Single-vector writes ({DIM}-d, HNSW), primary + 1 replica on this box, {seconds:g} s "
        f"per row, median of {rounds} round(s); ratios vs synchronous_replicas=0 at the same C",
        ["sync replicas", "clients", "writes/s", "p50 ms", "p99 ms", "x writes/s", "x p50",
         "x p99", "lag p50 (records)", "lag max", "errors"], rows).render())
    waits = [r.get(0, {}).get("sync_waits", 0.0) for r in results[1]]
    print(f"\nsynchronous writes that waited (jadevectordb_replication_sync_wait_seconds_count, "
          f"per round): {[int(w) for w in waits]}; CPU steal: {steal_since(ticks)}")


if __name__ == "__main__":
    asyncio.run(main())
