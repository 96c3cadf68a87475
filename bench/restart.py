"""Restart time: from a clean stop (index checkpoint) and with the checkpoint removed (rebuild).

    .venv/bin/python bench/restart.py            # 100k x 128
    .venv/bin/python bench/restart.py --quick    # 20k x 128

Loads N vectors (HNSW M=16 efConstruction=200, batches of 1,000), stops the server with SIGTERM
(drain, checkpoint the index, close), then times a start until /health answers 200 and a search
succeeds. Then stops again, deletes ``<data_dir>/indexes`` and times the start that has to
rebuild the index from the vector store. A start on an empty data directory gives the fixed
cost (interpreter, imports) both include. Prints a table; never asserts.
"""

from __future__ import annotations

import argparse
import http.client
import os
import shutil
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.common import (  # noqa: E402 - runnable as a script
    BenchServer,
    Client,
    Table,
    batch_bodies,
    dataset,
    dumps,
    fmt,
    login,
    machine,
)

M, EF_CONSTRUCTION, BATCH = 16, 200, 1000


def probe(port: int, method: str, path: str, body: bytes | None = None, token: str = "") -> int:
    """One request on a fresh connection; 0 when nothing listens yet."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        h = {"Content-Type": "application/json"}
        if token:
            h["Authorization"] = f"Bearer {token}"
        conn.request(method, path, body=body, headers=h)
        r = conn.getresponse()
        r.read()
        return r.status
    except (ConnectionRefusedError, ConnectionResetError, http.client.RemoteDisconnected):
        return 0
    finally:
        conn.close()


def timed_start(
    server: BenchServer, db: str = "", query: bytes = b"", token: str = ""
) -> tuple[float, float]:
    """Spawn the server; (seconds until /health is 200, seconds until a search is 200)."""
    t0 = time.perf_counter()
    server.spawn()
    while probe(server.port, "GET", "/health") != 200:
        if server.proc is not None and server.proc.poll() is not None:
            raise RuntimeError(f"server exited; see {server.log_path}")
        time.sleep(0.01)
    health = time.perf_counter() - t0
    if not db:
        return health, float("nan")
    while (status := probe(server.port, "POST", f"/v1/databases/{db}/search", query, token)) != 200:
        if status not in (0, 503):
            raise RuntimeError(f"search -> {status}")
        time.sleep(0.01)
    return health, time.perf_counter() - t0


def dir_bytes(path: str) -> int:
    total = 0
    for root, _dirs, files in os.walk(path):
        for f in files:
            total += os.path.getsize(os.path.join(root, f))
    return total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--quick", action="store_true", help="n=20000")
    args = ap.parse_args()
    n = 20_000 if args.quick else args.n
    print(f"# restart benchmark: n={n:,} dim={args.dim} · {machine()}", flush=True)
    data, queries = dataset(n, args.dim, 1)
    query = dumps({"queryVector": queries[0], "topK": 10})
    rows: list[list[str]] = []

    with BenchServer() as empty:  # the fixed cost: interpreter, imports, an empty engine
        health, _ = timed_start(empty)
        empty.stop()
        rows.append(["empty data dir (fixed cost)", f"{health:.2f}", "-", _open(empty), "-"])

    with BenchServer() as server:
        server.start()
        token = login(server.base)
        c = Client(server.base, token)
        db = c.call(
            "POST",
            "/v1/databases",
            {
                "name": "restart",
                "vectorDimension": args.dim,
                "indexType": "hnsw",
                "indexParameters": {"M": M, "efConstruction": EF_CONSTRUCTION},
            },
        )["databaseId"]
        t0 = time.perf_counter()
        for _count, body in batch_bodies(data, BATCH):
            c.call("POST", f"/v1/databases/{db}/vectors/batch", body)
        load = time.perf_counter() - t0
        c.close()
        print(f"loaded {n:,} vectors in {load:.1f} s ({fmt(n / load)} vectors/s)", flush=True)
        stop1 = server.stop()
        index_dir = os.path.join(server.data_dir, "indexes")
        ckpt = dir_bytes(index_dir)
        print(
            f"clean stop (SIGTERM, checkpoint written) took {stop1:.2f} s; "
            f"checkpoint {ckpt / 2**20:.1f} MiB; rest of the data dir (log, store, archive) "
            f"{dir_bytes(server.data_dir) / 2**20 - ckpt / 2**20:.1f} MiB",
            flush=True,
        )

        health, search = timed_start(server, db, query, token)
        rows.append(
            [
                "clean stop -> start (loads checkpoint)",
                f"{health:.2f}",
                f"{search:.2f}",
                _open(server),
                f"{ckpt / 2**20:.0f} MiB checkpoint",
            ]
        )
        stop2 = server.stop()
        shutil.rmtree(index_dir)
        health, search = timed_start(server, db, query, token)
        rows.append(
            [
                "checkpoint deleted -> start (rebuilds)",
                f"{health:.2f}",
                f"{search:.2f}",
                _open(server),
                f"HNSW M={M} efC={EF_CONSTRUCTION} from the store",
            ]
        )
        server.stop()
        print(f"(second clean stop took {stop2:.2f} s)")

    print(
        Table(
            f"Restart with {n:,} x {args.dim} vectors (seconds from spawn)",
            [
                "start",
                "until /health 200",
                "until a search 200",
                "engine open (server log)",
                "note",
            ],
            rows,
        ).render(),
        flush=True,
    )


def _open(server: BenchServer) -> str:
    secs = server.last_open_seconds()
    return f"{secs:.2f}" if secs is not None else "n/a"


if __name__ == "__main__":
    main()
