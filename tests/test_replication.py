"""Read replicas (DESIGN.md "Replication", issue 6), with real ``jade serve`` subprocesses on
loopback ports: convergence under concurrent writes, credentials from the primary on replicas,
refused writes, read-your-writes by LSN, lag on both sides, bootstrap from a snapshot after the
primary truncated its log, promotion and epoch fencing.

The helpers at the top (``Node``, ``bootstrap_auth``, ``wait_converged``, ``digest``...) are also
used by ``test_replication_faults.py``.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson
import pytest

from tests.conftest import Api, ServerProcess
from wal.lmdbenv import Env
from wal.log import Log
from wal.stream import length, parse

SECRET = "replication-tests-shared-jwt-secret-0123456789"
ADMIN_PASSWORD = "Admin_Secure123@"
REPL_PASSWORD = "Repl_Secure123@"
USER_PASSWORD = "PyTest_Secure123@"
DIM = 8


# -- processes --------------------------------------------------------------------------------
class Node:
    """One ``jade serve`` subprocess with its own data directory (a primary or a replica)."""

    def __init__(self, root: str, name: str, *, port: int | None = None, follow: str = "",
                 key: str = "", env: dict[str, str] | None = None) -> None:
        self.name = name
        self.dir = os.path.join(root, name)
        os.makedirs(self.dir, exist_ok=True)
        self.extra = {"JWT_SECRET": SECRET, "JADEVECTORDB_READ_WAIT_SECONDS": "1",
                      **(env or {})}
        self.proc = ServerProcess(os.path.join(self.dir, "data"), port, self.extra)
        self.key = key
        self.follow(follow, key)

    def follow(self, url: str, key: str = "") -> None:
        """Follow ``url`` from the next start on ("" = run as a primary)."""
        self.key = key or self.key
        for k in ("JADEVECTORDB_PRIMARY_URL", "JADEVECTORDB_REPLICATION_KEY",
                  "JADEVECTORDB_REPLICA_ID"):
            self.proc.env.pop(k, None)
        if url:
            self.proc.env.update({"JADEVECTORDB_PRIMARY_URL": url,
                                  "JADEVECTORDB_REPLICATION_KEY": self.key,
                                  "JADEVECTORDB_REPLICA_ID": self.name})

    @property
    def base(self) -> str:
        return self.proc.base

    @property
    def port(self) -> int:
        return self.proc.port

    @property
    def data_dir(self) -> str:
        return self.proc.data_dir

    @property
    def alive(self) -> bool:
        return self.proc.proc is not None and self.proc.proc.poll() is None

    def start(self) -> Node:
        self.proc.start()
        return self

    async def astart(self) -> Node:
        await asyncio.to_thread(self.proc.start)
        return self

    def kill(self) -> None:
        """SIGKILL (kill -9) and reap."""
        if self.alive:
            self.proc.kill()

    def stop(self) -> None:
        """SIGTERM: drain and close cleanly."""
        if self.alive:
            self.proc.stop()

    def log_text(self) -> str:
        path = os.path.join(self.dir, f"server-{self.port}.log")
        try:
            with open(path, errors="replace") as fh:
                return fh.read()
        except FileNotFoundError:
            return ""


def call(base: str, method: str, path: str, body: Any = None, token: str = "",
         timeout: float = 15.0) -> tuple[int, Any]:
    """A blocking JSON call (for sync fixtures)."""
    data = orjson.dumps(body) if body is not None else None
    req = urllib.request.Request(base + path, data=data, method=method)
    req.add_header("Content-Type", "application/json")
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            raw = resp.read()
            return resp.status, orjson.loads(raw) if raw else None
    except urllib.error.HTTPError as exc:
        raw = exc.read()
        return exc.code, orjson.loads(raw) if raw else None


@dataclass
class Creds:
    admin_token: str  # issued by the primary (a session record: replicates)
    repl_key: str  # API key of a user with the replicator role
    user_token: str  # a plain user's session
    user_key: str  # that user's API key
    user_id: str


def bootstrap_auth(base: str) -> Creds:
    """On an empty primary: an admin, a replicator with an API key, a plain user with a key."""
    st, body = call(base, "POST", "/v1/auth/register",
                    {"username": "admin", "password": ADMIN_PASSWORD, "is_admin": True})
    assert st == 201 and "admin" in body["roles"], body
    st, body = call(base, "POST", "/v1/auth/login",
                    {"username": "admin", "password": ADMIN_PASSWORD})
    assert st == 200, body
    admin = body["token"]
    st, body = call(base, "POST", "/v1/users", {"username": "replicator",
                    "password": REPL_PASSWORD, "roles": ["replicator"]}, admin)
    assert st == 201 and body["roles"] == ["replicator"], body
    st, body = call(base, "POST", "/v1/api-keys",
                    {"user_id": body["user_id"], "description": "replication"}, admin)
    assert st == 201, body
    repl_key = body["api_key"]
    st, body = call(base, "POST", "/v1/auth/register",
                    {"username": "tester", "password": USER_PASSWORD, "email": "t@example.com"})
    assert st == 201, body
    uid = body["user_id"]
    st, body = call(base, "POST", "/v1/auth/login",
                    {"username": "tester", "password": USER_PASSWORD})
    assert st == 200, body
    user_token = body["token"]
    st, body = call(base, "POST", "/v1/api-keys", {"user_id": uid, "description": "t"},
                    user_token)
    assert st == 201, body
    return Creds(admin, repl_key, user_token, body["api_key"], uid)


def read_log(data_dir: str) -> tuple[int, list[bytes]]:
    """(first LSN, every record's stored bytes) of a stopped node's log."""
    env = Env(os.path.join(data_dir, "jadevectordb.db"), readonly=True)
    try:
        wal = Log(env)
        recs = wal.read(0) if wal.first_lsn == 1 else wal.read(wal.first_lsn - 1)
        return wal.first_lsn, [r.encoded() for r in recs]
    finally:
        env.env.close()


def assert_logs_identical(primary_dir: str, replica_dir: str) -> int:
    """The replica holds exactly LSNs 1..N, each byte-identical to the primary's record."""
    p_first, p = read_log(primary_dir)
    r_first, r = read_log(replica_dir)
    assert p_first == 1 and r_first == 1
    assert len(r) == len(p), f"replica has {len(r)} records, primary {len(p)}"
    for i, (a, b) in enumerate(zip(p, r, strict=True)):
        assert a == b, f"record at LSN {i + 1} differs"
    return len(p)


# -- clients ----------------------------------------------------------------------------------
def client(session: aiohttp.ClientSession, base: str, token: str = "") -> Api:
    return Api(base, session, {"Authorization": f"Bearer {token}"} if token else {})


async def status(api: Api) -> dict[str, Any]:
    st, body = await api.get("/v1/replication/status")
    assert st == 200, body
    return dict(body)


async def wait_converged(primary: Api, replicas: list[Api], timeout: float = 30.0) -> int:
    """Wait until every replica streams and its applied LSN equals the primary's last LSN (and
    the primary did not move meanwhile); returns that LSN."""
    deadline = time.monotonic() + timeout
    seen: list[Any] = []
    last: Any = None
    while True:
        try:
            last = (await status(primary))["last_lsn"]
            seen = []
            for r in replicas:
                st, body = await r.get("/v1/replication/status")
                seen.append(body if st != 200 else
                            (body.get("applied_lsn"), body.get("state"), body.get("last_error")))
            if all(isinstance(s, tuple) and s[0] == last and s[1] == "streaming" for s in seen):
                if (await status(primary))["last_lsn"] == last:
                    return int(last)
        except (aiohttp.ClientError, AssertionError) as exc:
            seen = [repr(exc)]
        if time.monotonic() > deadline:
            raise AssertionError(f"replicas did not converge in {timeout}s: primary at "
                                 f"{last}, replicas {seen}")
        await asyncio.sleep(0.05)


async def last_lsn(api: Api) -> int:
    st, body = await api.get("/status")
    assert st == 200, body
    return int(body["log"]["last_lsn"])


async def digest(api: Api) -> dict[str, Any]:
    """Everything a client can see of the state: databases, all vectors, users, API keys, grants
    (without per-node counters such as key usage)."""
    out: dict[str, Any] = {}
    st, body = await api.get("/v1/databases?limit=100000")
    assert st == 200, body
    dbs = sorted(body["databases"], key=lambda d: d["databaseId"])
    out["databases"] = dbs
    for db in dbs:
        dbid = db["databaseId"]
        vectors: list[Any] = []
        offset = 0
        while True:
            st, page = await api.get(f"/v1/databases/{dbid}/vectors?limit=10000&offset={offset}")
            assert st == 200, page
            vectors += page["vectors"]
            offset += len(page["vectors"])
            if not page["vectors"] or offset >= page["total"]:
                break
        out[f"vectors:{dbid}"] = sorted(vectors, key=lambda v: v["id"])
        st, grants = await api.get(f"/v1/databases/{dbid}/grants")
        assert st == 200, grants
        out[f"grants:{dbid}"] = grants
    st, users = await api.get("/v1/users")
    assert st == 200, users
    out["users"] = users
    st, keys = await api.get("/v1/api-keys")
    assert st == 200, keys
    out["keys"] = [{k: v for k, v in key.items() if k not in ("usage_count", "last_used_at")}
                   for key in keys["api_keys"]]
    return out


async def searches(api: Api, dbids: list[str], queries: list[list[float]]) -> list[Any]:
    out = []
    for dbid in dbids:
        for q in queries:
            st, body = await api.post(f"/v1/databases/{dbid}/search",
                                      {"queryVector": q, "topK": 10, "includeMetadata": True})
            assert st == 200, body
            out.append(body["results"] if "results" in body else body)
    return out


def vec(rng: random.Random) -> list[float]:
    return [round(rng.uniform(-1, 1), 4) for _ in range(DIM)]


async def writer(api: Api, dbids: list[str], wid: int, ops: int, seed: int,
                 acked: set[str] | None = None, tolerate_errors: bool = False,
                 until: float | None = None, stop: asyncio.Event | None = None) -> int:
    """A mixed stream of writes against the primary: single and batch inserts, updates,
    deletes. Returns how many succeeded. ``acked`` collects the ids whose insert was answered
    201 (and drops those whose delete was); with ``tolerate_errors`` failed writes (a primary
    being killed) are skipped. ``until``: stop at this ``time.monotonic()``; ``stop``: stop
    once this event is set."""
    rng = random.Random(seed)
    mine: list[tuple[str, str]] = []
    done = 0
    for i in range(ops):
        if (until is not None and time.monotonic() > until) or (stop and stop.is_set()):
            break
        dbid = rng.choice(dbids)
        r = rng.random()
        new: list[str] = []
        try:
            if r < 0.5 or not mine:
                vid = f"w{wid}-{i}"
                st, body = await api.post(f"/v1/databases/{dbid}/vectors", {
                    "id": vid, "values": vec(rng), "metadata": {"w": wid, "i": i}})
                ok, new = st == 201, [vid]
            elif r < 0.7:
                items: list[dict[str, Any]] = [{"id": f"w{wid}-{i}-{j}", "values": vec(rng),
                          "metadata": {"w": wid, "b": i}} for j in range(5)]
                st, body = await api.post(f"/v1/databases/{dbid}/vectors/batch",
                                          {"vectors": items})
                ok, new = st == 201, [it["id"] for it in items]
            elif r < 0.9:
                dbid, vid = rng.choice(mine)
                st, body = await api.put(f"/v1/databases/{dbid}/vectors/{vid}",
                                         {"values": vec(rng), "metadata": {"u": i}})
                ok = st == 200
            else:
                dbid, vid = mine.pop(rng.randrange(len(mine)))
                if acked is not None:
                    acked.discard(vid)  # from now on it may be gone (even if the call fails)
                st, body = await api.delete(f"/v1/databases/{dbid}/vectors/{vid}")
                ok = st == 200
        except (TimeoutError, aiohttp.ClientError):
            if not tolerate_errors:
                raise
            await asyncio.sleep(0.05)
            continue
        if not ok:
            if not tolerate_errors:
                raise AssertionError(f"write failed: {st} {body}")
            continue
        done += 1
        mine += [(dbid, v) for v in new]
        if acked is not None:
            acked.update(new)
    return done


async def make_dbs(api: Api) -> list[str]:
    ids = []
    for name, kind in (("hnsw", "HNSW"), ("flat", "FLAT")):
        st, body = await api.post("/v1/databases", {"name": name, "vectorDimension": DIM,
                                                    "indexType": kind})
        assert st == 201, body
        ids.append(body["databaseId"])
    return ids


# -- a primary and two replicas shared by the first tests ---------------------------------------
@dataclass
class Trio:
    primary: Node
    replicas: list[Node]
    creds: Creds


@pytest.fixture(scope="module")
def trio(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Trio]:
    root = str(tmp_path_factory.mktemp("trio"))
    primary = Node(root, "primary").start()
    nodes = [primary]
    try:
        creds = bootstrap_auth(primary.base)
        for name in ("r1", "r2"):
            nodes.append(Node(root, name, follow=primary.base, key=creds.repl_key).start())
        yield Trio(primary, nodes[1:], creds)
    finally:
        for n in nodes:
            n.stop()


async def test_two_replicas_converge_under_concurrent_writes(trio: Trio) -> None:
    async with aiohttp.ClientSession() as s:
        p = client(s, trio.primary.base, trio.creds.admin_token)
        reps = [client(s, r.base, trio.creds.admin_token) for r in trio.replicas]
        dbids = await make_dbs(p)
        # a user, a key and a grant made while the vectors flow: the auth side replicates too
        st, u = await p.post("/v1/users", {"username": "reader", "password": USER_PASSWORD})
        assert st == 201, u
        writes = asyncio.gather(*(writer(p, dbids, w, 40, seed=w) for w in range(4)))
        grant, key = await asyncio.gather(
            p.post(f"/v1/databases/{dbids[0]}/grants",
                   {"user_id": u["user_id"], "permission": "read"}),
            p.post("/v1/api-keys", {"user_id": u["user_id"], "description": "reader"}),
        )
        assert sum(await writes) == 160
        assert grant[0] == 201 and key[0] == 201

        lsn = await wait_converged(p, reps)
        assert lsn > 160
        digests = [await digest(api) for api in (p, *reps)]
        assert sum(len(v) for k, v in digests[0].items() if k.startswith("vectors:")) > 100
        assert any(x["username"] == "reader" for x in digests[0]["users"]["users"])
        assert digests[1] == digests[0]
        assert digests[2] == digests[0]
        assert [await last_lsn(api) for api in (p, *reps)] == [lsn] * 3  # all at one LSN

        rng = random.Random(7)
        queries = [vec(rng) for _ in range(5)]
        found = [await searches(api, dbids, queries) for api in (p, *reps)]
        assert found[0] and all(found[0])
        assert found[1] == found[0] and found[2] == found[0]

        # the primary lists both replicas with their acknowledged LSNs (acks reach it when idle)
        deadline = time.monotonic() + 5
        while True:
            listed = {r["replica_id"]: r for r in (await status(p))["replicas"]}
            if all(listed.get(n.name, {}).get("applied_lsn") == lsn for n in trio.replicas):
                break
            assert time.monotonic() < deadline, listed
            await asyncio.sleep(0.1)
        for n in trio.replicas:
            assert listed[n.name]["connected"] is True
            assert listed[n.name]["lag_records"] == 0

        # lag on the replica side: status and metrics
        for api in reps:
            st_ = await status(api)
            assert st_["role"] == "replica" and st_["state"] == "streaming"
            assert st_["primary_lsn"] == lsn and st_["lag_records"] == 0
            assert st_["reseeds"] == 0
            st, metrics = await api.get("/metrics")
            assert st == 200
            assert "jadevectordb_replication_lag_records 0.0" in metrics
            assert "jadevectordb_replication_lag_seconds 0.0" in metrics
            assert f"jadevectordb_replication_applied_lsn {float(lsn)}" in metrics
            st, body = await api.get("/status")
            assert body["role"] == "replica" and body["log"]["last_lsn"] == lsn
        st, metrics = await p.get("/metrics")
        assert 'jadevectordb_replication_replica_lag_records{replica="r1"}' in metrics


async def test_primary_credentials_work_on_replicas_and_writes_are_refused(trio: Trio) -> None:
    c = trio.creds
    async with aiohttp.ClientSession() as s:
        p = client(s, trio.primary.base, c.admin_token)
        st, db = await client(s, trio.primary.base, c.user_token).post(
            "/v1/databases", {"name": "mine", "vectorDimension": DIM})
        assert st == 201, db
        await wait_converged(p, [client(s, r.base, c.admin_token) for r in trio.replicas])
        for r in trio.replicas:
            for cred in (c.admin_token, c.user_token, c.user_key):
                st, body = await client(s, r.base, cred).get(f"/v1/databases/{db['databaseId']}")
                assert st == 200, (r.name, body)
            st, body = await client(s, r.base, c.user_key).get("/v1/databases")
            assert st == 200 and db["databaseId"] in [d["databaseId"] for d in body["databases"]]
            st, body = await client(s, r.base, "not-a-valid-token").get("/v1/databases")
            assert st == 401, body

            # writes (and login, which writes a session record) go to the primary
            for api, path, payload in (
                (client(s, r.base, c.user_token), f"/v1/databases/{db['databaseId']}/vectors",
                 {"id": "x", "values": [0.0] * DIM}),
                (client(s, r.base, c.admin_token), "/v1/databases",
                 {"name": "no", "vectorDimension": DIM}),
                (client(s, r.base), "/v1/auth/login",
                 {"username": "admin", "password": ADMIN_PASSWORD}),
            ):
                st, body = await api.post(path, payload)
                assert st == 503 and body["error"] == "not_primary", body
                assert body["primary"] == trio.primary.base

            # the replicator key may stream and nothing else
            repl = client(s, r.base, c.repl_key)
            st, body = await repl.get("/v1/databases")
            assert st == 403 and body["error"] == "permission_denied", body
        repl = client(s, trio.primary.base, c.repl_key)
        for path in ("/v1/databases", "/v1/users", "/status"):
            st, body = await repl.get(path)
            assert st == 403, (path, body)
        st, body = await repl.post("/v1/databases", {"name": "no", "vectorDimension": DIM})
        assert st == 403, body
        frame = await first_frame(s, trio.primary.base, c.repl_key)
        assert frame["t"] == "hello" and frame["epoch"] == 1 and frame["primary_lsn"] > 0
        # the probe registered as a replica (holding truncation) until an admin forgets it
        assert "probe" in [x["replica_id"] for x in (await status(p))["replicas"]]
        st, body = await p.delete("/v1/replication/replicas/probe")
        assert st == 200, body
        assert "probe" not in [x["replica_id"] for x in (await status(p))["replicas"]]
        st, body = await p.delete("/v1/replication/replicas/probe")
        assert st == 404, body
        for cred in (c.user_token, c.user_key):
            st, body = await client(s, trio.primary.base, cred).get(
                "/v1/replication/stream?after=0&replica_id=intruder")
            assert st == 403, body
        st, body = await client(s, trio.primary.base).get("/v1/replication/stream?after=0")
        assert st == 401, body
        st, body = await client(s, trio.primary.base, c.user_token).post(
            "/v1/replication/ack?replica_id=r1", {"applied_lsn": 10**9})
        assert st == 403, body


async def first_frame(s: aiohttp.ClientSession, base: str, key: str) -> dict[str, Any]:
    async with s.get(base + "/v1/replication/stream",
                     params={"after": "0", "replica_id": "probe"},
                     headers={"Authorization": f"Bearer {key}"}) as resp:
        assert resp.status == 200, await resp.text()
        header = await resp.content.readexactly(4)
        return parse(await resp.content.readexactly(length(header)))


async def test_read_your_writes_with_min_lsn(trio: Trio) -> None:
    c = trio.creds
    async with aiohttp.ClientSession() as s:
        p = client(s, trio.primary.base, c.admin_token)
        reps = [client(s, r.base, c.admin_token) for r in trio.replicas]
        st, db = await p.post("/v1/databases", {"name": "ryw", "vectorDimension": DIM})
        assert st == 201
        dbid = db["databaseId"]
        await wait_converged(p, reps)

        # a read asking for the NEXT LSN waits on the replica until the write arrives
        nxt = await last_lsn(p) + 1
        reads = [asyncio.create_task(r.get(f"/v1/databases/{dbid}/vectors/v1",
                                           headers={"X-Min-LSN": str(nxt)})) for r in reps]
        await asyncio.sleep(0.2)
        assert not any(t.done() for t in reads)
        st, body = await p.post(f"/v1/databases/{dbid}/vectors",
                                {"id": "v1", "values": [0.5] * DIM, "metadata": {"k": 1}})
        assert st == 201
        for t in reads:
            st, body = await t
            assert st == 200 and body["metadata"] == {"k": 1}, body

        # write, read the primary's LSN, read elsewhere with it (header or query parameter)
        for i in range(5):
            st, _ = await p.put(f"/v1/databases/{dbid}/vectors/v1",
                                {"values": [float(i)] * DIM, "metadata": {"k": i + 10}})
            assert st == 200
            lsn = await last_lsn(p)
            api = reps[i % 2]
            if i % 3 == 0:
                st, body = await api.get(f"/v1/databases/{dbid}/vectors/v1?min_lsn={lsn}")
            else:
                st, body = await api.get(f"/v1/databases/{dbid}/vectors/v1",
                                         headers={"X-Min-LSN": str(lsn)})
            assert st == 200 and body["metadata"] == {"k": i + 10}, body

        # the write itself answers its LSN (X-LSN): read-your-writes without asking for it
        async with s.put(f"{trio.primary.base}/v1/databases/{dbid}/vectors/v1",
                         json={"values": [9.0] * DIM, "metadata": {"k": 99}},
                         headers={"Authorization": f"Bearer {c.admin_token}"}) as resp:
            assert resp.status == 200
            written = int(resp.headers["X-LSN"])
        assert written == await last_lsn(p)
        st, body = await reps[1].get(f"/v1/databases/{dbid}/vectors/v1",
                                     headers={"X-Min-LSN": str(written)})
        assert st == 200 and body["metadata"] == {"k": 99}, body

        # an LSN the replica will not reach in time: 503 with the replica's LSN, after the wait.
        # Only reps[1] was waited for above: let reps[0] catch up first, or a record it applies
        # during the wait changes the LSN the 503 reports.
        lsn = await wait_converged(p, reps)
        assert await last_lsn(reps[0]) == lsn
        t0 = time.monotonic()
        st, body = await reps[0].get(f"/v1/databases/{dbid}",
                                     headers={"X-Min-LSN": str(lsn + 10**6)})
        waited = time.monotonic() - t0
        assert st == 503 and body["error"] == "lsn_not_reached", body
        assert body["lsn"] == lsn and body["wanted"] == lsn + 10**6
        assert 0.9 <= waited < 4, waited
        st, body = await reps[0].get(f"/v1/databases/{dbid}", headers={"X-Min-LSN": "soon"})
        assert st == 400, body


# -- bootstrap from a snapshot --------------------------------------------------------------
async def test_new_replica_bootstraps_from_snapshot_after_truncation(tmp_path: Any) -> None:
    root = str(tmp_path)
    primary = Node(root, "primary", env={"JADEVECTORDB_LOG_RETENTION_SECONDS": "1",
                                         "JADEVECTORDB_ARCHIVE_INTERVAL_SECONDS": "1"}).start()
    replica: Node | None = None
    try:
        creds = await asyncio.to_thread(bootstrap_auth, primary.base)
        async with aiohttp.ClientSession() as s:
            p = client(s, primary.base, creds.admin_token)
            dbids = await make_dbs(p)
            assert await writer(p, dbids, 0, 40, seed=1) == 40
            st, snap = await p.post("/v1/admin/snapshots")
            assert st == 201, snap
            assert await writer(p, dbids, 1, 40, seed=2) == 40
            deadline = time.monotonic() + 20
            # truncated past the snapshot (retention 1 s, archived every second: with archiving
            # on, a snapshot does not hold the log)
            while True:
                st, body = await p.get("/status")
                if body["log"]["first_lsn"] > snap["lsn"]:
                    break
                assert time.monotonic() < deadline, body["log"]
                await asyncio.sleep(0.2)

            replica = await Node(root, "fresh", follow=primary.base,
                                 key=creds.repl_key).astart()
            r = client(s, replica.base, creds.admin_token)
            lsn = await wait_converged(p, [r], timeout=40)
            st_ = await status(r)
            assert st_["reseeds"] >= 1, st_
            assert st_["state"] == "streaming"
            assert "truncated" in st_["last_error"] or "truncated" in replica.log_text()
            assert await digest(r) == await digest(p)
            st, body = await r.get("/status")
            assert body["log"]["first_lsn"] > 1 and body["log"]["last_lsn"] == lsn

            # and it keeps following
            assert await writer(p, dbids, 2, 20, seed=3) == 20
            await wait_converged(p, [r])
            assert await digest(r) == await digest(p)
            # its position is now registered and holds the primary's truncation
            listed = {x["replica_id"]: x for x in (await status(p))["replicas"]}
            assert "fresh" in listed

            # a re-seed interrupted by kill -9 (its marker left behind) starts over on restart
            replica.kill()
            marker = os.path.join(replica.data_dir, ".reseed-in-progress")
            with open(marker, "w") as fh:
                fh.write("interrupted")
            await replica.astart()
            await wait_converged(p, [r], timeout=40)
            st_ = await status(r)
            assert st_["reseeds"] == 1 and "interrupted" in st_["last_error"], st_
            assert not os.path.exists(marker)
            assert await digest(r) == await digest(p)

            # a registered replica's position holds the primary's log truncation, even while it
            # is down; forgetting it releases the log
            held = await wait_converged(p, [r])
            deadline = time.monotonic() + 5
            while {x["replica_id"]: x for x in (await status(p))["replicas"]}[
                    "fresh"]["applied_lsn"] != held:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.1)
            replica.kill()
            assert await writer(p, dbids, 4, 20, seed=4) == 20
            st, snap2 = await p.post("/v1/admin/snapshots")
            assert st == 201 and snap2["lsn"] == held + 20
            st, snaps = await p.get("/v1/admin/snapshots")
            for old in snaps["snapshots"]:  # only the replica may hold the log back now
                if old["name"] != snap2["name"]:
                    st, body = await p.delete(f"/v1/admin/snapshots/{old['name']}")
                    assert st == 200, body
            await asyncio.sleep(2.5)  # retention 1 s, archive and truncation every second
            st, body = await p.get("/status")
            assert body["log"]["first_lsn"] == held + 1, (body["log"], held)
            st, body = await p.delete("/v1/replication/replicas/fresh")
            assert st == 200, body
            deadline = time.monotonic() + 10
            while (await p.get("/status"))[1]["log"]["first_lsn"] <= held + 1:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.2)
    finally:
        for n in (replica, primary):
            if n is not None:
                n.stop()


# -- promotion and fencing ------------------------------------------------------------------
async def test_promotion_fences_the_old_epoch_and_the_old_primary_reseeds(
        tmp_path: Any) -> None:
    root = str(tmp_path)
    old = Node(root, "old").start()
    nodes = [old]
    try:
        creds = await asyncio.to_thread(bootstrap_auth, old.base)
        key = creds.repl_key
        r1 = await Node(root, "r1", follow=old.base, key=key).astart()
        r2 = await Node(root, "r2", follow=old.base, key=key).astart()
        nodes += [r1, r2]
        async with aiohttp.ClientSession() as s:
            tok = creds.admin_token
            o, a1, a2 = (client(s, n.base, tok) for n in (old, r1, r2))
            dbids = await make_dbs(o)
            assert await writer(o, dbids, 0, 30, seed=11) == 30
            fork = await wait_converged(o, [a1, a2])

            # promote r1: a new epoch, a system.promote record, writes accepted
            st, body = await a1.post("/v1/admin/promote")
            assert st == 200, body
            assert body["role"] == "primary" and body["epoch"] == 2 and body["lsn"] == fork + 1
            st, again = await a1.post("/v1/admin/promote")
            assert st == 409 and again["error"] == "already_primary", again
            st_ = await status(a1)
            assert st_["role"] == "primary" and st_["epoch"] == 2 and st_["last_lsn"] == fork + 1
            assert await writer(a1, dbids, 1, 20, seed=12) == 20
            st, body = await a1.get("/status")
            assert body["role"] == "primary" and body["log"]["epoch"] == 2

            # r2 (at the fork point) now follows the promoted node: no re-seed needed
            await asyncio.to_thread(r2.stop)
            r2.follow(r1.base)
            await r2.astart()
            new_lsn = await wait_converged(a1, [a2])
            st_ = await status(a2)
            assert st_["epoch"] == 2 and st_["reseeds"] == 0, st_
            assert await digest(a2) == await digest(a1)

            # the old primary (epoch 1) still takes writes: its history forks from the new one
            assert await writer(o, dbids, 2, 10, seed=13) == 10
            diverged = await last_lsn(o)
            assert diverged > fork

            # a follower of epoch 2 refuses the epoch-1 primary: fenced, nothing applied
            await asyncio.to_thread(r2.stop)
            r2.follow(old.base)
            await r2.astart()
            deadline = time.monotonic() + 15
            while (st_ := await status(a2))["state"] != "fenced":
                assert time.monotonic() < deadline, st_
                await asyncio.sleep(0.1)
            assert "epoch" in st_["last_error"], st_
            assert await last_lsn(a2) == new_lsn
            await asyncio.sleep(1.0)
            assert (await status(a2))["state"] == "fenced" and await last_lsn(a2) == new_lsn
            st, body = await a2.get(f"/v1/databases/{dbids[0]}/vectors/w2-0")
            assert st == 404, body

            # the old primary restarted as a replica of the new one: diverged -> it refuses its
            # own history, says why, re-seeds from the new primary and converges
            await asyncio.to_thread(old.stop)
            old.follow(r1.base, key)
            await old.astart()
            await wait_converged(a1, [o], timeout=40)
            st_ = await status(o)
            assert st_["role"] == "replica" and st_["reseeds"] >= 1 and st_["epoch"] == 2, st_
            assert "diverge" in st_["last_error"] or "ahead" in st_["last_error"], st_
            assert await digest(o) == await digest(a1)
            st, body = await o.get(f"/v1/databases/{dbids[0]}/vectors/w2-0")
            assert st == 404, body  # the fork's writes are gone
            st, body = await o.post(f"/v1/databases/{dbids[0]}/vectors",
                                    {"id": "z", "values": [0.0] * DIM})
            assert st == 503 and body["error"] == "not_primary" and body["primary"] == r1.base

            # the new primary keeps replicating to its new follower
            assert await writer(a1, dbids, 3, 10, seed=14) == 10
            await wait_converged(a1, [o])
            assert await digest(o) == await digest(a1)
    finally:
        for n in nodes:
            n.stop()
