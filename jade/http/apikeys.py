"""/v1/api-keys (API.md §4): the raw key is shown once; only its SHA-256 is stored. Anyone
manages their own keys, in production too; only an admin someone else's (a non-admin asking
for another's key is told it does not exist). Through an API key (the route table's key
rule): minting needs an admin key; a key may revoke itself, and only an admin key another."""

from __future__ import annotations

import secrets
import uuid
from typing import Any

from aiohttp import web

from jade.auth.apikeys import KEY_PREFIX, digest
from jade.auth.clock import now_ms
from jade.auth.principal import implied
from jade.core.decide import Command
from jade.errors import Forbidden, InvalidArgument, NotFound
from jade.http import schemas as S
from jade.http.auth import audit, iso_ms, principal_of, svc_of
from jade.http.databases import engine_of
from jade.http.middleware import json_response
from jade.http.validate import parsed

SCOPES = {"read", "write", "create", "admin", "replicate"}


def key_json(k: dict[str, Any], usage: tuple[int, int] | None) -> dict[str, Any]:
    count, last = usage or (0, 0)
    return {
        "key_id": k["key_id"],
        "key_prefix": k["key_prefix"],
        "description": k["description"],
        "user_id": k["user_id"],
        "is_active": k["is_active"],
        "created_at": iso_ms(k["created_at"]),
        "expires_at": iso_ms(k.get("expires_at")),
        "last_used_at": iso_ms(last),
        "usage_count": count,
        "permissions": k["permissions"],
    }


async def create(request: web.Request) -> web.Response:
    p = principal_of(request)
    req = await parsed(request, S.CreateApiKey)
    uid = req.user_id
    if not uid:
        raise InvalidArgument("missing required field 'user_id'", code="missing_field")
    if uid != p.user_id and not p.is_admin:
        raise Forbidden("only an admin may create keys for another user", code="admin_required")
    svc = svc_of(request)
    user = svc.store.user(uid)
    if user is None:
        raise NotFound("User not found", user_id=uid)
    if not user["is_active"]:
        raise InvalidArgument("the user is inactive", code="user_inactive")
    perms = list(dict.fromkeys(req.permissions or []))  # strings: the declaration's
    unknown = set(perms) - SCOPES
    if unknown:
        raise InvalidArgument(f"unknown permissions {sorted(unknown)}; use {sorted(SCOPES)}")
    if ("admin" in perms or "replicate" in perms) and not p.is_admin:
        raise Forbidden("only an admin may create admin or replicate keys", code="admin_required")
    if p.scopes and (not perms or not set(perms) <= implied(p.scopes)):
        # a restricted key may only mint keys as restricted as itself
        raise Forbidden(
            f"this API key is limited to {sorted(p.scopes)}; it cannot create a key beyond that",
            code="permission_denied",
        )
    days = req.validity_days or 0
    raw = KEY_PREFIX + secrets.token_hex(32)
    key_id = uuid.uuid4().hex[:16]
    expires = now_ms() + days * 86_400_000 if days else None
    await engine_of(request).submit(
        Command(
            "auth.key.create",
            {
                "key_id": key_id,
                "user_id": uid,
                "hash": digest(raw),
                "key_prefix": raw[:12],
                "description": req.description or "",
                "permissions": perms,
                "expires_at": expires,
            },
            p.user_id,
        )
    )
    audit(request, "ADMIN_OPERATION", operation="api_key_create", resource=f"api-keys/{key_id}")
    k = svc.store.key(key_id)
    assert k is not None
    return json_response(
        {
            "api_key": raw,
            "key_id": key_id,
            "user_id": uid,
            "description": k["description"],
            "permissions": perms,
            "expires_at": iso_ms(expires),
            "created_at": iso_ms(k["created_at"]),
            "message": "API key created; it is shown only this once",
        },
        status=201,
    )


async def list_(request: web.Request) -> web.Response:
    p = principal_of(request)
    svc = svc_of(request)
    uid = request.query.get("user_id")
    keys = svc.store.keys()
    if not p.is_admin:
        keys = [k for k in keys if k["user_id"] == p.user_id]
    if uid:
        keys = [k for k in keys if k["user_id"] == uid]
    keys.sort(key=lambda k: (k["created_at"], k["key_id"]))
    out = [key_json(k, svc.key_usage.get(k["key_id"])) for k in keys]
    return json_response({"api_keys": out, "count": len(out)})


async def delete(request: web.Request) -> web.Response:
    p = principal_of(request)
    kid = request.match_info["key_id"]
    k = svc_of(request).store.key(kid)
    if k is None or (k["user_id"] != p.user_id and not p.is_admin):
        raise NotFound("API key not found", key_id=kid)
    if p.via == "key" and kid != p.key_id and not p.is_admin:
        # a leaked key must not take its owner's other keys away
        raise Forbidden("an API key may revoke itself only; revoke other keys with a login "
                        "token", code="token_required")
    await engine_of(request).submit(Command("auth.key.revoke", {"key_id": kid}, p.user_id))
    audit(request, "ADMIN_OPERATION", operation="api_key_revoke", resource=f"api-keys/{kid}")
    return json_response({"key_id": kid, "message": "API key revoked"})
