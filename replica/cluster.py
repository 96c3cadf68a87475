"""Automatic failover on etcd: the holder of a leader lease is the primary (issue 19).

Keys, under ``<cluster.prefix>/<cluster.name>``:

- ``leader``            {node_id, url, epoch, promote_lsn, lsn}, bound to the primary's lease.
- ``members/<node_id>`` {node_id, url, role, epoch, lsn}, each bound to its node's own lease.
- ``history/<epoch>``   {epoch, lsn, node_id}: the LSN of the ``system.promote`` record that began
                        each epoch (unleased, written in the election's transaction). A node whose
                        log goes beyond the first promotion after its own epoch has records that
                        are not in the cluster's history (the fork).

Each node has one lease (TTL ``cluster.lease_ttl_seconds``), renewed every TTL/5. Every node starts
as a replica that follows nobody; the loop then, every tick:

1. renews the lease (a new one if it expired) and publishes the member key (its applied LSN);
2. the primary checks it still holds ``leader`` (same create revision) and writes its LSN there;
   a lost key or an expired lease makes it step down (a replica of whoever holds the key next);
3. a replica follows the URL in ``leader``; when the key is gone, a replica whose (epoch, LSN) is
   the highest published may try to create it in a transaction (create revision 0, so etcd
   picks exactly one winner), with the next epoch and the history entry; the winner promotes.

The primary's fence (``fence``, installed as ``Engine.write_fence``): writes are refused (503
``not_primary``) and never acknowledged once TTL/2 has passed since the last renewal that
succeeded, counted from when that renewal was *sent*: etcd expires the lease no earlier than TTL
after it received it, so the old primary stops acknowledging at least TTL/2 before any replica can
be elected. The writer checks the fence before a command is written and again when its records
are acknowledged (a write queued or committed after the deadline is not acknowledged).

Records beyond the fork (a primary that wrote after losing the lease but before the deadline,
writes not acknowledged or acknowledged only in asynchronous mode) are copied to
``<data_dir>/diverged/`` before the node follows the new primary (which re-seeds it), logged and
reported (``/v1/cluster`` and ``jadevectordb_cluster_diverged_records_total``): never merged.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import orjson
from aiohttp import web
from aiohttp.typedefs import Handler, Middleware
from prometheus_client import Gauge

from jade.engine import Engine
from jade.errors import Conflict, NotPrimary
from jade.http.keys import ACCESS, CLUSTER_READY, CLUSTER_STATUS, ENGINE, METRICS, PROMOTE
from jade.http.middleware import error_response
from jade.metrics import Counter
from jade.settings import Settings
from replica.etcd import Etcd, EtcdError, KeyValue
from replica.follower import Follower, attach

log = logging.getLogger(__name__)

DIVERGED_DIR = "diverged"


def _json(kv: KeyValue | None) -> dict[str, Any]:
    if kv is None:
        return {}
    try:
        v = orjson.loads(kv.value)
    except orjson.JSONDecodeError:
        return {}
    return v if isinstance(v, dict) else {}


class Cluster:
    def __init__(self, app: web.Application, settings: Settings, follower: Follower) -> None:
        self.app = app
        self.settings = settings
        self.engine: Engine = app[ENGINE]
        self.follower = follower
        s = settings
        self.node_id = s.node_id or s.replica_id or f"{os.uname().nodename}:{s.port}"
        self.url = (s.advertise_url or f"http://{s.host}:{s.port}").rstrip("/")
        follower.replica_id = self.node_id
        self.ttl = s.lease_ttl_seconds
        self.tick = max(0.2, self.ttl / 5)
        base = f"{s.cluster_prefix.rstrip('/')}/{s.cluster_name}"
        self.leader_key = base + "/leader"
        self.members_prefix = base + "/members/"
        self.history_prefix = base + "/history/"
        self.lease = 0
        self.renewed_at = float("-inf")  # monotonic send time of the last renewal that worked
        self.holding = False  # we hold the leader key (created at self.leader_rev)
        self.leader_rev = 0
        self.leader: dict[str, Any] = {}
        self.members: list[dict[str, Any]] = []
        self.elections_won = 0
        self.step_downs = 0
        self.diverged: list[dict[str, Any]] = []
        self.last_error = ""
        self.etcd: Etcd | None = None
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.engine.write_fence = self.fence
        r = app[METRICS].registry
        self.m_diverged = Counter("jadevectordb_cluster_diverged_records_total",
                                  "Records beyond a fork moved aside to <data_dir>/diverged "
                                  "when this node rejoined as a replica", registry=r)
        self.m_elections = Counter("jadevectordb_cluster_elections_won_total",
                                   "Elections this node won (it became the primary)", registry=r)
        Gauge("jadevectordb_cluster_leader", "1 while this node holds the leader lease",
              registry=r).set_function(lambda: 1.0 if self.holding else 0.0)
        Gauge("jadevectordb_cluster_fenced", "1 while this primary refuses writes (its lease "
              "is not renewed in time)", registry=r).set_function(
            lambda: 1.0 if self.holding and self.fenced() else 0.0)

    # -- the fence -------------------------------------------------------------------------------
    @property
    def deadline(self) -> float:
        return self.renewed_at + self.ttl / 2

    def fenced(self) -> bool:
        return not self.holding or time.monotonic() >= self.deadline

    def fence(self) -> None:
        """Raise NotPrimary unless this node may acknowledge a write now (see the module doc)."""
        if self.engine.role != "primary":
            return  # a replica refuses every write already (refuse_writes)
        if self.fenced():
            other = self.leader.get("url") if self.leader.get("node_id") != self.node_id else None
            raise NotPrimary("this node's leader lease is not renewed (the coordinator is "
                             "unreachable or another node was elected); writes are refused",
                             primary=other or None)

    # -- life cycle ------------------------------------------------------------------------------
    def start(self) -> None:
        self._task = asyncio.create_task(self.run(), name="cluster")

    async def stop(self) -> None:
        self._stop.set()
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        if self.etcd is not None and self.lease:  # leave at once: no waiting for the TTL
            try:
                await self.etcd.revoke(self.lease)
            except EtcdError:
                pass

    async def run(self) -> None:
        async with aiohttp.ClientSession() as session:
            self.etcd = Etcd(session, self.settings.coordinator,
                             timeout=max(0.3, min(2.0, self.ttl / 4)))
            try:
                while not self._stop.is_set():
                    t0 = time.monotonic()
                    try:
                        await self._step(self.etcd)
                        self.last_error = ""
                    except EtcdError as exc:
                        if not self.last_error:
                            log.warning("coordinator unreachable: %s", exc)
                        self.last_error = str(exc)
                    except asyncio.CancelledError:
                        raise
                    except Exception as exc:  # a bug must not end leadership bookkeeping
                        log.exception("cluster step failed")
                        self.last_error = f"{type(exc).__name__}: {exc}"
                    wait = max(0.0, self.tick - (time.monotonic() - t0))
                    try:
                        await asyncio.wait_for(self._stop.wait(), wait)
                    except TimeoutError:
                        pass
            finally:
                if self.lease and self._stop.is_set():
                    try:
                        await self.etcd.revoke(self.lease)
                        self.lease = 0
                    except EtcdError:
                        pass

    # -- one tick --------------------------------------------------------------------------------
    async def _step(self, etcd: Etcd) -> None:
        t0 = time.monotonic()
        if self.lease:
            if await etcd.keepalive(self.lease) > 0:
                self.renewed_at = t0
            else:
                log.warning("lease %x expired", self.lease)
                self.lease = 0
                if self.holding:
                    self._step_down("the leader lease expired")
        if not self.lease:
            self.lease = await etcd.grant(self.ttl)
            self.renewed_at = t0
        wal = self.engine.log
        me = {"node_id": self.node_id, "url": self.url, "role": self.engine.role,
              "epoch": wal.epoch, "lsn": wal.last_lsn}
        await etcd.put(self.members_prefix + self.node_id, orjson.dumps(me), self.lease)
        kv = await etcd.get(self.leader_key)
        self.leader = _json(kv)
        if self.holding:
            if kv is None or kv.create_revision != self.leader_rev:
                self._step_down("the leader key is gone or held by another node")
            else:
                value = {**self.leader, "lsn": wal.last_lsn}
                await etcd.replace(self.leader_key, orjson.dumps(value), self.leader_rev,
                                   self.lease)
                return
        if kv is not None:
            if self.leader.get("node_id") == self.node_id and kv.lease != self.lease:
                # held by an earlier run of this node (restarted within the TTL): nobody can
                # renew it, so free it now rather than wait for it to expire
                if await etcd.delete_if(self.leader_key, kv.create_revision):
                    log.warning("removed the leader key of this node's previous run")
                return
            await self._follow(etcd, self.leader)
            return
        await self._elect(etcd)

    def _step_down(self, why: str) -> None:
        """Stop being the primary: refuse writes now, become a replica; the next ticks follow
        whoever holds the key (moving aside what we wrote beyond the fork)."""
        self.holding = False
        self.leader_rev = 0
        self.step_downs += 1
        self.engine.role = "replica"
        self.engine.leader_url = ""
        self.follower.state = "stepped down"
        log.error("stepping down as primary: %s", why)
        # writes waiting for synchronous replicas can no longer be confirmed here: answer them
        # now (written: true, may be lost at the failover) rather than at the timeout
        n = self.engine.sync.abandon(f"this node stopped being the primary ({why})")
        if n:
            log.error("%d write(s) waiting for synchronous replicas answered as unconfirmed", n)

    async def _follow(self, etcd: Etcd, leader: dict[str, Any]) -> None:
        url = str(leader.get("url", "")).rstrip("/")
        if not url or url == self.url:
            return
        self.engine.leader_url = url
        if self.engine.role == "primary":  # cannot happen without holding; be safe
            self._step_down(f"{leader.get('node_id')} holds the leader key")
        if self.follower.primary != url or not self.follower.running:
            await self._move_aside(etcd)
            log.info("following primary %s (%s, epoch %s)", leader.get("node_id"), url,
                     leader.get("epoch"))
            await self.follower.retarget(url)

    async def _history(self, etcd: Etcd) -> list[dict[str, Any]]:
        return [h for h in (_json(kv) for kv in await etcd.range(self.history_prefix)) if h]

    async def _move_aside(self, etcd: Etcd) -> None:
        """Copy our records beyond the fork (the first promotion after our log's epoch) to a
        file under ``<data_dir>/diverged``, before following (the re-seed replaces them)."""
        wal = self.engine.log
        later = [int(h["lsn"]) for h in await self._history(etcd)
                 if int(h.get("epoch", 0)) > wal.epoch]
        if not later:
            return
        fork = min(later) - 1
        last = wal.last_lsn
        if last <= fork:
            return
        name = f"epoch{wal.epoch}-lsn{fork + 1}-{last}.jsonl"
        path = os.path.join(self.settings.data_dir, DIVERGED_DIR, name)
        if any(d["file"] == path for d in self.diverged):
            return  # moved aside already (the re-seed that replaces them has not run yet)
        n = await asyncio.to_thread(_dump, wal, fork, last, path)
        entry = {"file": path, "records": n, "first_lsn": fork + 1, "last_lsn": last,
                 "epoch": wal.epoch, "at": time.time()}
        self.diverged.append(entry)
        self.m_diverged.inc(n)
        log.error("%d record(s) of this node (LSN %d-%d, epoch %d) are not in the cluster's "
                  "history (written after the fork): moved aside to %s; they are NOT merged "
                  "(docs/RUNBOOK.md, 'Diverged records')", n, fork + 1, last, wal.epoch, path)

    async def _elect(self, etcd: Etcd) -> None:
        wal = self.engine.log
        members = [_json(kv) for kv in await etcd.range(self.members_prefix)]
        self.members = [m for m in members if m]
        mine = (wal.epoch, wal.last_lsn)
        best = max(((int(m.get("epoch", 0)), int(m.get("lsn", 0))) for m in self.members),
                   default=mine)
        if mine < best:
            return  # a more caught-up replica takes it (or, if it is gone, its key expires)
        await self.follower.stop()  # nothing more may arrive between our LSN and the promotion
        self.follower.state = "electing"
        epochs = [int(h.get("epoch", 0)) for h in await self._history(etcd)]
        epoch = max([wal.epoch, *epochs]) + 1
        lsn = wal.last_lsn + 1  # the promotion record's
        value = {"node_id": self.node_id, "url": self.url, "epoch": epoch, "promote_lsn": lsn,
                 "lsn": lsn}
        history = {f"{self.history_prefix}{epoch:012d}":
                   orjson.dumps({"epoch": epoch, "lsn": lsn, "node_id": self.node_id})}
        ok, kv = await etcd.create(self.leader_key, orjson.dumps(value), self.lease, also=history)
        if not ok or kv is None:
            self.leader = _json(kv)
            self.follower.primary = ""  # follow whoever won, at the next tick
            return
        self.holding, self.leader_rev, self.leader = True, kv.create_revision, value
        result = await self.follower.promote(epoch)
        self.engine.leader_url = self.url
        self.elections_won += 1
        self.m_elections.inc()
        if result["lsn"] != lsn:  # cannot happen: the follower was stopped before
            log.error("promotion record at LSN %d, not %d as registered", result["lsn"], lsn)
        log.warning("elected primary of cluster %s: epoch %d from LSN %d",
                    self.settings.cluster_name, epoch, lsn)

    def ready(self) -> tuple[bool, str]:
        """Whether this node serves its role now (the readiness probe): a primary holding an
        unfenced lease, or a replica streaming from the leader."""
        if self.engine.env is None:
            return False, "re-opening the data directory"
        if self.engine.role == "primary":
            if self.fenced():
                return False, "primary without a renewed lease: writes are refused"
            return True, ""
        if not self.leader:
            return False, "no primary elected yet"
        if self.follower.state != "streaming":
            return False, f"replica {self.follower.state}: {self.follower.last_error}"
        return True, ""

    # -- the cluster's view ----------------------------------------------------------------------
    async def view(self) -> dict[str, Any]:
        """Members, roles, LSNs, lag, epoch, leader (``GET /v1/cluster``)."""
        wal = self.engine.log
        members = self.members
        coordinator_ok = True
        if self.etcd is not None:
            try:
                members = [m for m in (_json(kv) for kv in await self.etcd.range(
                    self.members_prefix)) if m]
                self.leader = _json(await self.etcd.get(self.leader_key))
            except EtcdError as exc:
                coordinator_ok = False
                self.last_error = str(exc)
        leader_lsn = int(self.leader.get("lsn", 0)) if self.leader else 0
        rows = []
        for m in sorted(members, key=lambda m: str(m.get("node_id"))):
            lsn = int(m.get("lsn", 0))
            rows.append({**m, "leader": m.get("node_id") == self.leader.get("node_id"),
                         "lag_records": max(0, leader_lsn - lsn) if self.leader else None})
        return {
            "cluster": self.settings.cluster_name,
            "coordinator": self.settings.coordinator,
            "coordinator_reachable": coordinator_ok and not self.last_error,
            "node_id": self.node_id,
            "url": self.url,
            "role": self.engine.role,
            "epoch": wal.epoch,
            "last_lsn": wal.last_lsn,
            "leader": self.leader or None,
            "lease": {"held": self.holding, "fenced": self.holding and self.fenced(),
                      "ttl_seconds": self.ttl,
                      "renewed_seconds_ago": round(time.monotonic() - self.renewed_at, 3)
                      if self.lease else None},
            "members": rows,
            "elections_won": self.elections_won,
            "step_downs": self.step_downs,
            "diverged": self.diverged,
            "last_error": self.last_error,
        }


def _dump(wal: Any, fork: int, last: int, path: str) -> int:
    """Write records ``fork < lsn <= last`` as JSON lines (the decoded fields, and the record's
    exact bytes in base64 under ``raw``), fsynced; how many."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = path + ".tmp"
    n = 0
    with open(tmp, "wb") as fh:
        for rec in wal.iterate(fork, upto=last, verify=False):
            line = {"lsn": rec.lsn, "epoch": rec.epoch, "ts": rec.ts, "type": rec.type,
                    "actor": rec.actor, "body": rec.body,
                    "raw": base64.b64encode(rec.encoded()).decode()}
            fh.write(orjson.dumps(line, default=_plain, option=orjson.OPT_SERIALIZE_NUMPY))
            fh.write(b"\n")
            n += 1
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    return n


def _plain(v: Any) -> Any:
    if isinstance(v, bytes | bytearray | memoryview):
        return base64.b64encode(bytes(v)).decode()
    return str(v)


HOP_BY_HOP = frozenset({"host", "content-length", "connection", "keep-alive", "te", "trailer",
                        "transfer-encoding", "upgrade", "proxy-authorization"})
FORWARDED = "X-Jade-Forwarded"  # set on a forwarded request: it is never forwarded again
ANSWER_HEADERS = ("Content-Type", "X-LSN", "Retry-After", "X-Primary-Url", "Location")


def forwarder(cluster: Cluster) -> tuple[Middleware,
                                        Callable[[web.Application], Awaitable[None]]]:
    """The middleware of ``cluster.forward_writes``: on a replica, a request to a route that
    writes (``mutates`` or ``records``) is sent to the primary and its answer returned as is
    (503 ``not_primary`` when no primary is known or it cannot be reached)."""
    session: list[aiohttp.ClientSession] = []

    @web.middleware
    async def forward(request: web.Request, handler: Handler) -> web.StreamResponse:
        engine = cluster.engine
        if engine.role != "replica" or FORWARDED in request.headers:
            return await handler(request)
        resource = request.match_info.route.resource
        route = request.app[ACCESS].get((request.method, resource.canonical if resource else ""))
        if route is None or not (route.mutates or route.records):
            return await handler(request)
        leader = engine.leader_url
        if not leader:
            return error_response(NotPrimary("no primary is elected yet; retry"))
        if not session:
            session.append(aiohttp.ClientSession())
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP}
        headers[FORWARDED] = cluster.node_id
        prior = request.headers.get("X-Forwarded-For")
        headers["X-Forwarded-For"] = f"{prior}, {request.remote}" if prior else str(request.remote)
        try:
            body = await request.read()
            async with session[0].request(request.method, leader + request.path_qs, data=body,
                                          headers=headers,
                                          timeout=aiohttp.ClientTimeout(total=60)) as r:
                data = await r.read()
                out = web.Response(status=r.status, body=data)
                for h in ANSWER_HEADERS:
                    if h in r.headers:
                        out.headers[h] = r.headers[h]
                return out
        except (aiohttp.ClientError, TimeoutError) as exc:
            return error_response(NotPrimary(
                f"the write could not be forwarded to the primary ({type(exc).__name__}); "
                "retry", primary=leader))

    async def close(app: web.Application) -> None:
        if session:
            await session[0].close()

    return forward, close


def attach_cluster(app: web.Application, settings: Settings) -> Cluster:
    """Run ``app`` as a member of the coordinator's cluster: a replica that follows whoever holds
    the leader lease, or the primary while it holds it (before the app starts)."""
    follower = attach(app, settings, start=False)
    follower.primary = ""
    follower.state = "waiting for a leader"
    cluster = Cluster(app, settings, follower)

    async def refuse_promote() -> dict[str, Any]:
        raise Conflict("the coordinator elects the primary of this cluster: a manual promotion "
                       "would bypass it (stop the primary, or its lease, instead)",
                       code="coordinator_elects")

    app[PROMOTE] = refuse_promote
    if settings.forward_writes:
        middleware, close = forwarder(cluster)
        app.middlewares.insert(0, middleware)  # before admission refuses the write
        app.on_cleanup.append(close)
    app[CLUSTER_STATUS] = cluster.view
    app[CLUSTER_READY] = cluster.ready

    async def ctx(app: web.Application) -> Any:
        cluster.start()
        yield
        await cluster.stop()

    app.cleanup_ctx.append(ctx)
    return cluster
