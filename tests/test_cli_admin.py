"""The everyday commands through a server (tools/admin_cmd.py: ``jade status``, ``db``,
``readonly``, ``key``, ``promote``, ``shutdown``) as real subprocesses against a real server:
each does what the runbook did with ``curl``, and each refusal is one line and an exit code."""

from __future__ import annotations

import json
from pathlib import Path

from tests.conftest import make_settings, running_server
from tests.test_cli_walk import ajade, base_env, client_env, one_line


def admin_env(tmp_path: Path, srv: object) -> dict[str, str]:
    token = srv.admin.headers["Authorization"].split()[1]  # type: ignore[attr-defined]
    return base_env(tmp_path, JADEVECTORDB_URL=srv.base,  # type: ignore[attr-defined]
                    JADEVECTORDB_API_KEY=token)


async def test_databases_by_name_from_create_to_delete(tmp_path: Path) -> None:
    async with running_server(make_settings(tmp_path)) as srv:
        env = client_env(tmp_path, srv)
        r = await ajade(env, "db", "create", "films", "--dimension", "4", "--metric",
                        "euclidean", "--json")
        assert r.returncode == 0, r.stderr
        db_id = json.loads(r.stdout)["databaseId"]
        st, body = await srv.user.get(f"/v1/databases/{db_id}")
        assert st == 200 and body["vectorDimension"] == 4 and body["name"] == "films"
        r = await ajade(env, "db", "list")
        assert r.returncode == 0 and db_id in r.stdout and "films" in r.stdout, r.stdout
        r = await ajade(env, "db", "show", "films", "--json")
        assert r.returncode == 0 and json.loads(r.stdout)["databaseId"] == db_id
        # no terminal to ask: --yes is required, and nothing is deleted without it
        one_line(await ajade(env, "db", "delete", "films"), 2, "--yes")
        assert (await srv.user.get(f"/v1/databases/{db_id}"))[0] == 200
        r = await ajade(env, "db", "delete", "films", "--yes")
        assert r.returncode == 0 and f"deleted {db_id}" in r.stdout, r
        assert (await srv.user.get(f"/v1/databases/{db_id}"))[0] == 404
        one_line(await ajade(env, "db", "show", "films"), 1, "no database", "'films'")
        # the server's own refusal, named: a dimension it does not take
        one_line(await ajade(env, "db", "create", "bad", "--dimension", "0"), 2, "--dimension")


async def test_readonly_on_and_off_and_status(tmp_path: Path) -> None:
    async with running_server(make_settings(tmp_path)) as srv:
        env = admin_env(tmp_path, srv)
        r = await ajade(env, "status")
        assert r.returncode == 0 and "mode readwrite" in r.stdout, r.stdout
        assert "replicas: none" in r.stdout, r.stdout
        r = await ajade(env, "readonly", "on")
        assert r.returncode == 0, r.stderr
        st, body = await srv.user.post("/v1/databases", {"name": "x", "vectorDimension": 2})
        assert st == 503 and body["error"] == "read_only", body
        r = await ajade(env, "status", "--json")
        assert json.loads(r.stdout)["mode"] == "readonly"
        # a user who is not an admin: refused, one line
        one_line(await ajade(client_env(tmp_path, srv), "readonly", "off"), 1,
                 "not allowed to change the server's mode")
        r = await ajade(env, "readonly", "off")
        assert r.returncode == 0, r.stderr
        st, body = await srv.user.post("/v1/databases", {"name": "x", "vectorDimension": 2})
        assert st == 201, body
        # promote on a primary: the server's answer on one line
        r = await ajade(env, "promote")
        assert r.returncode == 1 and len(r.stderr.strip().splitlines()) == 1, r.stderr


async def test_api_keys_created_listed_used_and_revoked(tmp_path: Path) -> None:
    async with running_server(make_settings(tmp_path)) as srv:
        env = client_env(tmp_path, srv)
        r = await ajade(env, "key", "create", "--scope", "read", "--description", "ci",
                        "--json")
        assert r.returncode == 0, r.stderr
        made = json.loads(r.stdout)
        key, kid = made["api_key"], made["key_id"]
        r = await ajade(env, "key", "list")
        assert r.returncode == 0 and kid in r.stdout and "read" in r.stdout, r.stdout
        # the key works, read-only: listing yes, creating no
        kenv = base_env(tmp_path, JADEVECTORDB_URL=srv.base, JADEVECTORDB_API_KEY=key)
        assert (await ajade(kenv, "db", "list")).returncode == 0
        one_line(await ajade(kenv, "db", "create", "nope", "--dimension", "2"), 1,
                 "not allowed to create database")
        # an API key does not say whose it is: the command asks, one line
        one_line(await ajade(kenv, "key", "create"), 2, "--user")
        r = await ajade(env, "key", "revoke", kid)
        assert r.returncode == 0, r.stderr
        one_line(await ajade(kenv, "db", "list"), 1, "refused the credentials")


async def test_shutdown_stops_the_server(tmp_path: Path) -> None:
    async with running_server(make_settings(tmp_path)) as srv:
        one_line(await ajade(client_env(tmp_path, srv), "shutdown"), 1, "not allowed")
        r = await ajade(admin_env(tmp_path, srv), "shutdown")
        assert r.returncode == 0 and "stopping" in r.stdout, r
