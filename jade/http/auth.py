"""/v1/auth/*: register, login, logout, forgot/reset password, TOTP (API.md §2)."""

from __future__ import annotations

import asyncio
import re
import secrets
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import pyotp
from aiohttp import web

from jade.auth import totp
from jade.auth.apikeys import digest
from jade.auth.clock import now_ms
from jade.auth.principal import ADMIN, Principal
from jade.auth.service import AuthService
from jade.core.decide import Command
from jade.errors import Conflict, Forbidden, InvalidArgument, Unauthorized
from jade.http.databases import engine_of
from jade.http.keys import AUDIT, AUTH, CLIENT_IP, PRINCIPAL, REQUEST_ID, SETTINGS
from jade.http.middleware import json_response
from jade.http.validate import opt_bool, opt_str, read_json

USERNAME = re.compile(r"^[A-Za-z0-9_.@+-]{1,64}$")
RESET_TTL_MS = 15 * 60 * 1000


def iso_ms(ms: int | None) -> str | None:
    if not ms:
        return None
    return datetime.fromtimestamp(ms / 1000, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def svc_of(request: web.Request) -> AuthService:
    return request.app[AUTH]


def principal_or_none(request: web.Request) -> Principal | None:
    """The authenticated caller; None on a public route called without (valid) credentials."""
    return request[PRINCIPAL] if PRINCIPAL in request else None


def principal_of(request: web.Request) -> Principal:
    p = principal_or_none(request)
    if p is None:
        raise Unauthorized("authentication required", code="missing_credentials")
    return p


def audit(request: web.Request, event: str, **kw: Any) -> None:
    p = principal_or_none(request)
    kw.setdefault("user_id", p.user_id if p else None)
    kw.setdefault("ip", request.get(CLIENT_IP, ""))
    kw.setdefault("client_info", request.headers.get("User-Agent", ""))
    request.app[AUDIT].record(event, request_id=request.get(REQUEST_ID), **kw)


def username_of(body: dict[str, Any], key: str = "username") -> str:
    v = body.get(key)
    if v is None:
        raise InvalidArgument(f"missing required field '{key}'", code="missing_field")
    if not isinstance(v, str) or not USERNAME.match(v):
        raise InvalidArgument(
            f"'{key}' must be 1-64 characters of letters, digits and _ . @ + -",
            code="invalid_username",
        )
    return v


def roles_of(value: object) -> list[str]:
    if isinstance(value, str):
        value = [value]
    if (
        not isinstance(value, list)
        or not value
        or not all(isinstance(r, str) and re.match(r"^[A-Za-z0-9_.-]{1,64}$", r) for r in value)
    ):
        raise InvalidArgument("'roles' must be a non-empty list of role names")
    return list(dict.fromkeys(value))


def user_json(u: dict[str, Any]) -> dict[str, Any]:
    return {
        "user_id": u["user_id"],
        "id": u["user_id"],
        "username": u["username"],
        "email": u.get("email", ""),
        "is_active": u["is_active"],
        "roles": u["roles"],
        "created_at": iso_ms(u["created_at"]),
        "last_login": iso_ms(u.get("last_login")),
        "must_change_password": u.get("must_change_password", False),
        "totp_enabled": u.get("totp_enabled", False),
    }


async def create_user(
    request: web.Request,
    body: dict[str, Any],
    *,
    roles: list[str],
    bootstrap: bool = False,
    must_change: bool = False,
) -> dict[str, Any]:
    """Shared by register and POST /v1/users: validate, hash off the loop, submit."""
    svc = svc_of(request)
    username = username_of(body)
    password = svc.check_strength(body.get("password"))
    email = opt_str(body, "email", max_len=256)
    if svc.store.user_by_name(username) is not None:  # fast path; decide re-checks
        raise Conflict("Username already exists", code="username_exists")
    hashed = await asyncio.to_thread(svc.hash_password, password)
    user_id = uuid.uuid4().hex[:16]
    p = principal_or_none(request)
    await engine_of(request).submit(
        Command(
            "auth.user.create",
            {
                "user_id": user_id,
                "username": username,
                "email": email,
                "password_hash": hashed,
                "roles": roles,
                "bootstrap": bootstrap,
                "must_change_password": must_change,
            },
            p.user_id if p else "anonymous",
        )
    )
    user = svc.store.user(user_id)
    assert user is not None
    return user


async def register(request: web.Request) -> web.Response:
    svc = svc_of(request)
    ip = request[CLIENT_IP]
    svc.limit(svc.register_limit, ip, "register")
    body = await read_json(request)
    caller = principal_or_none(request)
    asked: list[str] = []
    if "roles" in body and body["roles"] is not None:
        asked = roles_of(body["roles"])
    if body.get("is_admin") is True and ADMIN not in asked:
        asked = [ADMIN, *asked]
    roles = ["user"]
    bootstrap = False
    note = ""
    if asked:
        if caller is not None and caller.is_admin:
            roles = asked
        elif svc.store.user_count() == 0:
            roles, bootstrap = asked, True
        else:
            note = " (roles ignored: only an admin may grant roles)"
    user = await create_user(request, body, roles=roles, bootstrap=bootstrap)
    audit(
        request,
        "ADMIN_OPERATION" if roles != ["user"] else "DATA_MODIFICATION",
        user_id=user["user_id"],
        operation="register",
        resource="users",
        details=f"roles={user['roles']}",
    )
    return json_response(
        {
            "user_id": user["user_id"],
            "username": user["username"],
            "roles": user["roles"],
            "message": "User registered successfully" + note,
            "created_at": iso_ms(user["created_at"]),
        },
        status=201,
    )


async def login(request: web.Request) -> web.Response:
    """A token for a user name and password (and TOTP code). Every refusal costs the same: one
    password verification, whether the name exists, is locked, inactive or the password wrong;
    a name that names nobody is counted and locked like one that does (``Limits.lock_name``),
    so neither the answers nor their timing tell which user names exist."""
    svc = svc_of(request)
    settings = request.app[SETTINGS]
    ip = request[CLIENT_IP]
    svc.limit(svc.login_limit, ip, "login")
    body = await read_json(request)
    if not isinstance(body.get("username"), str) or not body.get("username"):
        raise InvalidArgument("missing required field 'username'", code="missing_field")
    if not isinstance(body.get("password"), str) or not body.get("password"):
        raise InvalidArgument("missing required field 'password'", code="missing_field")
    username, password = body["username"], body["password"]
    name = username[:256]  # the key of failure counts and locks (a longer name names nobody)
    user = svc.store.user_by_name(username) if len(username) <= 64 else None
    engine = engine_of(request)
    audit(
        request,
        "AUTHENTICATION_ATTEMPT",
        user_id=user["user_id"] if user else None,
        operation="login",
        details=f"username={username[:64]}",
    )
    locked_until = (
        user.get("locked_until", 0) if user is not None else svc.limits.name_locked_until(name)
    )
    if locked_until > now_ms():
        await asyncio.to_thread(svc.waste_verify, password)  # as long as any other refusal
        retry = max(1, (locked_until - now_ms()) // 1000)
        audit(
            request,
            "AUTHENTICATION_FAILURE",
            user_id=user["user_id"] if user else None,
            success=False,
            operation="login",
            details="account locked",
        )
        raise Unauthorized(
            "account locked after repeated failed logins", code="account_locked", retry_after=retry
        )
    ok = False
    refusal = ("Invalid username or password", "invalid_credentials")
    if user is not None and user["is_active"]:
        ok = await asyncio.to_thread(svc.verify_password, user["password_hash"], password)
    else:
        await asyncio.to_thread(svc.waste_verify, password)
    step = 0
    if ok and user is not None and user.get("totp_enabled"):
        code = body.get("totp_code")
        if code is None or code == "":
            raise Unauthorized("a TOTP code is required: send 'totp_code'", code="totp_required")
        found = totp.step_of(user["totp_secret"], code, time.time())
        if found is None:
            ok = False
        elif found <= user.get("totp_last_step", 0):  # the session record re-checks
            ok, refusal = False, TOTP_REUSED
        else:
            step = found
    if not ok:
        lock_until, block_until = svc.note_failure(name, ip)
        if lock_until:
            if user is not None:
                t0 = time.perf_counter()
                await engine.submit(
                    Command("auth.user.lock", {"user_id": user["user_id"], "until": lock_until})
                )
                svc.limits.note_lock_seconds(time.perf_counter() - t0)
            else:  # held in memory, after as long as recording a user's lock takes
                svc.limits.lock_name(name, lock_until)
                await asyncio.sleep(svc.limits.lock_seconds)
            audit(
                request,
                "SECURITY_POLICY_VIOLATION",
                user_id=user["user_id"] if user else None,
                success=False,
                operation="lockout",
                details="account locked" if user else f"unknown user name {username[:64]!r} locked",
            )
        if block_until:
            await engine.submit(
                Command(
                    "auth.block.set",
                    {
                        "ip": ip,
                        "until": block_until,
                        "reason": "failed_logins",
                        "failures": settings.ip_block_threshold,
                    },
                )
            )
            audit(
                request,
                "SECURITY_POLICY_VIOLATION",
                success=False,
                operation="ip_block",
                details=f"ip {ip} blocked",
            )
        audit(
            request,
            "AUTHENTICATION_FAILURE",
            user_id=user["user_id"] if user else None,
            success=False,
            operation="login",
            details="invalid credentials" if refusal[1] == "invalid_credentials" else refusal[1],
        )
        raise Unauthorized(refusal[0], code=refusal[1])
    assert user is not None
    try:
        out = await start_session(request, user, totp_step=step)
    except Unauthorized as exc:  # a revocation or the same TOTP code committed meanwhile
        audit(request, "AUTHENTICATION_FAILURE", user_id=user["user_id"], success=False,
              operation="login", details=exc.code)
        raise
    svc.note_success(name, ip)
    audit(
        request,
        "AUTHENTICATION_SUCCESS",
        user_id=user["user_id"],
        operation="login",
        session_id=out["session_id"],
    )
    del out["session_id"]
    out["message"] = "Login successful"
    if out.get("totp_enrollment_required"):
        out["message"] = (
            "Admin accounts need two-factor authentication: this token may only "
            "enrol (POST /v1/auth/2fa/enroll, then /v1/auth/2fa/confirm)"
        )
    elif out["must_change_password"]:
        out["message"] = (
            "Login successful; the password is temporary: this token may only change it "
            f"(PUT /v1/users/{user['user_id']}/password) or log out"
        )
    return json_response(out)


TOTP_REUSED = ("this TOTP code was already used: wait for the next one", "totp_reused")


async def start_session(
    request: web.Request, user: dict[str, Any], *, totp_step: int = 0
) -> dict[str, Any]:
    """A new session of ``user`` (a login, or the session a password change hands back): a
    token, and its session record committed. The record is refused in the group commit if
    the user's tokens were revoked since ``user`` was read (a password changed while this
    login checked the old one) or if ``totp_step`` was used meanwhile. Returns the reply's
    fields and ``session_id``."""
    svc = svc_of(request)
    settings = request.app[SETTINGS]
    enroll_only = bool(
        settings.require_admin_totp and ADMIN in user["roles"] and not user.get("totp_enabled")
    )
    token, jti, exp = svc.issue_token(user, enroll_only=enroll_only)
    body: dict[str, Any] = {
        "jti": jti,
        "user_id": user["user_id"],
        "ip": request.get(CLIENT_IP, ""),
        "expires_at": exp,
        "valid_after": user["tokens_valid_after"],
    }
    if totp_step:
        body["totp_step"] = totp_step
    await engine_of(request).submit(Command("auth.session.create", body, user["user_id"]))
    out: dict[str, Any] = {
        "token": token,
        "user_id": user["user_id"],
        "username": user["username"],
        "roles": user["roles"],
        "expires_at": iso_ms(exp),
        "token_type": "Bearer",
        "must_change_password": user.get("must_change_password", False),
        "session_id": jti,
    }
    if enroll_only:
        out["totp_enrollment_required"] = True
    return out


async def logout(request: web.Request) -> web.Response:
    """Ends the calling token's session; with ``{"all": true}`` every session of the user (a
    stolen token somewhere, a lost laptop). API keys are not sessions: they are revoked one by
    one (DELETE /v1/api-keys/{key_id}), or all at once by a password change."""
    p = principal_of(request)
    if p.jti is None:
        raise InvalidArgument(
            "logout needs a login token (API keys are revoked with DELETE /v1/api-keys/{key_id})",
            code="not_a_token",
        )
    everywhere = opt_bool(await read_json(request, required=False), "all", False)
    body: dict[str, Any] = {"jti": p.jti}
    if everywhere:
        body["all_of"] = p.user_id
    records = await engine_of(request).submit(Command("auth.session.revoke", body, p.user_id))
    audit(request, "AUTHENTICATION_SUCCESS", operation="logout_all" if everywhere else "logout",
          session_id=p.jti)
    return json_response({"message": "Logged out successfully", "user_id": p.user_id,
                          "sessions_ended": len(records)})


async def forgot_password(request: web.Request) -> web.Response:
    svc = svc_of(request)
    body = await read_json(request)
    username = body.get("username")
    email = body.get("email")
    username = username if isinstance(username, str) and username else None
    email = email if isinstance(email, str) and email else None
    if username is None and email is None:
        raise InvalidArgument("give 'username' or 'email'", code="missing_field")
    ident = (username or email or "").lower()[:256]
    svc.limit(svc.forgot_limit, ident, "forgot_password")
    user: dict[str, Any] | None = None
    if username is not None:
        user = svc.store.user_by_name(username) if len(username) <= 64 else None
    elif email is not None and len(email) <= 256:
        user = svc.store.user_by_email(email)
    out: dict[str, Any] = {
        "message": "If the account exists, a password reset has been issued to its owner."
    }
    if user is not None and user["is_active"]:
        token = secrets.token_urlsafe(32)
        await engine_of(request).submit(
            Command(
                "auth.reset.create",
                {
                    "hash": digest(token),
                    "user_id": user["user_id"],
                    "expires_at": now_ms() + RESET_TTL_MS,
                },
            )
        )
        audit(request, "ADMIN_OPERATION", user_id=user["user_id"], operation="forgot_password")
        if not request.app[SETTINGS].production:
            out["reset_token"] = token
            out["expires_in_minutes"] = 15
    return json_response(out)


async def reset_password(request: web.Request) -> web.Response:
    svc = svc_of(request)
    body = await read_json(request)
    token = body.get("reset_token")
    if not isinstance(token, str) or not token:
        raise InvalidArgument("missing required field 'reset_token'", code="missing_field")
    password = svc.check_strength(body.get("new_password"), "new_password")
    reset = svc.store.reset(digest(token))
    if reset is None or reset["used"] or reset["expires_at"] < now_ms():  # decide re-checks
        raise InvalidArgument("invalid or expired reset token", code="invalid_reset_token")
    hashed = await asyncio.to_thread(svc.hash_password, password)
    await engine_of(request).submit(
        Command("auth.reset.use", {"hash": digest(token), "password_hash": hashed})
    )
    audit(request, "ADMIN_OPERATION", user_id=reset["user_id"], operation="reset_password")
    return json_response({"message": "Password has been reset", "user_id": reset["user_id"]})


async def totp_enroll(request: web.Request) -> web.Response:
    p = principal_of(request)
    user = svc_of(request).store.user(p.user_id)
    if user is None:
        raise Unauthorized("unknown user")
    if user.get("totp_enabled"):
        raise Forbidden("two-factor authentication is already on", code="totp_already_enabled")
    secret = pyotp.random_base32()
    await engine_of(request).submit(
        Command(
            "auth.user.update",
            {"user_id": p.user_id, "changes": {"totp_secret": secret, "totp_enabled": False}},
            p.user_id,
        )
    )
    uri = pyotp.TOTP(secret).provisioning_uri(name=user["username"], issuer_name="JadeVectorDB")
    audit(request, "CONFIGURATION_CHANGE", operation="totp_enroll")
    return json_response(
        {
            "secret": secret,
            "otpauth_uri": uri,
            "message": "Scan the URI, then POST /v1/auth/2fa/confirm {code}",
        }
    )


async def totp_confirm(request: web.Request) -> web.Response:
    p = principal_of(request)
    body = await read_json(request)
    code = body.get("code")
    user = svc_of(request).store.user(p.user_id)
    if user is None or not user.get("totp_secret"):
        raise InvalidArgument("enrol first: POST /v1/auth/2fa/enroll", code="totp_not_enrolled")
    step = totp.step_of(user["totp_secret"], code, time.time())
    if step is None:
        audit(request, "AUTHENTICATION_FAILURE", success=False, operation="totp_confirm")
        raise InvalidArgument("invalid TOTP code", code="invalid_totp")
    # the confirming code is used up like a login's (RFC 6238 5.2): the next login needs the
    # next code
    await engine_of(request).submit(
        Command(
            "auth.user.update",
            {
                "user_id": p.user_id,
                "changes": {
                    "totp_enabled": True,
                    "totp_last_step": step,
                    "revoke_tokens": p.enroll_only,
                },
            },
            p.user_id,
        )
    )
    audit(request, "CONFIGURATION_CHANGE", operation="totp_confirm")
    msg = "Two-factor authentication is on"
    if p.enroll_only:
        msg += "; log in again with the next code as 'totp_code' for a full token"
    return json_response({"message": msg, "totp_enabled": True})
