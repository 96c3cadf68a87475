"""Measure one peer vector store on the data that ``bench/peers.py`` wrote; runs in the peers'
own venv (``bench/.venv-peers``), never in the project's, and imports nothing from the project.

    bench/.venv-peers/bin/python bench/peers_worker.py PEER DIR

PEER is one of hnswlib, chroma, qdrant, lancedb. DIR holds ``data.npy`` (n x dim float32 unit
vectors), ``queries.npy``, ``truth.npy`` (exact cosine top-k row indices per query) and
``params.json`` (k, target recall, batch size, HNSW parameters, ef sweep, warm-up, budgets).

Prints one JSON line per measured variant as soon as it is done (a peer may have several, e.g.
LanceDB without and with an index), so a run killed by the caller's timeout keeps what it
finished. A line is ``{"peer", "variant", "version", "ingest_seconds", "vectors_per_s",
"ingest_detail", "sweep": [{"setting", "recall", "qps", "p50_ms", "p99_ms"}], "note",
"error"}``. Each sweep goes from the cheapest setting up and stops at the first that reaches
the target recall.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from importlib import metadata
from typing import Any

# Never pick up the project's bench/*.py (common.py, search.py, ...) as top-level modules.
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _HERE]

import numpy as np  # noqa: E402 - after the sys.path guard
from numpy.typing import NDArray  # noqa: E402

F32 = NDArray[np.float32]
# LanceDB IVF_PQ refine_factor: re-rank refine_factor x k candidates by exact distance
REFINES: tuple[int | None, ...] = (None, 5, 10, 20, 50)
Search = Callable[[F32], list[int]]
Setting = tuple[str, Callable[[], Search]]  # (label, make the searcher for that setting)


@dataclass
class Params:
    k: int
    target: float
    batch: int
    m: int
    ef_construction: int
    efs: list[int]
    warmup: int
    index_budget: float

    @classmethod
    def load(cls, path: str) -> Params:
        with open(path) as fh:
            raw = json.load(fh)
        return cls(**{name: raw[name] for name in cls.__dataclass_fields__})


@dataclass
class Data:
    vectors: F32
    queries: F32
    truth: NDArray[np.int64]

    @classmethod
    def load(cls, folder: str) -> Data:
        return cls(
            np.load(os.path.join(folder, "data.npy")),
            np.load(os.path.join(folder, "queries.npy")),
            np.load(os.path.join(folder, "truth.npy")),
        )

    @property
    def n(self) -> int:
        return len(self.vectors)

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])


# -- measuring ---------------------------------------------------------------------------------
def recall_at_k(found: Sequence[Sequence[int]], truth: NDArray[np.int64]) -> float:
    """Mean fraction of the true top-k present in each answer (k = truth's width); the same
    definition as bench/common.py."""
    k = int(truth.shape[1])
    hits = sum(len(set(list(f)[:k]) & set(t.tolist())) for f, t in zip(found, truth, strict=True))
    return float(hits) / (k * len(truth))


def measure(setting: str, search: Search, data: Data, warmup: int) -> dict[str, Any]:
    """One query at a time on this thread: ``warmup`` untimed queries, then every query timed.
    QPS = queries / summed latency."""
    for q in data.queries[:warmup]:
        search(q)
    found: list[list[int]] = []
    lat: list[float] = []
    for q in data.queries:
        t0 = time.perf_counter()
        ids = search(q)
        lat.append(time.perf_counter() - t0)
        found.append(ids)
    ms = np.asarray(lat) * 1000.0
    return {
        "setting": setting,
        "recall": recall_at_k(found, data.truth),
        "qps": len(lat) / sum(lat),
        "p50_ms": float(np.percentile(ms, 50)),
        "p99_ms": float(np.percentile(ms, 99)),
    }


def sweep(
    settings: Sequence[Setting], data: Data, target: float, warmup: int
) -> list[dict[str, Any]]:
    """Measure each (label, make searcher) in order; stop at the first reaching ``target``."""
    rows: list[dict[str, Any]] = []
    for label, make in settings:
        row = measure(label, make(), data, warmup)
        rows.append(row)
        log(f"  {label}: recall {row['recall']:.3f}, {row['qps']:,.0f} QPS")
        if row["recall"] >= target:
            break
    return rows


def batches(n: int, size: int) -> Iterator[tuple[int, int]]:
    for s in range(0, n, size):
        yield s, min(s + size, n)


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def emit(record: dict[str, Any]) -> None:
    print(json.dumps(record), flush=True)


def result(
    peer: str,
    variant: str,
    version: str,
    ingest_seconds: float,
    n: int,
    rows: list[dict[str, Any]],
    *,
    detail: dict[str, float] | None = None,
    note: str = "",
) -> dict[str, Any]:
    return {
        "peer": peer,
        "variant": variant,
        "version": version,
        "ingest_seconds": ingest_seconds,
        "vectors_per_s": n / ingest_seconds if ingest_seconds > 0 else None,
        "ingest_detail": detail or {},
        "sweep": rows,
        "note": note,
        "error": None,
    }


def failure(peer: str, variant: str, version: str, error: str) -> dict[str, Any]:
    return {"peer": peer, "variant": variant, "version": version, "sweep": [], "error": error}


def version_of(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def run_bounded(fn: Callable[[], object], seconds: float) -> float:
    """Run ``fn`` on a daemon thread; the seconds it took, or TimeoutError after ``seconds``
    (the thread is abandoned: only call this for the last steps of a worker)."""
    failed: list[BaseException] = []

    def target() -> None:
        try:
            fn()
        except BaseException as e:  # noqa: BLE001 - re-raised on the caller's thread
            failed.append(e)

    t0 = time.perf_counter()
    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        raise TimeoutError(f"gave up after {seconds:.0f} s")
    if failed:
        raise failed[0]
    return time.perf_counter() - t0


# -- peers -------------------------------------------------------------------------------------
def run_hnswlib(data: Data, p: Params, tmp: str) -> None:
    """The library our server embeds: same parameters, same 1,000-vector batches, all cores."""
    import hnswlib

    version = version_of("hnswlib")
    idx = hnswlib.Index(space="cosine", dim=data.dim)
    idx.init_index(max_elements=data.n, M=p.m, ef_construction=p.ef_construction, random_seed=100)
    t0 = time.perf_counter()
    for s, e in batches(data.n, p.batch):
        idx.add_items(data.vectors[s:e], np.arange(s, e), num_threads=os.cpu_count() or 1)
    secs = time.perf_counter() - t0

    def at(ef: int) -> Search:
        idx.set_ef(ef)
        return lambda q: idx.knn_query(q, k=p.k, num_threads=1)[0][0].tolist()

    settings = [(f"ef={ef}", partial(at, ef)) for ef in p.efs]
    rows = sweep(settings, data, p.target, p.warmup)
    emit(
        result(
            "hnswlib",
            f"hnswlib in-process (M={p.m}, efC={p.ef_construction})",
            version,
            secs,
            data.n,
            rows,
            note="in memory, not durable",
        )
    )


def run_chroma(data: Data, p: Params, tmp: str) -> None:
    """Durable PersistentClient; HNSW parameters through the 1.x ``configuration`` dict.
    ``ef_search`` is changed with ``modify`` and takes effect when the collection is opened
    again, so each setting reopens the client on the same directory."""
    import chromadb
    from chromadb.api.client import SharedSystemClient

    version = version_of("chromadb")
    path = os.path.join(tmp, "chroma")
    settings = chromadb.Settings(anonymized_telemetry=False)
    client = chromadb.PersistentClient(path=path, settings=settings)
    col = client.create_collection(
        "bench",
        configuration={
            "hnsw": {
                "space": "cosine",
                "max_neighbors": p.m,
                "ef_construction": p.ef_construction,
                "ef_search": p.efs[0],
            }
        },
        embedding_function=None,
    )
    size = min(p.batch, client.get_max_batch_size())
    t0 = time.perf_counter()
    for s, e in batches(data.n, size):
        col.add(ids=[str(i) for i in range(s, e)], embeddings=data.vectors[s:e])
    secs = time.perf_counter() - t0
    count = col.count()
    if count != data.n:
        raise RuntimeError(f"collection holds {count} vectors, expected {data.n}")

    def at(ef: int) -> Search:
        col.modify(configuration={"hnsw": {"ef_search": ef}})
        SharedSystemClient.clear_system_cache()
        opened = chromadb.PersistentClient(path=path, settings=settings)
        c = opened.get_collection("bench", embedding_function=None)
        got = c.configuration["hnsw"]["ef_search"]  # type: ignore[index]
        if got != ef:
            raise RuntimeError(f"ef_search is {got} after setting {ef}")

        def search(q: F32) -> list[int]:
            r = c.query(query_embeddings=q[None, :], n_results=p.k, include=[])
            return [int(i) for i in r["ids"][0]]

        return search

    settings_list = [(f"hnsw ef_search={ef}", partial(at, ef)) for ef in p.efs]
    rows = sweep(settings_list, data, p.target, p.warmup)
    emit(
        result(
            "chroma",
            f"Chroma PersistentClient (HNSW M={p.m}, efC={p.ef_construction})",
            version,
            secs,
            data.n,
            rows,
            note=f"batches of {size}",
        )
    )


def run_qdrant(data: Data, p: Params, tmp: str) -> None:
    """Qdrant's local mode (``QdrantClient(path=...)``): pure Python, persisted to a local
    file, exact numpy scan; it has no index and so no knob."""
    from qdrant_client import QdrantClient, models

    version = version_of("qdrant-client")
    client = QdrantClient(path=os.path.join(tmp, "qdrant"))
    client.create_collection(
        "bench",
        vectors_config=models.VectorParams(size=data.dim, distance=models.Distance.COSINE),
    )
    t0 = time.perf_counter()
    for s, e in batches(data.n, p.batch):
        client.upsert(
            "bench",
            points=models.Batch(ids=list(range(s, e)), vectors=data.vectors[s:e].tolist()),
            wait=True,
        )
    secs = time.perf_counter() - t0

    def search(q: F32) -> list[int]:
        r = client.query_points("bench", query=q, limit=p.k, with_payload=False)
        return [int(pt.id) for pt in r.points]

    rows = sweep([("exact (no index)", lambda: search)], data, p.target, p.warmup)
    client.close()
    emit(
        result(
            "qdrant",
            "Qdrant local mode (path=...)",
            version,
            secs,
            data.n,
            rows,
            note="brute force in Python; not the Qdrant server",
        )
    )


def run_lancedb(data: Data, p: Params, tmp: str) -> None:
    """LanceDB embedded on a local directory: ingest in batches (one fragment each), then
    without an index (exact scan), then IVF_PQ and IVF_HNSW_SQ indexes, each built within
    ``index_budget`` seconds (else reported as skipped, with the rest)."""
    import lancedb
    import pyarrow as pa
    from lancedb.index import HnswSq, IvfPq

    version = version_of("lancedb")
    db = lancedb.connect(os.path.join(tmp, "lance"))

    def arrow(s: int, e: int) -> pa.Table:
        flat = pa.array(data.vectors[s:e].reshape(-1), type=pa.float32())
        return pa.table(
            {
                "id": pa.array(np.arange(s, e), type=pa.int64()),
                "vector": pa.FixedSizeListArray.from_arrays(flat, data.dim),
            }
        )

    t0 = time.perf_counter()
    table = None
    for s, e in batches(data.n, p.batch):
        if table is None:
            table = db.create_table("bench", data=arrow(s, e))
        else:
            table.add(arrow(s, e))
    assert table is not None
    write_secs = time.perf_counter() - t0
    t0 = time.perf_counter()
    table.optimize()  # compact the per-batch fragments into a few files
    compact_secs = time.perf_counter() - t0
    ingest = write_secs + compact_secs

    def searcher(
        *, nprobes: int | None = None, refine: int | None = None, ef: int | None = None
    ) -> Search:
        def search(q: F32) -> list[int]:
            query: Any = table.search(q, vector_column_name="vector")
            b = query.distance_type("cosine")
            if nprobes is not None:
                b = b.nprobes(nprobes)
            if refine is not None:
                b = b.refine_factor(refine)
            if ef is not None:
                b = b.ef(ef)
            got = b.limit(p.k).select(["id", "_distance"]).to_arrow()
            return got.column("id").to_pylist()  # type: ignore[no-any-return]

        return search

    rows = sweep([("no index (exact scan)", searcher)], data, p.target, p.warmup)
    detail = {"write_seconds": write_secs, "compact_seconds": compact_secs}
    emit(
        result(
            "lancedb",
            "LanceDB no index",
            version,
            ingest,
            data.n,
            rows,
            detail=detail,
            note=f"batches of {p.batch}, then optimize()",
        )
    )

    partitions = max(1, round(math.sqrt(data.n)))
    probes = [n for n in (10, 20, 40) if n <= partitions] or [partitions]
    pq_groups: list[list[Setting]] = [
        [
            (
                f"nprobes={n} refine_factor={r or 'off'}",
                partial(searcher, nprobes=n, refine=r),
            )
            for r in REFINES
        ]
        for n in probes
    ]
    hnsw_groups: list[list[Setting]] = [[(f"ef={ef}", partial(searcher, ef=ef)) for ef in p.efs]]
    variants: list[tuple[str, Any, list[list[Setting]], str]] = [
        (
            f"LanceDB IVF_PQ ({partitions} partitions, {data.dim // 8} sub-vectors)",
            IvfPq(distance_type="cosine", num_partitions=partitions, num_sub_vectors=data.dim // 8),
            pq_groups,
            f"refine_factor {'/'.join(str(r or 'off') for r in REFINES)} swept per nprobes "
            + "/".join(map(str, probes)),
        ),
        (
            f"LanceDB IVF_HNSW_SQ (1 partition, m={p.m}, efC={p.ef_construction})",
            HnswSq(
                distance_type="cosine", num_partitions=1, m=p.m, ef_construction=p.ef_construction
            ),
            hnsw_groups,
            "",
        ),
    ]
    for i, (variant, config, groups, note) in enumerate(variants):
        try:
            build = run_bounded(
                partial(table.create_index, "vector", config=config, replace=True),
                p.index_budget,
            )
            log(f"  {variant}: index built in {build:.1f} s")
            rows = [row for group in groups for row in sweep(group, data, p.target, p.warmup)]
        except TimeoutError as e:  # only run_bounded raises it
            for later, *_ in variants[i:]:
                emit(failure("lancedb", later, version, f"skipped: index build {e}"))
            os._exit(0)  # the build thread cannot be stopped; leave without waiting for it
        except Exception as e:  # noqa: BLE001 - this variant's row, then the next variant
            log(traceback.format_exc())
            emit(failure("lancedb", variant, version, f"{type(e).__name__}: {e}"))
            continue
        emit(
            result(
                "lancedb",
                variant,
                version,
                ingest + build,
                data.n,
                rows,
                detail={**detail, "index_seconds": build},
                note=note,
            )
        )


PEERS: dict[str, tuple[str, Callable[[Data, Params, str], None]]] = {
    "hnswlib": ("hnswlib", run_hnswlib),
    "chroma": ("chromadb", run_chroma),
    "qdrant": ("qdrant-client", run_qdrant),
    "lancedb": ("lancedb", run_lancedb),
}


def main() -> None:
    if len(sys.argv) != 3 or sys.argv[1] not in PEERS:
        sys.exit(f"usage: peers_worker.py {{{','.join(PEERS)}}} DIR")
    peer, folder = sys.argv[1], sys.argv[2]
    dist, run = PEERS[peer]
    data = Data.load(folder)
    params = Params.load(os.path.join(folder, "params.json"))
    tmp = tempfile.mkdtemp(prefix=f"peer-{peer}-", dir=folder)
    try:
        run(data, params, tmp)
    except Exception as e:  # noqa: BLE001 - reported as the peer's row, never a crash
        log(traceback.format_exc())
        emit(failure(peer, peer, version_of(dist), f"{type(e).__name__}: {e}"))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
