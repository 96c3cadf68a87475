"""Production (``JADEVECTORDB_ENV=production``) security defaults: a real JWT secret, no seeded
users, admin-only user management, TOTP for admins, the strong password policy, strict rate
limits, no reset tokens in replies, and the ``JADEVECTORDB_ADMIN_PASSWORD`` bootstrap."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import jwt
import pyotp
import pytest
from aiohttp import web

from jade import settings as settings_mod
from jade.http.app import build_app
from jade.http.keys import ENGINE
from jade.settings import ConfigError, Settings
from tests.conftest import USER_PASSWORD, Api, Server, free_port, running_server

SECRET = "p" * 40
FAST_HASH = {"argon2_opslimit": 1, "argon2_memlimit": 8192 * 1024}


def prod_env(tmp_path: Any, **extra: str) -> dict[str, str]:
    return {"JADEVECTORDB_ENV": "production",
            "JADEVECTORDB_DATA_DIR": str(tmp_path / "data"),
            "JADEVECTORDB_CONFIG_DIR": str(tmp_path / "no-config"),
            "JADEVECTORDB_LOG_DIR": str(tmp_path / "logs"),
            "JWT_SECRET": SECRET, **extra}


def prod_settings(tmp_path: Any, env: dict[str, str] | None = None, **overrides: Any) -> Settings:
    return settings_mod.load(env or prod_env(tmp_path), **{**FAST_HASH, **overrides})


@asynccontextmanager
async def bare(settings: Settings) -> AsyncIterator[tuple[Api, web.Application]]:
    app = build_app(settings)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        async with aiohttp.ClientSession() as session:
            yield Api(f"http://127.0.0.1:{port}", session), app
    finally:
        await runner.cleanup()


def bearer(api: Api, token: str) -> Api:
    return Api(api.base, api.session, {"Authorization": f"Bearer {token}"})


@pytest.fixture
async def prod(tmp_path: Any) -> AsyncIterator[Server]:
    async with running_server(prod_settings(tmp_path)) as srv:
        yield srv


def test_production_needs_a_real_secret(tmp_path: Any) -> None:
    for secret in (None, "", "short", "x" * 31):
        env = prod_env(tmp_path)
        if secret is None:
            del env["JWT_SECRET"]
        else:
            env["JWT_SECRET"] = secret
        with pytest.raises(ConfigError, match="JWT_SECRET"):
            settings_mod.load(env)
    s = settings_mod.load(prod_env(tmp_path, JWT_SECRET="y" * 32))
    assert s.production and s.jwt_secret == "y" * 32
    # the production defaults that the rest of this file relies on
    assert s.user_admin_only and s.require_admin_totp and not s.loopback_admin
    assert s.password_min_length == 12 and s.password_require_classes
    assert (s.login_rate_per_minute, s.register_rate_per_hour, s.forgot_rate_per_hour) == (5, 3, 3)
    assert s.api_rate_per_minute > 0 and s.lockout_threshold == 5 and s.ip_block_threshold == 10
    assert "y" * 32 not in repr(s) and s.redacted()["security.jwt_secret"] == "***"


async def test_no_default_users_and_no_loopback_admin(tmp_path: Any) -> None:
    async with bare(prod_settings(tmp_path)) as (anon, app):
        assert app[ENGINE].auth.user_count() == 0
        for user, pw in (("admin", "admin123"), ("dev", "dev123"), ("test", "test123")):
            status, _ = await anon.post("/v1/auth/login", {"username": user, "password": pw})
            assert status == 401
        status, body = await anon.post("/admin/readonly")
        assert status == 401, body


async def test_tokens_are_signed_with_the_configured_secret(prod: Server) -> None:
    token = prod.user.headers["Authorization"].split()[1]
    claims = jwt.decode(token, SECRET, algorithms=["HS256"])
    assert claims["sub"] == prod.user_id


async def test_user_management_is_admin_only(prod: Server) -> None:
    api = prod.user
    for method, path, body in (
        ("POST", "/v1/users", {"username": "made", "password": USER_PASSWORD}),
        ("GET", "/v1/users", None),
        ("GET", f"/v1/users/{prod.admin_id}", None),
        ("PUT", f"/v1/users/{prod.admin_id}", {"email": "x@example.com"}),
        ("DELETE", f"/v1/users/{prod.admin_id}", None),
        ("PUT", f"/v1/users/{prod.user_id}", {"is_active": False}),
        ("PUT", f"/v1/users/{prod.user_id}", {"roles": ["developer"]}),
        ("POST", "/v1/api-keys", {"user_id": prod.admin_id}),  # someone else's key
    ):
        status, resp = await api.call(method, path, body)
        assert status == 403, (method, path, resp)
    # self-service stays
    status, body = await api.get(f"/v1/users/{prod.user_id}")
    assert status == 200 and body["username"] == "tester"
    status, body = await api.put(f"/v1/users/{prod.user_id}", {"email": "new@example.com"})
    assert status == 200 and body["email"] == "new@example.com"
    status, body = await api.post("/v1/databases", {"name": "mine", "vectorDimension": 3})
    assert status == 201
    # and one's own API keys (API.md §4; issue 15, class 8e)
    status, body = await api.post("/v1/api-keys", {"user_id": prod.user_id})
    assert status == 201, body
    status, body = await api.get("/v1/api-keys")
    assert status == 200 and [k["user_id"] for k in body["api_keys"]] == [prod.user_id]


async def test_admin_needs_totp(prod: Server) -> None:
    admin = prod.admin  # logged in with the password only
    token = admin.headers["Authorization"].split()[1]
    for method, path in (("GET", "/v1/databases"), ("GET", "/v1/users"), ("GET", "/status"),
                         ("GET", "/v1/admin/ip-blocks"), ("POST", "/v1/admin/readonly")):
        status, body = await admin.call(method, path)
        assert status == 403 and body["error"] == "totp_enrollment_required", (path, body)
    # nor does the half-token give powers on public routes
    status, body = await admin.post("/v1/auth/register", {
        "username": "smuggled", "password": USER_PASSWORD, "is_admin": True})
    assert status == 201 and body["roles"] == ["user"], body
    status, body = await admin.post("/v1/auth/2fa/enroll")
    assert status == 200, body
    totp = pyotp.TOTP(body["secret"])
    status, body = await admin.post("/v1/auth/2fa/confirm", {"code": totp.now()})
    assert status == 200 and body["totp_enabled"] is True
    status, _ = await bearer(prod.anon, token).post("/v1/auth/2fa/enroll")
    assert status == 401  # the enrol-only token has served its purpose
    creds = {"username": "admin", "password": "Admin_Secure123@"}
    status, body = await prod.anon.post("/v1/auth/login", creds)
    assert status == 401 and body["error"] == "totp_required"
    following = totp.at(time.time() + 30)  # the confirming code is used up: the next one
    status, body = await prod.anon.post("/v1/auth/login", {**creds, "totp_code": following})
    assert status == 200 and not body.get("totp_enrollment_required"), body
    full = bearer(prod.anon, body["token"])
    for path in ("/v1/users", "/v1/admin/ip-blocks", "/status", "/v1/databases"):
        status, resp = await full.get(path)
        assert status == 200, (path, resp)
    # a plain user is not asked for TOTP
    status, _ = await prod.user.get("/status")
    assert status == 200


async def test_password_policy(tmp_path: Any) -> None:
    async with bare(prod_settings(tmp_path, register_rate_per_hour=100)) as (anon, _):
        for i, weak in enumerate(("Short_1!", "alllowercase_123!", "ALLUPPERCASE_123!",
                                  "NoDigitsHere_Ok!", "NoPunctuation123", "x" * 1025)):
            status, body = await anon.post("/v1/auth/register",
                                           {"username": f"weak{i}", "password": weak})
            assert status == 400 and body["error"] in ("weak_password", "invalid_argument"), \
                (weak, body)
        for i, strong in enumerate((USER_PASSWORD, "TestPass123@")):
            status, body = await anon.post("/v1/auth/register",
                                           {"username": f"strong{i}", "password": strong})
            assert status == 201, body
        token = (await anon.post("/v1/auth/login", {"username": "strong0",
                                                    "password": USER_PASSWORD}))[1]
        user = bearer(anon, token["token"])
        status, body = await user.put(f"/v1/users/{token['user_id']}/password",
                                      {"old_password": USER_PASSWORD, "new_password": "short"})
        assert status == 400 and body["error"] == "weak_password"


async def test_forgot_password_never_tells(prod: Server) -> None:
    replies = []
    for body in ({"username": "tester"}, {"username": "no_such_user"},
                 {"email": "t@example.com"}, {"email": "none@example.com"}):
        status, resp = await prod.anon.post("/v1/auth/forgot-password", body)
        assert status == 200, resp
        replies.append(resp)
    assert all(r == replies[0] for r in replies), replies
    assert "reset_token" not in replies[0] and "expires_in_minutes" not in replies[0]
    # a reset was still issued for the real account (in the store only)
    resets = prod.app[ENGINE].auth._all("resets")
    assert len(resets) == 2 and {r["user_id"] for r in resets} == {prod.user_id}


async def test_production_rate_limits(prod: Server) -> None:
    # the fixture registered two users and logged in twice from this address
    await prod.anon.post("/v1/auth/register", {"username": "third", "password": USER_PASSWORD})
    status, body = await prod.anon.post("/v1/auth/register",
                                        {"username": "fourth", "password": USER_PASSWORD})
    assert status == 429 and body["retry_after"] > 60
    for _ in range(3):
        status, _ = await prod.anon.post("/v1/auth/login",
                                         {"username": "tester", "password": USER_PASSWORD})
        assert status == 200
    status, body = await prod.anon.post("/v1/auth/login",
                                        {"username": "tester", "password": USER_PASSWORD})
    assert status == 429 and body["error"] == "rate_limit_exceeded"


async def test_admin_password_bootstrap(tmp_path: Any) -> None:
    env = prod_env(tmp_path, JADEVECTORDB_ADMIN_PASSWORD="Bootstrap_Pass123!")
    async with bare(prod_settings(tmp_path, env)) as (anon, app):
        users = app[ENGINE].auth.users()
        assert [(u["username"], u["roles"], u["must_change_password"]) for u in users] == [
            ("admin", ["admin"], True)]
        assert "Bootstrap_Pass123!" not in str(users)
        status, body = await anon.post("/v1/auth/login", {"username": "admin",
                                                          "password": "Bootstrap_Pass123!"})
        assert status == 200 and body["must_change_password"] is True
        assert body["totp_enrollment_required"] is True
        status, body = await anon.post("/v1/auth/register", {
            "username": "late_admin", "password": USER_PASSWORD, "is_admin": True})
        assert status == 201 and body["roles"] == ["user"]
    # a restart with the variable still set creates nobody and changes nothing
    env["JADEVECTORDB_ADMIN_PASSWORD"] = "Other_Password456!"
    async with bare(prod_settings(tmp_path, env)) as (anon, app):
        assert sorted(u["username"] for u in app[ENGINE].auth.users()) == ["admin", "late_admin"]
        status, _ = await anon.post("/v1/auth/login", {"username": "admin",
                                                       "password": "Other_Password456!"})
        assert status == 401
