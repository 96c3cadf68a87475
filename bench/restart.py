"""Restart time and memory: from a clean stop (index checkpoint) and with the checkpoint removed
(rebuild).

    .venv/bin/python bench/restart.py                 # 100k x 128
    .venv/bin/python bench/restart.py --quick         # 20k x 128
    .venv/bin/python bench/restart.py --n 1000000     # 1M x 128: ~15 min of ingest on 2 cores,
                                                      # as long again for the rebuild row

Loads N vectors (HNSW M=16 efConstruction=200, batches of 1,000; each with a small metadata
dict of 3 filterable terms unless ``--no-metadata``), stops the server with SIGTERM (drain,
checkpoint the index, close), then times a start until /health/db answers 200 and a search
succeeds. Then stops again, deletes ``<data_dir>/indexes`` and times the start that has to
rebuild the index from the vector store. A start on an empty data directory gives the fixed
cost (interpreter, imports) both include. The index-open breakdown comes from the server's log
line ``indexes ready in ...``.

Memory: the server's resident set (``/proc/<pid>/status``) right after each start and its first
search, per vector above the empty server's; next to it raw hnswlib holding the same graph (the
checkpoint's hnswlib file loaded by ``hnswlib.Index.load_index(max_elements=N)`` in a fresh
process: its RSS growth per vector) and that file's size per vector. Prints tables; never
asserts.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.common import (  # noqa: E402 - runnable as a script
    EF_CONSTRUCTION,
    F32,
    BenchServer,
    Client,
    M,
    Table,
    dataset,
    dumps,
    fmt,
    login,
    machine,
)

BATCH = 1000


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
    """Spawn the server; (seconds until ready: /health/db 200, seconds until a search is 200)."""
    t0 = time.perf_counter()
    server.spawn()
    while probe(server.port, "GET", "/health/db") != 200:  # ready (/health: alive, from ~1 s)
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


def metadata_of(i: int) -> dict[str, Any]:
    """3 filterable terms per vector: 100 groups, parity, 1,000 ranks."""
    return {"group": f"g{i % 100}", "parity": "odd" if i % 2 else "even", "rank": i % 1000}


def bodies(data: F32, size: int, with_metadata: bool) -> Iterator[tuple[int, bytes]]:
    """(count, JSON body) of POST /vectors/batch for consecutive slices; ids are ``v<row>``."""
    for s in range(0, len(data), size):
        chunk = data[s : s + size]
        vectors: list[dict[str, Any]] = []
        for i, row in enumerate(chunk):
            v: dict[str, Any] = {"id": f"v{s + i}", "values": row}
            if with_metadata:
                v["metadata"] = metadata_of(s + i)
            vectors.append(v)
        yield len(chunk), dumps({"vectors": vectors})


def proc_memory(pid: int) -> dict[str, int]:
    """VmRSS, RssAnon, RssFile of a process, in bytes (/proc/<pid>/status)."""
    out: dict[str, int] = {}
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "RssAnon", "RssFile", "VmHWM"):
                out[key] = int(rest.split()[0]) * 1024
    return out


def server_memory(server: BenchServer) -> dict[str, int]:
    assert server.proc is not None
    return proc_memory(server.proc.pid)


RAW_HNSWLIB = """
import json, sys
import hnswlib, numpy
def rss():
    with open("/proc/self/status") as fh:
        return {l.split(":")[0]: int(l.split()[1]) * 1024 for l in fh
                if l.startswith(("VmRSS", "RssAnon"))}
path, dim, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
before = rss()
idx = hnswlib.Index(space="cosine", dim=dim)
idx.load_index(path, max_elements=n)
after = rss()
print(json.dumps({"before": before, "after": after, "count": idx.element_count}))
"""


def raw_hnswlib_memory(index_file: str, dim: int, n: int) -> dict[str, Any]:
    """RSS growth of a fresh process that loads ``index_file`` with raw hnswlib (capacity
    exactly ``n``): what raw hnswlib needs to hold the same graph."""
    out = subprocess.run(
        [sys.executable, "-c", RAW_HNSWLIB, index_file, str(dim), str(n)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    doc: dict[str, Any] = json.loads(out)
    return doc


def checkpoint_files(index_dir: str, db: str) -> tuple[str, dict[str, int]]:
    """The checkpoint's hnswlib file, and its files' sizes by role: index (the hnswlib file),
    metadata, other (what the index writes beside its file, index.json)."""
    base = os.path.join(index_dir, db)
    with open(os.path.join(base, "index.json")) as fh:
        doc = json.load(fh)
    sizes = {"index": 0, "metadata": 0, "other": 0}
    for f in os.listdir(base):
        size = os.path.getsize(os.path.join(base, f))
        if f == doc["file"]:
            sizes["index"] += size
        elif f == doc.get("metadata", {}).get("file"):
            sizes["metadata"] += size
        else:
            sizes["other"] += size
    return os.path.join(base, doc["file"]), sizes


READY = re.compile(
    r"indexes ready in ([0-9.]+)s: (\d+) from checkpoints \(index files ([0-9.]+)s, metadata "
    r"([0-9.]+)s\), (\d+) rebuilt from the store \(([0-9.]+)s\), (\d+) log records replayed "
    r"\(([0-9.]+)s\)"
)


def breakdown(server: BenchServer) -> str:
    """The last start's index-open breakdown from the server log, or n/a."""
    found = READY.findall(server.log_text())
    if not found:
        return "n/a"
    total, _loaded, files, md, rebuilt, rebuild, replayed, replay = found[-1]
    if int(rebuilt):
        return f"rebuild {float(rebuild):.2f}"
    return (
        f"index files {float(files):.2f} + metadata {float(md):.2f} + replay "
        f"{float(replay):.2f} ({replayed} records)"
    )


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
    ap.add_argument("--no-metadata", action="store_true", help="vectors without metadata")
    ap.add_argument("--no-rebuild", action="store_true",
                    help="skip the rebuild row (8.5 min at 1M on 2 cores)")
    args = ap.parse_args()
    n = 20_000 if args.quick else args.n
    with_md = not args.no_metadata
    print(f"# restart benchmark: n={n:,} dim={args.dim} · {machine()}", flush=True)
    data, queries = dataset(n, args.dim, 1)
    query = dumps({"queryVector": queries[0], "topK": 10})
    rows: list[list[str]] = []
    mem_rows: list[list[str]] = []
    mib = 2**20

    def mem_row(what: str, m: dict[str, int], base: int, note: str) -> list[str]:
        per = f"{(m['VmRSS'] - base) / n:,.0f}" if base else "-"
        return [
            what,
            f"{m['VmRSS'] / mib:,.0f}",
            f"{m.get('RssAnon', 0) / mib:,.0f}",
            f"{m.get('RssFile', 0) / mib:,.0f}",
            per,
            note,
        ]

    with BenchServer() as empty:  # the fixed cost: interpreter, imports, an empty engine
        health, _ = timed_start(empty)
        empty_mem = server_memory(empty)
        empty.stop()
        rows.append(["empty data dir (fixed cost)", f"{health:.2f}", "-", _open(empty), "-", "-"])
        mem_rows.append(mem_row("server, empty data dir", empty_mem, 0, "the fixed cost"))

    with BenchServer() as server:
        server.start()
        token = login(server.base)
        c = Client(server.base, token)
        db = c.create_hnsw_db("restart", args.dim)
        t0 = time.perf_counter()
        done, step = 0, max(n // 10, BATCH)
        for count, body in bodies(data, BATCH, with_md):
            c.call("POST", f"/v1/databases/{db}/vectors/batch", body)
            done += count
            if done % step < count and done < n:
                el = time.perf_counter() - t0
                print(f"  {done:,} / {n:,} loaded, {fmt(done / el)} vectors/s", flush=True)
        load = time.perf_counter() - t0
        c.close()
        print(
            f"loaded {n:,} vectors{' with metadata' if with_md else ''} in {load:.1f} s "
            f"({fmt(n / load)} vectors/s)",
            flush=True,
        )
        stop1 = server.stop()
        index_dir = os.path.join(server.data_dir, "indexes")
        ckpt = dir_bytes(index_dir)
        index_file, sizes = checkpoint_files(index_dir, db)
        print(
            f"clean stop (SIGTERM, checkpoint written) took {stop1:.2f} s; "
            f"checkpoint {ckpt / mib:.1f} MiB (hnswlib file {sizes['index'] / mib:.1f}, "
            f"metadata {sizes['metadata'] / mib:.1f}, other {sizes['other'] / mib:.1f}); "
            f"rest of the data dir (log, store, archive) "
            f"{dir_bytes(server.data_dir) / mib - ckpt / mib:.1f} MiB",
            flush=True,
        )
        raw = raw_hnswlib_memory(index_file, args.dim, n)
        raw_rss = raw["after"]["VmRSS"] - raw["before"]["VmRSS"]

        health, search = timed_start(server, db, query, token)
        loaded_mem = server_memory(server)
        rows.append(
            [
                "clean stop -> start (loads checkpoint)",
                f"{health:.2f}",
                f"{search:.2f}",
                _open(server),
                breakdown(server),
                f"{ckpt / mib:.0f} MiB checkpoint",
            ]
        )
        mem_rows.append(
            mem_row(
                "server, started from the checkpoint",
                loaded_mem,
                empty_mem["VmRSS"],
                "after the first search",
            )
        )
        stop2 = server.stop()
        if not args.no_rebuild:
            shutil.rmtree(index_dir)
            health, search = timed_start(server, db, query, token)
            rebuilt_mem = server_memory(server)
            rows.append(
                [
                    "checkpoint deleted -> start (rebuilds)",
                    f"{health:.2f}",
                    f"{search:.2f}",
                    _open(server),
                    breakdown(server),
                    f"HNSW M={M} efC={EF_CONSTRUCTION} from the store",
                ]
            )
            mem_rows.append(
                mem_row(
                    "server, started by a rebuild",
                    rebuilt_mem,
                    empty_mem["VmRSS"],
                    "RssFile: the store pages the scan read",
                )
            )
            server.stop()
        print(f"(second clean stop took {stop2:.2f} s)")

    mem_rows.append(
        [
            "raw hnswlib, same graph (load_index, capacity N)",
            f"{raw['after']['VmRSS'] / mib:,.0f}",
            f"{raw['after'].get('RssAnon', 0) / mib:,.0f}",
            "-",
            f"{raw_rss / n:,.0f}",
            "RSS growth of a fresh process loading the checkpoint's hnswlib file",
        ]
    )
    mem_rows.append(
        [
            "raw hnswlib, its saved file",
            "-",
            "-",
            "-",
            f"{sizes['index'] / n:,.0f}",
            "save_index file size / N",
        ]
    )
    print(
        Table(
            f"Restart with {n:,} x {args.dim} vectors (seconds from spawn)",
            [
                "start",
                "until ready (/health/db 200)",
                "until a search 200",
                "engine open (server log)",
                "index open breakdown (server log, s)",
                "note",
            ],
            rows,
        ).render(),
        flush=True,
    )
    print(
        Table(
            f"Memory with {n:,} x {args.dim} vectors (MiB; bytes per vector above the empty "
            f"server)",
            ["process", "VmRSS", "RssAnon", "RssFile", "bytes / vector", "note"],
            mem_rows,
        ).render(),
        flush=True,
    )
    print(f"\nload avg at the end {os.getloadavg()[0]:.1f}", flush=True)


def _open(server: BenchServer) -> str:
    secs = server.last_open_seconds()
    return f"{secs:.2f}" if secs is not None else "n/a"


if __name__ == "__main__":
    main()
