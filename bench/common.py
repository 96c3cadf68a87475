"""Shared pieces of the benchmarks: a seeded clustered dataset, exact ground truth, recall, a
real server subprocess in a temp data dir, and a lean keep-alive HTTP client.

The benchmarks print tables and never assert: they measure, a person judges.
"""

from __future__ import annotations

import asyncio
import base64
import http.client
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson
from numpy.typing import NDArray

from tools.serve import serving

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
F32 = NDArray[np.float32]
PASSWORD = "Bench_Secure123@"
M, EF_CONSTRUCTION = 16, 200  # the HNSW parameters of every benchmark (issue 8)


# -- data --------------------------------------------------------------------------------------
def normalise(x: F32) -> F32:
    out: F32 = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    return out


def clustered(
    n: int, dim: int, *, clusters: int = 100, spread: float = 0.35, seed: int = 42
) -> F32:
    """``n`` unit vectors around ``clusters`` random unit centres (gaussian, per-axis sigma
    ``spread / sqrt(dim)``), shuffled. The same seed gives the same data."""
    rng = np.random.default_rng(seed)
    centres = normalise(rng.standard_normal((clusters, dim)).astype(np.float32))
    which = rng.integers(0, clusters, n)
    noise = rng.standard_normal((n, dim)).astype(np.float32) * (spread / np.sqrt(dim))
    return normalise(centres[which] + noise)


def dataset(n: int, dim: int, queries: int, seed: int = 42) -> tuple[F32, F32]:
    """(data, queries): queries come from the same clusters but are not in the data."""
    both = clustered(n + queries, dim, seed=seed)
    return both[:n], both[n:]


def ground_truth(data: F32, queries: F32, k: int, chunk: int = 256) -> NDArray[np.int64]:
    """Exact top-``k`` row indices by cosine (inner product of unit vectors), best first;
    chunked matmul so memory stays at ``chunk * n`` floats."""
    out = np.empty((len(queries), k), dtype=np.int64)
    for s in range(0, len(queries), chunk):
        sims = queries[s : s + chunk] @ data.T
        part = np.argpartition(-sims, k, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(sims, part, axis=1), axis=1)
        out[s : s + chunk] = np.take_along_axis(part, order, axis=1)
    return out


def recall_at_k(found: list[list[int]] | NDArray[np.int64], truth: NDArray[np.int64]) -> float:
    """Mean fraction of the true top-k present in each answer (k = truth's width)."""
    k = int(truth.shape[1])
    hits: int = sum(
        len(set(list(f)[:k]) & set(t.tolist())) for f, t in zip(found, truth, strict=True)
    )
    return float(hits) / (k * len(truth))


def percentile_ms(seconds: list[float], p: float) -> float:
    return float(np.percentile(np.asarray(seconds) * 1000.0, p))


# -- the server ----------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class BenchServer:
    """``python -m tools serve`` as a subprocess on a free loopback port, with built-in
    (development) settings: no config files, so the figures do not depend on local edits."""

    def __init__(self, data_dir: str | None = None, env: dict[str, str] | None = None) -> None:
        self.tmp = None if data_dir else tempfile.mkdtemp(prefix="jade-bench-")
        self.data_dir = data_dir or os.path.join(self.tmp or "", "data")
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.env = {
            **os.environ,
            "JADEVECTORDB_DATA_DIR": self.data_dir,
            "JADEVECTORDB_PORT": str(self.port),
            "JADEVECTORDB_HOST": "127.0.0.1",
            "JADEVECTORDB_CONFIG_DIR": os.path.join(self.data_dir, "no-config"),
            "PYTHONPATH": ROOT,
            **(env or {}),
        }
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = os.path.join(os.path.dirname(self.data_dir), f"server-{self.port}.log")

    def start(self, timeout: float = 600.0) -> float:
        """Start and wait until it has opened its data directory (``tools.serve.serving``: the
        port answers "starting" before); returns the seconds that took."""
        t0 = time.perf_counter()
        self.spawn()
        deadline = t0 + timeout
        while time.perf_counter() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"server exited with {self.proc.returncode}; see {self.log_path}"
                )
            if serving("127.0.0.1", self.port, timeout=0.5):
                return time.perf_counter() - t0
            time.sleep(0.01)
        raise TimeoutError("server did not start")

    def spawn(self) -> None:
        log = open(self.log_path, "ab")  # handed to the child, closed here
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tools", "serve"],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
        )
        log.close()

    def stop(self, timeout: float = 600.0) -> float:
        """SIGTERM (drain, checkpoint the indexes, close); returns the seconds it took."""
        t0 = time.perf_counter()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(timeout=timeout)
        return time.perf_counter() - t0

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def cleanup(self) -> None:
        self.kill()
        if self.tmp:
            shutil.rmtree(self.tmp, ignore_errors=True)

    def log_text(self) -> str:
        try:
            with open(self.log_path, "rb") as fh:
                return fh.read().decode(errors="replace")
        except OSError:
            return ""

    def last_open_seconds(self) -> float | None:
        """The engine's own open time from the server log ("opened ... in 1.23s"), if logged."""
        found = re.findall(r"opened .* in ([0-9.]+)s", self.log_text())
        return float(found[-1]) if found else None

    def __enter__(self) -> BenchServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.cleanup()


# -- the client ----------------------------------------------------------------------------
class HttpError(RuntimeError):
    pass


class Client:
    """One persistent HTTP/1.1 connection (http.client): the least client work per request,
    so the timings are the server's as far as a 2-core machine allows."""

    def __init__(self, base: str, token: str = "") -> None:
        m = re.match(r"http://([^:/]+):(\d+)", base)
        assert m, base
        self.host, self.port = m.group(1), int(m.group(2))
        self.token = token
        self.conn = http.client.HTTPConnection(self.host, self.port, timeout=600)

    def headers(self) -> dict[str, str]:
        h = {"Content-Type": "application/json"}
        if self.token:
            h["Authorization"] = f"Bearer {self.token}"
        return h

    def raw(self, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes]:
        for attempt in (0, 1):
            try:
                self.conn.request(method, path, body=body, headers=self.headers())
                r = self.conn.getresponse()
                return r.status, r.read()
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                self.conn.close()  # a stale keep-alive connection: reconnect once
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def call(
        self, method: str, path: str, body: Any = None, *, ok: tuple[int, ...] = (200, 201)
    ) -> Any:
        data = body if isinstance(body, bytes) or body is None else dumps(body)
        status, text = self.raw(method, path, data)
        if status not in ok:
            raise HttpError(f"{method} {path} -> {status} {text[:300]!r}")
        return orjson.loads(text) if text else None

    def create_hnsw_db(self, name: str, dim: int) -> str:
        """A database with HNSW M=16 efConstruction=200; returns its id."""
        return str(self.call("POST", "/v1/databases", {
            "name": name, "vectorDimension": dim, "indexType": "hnsw",
            "indexParameters": {"M": M, "efConstruction": EF_CONSTRUCTION}})["databaseId"])

    def close(self) -> None:
        self.conn.close()


def dumps(body: Any) -> bytes:
    return orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY)


def login(base: str, username: str = "bench") -> str:
    """Register (first time) and log in; returns a bearer token (it survives restarts)."""
    c = Client(base)
    try:
        c.call(
            "POST", "/v1/auth/register", {"username": username, "password": PASSWORD}, ok=(201, 409)
        )
        return str(
            c.call("POST", "/v1/auth/login", {"username": username, "password": PASSWORD})["token"]
        )
    finally:
        c.close()


def batch_bodies(data: F32, size: int, prefix: str = "v") -> Iterator[tuple[int, bytes]]:
    """(count, JSON body) of POST /vectors/batch for consecutive slices; ids are ``prefix<row>``."""
    for s in range(0, len(data), size):
        chunk = data[s : s + size]
        body = {
            "vectors": [{"id": f"{prefix}{s + i}", "values": row} for i, row in enumerate(chunk)]
        }
        yield len(chunk), dumps(body)


def batch_bodies_b64(data: F32, size: int, prefix: str = "v") -> Iterator[tuple[int, bytes]]:
    """As ``batch_bodies``, the values as ``valuesB64`` (base64 of little-endian float32)."""
    for s in range(0, len(data), size):
        chunk = np.ascontiguousarray(data[s : s + size], dtype="<f4")
        body = {"vectors": [{"id": f"{prefix}{s + i}",
                             "valuesB64": base64.b64encode(row.tobytes()).decode()}
                            for i, row in enumerate(chunk)]}
        yield len(chunk), dumps(body)


def row_of(vector_id: str, prefix: str = "v") -> int:
    return int(vector_id[len(prefix) :])


def metric_sum_count(metrics_text: str, name: str) -> tuple[float, float]:
    """(sum, count) of a Prometheus histogram in /metrics text (0, 0 when absent)."""
    total = count = 0.0
    for line in metrics_text.splitlines():
        if line.startswith(name + "_sum"):
            total = float(line.split()[-1])
        elif line.startswith(name + "_count"):
            count = float(line.split()[-1])
    return total, count


# -- printing --------------------------------------------------------------------------------
@dataclass
class Table:
    title: str
    header: list[str]
    rows: list[list[str]]

    def render(self) -> str:
        cols = [self.header, *self.rows]
        widths = [max(len(r[i]) for r in cols) for i in range(len(self.header))]

        def line(r: list[str]) -> str:
            return "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |"

        sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
        return "\n".join([f"\n{self.title}", line(self.header), sep, *map(line, self.rows)])


def cpu_ticks() -> tuple[int, int]:
    """(all, stolen) CPU ticks since boot, from /proc/stat: steal is time the hypervisor gave
    this VM's vCPUs to someone else."""
    try:
        with open("/proc/stat") as fh:
            f = [int(x) for x in fh.readline().split()[1:]]
    except (OSError, ValueError):
        return 0, 0
    return sum(f), f[7] if len(f) > 7 else 0


def steal_since(start: tuple[int, int]) -> str:
    """The share of CPU time stolen by the hypervisor since ``start`` (from ``cpu_ticks``)."""
    now = cpu_ticks()
    total = now[0] - start[0]
    return f"{(now[1] - start[1]) * 100 / total:.0f} %" if total > 0 else "n/a"


def machine() -> str:
    return (
        f"{time.strftime('%Y-%m-%d')} · {platform.machine()} · {os.cpu_count()} cores · "
        f"Python {platform.python_version()} · load avg {os.getloadavg()[0]:.1f}"
    )


def fmt(x: float, digits: int = 0) -> str:
    return f"{x:,.{digits}f}"


# -- lean raw-socket client (search.py, mixed.py) --------------------------------------------
def request_bytes(port: int, path: str, token: str, body: bytes) -> bytes:
    """A whole pre-encoded HTTP/1.1 POST (head and body) for ``RawConn.send``."""
    head = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        + (f"Authorization: Bearer {token}\r\n" if token else "")
        + f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


def content_length(head: bytes) -> int:
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value)
    raise RuntimeError(f"no content-length in {head[:200]!r}")


class RawConn:
    """One keep-alive socket, pre-encoded requests, minimal response parsing: the least client
    CPU per request that HTTP/1.1 allows from Python."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""

    def send(self, req: bytes) -> tuple[int, bytes]:
        self.sock.sendall(req)
        buf = self.buf
        while (end := buf.find(b"\r\n\r\n")) < 0:
            buf += self.sock.recv(65536)
        head = buf[:end]
        need = end + 4 + content_length(head)
        while len(buf) < need:
            buf += self.sock.recv(max(65536, need - len(buf)))
        self.buf = buf[need:]
        return int(head[9:12]), buf[end + 4 : need]

    def close(self) -> None:
        self.sock.close()


# -- the floor -------------------------------------------------------------------------------
class Floor:
    """``bench/floor_server.py`` as a subprocess: a trivial aiohttp endpoint (one route, POST
    ``/v1/databases/{db}/search``) that reads the body and answers a fixed 10-result body."""

    def __init__(self, uvloop: bool = False) -> None:
        self.port = free_port()
        cmd = [sys.executable, os.path.join(ROOT, "bench", "floor_server.py"), str(self.port)]
        self.proc = subprocess.Popen(cmd + (["--uvloop"] if uvloop else []))
        self.base = f"http://127.0.0.1:{self.port}"
        self.path = "/v1/databases/floor/search"  # its only route
        for _ in range(500):
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.02)
        raise RuntimeError("floor server did not start")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait()


# -- single-vector writes (writes.py, mixed.py) ----------------------------------------------
@dataclass
class WriteRun:
    """One run of single-vector writes. Times are ``time.monotonic()`` (one clock for every
    process on the machine), so a search in another process can be ordered against them."""

    rows: NDArray[np.int64]  # the row of each acknowledged write (its id is ``v<row>``)
    sent: NDArray[np.float64]  # when its request was sent
    acked: NDArray[np.float64]  # when its answer arrived
    errors: int
    elapsed: float
    first_error: str = ""
    started: float = 0.0  # monotonic, when the clock started

    @property
    def latencies(self) -> list[float]:
        return (self.acked - self.sent).tolist()  # type: ignore[no-any-return]


def values_json(vectors: F32) -> list[bytes]:
    """Each row's JSON list, encoded once before any clock starts."""
    return [orjson.dumps(v, option=orjson.OPT_SERIALIZE_NUMPY) for v in vectors]


async def single_writes(
    url: str,
    token: str,
    values: list[bytes],
    first_row: int,
    clients: int,
    seconds: float,
    *,
    ok: int = 201,
    ready: Callable[[], None] | None = None,
) -> WriteRun:
    """``clients`` aiohttp tasks, each its own keep-alive connection, POST one vector per
    request to ``url`` for ``seconds`` (or until ``values`` runs out). Write ``i`` has the id
    ``v<first_row + i>`` and the values ``values[i]``. ``ready()`` is called once the
    connections are open, just before the clock starts. A status other than ``ok`` is an error
    (counted, the first one kept), never an exception."""
    import aiohttp  # the client of the write benchmarks only

    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    rows: list[int] = []
    sent: list[float] = []
    acked: list[float] = []
    errors = 0
    first_error = ""
    next_i = 0
    deadline = 0.0

    async def one(session: aiohttp.ClientSession) -> None:
        nonlocal next_i, errors, first_error
        while next_i < len(values):
            t0 = time.monotonic()
            if t0 >= deadline:
                return
            i = next_i
            next_i += 1
            body = b'{"id":"v%d","values":%s}' % (first_row + i, values[i])
            async with session.post(url, data=body, headers=headers) as r:
                text = await r.read()
                status = r.status
            t1 = time.monotonic()
            if status == ok:
                rows.append(first_row + i)
                sent.append(t0)
                acked.append(t1)
            else:
                errors += 1
                first_error = first_error or f"{status} {text[:200]!r}"

    conn = aiohttp.TCPConnector(limit=clients, force_close=False)
    async with aiohttp.ClientSession(connector=conn) as session:
        # open every connection before the clock starts
        async def warm() -> None:
            async with session.get(url.split("/v1/")[0] + "/health") as r:
                await r.read()

        await asyncio.gather(*(warm() for _ in range(clients)))
        if ready is not None:
            ready()
        t0 = time.monotonic()
        deadline = t0 + seconds
        await asyncio.gather(*(one(session) for _ in range(clients)))
        elapsed = time.monotonic() - t0
    return WriteRun(np.asarray(rows, dtype=np.int64), np.asarray(sent, dtype=np.float64),
                    np.asarray(acked, dtype=np.float64), errors, elapsed, first_error, t0)


# -- index lag from /metrics (writes.py, mixed.py) -------------------------------------------
GROUP_COMMIT = "jadevectordb_wal_group_commit_size"
LAG_RECORDS = "jadevectordb_index_lag_records"
LAG_SECONDS = "jadevectordb_index_lag_seconds"


def metric_samples(metrics_text: str, name: str) -> list[float]:
    """The values of every series of ``name`` (any labels) in /metrics text; [] when absent."""
    out = []
    for line in metrics_text.splitlines():
        if line.startswith(name) and line[len(name) : len(name) + 1] in (" ", "{"):
            try:
                out.append(float(line.rsplit(None, 1)[-1]))
            except ValueError:
                pass
    return out


def index_lag(metrics_text: str) -> tuple[float, float] | None:
    """(records, seconds) the indexes are behind the log — the largest over all series (one per
    database) — or None while the server does not export the gauges."""
    recs = metric_samples(metrics_text, LAG_RECORDS)
    secs = metric_samples(metrics_text, LAG_SECONDS)
    if not recs and not secs:
        return None
    return max(recs, default=float("nan")), max(secs, default=float("nan"))


@dataclass
class LagStats:
    samples: int
    records_max: float
    records_mean: float
    seconds_max: float
    seconds_mean: float


class LagSampler:
    """A thread that reads /metrics every ``interval`` seconds (its own connection) and keeps
    (monotonic time, lag records, lag seconds). ``present`` is False while the server does not
    export the lag gauges; every figure is then "n/a"."""

    def __init__(self, base: str, interval: float = 0.1) -> None:
        self.base, self.interval = base, interval
        self.samples: list[tuple[float, float, float]] = []
        self.present = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="lag-sampler", daemon=True)

    def start(self) -> LagSampler:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        c = Client(self.base)
        try:
            tick = time.monotonic()
            while not self._stop.is_set():
                t = time.monotonic()
                status, text = c.raw("GET", "/metrics")
                lag = index_lag(text.decode()) if status == 200 else None
                if lag is not None:
                    self.present = True
                    self.samples.append((t, lag[0], lag[1]))
                tick += self.interval
                self._stop.wait(max(0.0, tick - time.monotonic()))
        finally:
            c.close()

    def between(self, t0: float, t1: float) -> LagStats | None:
        """Max and mean of the samples taken in [t0, t1] (monotonic), None if there are none."""
        got = [(r, s) for t, r, s in list(self.samples) if t0 <= t <= t1]
        if not got:
            return None
        recs = np.asarray([r for r, _ in got])
        secs = np.asarray([s for _, s in got])
        return LagStats(len(got), float(recs.max()), float(recs.mean()), float(secs.max()),
                        float(secs.mean()))


def wait_caught_up(
    base: str, since: float | None = None, timeout: float = 120.0, poll: float = 0.01
) -> float | None:
    """Seconds from ``since`` (``time.monotonic()``; default now) until /metrics says the
    indexes are 0 records behind the log, polled every ``poll`` s; None when the server does not
    export the lag gauge, ``inf`` when ``timeout`` passed first."""
    c = Client(base)
    start = time.monotonic()
    t0 = start if since is None else since
    try:
        while True:
            status, text = c.raw("GET", "/metrics")
            lag = index_lag(text.decode()) if status == 200 else None
            if lag is None:
                return None
            if lag[0] == 0:
                return time.monotonic() - t0
            if time.monotonic() - start > timeout:
                return float("inf")
            time.sleep(poll)
    finally:
        c.close()


def group_commit(base: str) -> tuple[float, float]:
    """(sum, count) of the server's requests-per-durable-commit histogram."""
    c = Client(base)
    try:
        status, text = c.raw("GET", "/metrics")
    finally:
        c.close()
    return metric_sum_count(text.decode(), GROUP_COMMIT) if status == 200 else (0.0, 0.0)


def lag_cells(stats: LagStats | None, present: bool) -> list[str]:
    """Table cells: lag records max, mean; lag seconds max, mean ("n/a" without the gauges)."""
    if not present or stats is None:
        return ["n/a"] * 4
    return [fmt(stats.records_max), fmt(stats.records_mean), f"{stats.seconds_max:.3f}",
            f"{stats.seconds_mean:.3f}"]


def catch_up_cell(seconds: float | None) -> str:
    if seconds is None:
        return "n/a"
    return "timed out" if seconds == float("inf") else f"{seconds:.2f}"


def post_retrying(c: Client, path: str, body: bytes, pause: float = 0.05) -> int:
    """POST until 201; a 503 (``index_behind``: the index is ``index.lag_max_vectors`` behind
    the log) is retried after ``pause`` s. Returns how many times it was refused."""
    refused = 0
    while True:
        status, text = c.raw("POST", path, body)
        if status == 201:
            return refused
        if status != 503 or b"index_behind" not in text:
            raise HttpError(f"POST {path} -> {status} {text[:300]!r}")
        refused += 1
        time.sleep(pause)


# the efSearch sweep search.py and mixed.py choose their operating point from, and the recall
# that chooses it: one place, so the two scripts measure at the same point
EFS_SWEEP = (10, 16, 20, 24, 32, 40, 48, 64, 96, 128)
TARGET_RECALL = 0.95
