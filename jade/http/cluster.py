"""``GET /v1/cluster`` (any credential): who is the primary, and where every node is.
``GET /health/cluster`` (public, the readiness probe of a cluster member): 200 while this node
serves its role, 503 otherwise; ``?role=primary`` (or ``replica``) also asks for that role, as a
load balancer's health check that finds the primary (Patroni's ``/primary``).

With a coordinator (``cluster.coordinator``) the answer is the coordinator's view
(``replica.cluster.Cluster.view``). Without one, the node describes what it knows itself: a
primary its followers, a replica the primary it follows (``replication.primary_url``).
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from jade.errors import InvalidArgument
from jade.http.keys import (
    CLUSTER_READY,
    CLUSTER_STATUS,
    ENGINE,
    REPLICA_STATUS,
    REPLICAS,
    SETTINGS,
)
from jade.http.middleware import json_response


async def view(request: web.Request) -> web.Response:
    hook = request.app.get(CLUSTER_STATUS)
    if hook is not None:
        return json_response(await hook())
    app = request.app
    engine = app[ENGINE]
    settings = app[SETTINGS]
    wal = engine.log
    url = f"http://{settings.host}:{settings.port}"
    me: dict[str, Any] = {"node_id": settings.replica_id or url, "url": url,
                          "role": engine.role, "epoch": wal.epoch, "lsn": wal.last_lsn}
    members = [me]
    follower = app.get(REPLICA_STATUS)
    if engine.role == "replica" and follower is not None:
        st = follower()
        leader: dict[str, Any] | None = {"url": st["primary"], "lsn": st["primary_lsn"]}
        me["lag_records"] = st["lag_records"]
    else:
        leader = {"node_id": me["node_id"], "url": url, "epoch": wal.epoch,
                  "lsn": wal.last_lsn}
        me["lag_records"] = 0
        for r in app[REPLICAS].by_id.values():
            members.append({"node_id": r.replica_id, "url": None, "role": "replica",
                            "lsn": r.applied_lsn, "connected": r.streams > 0,
                            "lag_records": max(0, wal.last_lsn - r.applied_lsn)})
    return json_response({
        "cluster": None, "coordinator": None, "node_id": me["node_id"], "url": url,
        "role": engine.role, "epoch": wal.epoch, "last_lsn": wal.last_lsn,
        "leader": leader, "members": members,
    })


async def ready(request: web.Request) -> web.Response:
    want = request.query.get("role", "")
    if want not in ("", "primary", "replica"):
        raise InvalidArgument("'role' must be 'primary' or 'replica'")
    check = request.app.get(CLUSTER_READY)
    engine = request.app[ENGINE]
    if check is not None:
        ok, why = check()
    else:  # no coordinator: the role is the configuration's
        ok, why = engine.env is not None, "" if engine.env is not None else "re-opening"
    role = engine.role
    if ok and want and want != role:
        ok, why = False, f"this node is a {role}"
    return json_response({"ready": ok, "role": role, "reason": why}, status=200 if ok else 503)
