"""Sessions outlive what should end them (issue 15, class 4), against real servers.

(a) A password change ends every session of the user (the caller's own too: its reply carries
a fresh token) and the user's API keys (unless the caller keeps them with ``keep_api_keys``);
an admin reset, a reset by token, a deactivation and a deletion end them all, and a reset ends
the user's other reset tokens. (b) A TOTP code is good once: the last time step used is in the
auth store through the log, so a restart and a promoted replica refuse it too. (c) A token of a
user who must change their password may only change it or log out. (d) A token's session
belongs to the token's subject, a session expires on the server whatever the token says, and
production refuses a weak ``JWT_SECRET_PREVIOUS``. Siblings: a role granted to a user without
TOTP, logout of one session or of all, a revocation on the primary seen by a replica.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
import jwt
import pyotp
import pytest

from jade import settings as settings_mod
from jade.auth.clock import now_ms
from jade.core.decide import Command
from jade.errors import Unauthorized
from jade.http.keys import AUTH, ENGINE
from jade.settings import ConfigError
from tests.conftest import (
    ADMIN_PASSWORD,
    USER_PASSWORD,
    Api,
    Server,
    login,
    make_settings,
    running_server,
)
from tests.test_auth_flows import (
    NEW_PASSWORD,
    bare_server,
    bearer,
    new_key,
    new_user,
    resign,
    token_of,
)
from tests.test_auth_production import prod_env
from tests.test_replication import Node, bootstrap_auth, call, client, wait_converged

LOGIN = "/v1/auth/login"


async def alive(api: Api) -> int:
    """The status a credential gets on a route any valid credential may call."""
    return (await api.get("/status"))[0]


async def sessions_of(server: Server, uid: str) -> list[str]:
    status, body = await server.admin.get(f"/v1/security/sessions?user_id={uid}")
    assert status == 200, body
    return [s["session_id"] for s in body["sessions"]]


def jti_of(token: str) -> str:
    return str(jwt.decode(token, options={"verify_signature": False})["jti"])


# -- (a) a password change ends sessions and keys ------------------------------------------------
async def test_a_password_change_ends_every_session_and_key(server: Server) -> None:
    caller, other = server.user, await server.client_for("tester", USER_PASSWORD)
    key = bearer(server.anon, (await new_key(caller, server.user_id))["api_key"])
    assert [await alive(c) for c in (caller, other, key)] == [200, 200, 200]
    status, body = await caller.put(f"/v1/users/{server.user_id}/password",
                                    {"old_password": USER_PASSWORD, "new_password": NEW_PASSWORD})
    assert status == 200 and body["success"] is True, body
    # another session (a thief's copy of the caller's token included) and the keys end
    assert [await alive(c) for c in (other, key, caller)] == [401, 401, 401]
    assert body["api_keys_revoked"] == 1
    fresh = bearer(server.anon, body["token"])  # the caller goes on with a new session
    assert await alive(fresh) == 200
    assert await sessions_of(server, server.user_id) == [jti_of(body["token"])]
    status, keys = await fresh.get("/v1/api-keys")
    assert [k["is_active"] for k in keys["api_keys"]] == [False]


async def test_a_password_change_may_keep_the_api_keys(server: Server) -> None:
    """Routine rotation need not break automation: the caller says so, and sessions still
    end."""
    other = await server.client_for("tester", USER_PASSWORD)
    key = bearer(server.anon, (await new_key(server.user, server.user_id))["api_key"])
    status, body = await server.user.put(
        f"/v1/users/{server.user_id}/password",
        {"old_password": USER_PASSWORD, "new_password": NEW_PASSWORD, "keep_api_keys": True})
    assert status == 200, body
    assert [await alive(c) for c in (other, server.user, key)] == [401, 401, 200]
    assert body["api_keys_revoked"] == 0
    status, body = await server.user.put(
        f"/v1/users/{server.user_id}/password",
        {"old_password": USER_PASSWORD, "new_password": NEW_PASSWORD, "keep_api_keys": "yes"})
    assert status in (400, 401)


async def test_an_admin_changing_someones_password_ends_theirs_not_the_admins(
        server: Server) -> None:
    key = bearer(server.anon, (await new_key(server.user, server.user_id))["api_key"])
    status, body = await server.admin.put(f"/v1/users/{server.user_id}/password",
                                          {"old_password": USER_PASSWORD,
                                           "new_password": NEW_PASSWORD})
    assert status == 200 and "token" not in body, body  # nothing to re-issue to the admin
    assert [await alive(c) for c in (server.user, key, server.admin)] == [401, 401, 200]


async def test_a_login_racing_a_password_change_gets_no_session(server: Server) -> None:
    """A login that verified the old password before a change commits after it: refused in
    the group commit, not left as a dead session in the store."""
    svc, engine = server.app[AUTH], server.app[ENGINE]
    user = svc.store.user(server.user_id)
    token, jti, exp = svc.issue_token(user)  # the password was checked: now the change lands
    status, _ = await server.user.put(f"/v1/users/{server.user_id}/password",
                                      {"old_password": USER_PASSWORD,
                                       "new_password": NEW_PASSWORD})
    assert status == 200
    with pytest.raises(Unauthorized):  # what the login saw of the user no longer holds
        await engine.submit(Command("auth.session.create", {
            "jti": jti, "user_id": server.user_id, "expires_at": exp,
            "valid_after": user["tokens_valid_after"]}))
    assert svc.store.session(jti) is None
    assert await alive(bearer(server.anon, token)) == 401


async def test_an_admin_reset_ends_sessions_and_keys(server: Server) -> None:
    """Nothing issued before survives, and the sessions are gone from the store (listed as
    active sessions before: refused, but still there)."""
    uid, api = await new_user(server, "victim")
    key = bearer(server.anon, (await new_key(api, uid))["api_key"])
    status, _ = await server.admin.put(f"/v1/admin/users/{uid}/reset-password",
                                       {"new_password": NEW_PASSWORD})
    assert status == 200
    assert [await alive(c) for c in (api, key)] == [401, 401]
    assert await sessions_of(server, uid) == []


async def test_a_reset_ends_the_other_reset_tokens(server: Server) -> None:
    tokens = []
    for _ in range(2):
        status, body = await server.anon.post("/v1/auth/forgot-password", {"username": "tester"})
        tokens.append(body["reset_token"])
    status, body = await server.anon.post("/v1/auth/reset-password", {
        "reset_token": tokens[0], "new_password": NEW_PASSWORD})
    assert status == 200, body
    for t in tokens:  # the used one, and the one issued beside it
        status, body = await server.anon.post("/v1/auth/reset-password", {
            "reset_token": t, "new_password": NEW_PASSWORD + "2"})
        assert status == 400 and body["error"] == "invalid_reset_token", body
    assert await alive(server.user) == 401 and await sessions_of(server, server.user_id) == []


async def test_a_reset_token_sent_twice_at_once_resets_once(server: Server) -> None:
    status, body = await server.anon.post("/v1/auth/forgot-password", {"username": "tester"})
    token = body["reset_token"]
    replies = await asyncio.gather(*(server.anon.post("/v1/auth/reset-password", {
        "reset_token": token, "new_password": NEW_PASSWORD + str(i)}) for i in range(3)))
    assert sorted(st for st, _ in replies) == [200, 400, 400], replies


async def test_a_password_change_ends_pending_reset_tokens(server: Server) -> None:
    status, body = await server.anon.post("/v1/auth/forgot-password", {"username": "tester"})
    pending = body["reset_token"]
    status, body = await server.user.put(f"/v1/users/{server.user_id}/password", {
        "old_password": USER_PASSWORD, "new_password": NEW_PASSWORD})
    assert status == 200, body
    status, body = await server.anon.post("/v1/auth/reset-password", {
        "reset_token": pending, "new_password": NEW_PASSWORD + "4"})
    assert status == 400 and body["error"] == "invalid_reset_token", body


async def test_a_deactivation_ends_reset_tokens(server: Server) -> None:
    """A reset token issued before a deactivation neither resets the inactive account nor
    survives a reactivation."""
    tokens = []
    for _ in range(2):
        status, body = await server.anon.post("/v1/auth/forgot-password", {"username": "tester"})
        tokens.append(body["reset_token"])
    status, _ = await server.admin.put(f"/v1/users/{server.user_id}", {"is_active": False})
    assert status == 200
    status, body = await server.anon.post("/v1/auth/reset-password", {
        "reset_token": tokens[0], "new_password": NEW_PASSWORD})
    assert status == 400 and body["error"] == "invalid_reset_token", body
    status, _ = await server.admin.put(f"/v1/users/{server.user_id}", {"is_active": True})
    status, body = await server.anon.post("/v1/auth/reset-password", {
        "reset_token": tokens[1], "new_password": NEW_PASSWORD})
    assert status == 400 and body["error"] == "invalid_reset_token", body


async def test_deactivation_and_deletion_remove_sessions(server: Server) -> None:
    uid, api = await new_user(server, "victim")
    status, _ = await server.admin.put(f"/v1/users/{uid}", {"is_active": False})
    assert status == 200 and await alive(api) == 401
    assert await sessions_of(server, uid) == []
    await server.admin.put(f"/v1/users/{uid}", {"is_active": True})
    api = await server.client_for("victim", USER_PASSWORD)
    status, _ = await server.admin.delete(f"/v1/users/{uid}")
    assert status == 200 and await alive(api) == 401
    assert await sessions_of(server, uid) == []


# -- (b) a TOTP code is good once --------------------------------------------------------------
def codes(secret: str) -> tuple[str, str]:
    """The codes of the current time step and of the next one (which the server accepts: one
    step of clock drift either way), so no test waits for a new code."""
    totp, step = pyotp.TOTP(secret), int(time.time()) // 30
    return totp.at(step * 30), totp.at((step + 1) * 30)


async def enrol(api: Api) -> tuple[str, str]:
    status, body = await api.post("/v1/auth/2fa/enroll")
    assert status == 200, body
    now, following = codes(body["secret"])
    status, body = await api.post("/v1/auth/2fa/confirm", {"code": now})
    assert status == 200, body
    return now, following


async def test_a_totp_code_is_good_once(tmp_path: Any) -> None:
    settings = make_settings(tmp_path)
    creds = {"username": "tester", "password": USER_PASSWORD}
    async with running_server(settings) as srv:
        confirmed, following = await enrol(srv.user)
        status, body = await srv.anon.post(LOGIN, {**creds, "totp_code": confirmed})
        assert status == 401 and body["error"] == "totp_reused", body  # used to confirm
        status, body = await srv.anon.post(LOGIN, {**creds, "totp_code": following})
        assert status == 200, body
        status, body = await srv.anon.post(LOGIN, {**creds, "totp_code": following})
        assert status == 401 and body["error"] == "totp_reused" and "token" not in body, body
    async with bare_server(settings) as anon:  # a restart folds the same state from the log
        status, body = await anon.post(LOGIN, {**creds, "totp_code": following})
        assert status == 401 and body["error"] == "totp_reused", body


async def test_one_totp_step_wins_one_session_in_one_group(server: Server) -> None:
    """Two logins with the same code committed together: the group commit lets one in."""
    engine = server.app[ENGINE]
    step = int(time.time()) // 30

    async def session(jti: str) -> str:
        try:
            await engine.submit(Command("auth.session.create", {
                "jti": jti, "user_id": server.user_id, "expires_at": now_ms() + 60_000,
                "totp_step": step}))
            return "ok"
        except Unauthorized as exc:
            return exc.code

    results = await asyncio.gather(*(session(f"race{i}") for i in range(4)))
    assert sorted(results) == ["ok", "totp_reused", "totp_reused", "totp_reused"], results


# -- (c) must_change_password is enforced -------------------------------------------------------
async def test_a_temporary_password_only_lets_the_user_change_it(server: Server) -> None:
    status, _ = await server.admin.put(f"/v1/admin/users/{server.user_id}/reset-password",
                                       {"new_password": NEW_PASSWORD})
    assert status == 200
    status, body = await server.anon.post(LOGIN, {"username": "tester",
                                                  "password": NEW_PASSWORD})
    assert status == 200 and body["must_change_password"] is True, body
    temp = bearer(server.anon, body["token"])
    for method, path, payload in (
        ("GET", "/status", None), ("GET", "/v1/databases", None),
        ("POST", "/v1/databases", {"name": "x", "vectorDimension": 4}),
        ("GET", f"/v1/users/{server.user_id}", None),
        ("POST", "/v1/api-keys", {"user_id": server.user_id}),
        ("POST", "/v1/auth/2fa/enroll", None),
        ("PUT", f"/v1/users/{server.admin_id}/password",
         {"old_password": ADMIN_PASSWORD, "new_password": NEW_PASSWORD}),
    ):
        status, resp = await temp.call(method, path, payload)
        assert status == 403 and resp["error"] == "password_change_required", (path, resp)
    status, resp = await temp.put(f"/v1/users/{server.user_id}/password",
                                  {"old_password": NEW_PASSWORD,
                                   "new_password": NEW_PASSWORD + "x"})
    assert status == 200, resp
    assert await alive(temp) == 401
    full = bearer(server.anon, resp["token"])
    status, me = await full.get(f"/v1/users/{server.user_id}")
    assert status == 200 and me["must_change_password"] is False
    # and logout stays open to a temporary token
    status, body = await server.admin.put(f"/v1/admin/users/{server.user_id}/reset-password",
                                          {"new_password": NEW_PASSWORD})
    temp = bearer(server.anon, await login(server.anon, "tester", NEW_PASSWORD))
    status, body = await temp.post("/v1/auth/logout")
    assert status == 200, body


async def test_a_temporary_admin_token_grants_no_roles_on_register(server: Server) -> None:
    status, _ = await server.admin.put(f"/v1/admin/users/{server.admin_id}/reset-password",
                                       {"new_password": NEW_PASSWORD})
    assert status == 200
    temp = bearer(server.anon, await login(server.anon, "admin", NEW_PASSWORD))
    status, body = await temp.post("/v1/auth/register", {
        "username": "smuggled", "password": USER_PASSWORD, "is_admin": True})
    assert status == 201 and body["roles"] == ["user"], body


# -- (d) a token's session belongs to its subject --------------------------------------------
async def test_a_token_cannot_be_resigned_as_another_user(tmp_path: Any) -> None:
    """With the previous secret known (it was weak), a user re-signs their own token as the
    admin: the session names the user, not the admin."""
    weak = "changeme" * 4  # long enough for PyJWT, guessable all the same
    async with running_server(make_settings(tmp_path, jwt_secret="n" * 40,
                                            jwt_secret_previous=weak)) as srv:
        mine = token_of(srv.user)
        for secret in (weak, "n" * 40):
            forged = bearer(srv.anon, resign(mine, secret, sub=srv.admin_id, name="admin"))
            status, body = await forged.get("/v1/users")
            assert status == 401 and body["error"] == "token_revoked", body
            status, body = await forged.get("/v1/admin/ip-blocks")
            assert status == 401, body
        assert await alive(srv.user) == 200


async def test_a_session_ends_on_the_server_whatever_the_token_says(tmp_path: Any) -> None:
    async with running_server(make_settings(tmp_path, token_ttl_seconds=1)) as srv:
        secret = srv.app[AUTH].secret
        token = await login(srv.anon, "tester", USER_PASSWORD)
        claims = jwt.decode(token, options={"verify_signature": False})
        longer = bearer(srv.anon, resign(token, secret, exp=claims["exp"] + 3600))
        await asyncio.sleep(max(0.0, claims["exp"] - time.time()) + 0.2)
        status, body = await longer.get("/status")
        assert status == 401 and body["error"] == "token_expired", body


def test_production_refuses_a_weak_previous_secret(tmp_path: Any) -> None:
    env = prod_env(tmp_path, JWT_SECRET_PREVIOUS="short-old-secret")
    with pytest.raises(ConfigError, match="JWT_SECRET_PREVIOUS"):
        settings_mod.load(env)
    s = settings_mod.load(prod_env(tmp_path, JWT_SECRET_PREVIOUS="o" * 32))
    assert s.jwt_secret_previous == "o" * 32
    assert not settings_mod.load(prod_env(tmp_path)).jwt_secret_previous  # unset is fine


# -- siblings: roles, logout, replicas -------------------------------------------------------------
async def test_a_role_granted_to_a_user_without_totp_needs_enrolment(tmp_path: Any) -> None:
    """Where admins need TOTP, a user made admin while logged in with a password only does not
    get admin powers through that session."""
    async with running_server(make_settings(tmp_path, require_admin_totp=True)) as srv:
        await srv.app[ENGINE].submit(Command("auth.user.update", {
            "user_id": srv.user_id, "changes": {"roles": ["admin", "user"]}}))
        status, body = await srv.user.get("/v1/admin/ip-blocks")
        assert status == 403 and body["error"] == "totp_enrollment_required", body
        status, body = await srv.user.post("/v1/auth/2fa/enroll")
        assert status == 200, body


async def test_a_role_removed_takes_effect_at_once(server: Server) -> None:
    uid, api = await new_user(server, "second_admin")
    status, _ = await server.admin.put(f"/v1/users/{uid}", {"roles": ["admin"]})
    assert status == 200
    assert (await api.get("/v1/admin/ip-blocks"))[0] == 200
    status, _ = await server.admin.put(f"/v1/users/{uid}", {"roles": ["user"]})
    assert status == 200
    assert (await api.get("/v1/admin/ip-blocks"))[0] == 403


async def test_logout_ends_one_session_or_all(server: Server) -> None:
    a, b, c = [await server.client_for("tester", USER_PASSWORD) for _ in range(3)]
    key = bearer(server.anon, (await new_key(server.user, server.user_id))["api_key"])
    status, _ = await a.post("/v1/auth/logout")
    assert status == 200
    assert [await alive(x) for x in (a, b, c, server.user)] == [401, 200, 200, 200]
    status, body = await b.post("/v1/auth/logout", {"all": True})
    assert status == 200, body
    assert [await alive(x) for x in (b, c, server.user)] == [401, 401, 401]
    assert body["sessions_ended"] == 3, body
    assert await alive(key) == 200  # keys are not sessions: DELETE /v1/api-keys/{id}
    assert await sessions_of(server, server.user_id) == []
    assert await alive(server.admin) == 200  # another user's sessions are untouched
    status, body = await b.post("/v1/auth/logout", {"all": "yes"})
    assert status == 401


async def test_a_replica_ends_what_the_primary_ended(tmp_path: Any) -> None:
    """A logout and a password change on the primary end the sessions and keys on a replica;
    a TOTP code used on the primary is refused by the replica once promoted."""
    root = str(tmp_path)
    primary = Node(root, "primary").start()
    nodes = [primary]
    try:
        c = await asyncio.to_thread(bootstrap_auth, primary.base)
        replica = await Node(root, "r1", follow=primary.base, key=c.repl_key).astart()
        nodes.append(replica)
        async with aiohttp.ClientSession() as s:
            p, r = client(s, primary.base, c.admin_token), client(s, replica.base, c.admin_token)
            creds = {"username": "tester", "password": USER_PASSWORD}
            st, body = await client(s, primary.base).post(LOGIN, creds)
            second = body["token"]
            await wait_converged(p, [r])
            assert (await client(s, replica.base, second).get("/status"))[0] == 200
            st, _ = await client(s, primary.base, second).post("/v1/auth/logout")
            assert st == 200
            await wait_converged(p, [r])
            assert (await client(s, replica.base, second).get("/status"))[0] == 401
            assert (await client(s, replica.base, c.user_token).get("/status"))[0] == 200

            _, following = await enrol(client(s, primary.base, c.user_token))
            st, body = await client(s, primary.base).post(LOGIN, {**creds,
                                                                  "totp_code": following})
            assert st == 200, body
            st, body = await client(s, primary.base, body["token"]).put(
                f"/v1/users/{c.user_id}/password",
                {"old_password": USER_PASSWORD, "new_password": NEW_PASSWORD})
            assert st == 200, body
            await wait_converged(p, [r])
            for cred in (c.user_token, c.user_key):
                st, answer = await client(s, replica.base, cred).get("/v1/databases")
                assert st == 401, (cred[:12], answer)
            fresh = body["token"]
            assert (await client(s, replica.base, fresh).get("/v1/databases"))[0] == 200

            st, body = await r.post("/v1/admin/promote")
            assert st == 200, body
            st, body = await client(s, replica.base).post(LOGIN, {
                "username": "tester", "password": NEW_PASSWORD, "totp_code": following})
            assert st == 401 and body["error"] == "totp_reused", body
            assert call(replica.base, "GET", "/status", token=fresh)[0] == 200
    finally:
        for n in nodes:
            n.stop()


async def test_the_session_list_says_which_sessions_are_alive(tmp_path: Any) -> None:
    """/v1/security/sessions said every listed session was active; one the server no longer
    accepts (expired, not yet pruned) is listed as inactive."""
    async with running_server(make_settings(tmp_path, token_ttl_seconds=3)) as srv:
        st, key = await srv.admin.post("/v1/api-keys", {"user_id": srv.admin_id,
                                                        "description": "lister"})
        assert st == 201, key
        lister = Api(srv.base, srv.anon.session, {"Authorization": f"Bearer {key['api_key']}"})
        url = f"/v1/security/sessions?user_id={srv.user_id}"
        st, body = await lister.get(url)
        assert st == 200 and body["count"] >= 1 and all(s["is_active"] for s in body["sessions"])
        await asyncio.sleep(3.2)
        st, _ = await srv.user.get("/status")
        assert st == 401  # the server no longer accepts it
        st, body = await lister.get(url)
        assert st == 200 and body["count"] >= 1, body
        assert not any(s["is_active"] for s in body["sessions"]), body
