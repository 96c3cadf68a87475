"""Administration: readonly/readwrite, shutdown, IP blocks (API.md §1, §12), database grants."""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web

from jade.auth.clock import now_ms
from jade.core.decide import Command
from jade.errors import Conflict, Forbidden, InvalidArgument, NotFound
from jade.http import schemas as S
from jade.http.auth import audit, principal_of, svc_of
from jade.http.databases import engine_of, get_db
from jade.http.keys import METRICS, PROMOTE, REPLICAS, SHUTDOWN
from jade.http.middleware import json_response
from jade.http.validate import parsed


async def _mode(request: web.Request, mode: str) -> web.Response:
    p = principal_of(request)
    engine = engine_of(request)
    records = await engine.submit(Command("system.mode", {"mode": mode}, p.user_id))
    audit(
        request,
        "ADMIN_OPERATION",
        operation=mode,
        resource="system",
        details=f"mode {mode} at LSN {records[-1].lsn}",
    )
    return json_response({"mode": mode, "lsn": records[-1].lsn, "message": f"server is now {mode}"})


async def readonly(request: web.Request) -> web.Response:
    return await _mode(request, "readonly")


async def readwrite(request: web.Request) -> web.Response:
    return await _mode(request, "readwrite")


async def shutdown(request: web.Request) -> web.Response:
    principal_of(request)
    audit(request, "ADMIN_OPERATION", operation="shutdown", resource="system")
    asyncio.get_running_loop().call_later(0.5, request.app[SHUTDOWN].set)
    return json_response(
        {"status": "shutting_down", "message": "draining requests, checkpointing, then stopping"}
    )


async def ip_blocks(request: web.Request) -> web.Response:
    svc = svc_of(request)
    now = now_ms()
    rows = [
        {
            "ip": b["ip"],
            "remaining_seconds": max(0, (b["until"] - now) // 1000),
            "reason": b.get("reason", ""),
            "failures": b.get("failures", 0),
        }
        for b in svc.store.blocks()
        if b["until"] > now
    ]
    return json_response({"blocked": rows, "count": len(rows)})


async def ip_unblock(request: web.Request) -> web.Response:
    ip = request.match_info["ip"]
    svc = svc_of(request)
    block = svc.store.block(ip)
    if block is None or block["until"] <= now_ms():
        raise NotFound(f"IP {ip} is not blocked")
    p = principal_of(request)
    await engine_of(request).submit(Command("auth.block.set", {"ip": ip, "until": 0}, p.user_id))
    svc.forget_ip(ip)
    audit(request, "ADMIN_OPERATION", operation="ip_unblock", resource=f"ip-blocks/{ip}")
    return json_response({"ip": ip, "message": f"IP {ip} unblocked"})


def _owner_or_admin(request: web.Request) -> dict[str, Any]:
    db = get_db(request)
    p = principal_of(request)
    if not (p.is_admin or db.get("owner") == p.user_id):
        raise Forbidden(
            "only the database owner or an admin manages grants", code="permission_denied"
        )
    return db


async def grants_list(request: web.Request) -> web.Response:
    db = _owner_or_admin(request)
    rows = [
        {"user_id": u, "permission": perm}
        for u, perm in sorted(svc_of(request).store.grants(db["id"]).items())
    ]
    return json_response({"database_id": db["id"], "owner": db.get("owner"), "grants": rows})


async def grants_set(request: web.Request) -> web.Response:
    db = _owner_or_admin(request)
    req = await parsed(request, S.Grant)
    uid, perm = req.user_id, req.permission
    if not uid:
        raise InvalidArgument("missing required field 'user_id'", code="missing_field")
    if svc_of(request).store.user(uid) is None:  # decide re-checks
        raise NotFound("User not found", user_id=uid)
    p = principal_of(request)
    await engine_of(request).submit(
        Command("auth.grant.set", {"db": db["id"], "user_id": uid, "permission": perm}, p.user_id)
    )
    audit(
        request,
        "ADMIN_OPERATION",
        operation="grant",
        resource=f"databases/{db['id']}",
        details=f"{uid}:{perm}",
    )
    return json_response(
        {"database_id": db["id"], "user_id": uid, "permission": perm, "message": "grant recorded"},
        status=201,
    )


async def grants_delete(request: web.Request) -> web.Response:
    db = _owner_or_admin(request)
    uid = request.match_info["uid"]
    if svc_of(request).store.grant(db["id"], uid) is None:
        raise NotFound("no grant for this user", user_id=uid)
    p = principal_of(request)
    await engine_of(request).submit(
        Command("auth.grant.set", {"db": db["id"], "user_id": uid, "permission": None}, p.user_id)
    )
    audit(
        request,
        "ADMIN_OPERATION",
        operation="revoke_grant",
        resource=f"databases/{db['id']}",
        details=uid,
    )
    return json_response({"database_id": db["id"], "user_id": uid, "message": "grant removed"})


async def promote(request: web.Request) -> web.Response:
    """Turn this replica into a primary with a new epoch (fencing the old primary's records)."""
    hook = request.app.get(PROMOTE)
    if hook is None or engine_of(request).role != "replica":
        raise Conflict("this node is already a primary", code="already_primary")
    result = await hook()
    audit(request, "ADMIN_OPERATION", operation="promote", resource="system",
          details=f"epoch {result.get('epoch')}")
    return json_response({"role": "primary", **result})


async def forget_replica(request: web.Request) -> web.Response:
    rid = request.match_info["rid"]
    if not request.app[REPLICAS].forget(rid):
        raise NotFound("Replica not found", replica_id=rid)
    try:
        request.app[METRICS].replica_lag.remove(rid)
    except KeyError:  # never tracked (it registered but never streamed or acked)
        pass
    audit(request, "ADMIN_OPERATION", operation="forget_replica", resource=f"replicas/{rid}")
    return json_response({"replica_id": rid, "message": "replica forgotten; it no longer holds "
                          "log truncation"})
