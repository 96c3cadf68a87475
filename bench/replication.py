"""Replication benchmark (issue 6), on real ``jade serve`` subprocesses on loopback ports.

1. Apply lag at a steady write rate: one primary, one replica; single-vector writes are sent
   open-loop at ``--rate`` per second. For each write, from the moment its 201 arrives (carrying
   ``X-LSN``) a read is sent to the replica with ``X-Min-LSN`` set to that LSN; it returns when
   the replica has applied the record. Lag = that read's completion - the 201's arrival. The
   same read for an LSN the replica already has (no wait) is timed too: the floor of the method.
2. Bootstrap a new replica from a primary holding ``--n`` vectors of ``--dim`` dimensions:
   (a) an empty replica catching up by streaming the whole log (indexes built while applying);
   (b) after the primary truncated its log, an empty replica re-seeding from the snapshot the
       primary streams, then catching up. Both include the replica's process start.

    python bench/replication.py            # 100k x 128, 500 writes/s for 20 s
    python bench/replication.py --quick    # 20k x 128, 500 writes/s for 8 s
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from typing import Any

import aiohttp
import numpy as np
import orjson

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from tests.conftest import Api  # noqa: E402
from tests.test_replication import Node, bootstrap_auth, client  # noqa: E402

WAIT = {"JADEVECTORDB_READ_WAIT_SECONDS": "60"}  # a lagging replica answers late, not 503


def pct(xs: list[float], p: float) -> float:
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


async def wait_applied(api: Api, lsn: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            st, body = await api.get("/v1/replication/status")
            if (st == 200 and body.get("applied_lsn", -1) >= lsn
                    and body.get("state") == "streaming"):
                return
        except aiohttp.ClientError:
            pass
        await asyncio.sleep(0.05)
    raise TimeoutError(f"replica did not reach LSN {lsn} in {timeout}s")


async def primary_lsn(api: Api) -> int:
    st, body = await api.get("/v1/replication/status")
    assert st == 200, body
    return int(body["last_lsn"])


# -- 1. lag at a steady rate ------------------------------------------------------------------
async def lag_phase(root: str, rate: float, seconds: float, dim: int,
                    index: str = "HNSW") -> dict[str, Any]:
    primary = Node(root, "lag-primary", env=WAIT).start()
    nodes = [primary]
    try:
        creds = await asyncio.to_thread(bootstrap_auth, primary.base)
        replica = await Node(root, "lag-replica", follow=primary.base,
                             key=creds.repl_key, env=WAIT).astart()
        nodes.append(replica)
        auth = {"Authorization": f"Bearer {creds.admin_token}"}
        # at most 64 connections per server: past saturation, requests queue in the client
        # (counted in the write latency) instead of overflowing the server's accept backlog
        conn = aiohttp.TCPConnector(limit=128, limit_per_host=64)
        async with aiohttp.ClientSession(connector=conn) as s:
            p = client(s, primary.base, creds.admin_token)
            r = client(s, replica.base, creds.admin_token)
            st, db = await p.post("/v1/databases", {"name": "lag", "vectorDimension": dim,
                                                    "indexType": index})
            assert st == 201, db
            url = f"{primary.base}/v1/databases/{db['databaseId']}/vectors"
            await wait_applied(r, await primary_lsn(p), 30)
            rng = np.random.default_rng(1)
            total = int(rate * seconds)
            payloads = [orjson.dumps({"id": f"v{i}", "values": rng.random(dim).tolist()})
                        for i in range(total)]
            lags: list[float] = []
            floors: list[float] = []
            write_lat: list[float] = []
            failures: list[str] = []
            status_url = replica.base + "/v1/replication/status"

            async def one(i: int) -> None:
                t0 = time.perf_counter()
                async with s.post(url, data=payloads[i],
                                  headers={**auth, "Content-Type": "application/json"}) as resp:
                    await resp.read()
                    if resp.status != 201:
                        failures.append(f"write {resp.status}")
                        return
                    lsn = int(resp.headers["X-LSN"])
                t1 = time.perf_counter()
                write_lat.append(t1 - t0)
                async with s.get(status_url, headers={**auth, "X-Min-LSN": str(lsn)}) as resp:
                    await resp.read()
                    if resp.status != 200:
                        failures.append(f"replica read {resp.status}")
                        return
                t2 = time.perf_counter()
                lags.append(t2 - t1)
                if i % 10 == 0:  # the floor: same read, LSN already there
                    async with s.get(status_url, headers={**auth, "X-Min-LSN": str(lsn)}) as resp:
                        await resp.read()
                    floors.append(time.perf_counter() - t2)

            tasks = []
            start = time.perf_counter()
            for i in range(total):
                delay = start + i / rate - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                tasks.append(asyncio.create_task(one(i)))
            sent_in = time.perf_counter() - start
            await asyncio.gather(*tasks)
            elapsed = time.perf_counter() - start
            last = await primary_lsn(p)
            await wait_applied(r, last, 30)
        return {
            "writes": total,
            "failures": {k: failures.count(k) for k in sorted(set(failures))},
            "offered_rate": total / sent_in,
            "completed_rate": len(write_lat) / elapsed,
            "write_p50_ms": pct(write_lat, 50) * 1000,
            "write_p99_ms": pct(write_lat, 99) * 1000,
            "lag_p50_ms": pct(lags, 50) * 1000,
            "lag_p99_ms": pct(lags, 99) * 1000,
            "lag_max_ms": max(lags) * 1000 if lags else float("nan"),
            "lag_mean_ms": statistics.fmean(lags) * 1000 if lags else float("nan"),
            "floor_p50_ms": pct(floors, 50) * 1000,
        }
    finally:
        for n in nodes:
            stop(n)


def stop(node: Node) -> None:
    try:
        node.stop()
    except Exception:  # noqa: BLE001 - a server that does not drain in time is killed
        node.kill()


# -- 2. bootstrap ---------------------------------------------------------------------------------
async def load(api: Api, dbid: str, n: int, dim: int, batch: int = 1000) -> float:
    rng = np.random.default_rng(2)
    t0 = time.perf_counter()
    for start in range(0, n, batch):
        m = min(batch, n - start)
        values = rng.random((m, dim), dtype=np.float32)
        body = {"vectors": [{"id": f"b{start + j}", "values": values[j]} for j in range(m)]}
        raw = orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY)
        st, resp = await api.post(f"/v1/databases/{dbid}/vectors/batch", raw=raw)
        assert st == 201, resp
    return time.perf_counter() - t0


async def time_new_replica(root: str, name: str, primary: Node, key: str, p: Api,
                           s: aiohttp.ClientSession, token: str) -> tuple[Node, float, float, dict]:
    target = await primary_lsn(p)
    t0 = time.perf_counter()
    node = await Node(root, name, follow=primary.base, key=key).astart()
    started = time.perf_counter() - t0
    r = client(s, node.base, token)
    await wait_applied(r, target, 1800)
    total = time.perf_counter() - t0
    st, body = await r.get("/v1/replication/status")
    return node, started, total, body


async def bootstrap_phase(root: str, n: int, dim: int) -> dict[str, Any]:
    primary = Node(root, "boot-primary", env={"JADEVECTORDB_LOG_RETENTION_SECONDS": "1",
                                              "JADEVECTORDB_ARCHIVE_INTERVAL_SECONDS": "1"})
    primary.start()
    nodes = [primary]
    out: dict[str, Any] = {"n": n, "dim": dim}
    try:
        creds = await asyncio.to_thread(bootstrap_auth, primary.base)
        timeout = aiohttp.ClientTimeout(total=600)
        async with aiohttp.ClientSession(timeout=timeout) as s:
            p = client(s, primary.base, creds.admin_token)
            st, db = await p.post("/v1/databases", {"name": "boot", "vectorDimension": dim,
                                                    "indexType": "HNSW"})
            assert st == 201, db
            dbid = db["databaseId"]
            out["load_seconds"] = await load(p, dbid, n, dim)
            out["log_records"] = await primary_lsn(p)

            # (a) an empty replica streams the whole log (no truncation yet: no snapshot)
            a, started, total, st_a = await time_new_replica(
                root, "from-log", primary, creds.repl_key, p, s, creds.admin_token)
            nodes.append(a)
            out["log_catchup_seconds"] = total
            out["log_catchup_start_seconds"] = started
            out["log_catchup_reseeds"] = st_a.get("reseeds")
            st, rdb = await client(s, a.base, creds.admin_token).get(f"/v1/databases/{dbid}")
            assert rdb["stats"]["vectorCount"] == n, rdb["stats"]
            stop(a)
            st, body = await p.delete("/v1/replication/replicas/from-log")
            assert st == 200, body

            # (b) snapshot, truncation, then an empty replica must re-seed from a snapshot
            st, snap = await p.post("/v1/admin/snapshots")
            assert st == 201, snap
            # one more record: the log always keeps its last one, so this lets truncation pass
            # the snapshot's LSN
            st, body = await p.post(f"/v1/databases/{dbid}/vectors",
                                    {"id": "after-snapshot", "values": [0.5] * dim})
            assert st == 201, body
            n += 1
            deadline = time.monotonic() + 120
            while True:
                st, body = await p.get("/status")
                if body["log"]["first_lsn"] > snap["lsn"]:
                    break
                if time.monotonic() > deadline:
                    raise TimeoutError(f"log not truncated: {body['log']}")
                await asyncio.sleep(0.25)
            out["snapshot_bytes"] = snap["size_bytes"]
            b, started, total, st_b = await time_new_replica(
                root, "from-snapshot", primary, creds.repl_key, p, s, creds.admin_token)
            nodes.append(b)
            assert st_b.get("reseeds", 0) >= 1, st_b
            st, rdb = await client(s, b.base, creds.admin_token).get(f"/v1/databases/{dbid}")
            assert rdb["stats"]["vectorCount"] == n, rdb["stats"]
            out["snapshot_bootstrap_seconds"] = total
            out["snapshot_bootstrap_start_seconds"] = started
            out["snapshot_reseeds"] = st_b.get("reseeds")
        return out
    finally:
        for node in nodes:
            stop(node)


def table(lag: dict[str, Any] | None, boot: dict[str, Any] | None, args: Any) -> str:
    rows: list[tuple[str, str]] = []
    if lag:
        rows += [
            ("lag: writes sent (target rate)", f"{lag['writes']} ({args.rate:.0f}/s, "
                                               f"{args.dim}-d, {args.index})"),
            ("lag: offered / completed rate", f"{lag['offered_rate']:.0f}/s / "
                                              f"{lag['completed_rate']:.0f}/s"),
            ("lag: failures", str(lag["failures"] or 0)),
            ("lag: write latency p50 / p99", f"{lag['write_p50_ms']:.2f} / "
                                             f"{lag['write_p99_ms']:.2f} ms"),
            ("lag: replica apply lag p50", f"{lag['lag_p50_ms']:.2f} ms"),
            ("lag: replica apply lag p99", f"{lag['lag_p99_ms']:.2f} ms"),
            ("lag: replica apply lag max / mean", f"{lag['lag_max_ms']:.2f} / "
                                                  f"{lag['lag_mean_ms']:.2f} ms"),
            ("lag: method floor (read, no wait) p50", f"{lag['floor_p50_ms']:.2f} ms"),
        ]
    if boot:
        rows += [
            ("boot: primary data", f"{boot['n']} x {boot['dim']}-d, "
                                   f"{boot['log_records']} log records"),
            ("boot: primary load time", f"{boot['load_seconds']:.1f} s"),
            ("boot: new replica, stream whole log", f"{boot['log_catchup_seconds']:.1f} s "
             f"(process start {boot['log_catchup_start_seconds']:.1f} s)"),
            ("boot: new replica, snapshot re-seed", f"{boot['snapshot_bootstrap_seconds']:.1f} s "
             f"(process start {boot['snapshot_bootstrap_start_seconds']:.1f} s)"),
            ("boot: snapshot size", f"{boot['snapshot_bytes'] / 1e6:.1f} MB"),
        ]
    w = max(len(k) for k, _ in rows)
    lines = [f"{'measure'.ljust(w)} | value", f"{'-' * w}-+-{'-' * 30}"]
    lines += [f"{k.ljust(w)} | {v}" for k, v in rows]
    return "\n".join(lines)


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=100_000, help="vectors on the bootstrap primary")
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--rate", type=float, default=500.0, help="writes per second (lag phase)")
    ap.add_argument("--seconds", type=float, default=20.0, help="lag phase duration")
    ap.add_argument("--index", default="HNSW", help="index type of the lag phase's database")
    ap.add_argument("--quick", action="store_true", help="20k vectors, 8 s of writes")
    ap.add_argument("--only", choices=("lag", "boot"), help="run one phase")
    args = ap.parse_args()
    if args.quick:
        args.n = min(args.n, 20_000)
        args.seconds = min(args.seconds, 8.0)
    with tempfile.TemporaryDirectory(prefix="jade-bench-repl-") as root:
        lag = boot = None
        if args.only in (None, "lag"):
            lag = await lag_phase(root, args.rate, args.seconds, args.dim, args.index)
        if args.only in (None, "boot"):
            boot = await bootstrap_phase(root, args.n, args.dim)
    load1 = os.getloadavg()[0]
    print(f"replication benchmark ({os.cpu_count()} cores, loopback, one replica; "
          f"load average at the end {load1:.1f})")
    print(table(lag, boot, args))


if __name__ == "__main__":
    asyncio.run(main())
