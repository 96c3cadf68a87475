"""Automatic failover through etcd (issue 19): three ``jade serve`` subprocesses and a real etcd.

- Failover: steady writes, SIGKILL the primary; a new primary is elected within a bound, the old
  one restarted rejoins as a replica, all nodes converge to equal digests, and every write
  acknowledged is either in the cluster's state or (asynchronous mode's risk) among the old
  primary's records moved aside to its ``diverged`` file, never silently gone.
- Partition: the primary reaches etcd through a TCP proxy that is cut; it stops acknowledging
  writes before half the lease TTL has passed, a replica is elected, no epoch has writes
  acknowledged by two nodes (an ack ledger per node, checked against the final log), and the
  old primary rejoins as a replica once the proxy heals.
"""

from __future__ import annotations

import asyncio
import base64
import glob
import os
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson
import pytest

from replica.etcd import Etcd
from tests.etcd_server import ETCD, EtcdServer
from tests.tcp_proxy import TcpProxy
from tests.test_replication import DIM, Node, bootstrap_auth, client, digest, read_log
from wal.codec import decode

pytestmark = [pytest.mark.crash, pytest.mark.skipif(
    ETCD is None, reason="etcd is not installed (Debian package etcd-server; `make test` "
    "installs it)")]

TTL = 2
CLUSTER = "t"
LEADER_KEY = f"/jadevectordb/{CLUSTER}/leader"


def cluster_node(root: str, name: str, coordinator: str, key: str = "pending",
                 ttl: int = TTL, sync: int = 0) -> Node:
    node = Node(root, name, env={
        "JADEVECTORDB_COORDINATOR": coordinator,
        "JADEVECTORDB_CLUSTER_NAME": CLUSTER,
        "JADEVECTORDB_NODE_ID": name,
        "JADEVECTORDB_LEASE_TTL_SECONDS": str(ttl),
        "JADEVECTORDB_SYNCHRONOUS_REPLICAS": str(sync),
    })
    node.proc.env["JADEVECTORDB_REPLICATION_KEY"] = key  # (Node.follow drops it)
    return node


async def leader_of(etcd: Etcd) -> dict[str, Any]:
    kv = await etcd.get(LEADER_KEY)
    return dict(orjson.loads(kv.value)) if kv is not None else {}


async def wait_leader(etcd: Etcd, *, not_node: str = "", timeout: float = 20.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        lead = await leader_of(etcd)
        if lead and lead.get("node_id") != not_node:
            return lead
        assert time.monotonic() < deadline, f"no leader elected in {timeout}s"
        await asyncio.sleep(0.05)


@dataclass
class Ack:
    node: str  # the URL that answered 201
    vid: str
    lsn: int
    sent: float  # monotonic, when the request was sent
    received: float


@dataclass
class Ledger:
    acks: list[Ack] = field(default_factory=list)
    refusals: list[tuple[str, float]] = field(default_factory=list)  # 503 not_primary

    def by_node(self, url: str) -> list[Ack]:
        return [a for a in self.acks if a.node == url]


async def cluster_writer(session: aiohttp.ClientSession, urls: list[str], token: str, dbid: str,
                         wid: int, stop: asyncio.Event, ledger: Ledger) -> None:
    """Inserts until ``stop``; follows the primary as a client would: a 503 not_primary names it
    (``X-Primary-Url``), a node that does not answer makes it try the next one."""
    target = urls[0]
    i = 0
    h = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    while not stop.is_set():
        vid = f"w{wid}-{i}"
        body = orjson.dumps({"id": vid, "values": [float(i % 7), float(wid)] + [0.5] * (DIM - 2)})
        t0 = time.monotonic()
        try:
            async with session.post(f"{target}/v1/databases/{dbid}/vectors", data=body,
                                    headers=h, timeout=aiohttp.ClientTimeout(total=3)) as r:
                payload = await r.json(content_type=None)
                if r.status == 201:
                    ledger.acks.append(Ack(target, vid, int(r.headers["X-LSN"]), t0,
                                           time.monotonic()))
                    i += 1
                    continue
                if r.status == 503 and payload.get("error") == "not_primary":
                    ledger.refusals.append((target, t0))
                    hint = r.headers.get("X-Primary-Url") or payload.get("primary")
                    target = hint if hint and hint != target else _next(urls, target)
                i += 1  # a refused or failed id is never reused (it may be in the log)
        except (TimeoutError, aiohttp.ClientError):
            target = _next(urls, target)
            i += 1
        await asyncio.sleep(0.03)


def _next(urls: list[str], url: str) -> str:
    return urls[(urls.index(url) + 1) % len(urls)] if url in urls else urls[0]


async def cluster_view(api: Any) -> dict[str, Any]:
    st, body = await api.get("/v1/cluster")
    assert st == 200, body
    return dict(body)


async def wait_role(api: Any, role: str, timeout: float = 30.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        try:
            view = await cluster_view(api)
            if view["role"] == role:
                return view
        except (aiohttp.ClientError, AssertionError):
            pass
        assert time.monotonic() < deadline, f"{api.base} did not become {role}"
        await asyncio.sleep(0.1)


async def converge(apis: list[Any], timeout: float = 60.0) -> dict[str, Any]:
    """Wait until every node is at the same LSN and their digests are equal; the digest."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        try:
            lsns = []
            for api in apis:
                st, body = await api.get("/status")
                lsns.append(body["log"]["last_lsn"] if st == 200 else None)
            if len(set(lsns)) == 1 and lsns[0] is not None:
                digests = [await digest(api) for api in apis]
                if all(d == digests[0] for d in digests):
                    return digests[0]
            last = lsns
        except (aiohttp.ClientError, AssertionError, KeyError) as exc:
            last = repr(exc)
        assert time.monotonic() < deadline, f"nodes did not converge: {last}"
        await asyncio.sleep(0.2)


async def start_cluster(root: str, coordinators: list[str], first: Node | None = None,
                        ttl: int = TTL, sync: int = 0) -> tuple[list[Node], Any]:
    """Node 0 starts alone and is elected; the others follow it."""
    # alone at first (its users are made before any replica exists: no synchronous wait)
    first = await (first or cluster_node(root, "n0", coordinators[0], ttl=ttl)).astart()
    nodes = [first]
    try:
        async with aiohttp.ClientSession() as s:
            etcd = Etcd(s, coordinators[-1])
            lead = await wait_leader(etcd)
            assert lead["node_id"] == "n0", lead
        creds = await asyncio.to_thread(bootstrap_auth, first.base)
        # the first node needs the replicator's key too (to follow, once it is not the
        # primary): restarted with it, alone, it is elected again
        first.proc.env["JADEVECTORDB_REPLICATION_KEY"] = creds.repl_key
        first.proc.env["JADEVECTORDB_SYNCHRONOUS_REPLICAS"] = str(sync)
        await asyncio.to_thread(first.stop)
        await first.astart()
        async with aiohttp.ClientSession() as s:
            lead = await wait_leader(Etcd(s, coordinators[-1]))
            assert lead["node_id"] == "n0", lead
        for i, coord in enumerate(coordinators[1:], start=1):
            node = cluster_node(root, f"n{i}", coord, creds.repl_key, ttl=ttl, sync=sync)
            if i == 2:  # the last node forwards the writes it receives to the primary
                node.proc.env["JADEVECTORDB_FORWARD_WRITES"] = "true"
            nodes.append(await node.astart())
    except BaseException:
        for n in nodes:
            n.kill()
        raise
    return nodes, creds


def diverged_ids(node: Node) -> set[str]:
    """Vector ids in the records the node moved aside when it rejoined."""
    out: set[str] = set()
    for path in glob.glob(os.path.join(node.data_dir, "diverged", "*.jsonl")):
        with open(path, "rb") as fh:
            for line in fh:
                rec = decode(base64.b64decode(orjson.loads(line)["raw"]))
                out.update(_ids(rec.body))
    return out


def _ids(obj: Any) -> set[str]:
    out: set[str] = set()
    if isinstance(obj, dict):
        if isinstance(obj.get("id"), str):
            out.add(obj["id"])
        if isinstance(obj.get("ids"), list):  # vec.upsert / vec.delete records
            out.update(i for i in obj["ids"] if isinstance(i, str))
        for v in obj.values():
            out |= _ids(v)
    elif isinstance(obj, list):
        for v in obj:
            out |= _ids(v)
    return out


# -- SIGKILL the primary under writes ---------------------------------------------------------
async def failover_episode(root: str, ttl: int = TTL, sync: int = 0) -> dict[str, Any]:
    """``sync``: replication.synchronous_replicas on every node (0: asynchronous)."""
    server = EtcdServer(root).start()
    coord = server.url.replace("http://", "etcd://")
    nodes: list[Node] = []
    try:
        nodes, creds = await start_cluster(root, [coord] * 3, ttl=ttl, sync=sync)
        urls = [n.base for n in nodes]
        async with aiohttp.ClientSession() as s:
            etcd = Etcd(s, coord)
            apis = [client(s, u, creds.admin_token) for u in urls]
            st, body = await apis[0].post("/v1/databases", {"name": "c", "vectorDimension": DIM,
                                                            "indexType": "FLAT"})
            assert st == 201, body
            dbid = body["databaseId"]
            # every node is a member, the replicas follow n0
            for api in apis[1:]:
                view = await wait_role(api, "replica")
                assert view["leader"]["node_id"] == "n0"
            ledger = Ledger()
            stop = asyncio.Event()
            writers = [asyncio.create_task(cluster_writer(s, urls, creds.admin_token, dbid, w,
                                                          stop, ledger)) for w in range(3)]
            try:
                await asyncio.sleep(1.5)
                assert ledger.acks, "no write acknowledged before the kill"
                killed_at = time.monotonic()
                nodes[0].kill()
                lead = await wait_leader(etcd, not_node="n0", timeout=ttl * 5)
                elected = time.monotonic() - killed_at
                new_url = lead["url"]
                deadline = time.monotonic() + 20
                while not any(a.node == new_url for a in ledger.acks):
                    assert time.monotonic() < deadline, "the new primary acknowledged nothing"
                    await asyncio.sleep(0.02)
                first_ack = min(a.received for a in ledger.acks if a.node == new_url)
                failover = first_ack - killed_at
                await asyncio.sleep(0.5)
                await nodes[0].astart()  # the old primary comes back: a replica now
                view = await wait_role(apis[0], "replica")
                assert view["leader"]["node_id"] == lead["node_id"], view
                await asyncio.sleep(0.5)
            finally:
                stop.set()
                await asyncio.gather(*writers)
            state = await converge(apis)
            other = [api for api in apis if api.base == new_url][0]
            view = await cluster_view(other)
            assert view["role"] == "primary" and view["epoch"] == lead["epoch"], view
            assert {m["node_id"] for m in view["members"]} == {"n0", "n1", "n2"}, view
            assert sum(m["leader"] for m in view["members"]) == 1, view
            # asynchronous mode's promise: an acknowledged write is in the state, or it was
            # acknowledged by the killed primary and is among the records it moved aside
            present = {v["id"] for v in state[f"vectors:{dbid}"]}
            aside = diverged_ids(nodes[0])
            for a in ledger.acks:
                if a.vid not in present:
                    assert a.node == urls[0] and a.vid in aside, (a, len(aside))
            lost = [a for a in ledger.acks if a.vid not in present]
            if sync:  # synchronous mode's promise: nothing acknowledged is lost
                assert not lost, (len(lost), lost[:5])
            n0_view = await cluster_view(apis[0])
            if aside:
                assert n0_view["diverged"], n0_view
            # a write to a replica names the primary (header and body) ...
            replica = [api for api in apis[:2] if api.base != new_url][0]
            async with s.post(f"{replica.base}/v1/databases/{dbid}/vectors",
                              json={"id": "r", "values": [0.0] * DIM},
                              headers=replica.headers) as r:
                body = await r.json()
                assert r.status == 503 and body["error"] == "not_primary", body
                assert body["primary"] == new_url == r.headers["X-Primary-Url"]
            # the coordinator elects: a manual promotion would bypass it
            st, body = await replica.post("/v1/admin/promote")
            assert st == 409 and body["error"] == "coordinator_elects", body
            # ... or, with cluster.forward_writes (n2), is forwarded to it
            if urls[2] != new_url:
                st, body = await apis[2].post(f"/v1/databases/{dbid}/vectors",
                                              {"id": "fwd", "values": [0.0] * DIM})
                assert st == 201, body
                st, body = await other.get(f"/v1/databases/{dbid}/vectors/fwd")
                assert st == 200, body
            # readiness reflects the role
            for api in apis:
                role = "primary" if api.base == new_url else "replica"
                st, body = await api.get(f"/health/cluster?role={role}")
                assert st == 200 and body["role"] == role, (api.base, body)
                other_role = "replica" if role == "primary" else "primary"
                st, body = await api.get(f"/health/cluster?role={other_role}")
                assert st == 503, (api.base, body)
        return {"elected_seconds": elected, "failover_seconds": failover,
                "acks": len(ledger.acks), "lost_async": len(lost), "moved_aside": len(aside)}
    finally:
        for n in nodes:
            n.kill()
        server.stop()


@pytest.mark.parametrize("run", [1, 2, 3])
async def test_sigkill_primary_elects_a_replica_and_the_old_primary_rejoins(
        tmp_path: Any, run: int) -> None:
    out = await failover_episode(str(tmp_path))
    print(f"failover run {run}: {out}")
    assert out["failover_seconds"] < TTL + 6, out


async def test_sigkill_primary_with_a_synchronous_replica_loses_no_acknowledged_write(
        tmp_path: Any) -> None:
    """The issue's promise: with replication.synchronous_replicas = 1, kill the primary at any
    moment under steady writes, the elected replica has every write acknowledged (the most
    caught-up replica wins, and an acknowledged write is on at least one replica)."""
    out = await failover_episode(str(tmp_path), sync=1)
    print(f"synchronous failover: {out}")
    assert out["lost_async"] == 0 and out["acks"] > 0, out


@pytest.mark.slow
@pytest.mark.parametrize("run", range(20))
async def test_sigkill_primary_with_a_synchronous_replica_repeated(tmp_path: Any, run: int
                                                                   ) -> None:
    out = await failover_episode(str(tmp_path), sync=1)
    assert out["lost_async"] == 0, out


@pytest.mark.slow
@pytest.mark.parametrize("run", range(20))
async def test_sigkill_primary_episode_repeated(tmp_path: Any, run: int) -> None:
    out = await failover_episode(str(tmp_path))
    assert out["failover_seconds"] < TTL + 6, out


# -- partition the primary from etcd ----------------------------------------------------------
async def partition_episode(root: str) -> dict[str, Any]:
    server = EtcdServer(root).start()
    coord = server.url.replace("http://", "etcd://")
    proxy = TcpProxy(server.port).start()
    nodes: list[Node] = []
    try:
        nodes, creds = await start_cluster(root, [f"etcd://127.0.0.1:{proxy.port}", coord, coord])
        urls = [n.base for n in nodes]
        async with aiohttp.ClientSession() as s:
            etcd = Etcd(s, coord)
            apis = [client(s, u, creds.admin_token) for u in urls]
            st, body = await apis[0].post("/v1/databases", {"name": "c", "vectorDimension": DIM,
                                                            "indexType": "FLAT"})
            assert st == 201, body
            dbid = body["databaseId"]
            for api in apis[1:]:
                await wait_role(api, "replica")
            old_epoch = (await cluster_view(apis[0]))["epoch"]
            ledger = Ledger()
            stop = asyncio.Event()
            writers = [asyncio.create_task(cluster_writer(s, urls, creds.admin_token, dbid, w,
                                                          stop, ledger)) for w in range(3)]
            try:
                await asyncio.sleep(1.0)
                assert ledger.by_node(urls[0]), "no write acknowledged before the partition"
                cut_at = time.monotonic()
                proxy.mode = "stall"  # n0's etcd calls hang: no renewal gets through
                proxy.cut()
                lead = await wait_leader(etcd, not_node="n0", timeout=TTL * 5)
                elected = time.monotonic() - cut_at
                new_url = lead["url"]
                deadline = time.monotonic() + 20
                while not ledger.by_node(new_url):
                    assert time.monotonic() < deadline, "the new primary acknowledged nothing"
                    await asyncio.sleep(0.02)
                # n0 is still up, cut off from etcd: it refuses writes, and says so
                view = await cluster_view(apis[0])
                assert view["lease"]["fenced"] or view["role"] == "replica", view
                st, body = await apis[0].get("/health/cluster")
                assert st == 503 and not body["ready"], body  # out of the Service
                st, body = await apis[0].post(f"/v1/databases/{dbid}/vectors",
                                              {"id": "late", "values": [0.0] * DIM})
                assert st == 503 and body["error"] == "not_primary", body
                st, body = await apis[0].get(f"/v1/databases/{dbid}/vectors?limit=1")
                assert st == 200, body  # reads go on
                proxy.mode = "pass"  # heal: n0 finds its lease gone and the key held
                view = await wait_role(apis[0], "replica")
                assert view["leader"]["node_id"] == lead["node_id"], view
                await asyncio.sleep(0.5)
            finally:
                stop.set()
                await asyncio.gather(*writers)
            state = await converge(apis)
            present = {v["id"] for v in state[f"vectors:{dbid}"]}
            # the fence: nothing sent after cut + TTL/2 was acknowledged by the old primary
            old_acks = ledger.by_node(urls[0])
            late = [a for a in old_acks if a.sent > cut_at + TTL / 2]
            assert not late, late[:5]
            fence_lag = max((a.received for a in old_acks), default=cut_at) - cut_at
            assert any(u == urls[0] and t > cut_at for u, t in ledger.refusals)
            # every acknowledged write is there (the replicas streamed all the old primary
            # committed: it was cut from etcd, not from them)
            missing = [a for a in ledger.acks if a.vid not in present]
            assert not missing, missing[:5]
        for n in nodes:
            n.stop()
        # the ledger against the final log: every epoch's acknowledged writes were answered by
        # one node only, the old primary's in the old epoch
        leader_dir = [n for n in nodes if n.base == new_url][0].data_dir
        _, raw = read_log(leader_dir)
        epoch_of = {i + 1: decode(r).epoch for i, r in enumerate(raw)}
        nodes_by_epoch: dict[int, set[str]] = {}
        for a in ledger.acks:
            nodes_by_epoch.setdefault(epoch_of[a.lsn], set()).add(a.node)
        assert all(len(v) == 1 for v in nodes_by_epoch.values()), nodes_by_epoch
        assert nodes_by_epoch.get(old_epoch) == {urls[0]}, (old_epoch, nodes_by_epoch)
        assert nodes_by_epoch[lead["epoch"]] == {new_url}, nodes_by_epoch
        return {"elected_seconds": elected, "last_old_ack_after_cut": fence_lag,
                "acks": len(ledger.acks)}
    finally:
        proxy.close()
        for n in nodes:
            n.kill()
        server.stop()


async def test_primary_cut_from_etcd_fences_itself_before_the_ttl(tmp_path: Any) -> None:
    out = await partition_episode(str(tmp_path))
    print(f"partition: {out}")
    assert out["last_old_ack_after_cut"] < TTL / 2 + 0.5, out


@pytest.mark.slow
@pytest.mark.parametrize("run", range(5))
async def test_partition_episode_repeated(tmp_path: Any, run: int) -> None:
    out = await partition_episode(str(tmp_path))
    assert out["last_old_ack_after_cut"] < TTL / 2 + 0.5, out


# -- records beyond the fork are moved aside, never merged --------------------------------------
async def test_writes_the_replicas_never_got_are_moved_aside_when_the_old_primary_rejoins(
        tmp_path: Any) -> None:
    """The primary is cut from etcd and from its replicas (they follow it through a proxy, its
    advertised URL) while clients still reach it: what it acknowledges until its fence are
    asynchronous mode's loss. When it rejoins, exactly those records are in its ``diverged``
    file, reported in /v1/cluster and the metric; the cluster's state does not have them."""
    root = str(tmp_path)
    server = EtcdServer(root).start()
    coord = server.url.replace("http://", "etcd://")
    to_etcd = TcpProxy(server.port).start()
    n0 = cluster_node(root, "n0", f"etcd://127.0.0.1:{to_etcd.port}")
    to_n0 = TcpProxy(n0.port).start()
    n0.proc.env["JADEVECTORDB_ADVERTISE_URL"] = f"http://127.0.0.1:{to_n0.port}"
    nodes: list[Node] = []
    try:
        nodes, creds = await start_cluster(root, [coord] * 3, first=n0)
        async with aiohttp.ClientSession() as s:
            etcd = Etcd(s, coord)
            apis = [client(s, n.base, creds.admin_token) for n in nodes]
            st, body = await apis[0].post("/v1/databases", {"name": "c", "vectorDimension": DIM,
                                                            "indexType": "FLAT"})
            assert st == 201, body
            dbid = body["databaseId"]
            for api in apis[1:]:
                await wait_role(api, "replica")
            ledger = Ledger()
            stop = asyncio.Event()
            # clients write to n0 directly (not through the proxy its replicas use)
            w = asyncio.create_task(cluster_writer(s, [nodes[0].base], creds.admin_token, dbid,
                                                   0, stop, ledger))
            try:
                await asyncio.sleep(0.5)
                to_etcd.mode = to_n0.mode = "stall"
                to_etcd.cut()
                to_n0.cut()
                cut_at = time.monotonic()
                lead = await wait_leader(etcd, not_node="n0", timeout=TTL * 5)
            finally:
                stop.set()
                await w
            after_cut = [a for a in ledger.acks if a.sent > cut_at]
            assert after_cut, "the old primary acknowledged nothing after the cut"
            assert all(a.sent < cut_at + TTL / 2 for a in after_cut)
            to_etcd.mode = to_n0.mode = "pass"
            view = await wait_role(apis[0], "replica")
            assert view["leader"]["node_id"] == lead["node_id"], view
            state = await converge(apis)
            present = {v["id"] for v in state[f"vectors:{dbid}"]}
            lost = {a.vid for a in ledger.acks if a.vid not in present}
            aside = diverged_ids(nodes[0])
            assert lost, "nothing was lost: the test did not cut the replicas off"
            assert lost <= aside, sorted(lost - aside)[:5]
            assert not (aside & present)
            view = await cluster_view(apis[0])
            assert view["diverged"] and view["diverged"][0]["records"] >= len(lost), view
            st, text = await apis[0].get("/metrics")
            metric = [ln for ln in str(text).splitlines()
                      if ln.startswith("jadevectordb_cluster_diverged_records_total")]
            assert metric and float(metric[0].split()[-1]) >= len(lost), metric
            assert "moved aside" in nodes[0].log_text()
    finally:
        to_etcd.close()
        to_n0.close()
        for n in nodes:
            n.kill()
        server.stop()
