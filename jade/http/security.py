"""/v1/security/*: audit log, sessions, audit stats (API.md §10)."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from jade.auth.audit import EVENT_TYPES
from jade.auth.clock import now_ms
from jade.errors import Forbidden, InvalidArgument
from jade.http import schemas as S
from jade.http.auth import iso_ms, principal_of, svc_of
from jade.http.keys import AUDIT
from jade.http.middleware import json_response
from jade.http.validate import query_of


async def audit_log(request: web.Request) -> web.Response:
    p = principal_of(request)
    q = query_of(request, S.AuditQuery)
    limit, event_type, user_id = q.limit, q.event_type, q.user_id
    if event_type is not None and event_type not in EVENT_TYPES:
        raise InvalidArgument(f"unknown event_type; use one of {', '.join(EVENT_TYPES)}")
    if not p.is_admin:
        user_id = p.user_id  # non-admins see their own events only
    events = request.app[AUDIT].query(user_id=user_id, event_type=event_type, limit=limit)
    return json_response({"events": events, "count": len(events)})


async def sessions(request: web.Request) -> web.Response:
    p = principal_of(request)
    uid = query_of(request, S.SessionsQuery).user_id  # required
    if uid != p.user_id and not p.is_admin:
        raise Forbidden("you may only list your own sessions", code="permission_denied")
    store = svc_of(request).store
    rows = [s for s in store.sessions() if s["user_id"] == uid]
    rows.sort(key=lambda s: s["created_at"], reverse=True)
    user = store.user(uid)
    now = now_ms()
    valid_after = user["tokens_valid_after"] if user is not None else now
    alive = user is not None and bool(user["is_active"])

    def active(s: dict[str, Any]) -> bool:  # what ``Tokens.principal`` would accept
        return alive and s["expires_at"] > now and s["created_at"] >= valid_after

    out = [
        {
            "session_id": s["session_id"],
            "user_id": s["user_id"],
            "token_id": s["token_id"],
            "ip_address": s["ip_address"],
            "is_active": active(s),
            "created_at": iso_ms(s["created_at"]),
            "last_activity": iso_ms(s["created_at"]),
            "expires_at": iso_ms(s["expires_at"]),
        }
        for s in rows
    ]
    return json_response({"sessions": out, "count": len(out), "user_id": uid})


async def audit_stats(request: web.Request) -> web.Response:
    principal_of(request)
    return json_response(request.app[AUDIT].stats())
