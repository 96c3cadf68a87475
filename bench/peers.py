"""Peer table: our server next to hnswlib, Chroma, Qdrant's local mode and LanceDB, on the same
data, the same queries and the same recall target.

    .venv/bin/python bench/peers.py                 # 100k x 128, 1000 queries
    .venv/bin/python bench/peers.py --quick         # 20k x 128
    .venv/bin/python bench/peers.py --only ours,chroma

The peers are never dependencies of the product: they live in their own venv,
``bench/.venv-peers``, created on first use from ``bench/peers-requirements.txt`` and
recreated only when that file changes (its sha256 is stamped in the venv). Each peer runs as
``bench/.venv-peers/bin/python bench/peers_worker.py PEER DIR`` on the .npy files written here,
one at a time, with a timeout; a peer that fails to install, crashes or times out is a row with
its error, never the end of the table.

Every system gets the same 1,000-vector ingest batches (HNSW ones M=16, efConstruction=200,
cosine), then one query at a time on one thread, top-10, 50 warm-up queries then all queries
timed; the search knob (ef, refine factor, ...) is swept from cheap to dear and the table shows
the fastest setting that reaches recall@10 >= 0.95 against the exact cosine top-10. See
bench/README.md for what each figure means. Never asserts: it measures.
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from importlib import metadata
from typing import IO, Any

import numpy as np
import orjson

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.common import (  # noqa: E402 - runnable as a script
    EF_CONSTRUCTION,
    F32,
    BenchServer,
    Client,
    M,
    Table,
    batch_bodies,
    dataset,
    dumps,
    fmt,
    ground_truth,
    login,
    machine,
    percentile_ms,
    recall_at_k,
    row_of,
)

BENCH = os.path.dirname(os.path.abspath(__file__))
VENV = os.path.join(BENCH, ".venv-peers")
VENV_PYTHON = os.path.join(VENV, "bin", "python")
REQUIREMENTS = os.path.join(BENCH, "peers-requirements.txt")
STAMP = os.path.join(VENV, ".requirements.sha256")
WORKER = os.path.join(BENCH, "peers_worker.py")
RESULTS = os.path.join(BENCH, "results")

K, TARGET, BATCH, WARMUP = 10, 0.95, 1000, 50
EFS = (10, 16, 20, 32, 40, 64, 80, 128, 160, 256, 320, 512)
PEERS = ("hnswlib", "chroma", "qdrant", "lancedb")
OURS = "ours"

Record = dict[str, Any]


# -- the peers' venv ---------------------------------------------------------------------------
def sha256_of(path: str) -> str:
    with open(path, "rb") as fh:
        return hashlib.sha256(fh.read()).hexdigest()


def requirement_lines() -> list[str]:
    with open(REQUIREMENTS) as fh:
        lines = (line.split("#", 1)[0].strip() for line in fh)
        return [line for line in lines if line]


def pip_install(args: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [VENV_PYTHON, "-m", "pip", "install", "--disable-pip-version-check", "-q", *args],
        capture_output=True,
        text=True,
    )


def ensure_venv() -> str | None:
    """Create or refresh ``bench/.venv-peers`` when the requirements changed; returns a note on
    what could not be installed (None when all is in place). The stamp is written only after a
    complete install, so a partial one is retried on the next run."""
    digest = sha256_of(REQUIREMENTS)
    try:
        with open(STAMP) as fh:
            if fh.read().strip() == digest and os.path.exists(VENV_PYTHON):
                return None
    except OSError:
        pass
    print(
        f"installing the peers into {os.path.relpath(VENV)} (first run or requirements changed; "
        "hnswlib builds from source, a few minutes)...",
        flush=True,
    )
    shutil.rmtree(VENV, ignore_errors=True)
    python3 = shutil.which("python3") or sys.executable
    made = subprocess.run([python3, "-m", "venv", VENV], capture_output=True, text=True)
    if made.returncode != 0:
        return f"venv: {last_line(made.stderr)}"
    t0 = time.perf_counter()
    done = pip_install(["-r", REQUIREMENTS])
    if done.returncode == 0:
        with open(STAMP, "w") as fh:
            fh.write(digest + "\n")
        print(f"  installed in {time.perf_counter() - t0:.0f} s", flush=True)
        return None
    # one requirement at a time, so that a peer that cannot be installed costs only its row
    failed = [req for req in requirement_lines() if pip_install([req]).returncode != 0]
    return f"not installed: {', '.join(failed) or '?'} ({last_line(done.stderr)})"


def last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1][:300] if lines else ""


# -- one peer in its own process ---------------------------------------------------------------
def pump(stream: IO[str], keep: collections.deque[str] | list[str], echo: bool) -> None:
    for line in stream:
        keep.append(line.rstrip("\n"))
        if echo:
            print(f"    {line.rstrip()}", file=sys.stderr, flush=True)


def run_peer(peer: str, folder: str, timeout: float) -> list[Record]:
    """The worker's JSON lines; an error record when it crashed or timed out before any."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [VENV_PYTHON, WORKER, peer, folder],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=folder,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    out: list[str] = []
    err: collections.deque[str] = collections.deque(maxlen=30)
    assert proc.stdout is not None and proc.stderr is not None
    readers = [
        threading.Thread(target=pump, args=(proc.stdout, out, False), daemon=True),
        threading.Thread(target=pump, args=(proc.stderr, err, True), daemon=True),
    ]
    for r in readers:
        r.start()
    problem = ""
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        problem = f"timed out after {timeout:.0f} s"
    for r in readers:
        r.join(timeout=10)
    records = [json.loads(line) for line in out if line.startswith("{")]
    if not problem and proc.returncode != 0:
        problem = f"exit {proc.returncode}: {last_line(chr(10).join(err))}"
    if problem:
        records.append({"peer": peer, "variant": peer, "version": "?", "error": problem})
    for rec in records:
        rec.setdefault("wall_seconds", time.perf_counter() - t0)
    return records


# -- our server --------------------------------------------------------------------------------
def http_search(c: Client, db: str, queries: F32, ef: int) -> tuple[list[list[int]], list[float]]:
    """One client, sequential: 50 warm-up requests, then every query timed (bodies encoded
    before the clock starts)."""
    bodies = [dumps({"queryVector": q, "topK": K, "efSearch": ef}) for q in queries]
    path = f"/v1/databases/{db}/search"
    for body in bodies[:WARMUP]:
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


def run_ours(data: F32, queries: F32, truth: np.ndarray) -> Record:
    """The server as a real subprocess: durable batch ingest over HTTP, then an efSearch sweep
    over HTTP, one client."""
    version = metadata.version("jadevectordb-server")
    variant = f"JadeVectorDB server, HTTP (HNSW M={M}, efC={EF_CONSTRUCTION})"
    server = BenchServer()
    try:
        server.start()
        c = Client(server.base, login(server.base))
        db = c.create_hnsw_db("peers", int(data.shape[1]))
        t0 = time.perf_counter()
        bodies = list(batch_bodies(data, BATCH))
        encode = time.perf_counter() - t0
        print(f"  ours: ingesting {len(data):,} vectors over HTTP...", flush=True)
        t0 = time.perf_counter()
        for _count, body in bodies:
            c.call("POST", f"/v1/databases/{db}/vectors/batch", body)
        secs = time.perf_counter() - t0
        count = c.call("GET", f"/v1/databases/{db}")["stats"]["vectorCount"]
        if count != len(data):
            raise RuntimeError(f"server holds {count} vectors, expected {len(data)}")
        rows: list[dict[str, Any]] = []
        for ef in EFS:
            found, lat = http_search(c, db, queries, ef)
            row: dict[str, Any] = {
                "setting": f"efSearch={ef}",
                "recall": recall_at_k(found, truth),
                "qps": len(lat) / sum(lat),
                "p50_ms": percentile_ms(lat, 50),
                "p99_ms": percentile_ms(lat, 99),
            }
            rows.append(row)
            print(f"    efSearch={ef}: recall {row['recall']:.3f}, {row['qps']:,.0f} QPS")
            if row["recall"] >= TARGET:
                break
        c.close()
        return {
            "peer": OURS,
            "variant": variant,
            "version": version,
            "ingest_seconds": secs,
            "vectors_per_s": len(data) / secs,
            "ingest_detail": {"client_json_encode_seconds_untimed": encode},
            "sweep": rows,
            "note": "durable: each batch logged + fsynced before the 201",
            "error": None,
        }
    except Exception as e:  # noqa: BLE001 - reported as our row
        return {"peer": OURS, "variant": variant, "version": version, "error": repr(e)}
    finally:
        server.stop()
        server.cleanup()


# -- the table ---------------------------------------------------------------------------------
def chosen(rec: Record) -> tuple[dict[str, Any] | None, bool]:
    """(the fastest setting reaching the target, True), else (the best-recall setting, False)."""
    sweep: list[dict[str, Any]] = rec.get("sweep") or []
    reaching = [r for r in sweep if r["recall"] >= TARGET]
    if reaching:
        return max(reaching, key=lambda r: r["qps"]), True
    return (max(sweep, key=lambda r: r["recall"]) if sweep else None), False


def table_rows(records: list[Record]) -> list[list[str]]:
    ours = next((r for r in records if r["peer"] == OURS and not r.get("error")), None)
    ours_row, ours_ok = chosen(ours) if ours else (None, False)
    rows: list[list[str]] = []
    for rec in records:
        name, version = str(rec.get("variant", rec["peer"])), str(rec.get("version", "?"))
        if rec.get("error"):
            rows.append([name, version, "-", f"error: {rec['error'][:120]}", *["-"] * 5])
            continue
        best, ok = chosen(rec)
        if best is None:
            rows.append([name, version, "-", "no measurement", *["-"] * 5])
            continue
        setting = best["setting"] if ok else f"none (max recall {best['recall']:.3f})"
        ratio = (
            f"{best['qps'] / ours_row['qps']:.2f}x"
            if ours_row is not None and ours_ok and ok
            else "-"
        )
        vps = rec.get("vectors_per_s")
        rows.append(
            [
                name,
                version,
                fmt(vps) if vps else "-",
                setting,
                f"{best['recall']:.3f}",
                fmt(best["qps"]),
                f"{best['p50_ms']:.2f}",
                f"{best['p99_ms']:.2f}",
                ratio,
            ]
        )
    return rows


def write_json(report: dict[str, Any]) -> str:
    os.makedirs(RESULTS, exist_ok=True)
    path = os.path.join(RESULTS, f"peers-{time.strftime('%Y-%m-%d-%H%M%S')}.json")
    with open(path, "w") as fh:
        json.dump(report, fh, indent=1)
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--n", type=int, default=100_000, help="vectors to ingest (default 100000)")
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--quick", action="store_true", help="n=20000")
    ap.add_argument(
        "--only",
        default=",".join((OURS, *PEERS)),
        help=f"comma-separated subset of {OURS},{','.join(PEERS)} (default: all)",
    )
    ap.add_argument(
        "--timeout", type=float, default=1200, help="seconds per peer process (default 1200)"
    )
    ap.add_argument(
        "--index-budget",
        type=float,
        default=600,
        help="seconds allowed for each LanceDB index build, else skipped (default 600)",
    )
    args = ap.parse_args()
    n = 20_000 if args.quick else args.n
    only = [name.strip() for name in args.only.split(",") if name.strip()]
    unknown = set(only) - {OURS, *PEERS}
    if unknown:
        ap.error(f"unknown peers: {', '.join(sorted(unknown))}")
    started = time.perf_counter()
    print(
        f"# peer benchmark: n={n:,} dim={args.dim} queries={args.queries} k={K} "
        f"target recall@{K} >= {TARGET} · {machine()}",
        flush=True,
    )
    data, queries = dataset(n, args.dim, args.queries)
    truth = ground_truth(data, queries, K)

    records: list[Record] = []
    install_note: str | None = None
    folder = tempfile.mkdtemp(prefix="jade-peers-")
    try:
        if OURS in only:
            print("ours: JadeVectorDB server", flush=True)
            t0 = time.perf_counter()
            records.append(run_ours(data, queries, truth))
            records[-1]["wall_seconds"] = time.perf_counter() - t0
        peers = [p for p in PEERS if p in only]
        if peers:
            install_note = ensure_venv()
            if install_note:
                print(f"  {install_note}", flush=True)
            np.save(os.path.join(folder, "data.npy"), data)
            np.save(os.path.join(folder, "queries.npy"), queries)
            np.save(os.path.join(folder, "truth.npy"), truth)
            params = {
                "k": K,
                "target": TARGET,
                "batch": BATCH,
                "m": M,
                "ef_construction": EF_CONSTRUCTION,
                "efs": list(EFS),
                "warmup": WARMUP,
                "index_budget": args.index_budget,
            }
            with open(os.path.join(folder, "params.json"), "w") as fh:
                json.dump(params, fh)
        for peer in peers:
            if not os.path.exists(VENV_PYTHON):
                records.append({"peer": peer, "variant": peer, "error": install_note})
                continue
            print(f"{peer}:", flush=True)
            records.extend(run_peer(peer, folder, args.timeout))
    finally:
        shutil.rmtree(folder, ignore_errors=True)

    table = Table(
        f"Peers, {n:,} x {args.dim} clustered unit vectors, {args.queries:,} queries, top-{K}, "
        f"one query at a time on one thread; the fastest setting with recall@{K} >= {TARGET}",
        [
            "peer",
            "version",
            "ingest vectors/s",
            f"setting at recall>={TARGET}",
            f"recall@{K}",
            "QPS",
            "p50 ms",
            "p99 ms",
            "QPS vs ours",
        ],
        table_rows(records),
    )
    print(table.render())
    print(machine())
    for rec in records:
        if rec.get("note"):
            print(f"  {rec.get('variant', rec['peer'])}: {rec['note']}")
    path = write_json(
        {
            "date": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "machine": machine(),
            "n": n,
            "dim": args.dim,
            "queries": args.queries,
            "k": K,
            "target_recall": TARGET,
            "batch": BATCH,
            "hnsw": {"M": M, "efConstruction": EF_CONSTRUCTION},
            "install_note": install_note,
            "records": records,
            "seconds": time.perf_counter() - started,
        }
    )
    print(f"raw results: {os.path.relpath(path)} ({time.perf_counter() - started:.0f} s in all)")


if __name__ == "__main__":
    main()
