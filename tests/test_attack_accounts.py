"""Issue 15, class 8 (c) and (d). (c) The login's lockout must not tell which user names exist:
a name that names nobody is counted and locked like one that does, and every refusal costs one
password verification. (d) The last active admin cannot be deleted, deactivated or demoted,
decided in the group commit (race-free), whoever asks."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from jade.core.decide import Command
from jade.errors import Conflict
from jade.http.keys import AUTH, ENGINE
from tests.conftest import ADMIN_PASSWORD, USER_PASSWORD, Server, make_settings, running_server

LOGIN = "/v1/auth/login"


async def metric(srv: Server, name: str) -> float:
    status, text = await srv.anon.get("/metrics")
    assert status == 200
    return sum(float(line.split()[-1]) for line in str(text).splitlines()
               if line.startswith(name + " ") or line.startswith(name + "{"))


# -- (c) the lockout reply and its cost ----------------------------------------------------------
async def test_an_unknown_name_locks_like_a_known_one(tmp_path: Any) -> None:
    settings = make_settings(tmp_path, lockout_threshold=3, ip_block_threshold=0)
    async with running_server(settings) as srv:
        replies: dict[str, list[tuple[int, Any]]] = {}
        for name in ("tester", "nobody_by_this_name"):
            locks = await metric(srv, "jadevectordb_locked_accounts_total")
            replies[name] = [await srv.anon.post(LOGIN, {"username": name, "password": "wrong-1"})
                             for _ in range(3)]
            # the /metrics page is public: it must not tell either
            assert await metric(srv, "jadevectordb_locked_accounts_total") == locks + 1, name
            # locked now, even with the right password (the known name's)
            replies[name].append(await srv.anon.post(LOGIN, {"username": name.upper(),
                                                             "password": USER_PASSWORD}))
        known, unknown = replies["tester"], replies["nobody_by_this_name"]
        assert [s for s, _ in known] == [s for s, _ in unknown] == [401] * 4
        assert [b for _, b in known[:3]] == [b for _, b in unknown[:3]]
        assert known[3][1]["error"] == "account_locked", known[3]
        assert unknown[3][1]["error"] == "account_locked", unknown[3]
        assert {k for k in known[3][1]} == {k for k in unknown[3][1]}
        assert abs(known[3][1]["retry_after"] - unknown[3][1]["retry_after"]) <= 1


async def test_every_refusal_costs_one_password_verification(
        tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Counted, not timed: the locked reply used to skip the hash (a timing difference)."""
    settings = make_settings(tmp_path, lockout_threshold=2, ip_block_threshold=0)
    async with running_server(settings) as srv:
        svc = srv.app[AUTH]
        calls: list[str] = []

        def counted(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
            def wrapper(*args: Any) -> Any:
                calls.append(name)
                return fn(*args)
            return wrapper

        monkeypatch.setattr(svc, "verify_password", counted("verify", svc.verify_password))
        monkeypatch.setattr(svc, "waste_verify", counted("waste", svc.waste_verify))
        status, _ = await srv.admin.put(f"/v1/users/{srv.user_id}", {"is_active": False})
        assert status == 200
        cases = [
            ("admin", "wrong-1"),  # a known name, wrong password
            ("nobody_here", "wrong-1"),  # no such name
            ("tester", USER_PASSWORD),  # an inactive user
            ("admin", "wrong-2"),  # the second failure locks admin
            ("nobody_here", "wrong-2"),  # and the name that names nobody
            ("admin", ADMIN_PASSWORD),  # locked
            ("nobody_here", "wrong-3"),  # locked
        ]
        for username, password in cases:
            calls.clear()
            status, body = await srv.anon.post(LOGIN, {"username": username,
                                                       "password": password})
            assert status == 401, (username, body)
            assert len(calls) == 1, (username, password, body["error"], calls)


async def test_the_names_remembered_are_bounded(tmp_path: Any) -> None:
    settings = make_settings(tmp_path, lockout_threshold=1, ip_block_threshold=0)
    async with running_server(settings) as srv:
        limits = srv.app[AUTH].limits
        limits.names_max = 5
        for i in range(12):
            status, body = await srv.anon.post(LOGIN, {"username": f"ghost{i}", "password": "x"})
            assert status == 401 and body["error"] == "invalid_credentials", body
        assert len(limits._locked_name) == 5 and len(limits._fail_name) == 5
        status, body = await srv.anon.post(LOGIN, {"username": "ghost11", "password": "x"})
        assert body["error"] == "account_locked", body  # the most recent are kept


# -- (d) the last admin --------------------------------------------------------------------------
async def test_the_last_admin_stays(server: Server) -> None:
    admin, aid = server.admin, server.admin_id
    for method, req in (("DELETE", None), ("PUT", {"is_active": False}),
                        ("PUT", {"roles": ["user"]}), ("PUT", {"roles": ["developer"]})):
        status, body = await admin.call(method, f"/v1/users/{aid}", req)
        assert status == 409 and body["error"] == "last_admin", (method, req, body)
    status, me = await admin.get(f"/v1/users/{aid}")
    assert me["roles"] == ["admin"] and me["is_active"] is True
    # what keeps the admin an admin passes
    status, body = await admin.put(f"/v1/users/{aid}", {"roles": ["admin", "ops"],
                                                        "email": "a@example.com"})
    assert status == 200, body
    # with a second admin, one may step down; then the other is the last
    status, body = await admin.post("/v1/users", {"username": "second", "password": USER_PASSWORD,
                                                  "roles": ["admin"]})
    assert status == 201, body
    second_id = body["user_id"]
    second = await server.client_for("second", USER_PASSWORD)
    status, body = await admin.put(f"/v1/users/{aid}", {"roles": ["user"]})  # demotes itself
    assert status == 200, body
    for method, req in (("DELETE", None), ("PUT", {"is_active": False}),
                        ("PUT", {"roles": ["user"]})):
        status, body = await second.call(method, f"/v1/users/{second_id}", req)
        assert status == 409 and body["error"] == "last_admin", (method, req, body)
    # an inactive admin is no admin to keep: deactivating the last but one is fine
    status, body = await second.put(f"/v1/users/{aid}", {"roles": ["admin"]})
    assert status == 200, body
    status, body = await second.put(f"/v1/users/{aid}", {"is_active": False})
    assert status == 200, body
    status, body = await second.delete(f"/v1/users/{second_id}")
    assert status == 409 and body["error"] == "last_admin", body
    status, body = await second.delete(f"/v1/users/{aid}")
    assert status == 200, body


async def test_two_admins_removing_each_other_leave_one(server: Server) -> None:
    """Decided in the group commit: both commands go in together, one wins."""
    engine = server.app[ENGINE]

    async def new_admin(name: str, actor: str) -> str:
        uid = name + "0" * (16 - len(name))
        await engine.submit(Command("auth.user.create", {
            "user_id": uid, "username": name, "email": "", "password_hash": "x",
            "roles": ["admin"], "bootstrap": False, "must_change_password": False}, actor))
        return uid

    def active_admins() -> list[str]:
        return [u["user_id"] for u in engine.auth.users()
                if u["is_active"] and "admin" in u["roles"]]

    a = server.admin_id
    b = await new_admin("second", a)
    for round_, changes in enumerate((None, {"is_active": False}, {"roles": ["user"]})):
        cmds = [Command("auth.user.delete", {"user_id": target}, actor) if changes is None else
                Command("auth.user.update", {"user_id": target, "changes": changes}, actor)
                for actor, target in ((a, b), (b, a))]
        results = await asyncio.gather(*(engine.submit(c) for c in cmds),
                                       return_exceptions=True)
        refused = [r for r in results if isinstance(r, Exception)]
        assert len(refused) == 1 and isinstance(refused[0], Conflict), results
        assert refused[0].code == "last_admin"
        assert len(active_admins()) == 1, engine.auth.users()
        a, b = active_admins()[0], await new_admin(f"admin{round_}", active_admins()[0])
