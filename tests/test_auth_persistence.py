"""The auth projection is a pure function of the log: it survives ``kill -9`` of a real server
process with the same behaviour (sessions, logouts, keys, revocations, grants, locks, IP blocks,
deactivations, TOTP), and replaying the log's ``auth.*`` records into an empty store rebuilds it
byte for byte."""

from __future__ import annotations

import hashlib
import time
from typing import Any

import aiohttp
import lmdb
import orjson
import pyotp
import pytest

from jade import events as ev
from jade.auth.clock import now_ms
from jade.auth.store import SUBS, AuthStore
from jade.core.decide import Command
from jade.engine import Engine
from jade.errors import NotFound
from jade.events import AUTH_TYPES
from tests.conftest import ServerProcess, make_settings
from wal.lmdbenv import Env

PW = "Persist_Secure123@"
ATTACKER = "10.9.9.9"


class Client:
    def __init__(self, base: str, session: aiohttp.ClientSession) -> None:
        self.base, self.session = base, session

    async def call(self, method: str, path: str, body: Any = None,
                   headers: dict[str, str] | None = None) -> tuple[int, Any]:
        h = {"Content-Type": "application/json", **(headers or {})}
        data = orjson.dumps(body) if body is not None else None
        async with self.session.request(method, self.base + path, data=data, headers=h) as r:
            text = await r.read()
            return r.status, orjson.loads(text) if text else None

    async def register(self, username: str, **extra: Any) -> str:
        status, body = await self.call("POST", "/v1/auth/register",
                                       {"username": username, "password": PW, **extra})
        assert status == 201, body
        return str(body["user_id"])

    async def login(self, username: str, **extra: Any) -> dict[str, str]:
        status, body = await self.call("POST", "/v1/auth/login",
                                       {"username": username, "password": PW, **extra})
        assert status == 200, body
        return {"Authorization": f"Bearer {body['token']}"}


async def build_state(c: Client) -> dict[str, Any]:
    admin_id = await c.register("admin", is_admin=True)
    alice_id = await c.register("alice")
    bob_id = await c.register("bob")
    await c.register("carol")
    dave_id = await c.register("dave")
    admin, alice, bob, dave = [await c.login(n) for n in ("admin", "alice", "bob", "dave")]
    status, body = await c.call("POST", "/v1/databases",
                                {"name": "a", "vectorDimension": 3}, alice)
    db = body["databaseId"]
    status, _ = await c.call("POST", f"/v1/databases/{db}/vectors",
                             {"id": "v", "values": [1, 2, 3]}, alice)
    assert status == 201
    status, _ = await c.call("POST", f"/v1/databases/{db}/grants",
                             {"user_id": bob_id, "permission": "read"}, alice)
    assert status == 201
    keys = []
    for desc in ("kept", "revoked"):
        status, body = await c.call("POST", "/v1/api-keys",
                                    {"user_id": alice_id, "description": desc}, alice)
        assert status == 201
        keys.append(body)
    status, _ = await c.call("DELETE", f"/v1/api-keys/{keys[1]['key_id']}", None, alice)
    assert status == 200
    dave_key = (await c.call("POST", "/v1/api-keys", {"user_id": dave_id}, dave))[1]
    gone = await c.login("alice")
    status, _ = await c.call("POST", "/v1/auth/logout", None, gone)
    assert status == 200
    for _ in range(2):  # carol locks herself out
        await c.call("POST", "/v1/auth/login", {"username": "carol", "password": "wrong-pw"})
    for i in range(5):  # an attacker behind the trusted proxy gets blocked
        await c.call("POST", "/v1/auth/login", {"username": f"x{i}", "password": "guess"},
                     {"X-Forwarded-For": ATTACKER})
    status, _ = await c.call("PUT", f"/v1/users/{dave_id}", {"is_active": False}, admin)
    assert status == 200
    status, body = await c.call("POST", "/v1/auth/2fa/enroll", None, bob)
    secret = body["secret"]
    status, _ = await c.call("POST", "/v1/auth/2fa/confirm",
                             {"code": pyotp.TOTP(secret).now()}, bob)
    assert status == 200
    return {"db": db, "admin": admin, "alice": alice, "bob": bob, "dave": dave, "gone": gone,
            "key": keys[0]["api_key"], "revoked_key": keys[1]["api_key"],
            "dave_key": dave_key["api_key"], "totp": secret, "admin_id": admin_id}


async def observe(c: Client, s: dict[str, Any]) -> dict[str, Any]:
    """What the auth state looks like from outside (no call here changes it)."""
    db = s["db"]

    async def status(method: str, path: str, headers: dict[str, str],
                     body: Any = None) -> tuple[int, str | None]:
        st, resp = await c.call(method, path, body, headers)
        return st, resp.get("error") if isinstance(resp, dict) and st >= 400 else None

    out: dict[str, Any] = {
        "alice token": await status("GET", "/status", s["alice"]),
        "logged-out token": await status("GET", "/status", s["gone"]),
        "key": await status("GET", f"/v1/databases/{db}", {"Authorization":
                                                          f"Bearer {s['key']}"}),
        "revoked key": await status("GET", "/status", {"X-API-Key": s["revoked_key"]}),
        "bob reads": await status("GET", f"/v1/databases/{db}/vectors/v", s["bob"]),
        "bob writes": await status("POST", f"/v1/databases/{db}/vectors", s["bob"],
                                   {"id": "w", "values": [1, 1, 1]}),
        "bob lists": (await c.call("GET", "/v1/databases", None, s["bob"]))[1]["total"],
        "dave token": await status("GET", "/status", s["dave"]),
        "dave key": await status("GET", "/status", {"X-API-Key": s["dave_key"]}),
        "carol": await status("POST", "/v1/auth/login", {},
                              {"username": "carol", "password": PW}),
        "bob without code": await status("POST", "/v1/auth/login", {},
                                         {"username": "bob", "password": PW}),
        "attacker": await status("POST", "/v1/auth/login", {"X-Forwarded-For": ATTACKER},
                                 {"username": "alice", "password": PW}),
        "grants": (await c.call("GET", f"/v1/databases/{db}/grants", None, s["alice"]))[1],
    }
    st, body = await c.call("GET", "/v1/admin/ip-blocks", None, s["admin"])
    out["blocks"] = sorted((b["ip"], b["failures"]) for b in body["blocked"])
    st, body = await c.call("GET", "/v1/users", None, s["admin"])
    out["users"] = sorted((u["username"], u["is_active"], tuple(u["roles"]), u["totp_enabled"])
                          for u in body["users"])
    st, body = await c.call("GET", "/v1/api-keys", None, s["admin"])
    out["keys"] = sorted((k["description"], k["is_active"]) for k in body["api_keys"])
    return out


async def login_with_code(c: Client, s: dict[str, Any], code: str) -> tuple[int, Any]:
    """bob's login with a TOTP code (this does change the state: the code is used up)."""
    st, body = await c.call("POST", "/v1/auth/login", {"username": "bob", "password": PW,
                                                       "totp_code": code})
    return st, body.get("error") if isinstance(body, dict) else None


EXPECTED = {
    "alice token": (200, None), "logged-out token": (401, "token_revoked"),
    "key": (200, None), "revoked key": (401, "invalid_api_key"), "bob reads": (200, None),
    "bob writes": (403, "permission_denied"), "bob lists": 1,
    "dave token": (401, "user_inactive"), "dave key": (401, "invalid_api_key"),
    "carol": (401, "account_locked"), "bob without code": (401, "totp_required"),
    "attacker": (403, "ip_blocked"), "blocks": [(ATTACKER, 5)],
    "keys": [("", False), ("kept", True), ("revoked", False)],
}


@pytest.mark.crash
async def test_auth_state_survives_kill_9_and_replays_identically(tmp_path: Any) -> None:
    sp = ServerProcess(str(tmp_path / "data"), env={
        "JADEVECTORDB_IP_BLOCK_THRESHOLD": "5", "JADEVECTORDB_LOCKOUT_THRESHOLD": "2",
        "JADEVECTORDB_TRUSTED_PROXIES": "127.0.0.1"})
    sp.start()
    try:
        async with aiohttp.ClientSession() as session:
            c = Client(sp.base, session)
            state = await build_state(c)
            before = await observe(c, state)
            for k, v in EXPECTED.items():
                assert before[k] == v, (k, before[k])
            code = pyotp.TOTP(state["totp"]).at(time.time() + 30)  # confirm used this step's
            assert await login_with_code(c, state, code) == (200, None)
            sp.kill()  # SIGKILL: no clean close, no checkpoint
            sp.start()
            after = await observe(c, state)
            assert after == before
            assert await login_with_code(c, state, code) == (401, "totp_reused")  # still used
        sp.kill()
    finally:
        if sp.proc is not None and sp.proc.poll() is None:
            sp.kill()

    engine = Engine(make_settings(tmp_path))
    report = engine.open()
    assert report.unclean
    try:
        # a prune far in the future forgets every session, block, revocation and reset
        engine.submit_sync(Command("auth.prune", {"now": now_ms() + 10 * 86_400_000}))
        live = digest_store(engine.auth)
        assert live["users"] != EMPTY and live["keys"] != EMPTY and live["grants"] != EMPTY
        assert live["sessions"] == EMPTY and live["blocks"] == EMPTY
        replayed = digest_store(replay(engine, tmp_path / "replay"))
        assert replayed == live
    finally:
        engine.close()


EMPTY = hashlib.sha256().hexdigest()


def digest_store(store: AuthStore) -> dict[str, str]:
    """One digest per sub-database except ``sys`` (where the applied LSN is bookkeeping)."""
    out = {}
    with store.env.read() as txn:
        for name in SUBS:
            if name == b"sys":
                continue
            h = hashlib.sha256()
            for k, v in txn.cursor(db=store.db[name.decode()]):
                h.update(len(k).to_bytes(4, "big") + k + len(v).to_bytes(4, "big") + v)
            out[name.decode()] = h.hexdigest()
    return out


def replay(engine: Engine, where: Any) -> AuthStore:
    env = Env(str(where / "auth.db"), map_size=16 << 20)
    fresh = AuthStore(env)
    n = 0

    def body(txn: lmdb.Transaction) -> None:
        nonlocal n
        for rec in engine.log.iterate(0):
            if rec.type in AUTH_TYPES:
                fresh.apply(txn, rec, ev.of(rec))
                n += 1

    env.write(body)
    assert n > 20
    return fresh


def test_in_process_replay_matches_after_restart(tmp_path: Any) -> None:
    """Without a subprocess: the store a reopened engine holds equals a replay of its log."""
    settings = make_settings(tmp_path)
    engine = Engine(settings)
    engine.open()
    for i in range(3):
        engine.submit_sync(Command("auth.user.create", {
            "user_id": f"u{i:015d}", "username": f"user{i}", "email": "", "roles": ["user"],
            "password_hash": "x"}))
    engine.submit_sync(Command("auth.key.create", {
        "key_id": "k1", "user_id": "u000000000000001", "hash": "h" * 64,
        "key_prefix": "jadevdb_xxxx", "description": "", "permissions": [], "expires_at": None}))
    engine.submit_sync(Command("auth.user.update", {"user_id": "u000000000000001",
                                                    "changes": {"is_active": False}}))
    engine.submit_sync(Command("auth.user.delete", {"user_id": "u000000000000002"}))
    engine.submit_sync(Command("auth.session.create", {
        "jti": "j1", "user_id": "u000000000000000", "ip": "", "expires_at": now_ms() + 10**6}))
    engine.submit_sync(Command("auth.session.revoke", {"jti": "j1"}))
    engine.close()
    engine = Engine(settings)
    engine.open()
    try:
        live = digest_store(engine.auth)
        assert engine.auth.key("k1")["is_active"] is False  # type: ignore[index]
        env = Env(str(tmp_path / "replay" / "auth.db"), map_size=16 << 20)
        fresh = AuthStore(env)
        env.write(lambda txn: [fresh.apply(txn, r, ev.of(r)) for r in engine.log.iterate(0)
                               if r.type in AUTH_TYPES])
        assert digest_store(fresh) == live
        assert fresh.applied_lsn() == max(r.lsn for r in engine.log.iterate(0)
                                          if r.type in AUTH_TYPES)
    finally:
        engine.close()


def test_refused_auth_command_then_clean_close(tmp_path: Any) -> None:
    settings = make_settings(tmp_path)
    engine = Engine(settings)
    engine.open()
    with pytest.raises(NotFound):
        engine.submit_sync(Command("auth.key.revoke", {"key_id": "no-such-key"}))
    engine.close()
    engine = Engine(settings)
    assert not engine.open().unclean
    engine.close()
