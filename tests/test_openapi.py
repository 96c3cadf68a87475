"""The committed OpenAPI document matches the routes, is served, and a live server honours it:
schemathesis (bounded examples) finds no 500 and no response outside the schema."""

from __future__ import annotations

import json
import os
import re

import aiohttp
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis import checks as st_checks

from jade.http.routes import ROUTES
from tests.conftest import ROOT, ServerProcess
from tools.openapi_cmd import render

SPEC_PATH = os.path.join(ROOT, "openapi.json")


def committed() -> dict:
    with open(SPEC_PATH) as fh:
        return json.load(fh)


def test_committed_spec_is_current():
    with open(SPEC_PATH) as fh:
        assert fh.read() == render(), "run: jade openapi > openapi.json"


def test_every_route_has_a_spec_entry_and_back():
    spec = committed()
    routes = {(r.method.lower(), r.path) for r in ROUTES}
    entries = {(m, p) for p, ops in spec["paths"].items() for m in ops}
    assert routes == entries


async def test_spec_and_docs_are_served(server):
    status, body = await server.anon.get("/openapi.json")
    assert status == 200 and body == committed()
    async with server.anon.session.get(server.base + "/docs") as r:
        assert r.status == 200 and "text/html" in r.headers["Content-Type"]
        assert "/openapi.json" in await r.text()


# -- schemathesis against a live server ---------------------------------------------------------

SKIP = re.compile(
    r"/shutdown|/readonly|/readwrite|/promote|/replication/stream|"
    r"/replication/snapshot|/snapshots|/vectors/import"
)
schema = schemathesis.openapi.from_dict(committed())


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    data = str(tmp_path_factory.mktemp("schemathesis") / "data")
    sp = ServerProcess(data, env={"JWT_SECRET": "s" * 40})
    sp.start()
    import asyncio

    async def bootstrap() -> str:
        async with aiohttp.ClientSession() as s:
            body = {"username": "admin", "password": "Admin_Secure123@", "is_admin": True}
            async with s.post(sp.base + "/v1/auth/register", json=body) as r:
                assert r.status == 201
            async with s.post(sp.base + "/v1/auth/login", json=body) as r:
                token = (await r.json())["token"]
            hdr = {"Authorization": f"Bearer {token}"}
            async with s.post(
                sp.base + "/v1/databases", headers=hdr, json={"name": "s", "vectorDimension": 2}
            ) as r:
                assert r.status == 201
            return token

    token = asyncio.run(bootstrap())
    yield sp.base, {"Authorization": f"Bearer {token}"}
    sp.stop()


CHECKS = [
    st_checks.not_a_server_error,
    st_checks.status_code_conformance,
    st_checks.content_type_conformance,
    st_checks.response_schema_conformance,
]


@schema.exclude(path_regex=SKIP.pattern).parametrize()
@settings(max_examples=12, deadline=None, suppress_health_check=list(HealthCheck))
def test_live_server_conforms(case, live):
    base, headers = live
    case.call_and_validate(base_url=base, headers=headers, checks=CHECKS)


def test_operation_ids_are_unique() -> None:
    """Generators name a client method per operationId: two routes must not share one
    (``/ui`` and ``/ui/`` did)."""
    from collections import Counter

    from jade.http.openapi import build
    from jade.http.routes import ROUTES

    doc = build(ROUTES)
    ids = Counter(op["operationId"] for item in doc["paths"].values()
                  for op in item.values() if isinstance(op, dict) and "operationId" in op)
    assert [k for k, n in ids.items() if n > 1] == []
