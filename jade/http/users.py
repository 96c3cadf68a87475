"""/v1/users and passwords (API.md §2, §3). Who may manage users is one setting,
``user_admin_only``: on in production (admins only), off in development (any authenticated user,
which the reference client's test suite needs). Either way nobody but an admin grants the
``admin`` or ``replicator`` roles, and everyone may read and change their own account."""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web

from jade.auth.principal import ADMIN, REPLICATOR, Principal
from jade.core.decide import Command
from jade.errors import Conflict, Forbidden, InvalidArgument, NotFound, Unauthorized
from jade.http.auth import (
    audit,
    create_user,
    principal_of,
    roles_of,
    start_session,
    svc_of,
    user_json,
    username_of,
)
from jade.http.databases import engine_of
from jade.http.keys import SETTINGS
from jade.http.middleware import json_response
from jade.http.validate import opt_bool, opt_str, read_json

PRIVILEGED = {ADMIN, REPLICATOR}


def require_manager(request: web.Request, target: str | None = None) -> Principal:
    """The caller may manage users (or is acting on ``target`` = itself)."""
    p = principal_of(request)
    if p.is_admin or (target is not None and target == p.user_id):
        return p
    if request.app[SETTINGS].user_admin_only:
        raise Forbidden("user management requires the admin role", code="admin_required")
    return p


def _check_roles(p: Principal, roles: list[str]) -> None:
    if not p.is_admin and PRIVILEGED & set(roles):
        raise Forbidden(
            "only an admin may grant the admin or replicator roles", code="admin_required"
        )


def _guard_privileged(p: Principal, target: dict[str, Any]) -> None:
    """Only an admin changes or removes an admin or replicator account (development lets any
    user manage users; it must not let one disable, demote or rename the admin)."""
    if not p.is_admin and target["user_id"] != p.user_id and PRIVILEGED & set(target["roles"]):
        raise Forbidden(
            "only an admin may change an admin or replicator account", code="admin_required"
        )


def _user(request: web.Request) -> dict[str, Any]:
    uid = request.match_info["uid"]
    user = svc_of(request).store.user(uid)
    if user is None:
        raise NotFound("User not found", user_id=uid)
    return user


async def create(request: web.Request) -> web.Response:
    p = require_manager(request)
    body = await read_json(request)
    roles = roles_of(body["roles"]) if body.get("roles") is not None else ["user"]
    if body.get("is_admin") is True and ADMIN not in roles:
        roles = [ADMIN, *roles]
    _check_roles(p, roles)
    user = await create_user(request, body, roles=roles)
    audit(
        request,
        "ADMIN_OPERATION",
        operation="user_create",
        resource="users",
        details=f"created {user['user_id']} roles={roles}",
    )
    return json_response({**user_json(user), "message": "User created successfully"}, status=201)


async def list_(request: web.Request) -> web.Response:
    require_manager(request)
    role = request.query.get("role")
    status = request.query.get("status")
    if status not in (None, "", "active", "inactive"):
        raise InvalidArgument("status must be active or inactive")
    users = sorted(svc_of(request).store.users(), key=lambda u: (u["created_at"], u["user_id"]))
    if role:
        users = [u for u in users if role in u["roles"]]
    if status:
        users = [u for u in users if u["is_active"] == (status == "active")]
    return json_response({"users": [user_json(u) for u in users], "count": len(users)})


async def get(request: web.Request) -> web.Response:
    require_manager(request, request.match_info["uid"])
    return json_response(user_json(_user(request)))


async def update(request: web.Request) -> web.Response:
    uid = request.match_info["uid"]
    p = principal_of(request)
    if uid != p.user_id:
        require_manager(request)  # someone else's account: before looking at the body
    body = await read_json(request)
    changes: dict[str, Any] = {}
    if "is_active" in body:
        if not isinstance(body["is_active"], bool):
            raise InvalidArgument("'is_active' must be true or false")
        changes["is_active"] = body["is_active"]
    if "roles" in body:
        changes["roles"] = roles_of(body["roles"])
        _check_roles(p, changes["roles"])
    if "username" in body:
        changes["username"] = username_of(body)
    if "email" in body:
        changes["email"] = opt_str(body, "email", max_len=256)
    if not changes:
        raise InvalidArgument("nothing to update: give is_active, roles, username or email")
    self_safe = set(changes) <= {"email", "username"}
    require_manager(request, uid if self_safe else None)
    target = _user(request)
    _guard_privileged(p, target)
    new_name = changes.get("username")
    if new_name and new_name.lower() != target["username"].lower():
        if svc_of(request).store.user_by_name(new_name) is not None:  # decide re-checks
            raise Conflict("Username already exists", code="username_exists")
    await engine_of(request).submit(
        Command("auth.user.update", {"user_id": uid, "changes": changes}, p.user_id)
    )
    user = _user(request)
    audit(
        request,
        "ADMIN_OPERATION",
        operation="user_update",
        resource=f"users/{uid}",
        details=f"changed {sorted(changes)}",
    )
    return json_response({**user_json(user), "message": "User updated successfully"})


async def delete(request: web.Request) -> web.Response:
    p = require_manager(request)
    user = _user(request)
    _guard_privileged(p, user)
    await engine_of(request).submit(
        Command("auth.user.delete", {"user_id": user["user_id"]}, p.user_id)
    )
    audit(request, "DATA_DELETION", operation="user_delete", resource=f"users/{user['user_id']}")
    return json_response(
        {
            "user_id": user["user_id"],
            "username": user["username"],
            "message": "User deleted successfully",
        }
    )


async def change_password(request: web.Request) -> web.Response:
    """A new password ends what the old one let in: every session of the user (the caller's
    own too: a thief holding a copy of that token must not stay in; the caller gets a fresh
    token in the reply), every reset token not used yet, and the user's API keys, unless the
    body says ``keep_api_keys: true`` (a routine rotation that must not stop automation)."""
    uid = request.match_info["uid"]
    p = principal_of(request)
    if p.user_id != uid and not p.is_admin:
        raise Forbidden("you may only change your own password", code="permission_denied")
    svc = svc_of(request)
    body = await read_json(request)
    old = body.get("old_password")
    if not isinstance(old, str) or not old:
        raise InvalidArgument("missing required field 'old_password'", code="missing_field")
    new = svc.check_strength(body.get("new_password"), "new_password")
    keep_keys = opt_bool(body, "keep_api_keys", False)
    user = _user(request)
    if not await asyncio.to_thread(svc.verify_password, user["password_hash"], old):
        audit(request, "AUTHENTICATION_FAILURE", success=False, operation="change_password")
        raise Unauthorized("old password is wrong", code="invalid_credentials")
    hashed = await asyncio.to_thread(svc.hash_password, new)
    changes: dict[str, Any] = {
        "password_hash": hashed,
        "must_change_password": False,
        "revoke_tokens": True,
    }
    if keep_keys:
        changes["keep_keys"] = True
    keys = 0 if keep_keys else sum(
        1 for k in svc.store.keys() if k["user_id"] == uid and k["is_active"])
    await engine_of(request).submit(
        Command("auth.user.update", {"user_id": uid, "changes": changes}, p.user_id)
    )
    audit(request, "CONFIGURATION_CHANGE", operation="change_password", resource=f"users/{uid}",
          details=f"sessions ended; api keys {'kept' if keep_keys else 'revoked'}")
    out: dict[str, Any] = {
        "success": True,
        "message": "Password changed successfully; every session of the account has ended"
                   + ("" if keep_keys else " and its API keys are revoked"),
        "api_keys_revoked": keys,
    }
    if p.jti is not None and p.user_id == uid:  # the caller's session goes on as a new one
        session = await start_session(request, _user(request))
        out.update({k: session[k] for k in ("token", "expires_at", "token_type")})
        out["message"] += "; use the new token in this reply"
    return json_response(out)


async def admin_reset_password(request: web.Request) -> web.Response:
    p = principal_of(request)
    svc = svc_of(request)
    body = await read_json(request)
    new = svc.check_strength(body.get("new_password"), "new_password")
    user = _user(request)
    hashed = await asyncio.to_thread(svc.hash_password, new)
    await engine_of(request).submit(
        Command(
            "auth.user.update",
            {
                "user_id": user["user_id"],
                "changes": {
                    "password_hash": hashed,
                    "must_change_password": True,
                    "revoke_tokens": True,
                    "locked_until": 0,
                },
            },
            p.user_id,
        )
    )
    audit(
        request,
        "ADMIN_OPERATION",
        operation="admin_reset_password",
        resource=f"users/{user['user_id']}",
    )
    return json_response(
        {
            "success": True,
            "message": "Password reset: the user's sessions and API keys have ended, and "
                       "the user must change the password at next login",
            "must_change_password": True,
        }
    )
