"""The API declared once (issue 18 item 3): every route names its types (jade/http/schemas.py)
and from them come the body's and the query's validation, the handler's input and the OpenAPI
document; the served document validates, a client generated from it (openapi-python-client)
calls the server, and /docs is Swagger UI, rendered in headless Chromium under its CSP."""

from __future__ import annotations

import asyncio
import importlib
import importlib.util
import os
import shutil
import subprocess
import sys
from typing import Any

import msgspec
import pytest

from jade.http import schemas as S
from jade.http.routes import ROUTES
from tests.conftest import ROOT

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
BIN = os.path.dirname(sys.executable)
ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def _struct(t: Any) -> bool:
    return isinstance(t, type) and issubclass(t, msgspec.Struct)


def test_every_route_declares_its_types() -> None:
    for r in ROUTES:
        assert r.summary, (r.method, r.path)
        if r.method in ("POST", "PUT") and r.body is None:
            # a body-less POST/PUT: its handler reads no body
            import inspect

            src = inspect.getsource(r.handler)
            assert "read_json" not in src and "read_body" not in src, (r.method, r.path)
        assert r.body is None or r.body is S.TEXT or _struct(r.body), r
        assert r.query is None or _struct(r.query), r


async def test_served_document_validates(server) -> None:
    from openapi_spec_validator import validate

    status, doc = await server.anon.get("/openapi.json")
    assert status == 200
    validate(doc)
    # named components, tags, one Error for every error answer, query parameters with bounds
    assert {"Error", "CreateDatabase", "Search", "VectorBatch"} <= set(doc["components"]["schemas"])
    get_vectors = doc["paths"]["/v1/databases/{db}/vectors"]["get"]
    params = {p["name"]: p for p in get_vectors["parameters"]}
    assert params["limit"]["schema"]["maximum"] == 10_000 and params["offset"]["in"] == "query"
    stats = doc["paths"]["/v1/databases/{db}/analytics/stats"]["get"]
    gran = next(p for p in stats["parameters"] if p["name"] == "granularity")
    assert sorted(gran["schema"]["enum"]) == ["daily", "hourly", "weekly"]
    for item in doc["paths"].values():
        for op in item.values():
            assert op["tags"] and op["summary"]
            assert op["responses"]["400"] == {"$ref": "#/components/responses/Error400"}
    assert "|" not in str([c for item in doc["paths"].values() for op in item.values()
                           for c in next(iter(op["responses"].values()))["content"]])


async def test_validation_comes_from_the_declaration(server) -> None:
    """A bad body is refused by the route's struct, naming the field path."""
    st, body = await server.user.post("/v1/databases", {
        "name": "x", "vectorDimension": 3, "indexParameters": {"M": 1}})
    assert st == 400 and body["message"] == "'indexParameters.M' must be an integer >= 2", body
    st, body = await server.user.post("/v1/databases", {"vectorDimension": 3})
    assert st == 400 and body["error"] == "missing_field" and "'name'" in body["message"]
    db = await server.user.create_db(dim=2)
    st, body = await server.user.post(f"/v1/databases/{db}/bm25-index/documents",
                                      {"documents": [{"doc_id": "a"}]})
    assert st == 400 and body["message"] == "missing required field 'documents[0].text'", body
    # lenient where the server always was: unknown fields pass
    st, body = await server.user.post("/v1/databases", {
        "name": "y", "vectorDimension": 2, "somethingElse": 1})
    assert st == 201, body
    # the query too
    st, body = await server.user.get(f"/v1/databases/{db}/vectors?limit=0")
    assert st == 400 and body["message"] == "query parameter 'limit' must be an integer >= 1"
    st, body = await server.user.get("/v1/databases?offset=x")
    assert st == 400 and "'offset'" in body["message"], body


def _generate(tmp_path: Any) -> Any:
    """A Python client generated from the committed document, imported."""
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("post_hooks: []\n")
    out = tmp_path / "gen" / "jade_generated"
    run = subprocess.run(
        [os.path.join(BIN, "openapi-python-client"), "generate", "--path",
         os.path.join(ROOT, "openapi.json"), "--output-path", str(out), "--meta", "none",
         "--config", str(cfg)], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr
    sys.path.insert(0, str(tmp_path / "gen"))
    try:
        return importlib.import_module("jade_generated")
    finally:
        sys.path.remove(str(tmp_path / "gen"))


async def test_a_generated_client_calls_the_server(server, tmp_path) -> None:
    gen = _generate(tmp_path)
    client_mod = importlib.import_module("jade_generated.client")
    api = "jade_generated.api."
    create_db = importlib.import_module(api + "databases.post_v1_databases")
    list_dbs = importlib.import_module(api + "databases.get_v1_databases")
    store = importlib.import_module(api + "vectors.post_v1_databases_db_vectors_batch")
    list_vecs = importlib.import_module(api + "vectors.get_v1_databases_db_vectors")
    search = importlib.import_module(api + "search.post_v1_databases_db_search")
    health = importlib.import_module(api + "system.get_health")
    models = importlib.import_module("jade_generated.models")
    token = server.user.headers["Authorization"].split()[1]

    def calls() -> None:
        with client_mod.Client(base_url=server.base) as anon:
            assert health.sync(client=anon).status == "healthy"
        with client_mod.AuthenticatedClient(base_url=server.base, token=token) as c:
            walk(c)

    def walk(c: Any) -> None:
        made = create_db.sync(client=c, body=models.CreateDatabase(
            name="generated", vector_dimension=2))
        assert isinstance(made, models.DatabaseCreated), made
        db = made.database_id
        vecs = [models.VectorIn(id=f"v{i}", values=[1.0, float(i)]) for i in range(5)]
        stored = store.sync(client=c, db=db, body=models.VectorBatch(vectors=vecs))
        assert isinstance(stored, models.BatchStored) and stored.count == 5, stored
        page = list_vecs.sync(client=c, db=db, limit=2, offset=1)
        assert isinstance(page, models.VectorList), page
        assert [v.id for v in page.vectors] == ["v1", "v2"] and page.total == 5
        found = search.sync(client=c, db=db, body=models.Search(
            query_vector=[1.0, 0.0], top_k=3))
        assert isinstance(found, models.SearchResults) and found.count == 3, found
        dbs = list_dbs.sync(client=c, limit=1, offset=0)
        assert isinstance(dbs, models.DatabaseList) and len(dbs.databases) == 1
        # a refusal is the declared Error
        bad = list_vecs.sync_detailed(client=c, db=db, limit=0)
        assert bad.status_code == 400 and isinstance(bad.parsed, models.Error), bad
        assert "limit" in bad.parsed.message

    # every route has its function in the generated client (the import too: as bytes)
    doc = (await server.anon.get("/openapi.json"))[1]
    for item in doc["paths"].values():
        for op in item.values():
            module = f"{api}{op['tags'][0].replace(' ', '_')}.{op['operationId']}"
            assert importlib.util.find_spec(module) is not None, module
    assert gen is not None
    await asyncio.to_thread(calls)


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed")
async def test_docs_page_renders_the_operations(server) -> None:
    from playwright.async_api import async_playwright

    async with server.anon.session.get(server.base + "/docs") as r:
        assert r.status == 200 and "script-src 'self'" in r.headers["Content-Security-Policy"]
        assert "unsafe-eval" not in r.headers["Content-Security-Policy"]
    for name, ctype in (("swagger-ui-bundle.js", "text/javascript"),
                        ("swagger-ui.css", "text/css"), ("init.js", "text/javascript")):
        async with server.anon.session.get(server.base + "/docs/" + name) as r:
            assert r.status == 200 and r.headers["Content-Type"].startswith(ctype), name
    async with server.anon.session.get(server.base + "/docs/..%2Fsecret") as r:
        assert r.status == 404
    n_ops = sum(len(item) for item in (await server.anon.get("/openapi.json"))[1]["paths"]
                .values())
    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        page = await browser.new_page()
        problems: list[str] = []
        page.on("pageerror", lambda e: problems.append(str(e)))
        page.on("console", lambda m: problems.append(m.text)
                if "Content Security Policy" in m.text else None)
        page.on("request", lambda req: problems.append("off-site: " + req.url)
                if not req.url.startswith((server.base, "data:")) else None)
        await page.goto(server.base + "/docs")
        await page.wait_for_selector(".opblock", timeout=20_000)
        assert await page.locator(".opblock").count() == n_ops
        assert "JadeVectorDB" in await page.text_content(".info .title")
        # an operation opens and shows its parameters, from the declaration
        await page.click("#operations-vectors-get_v1_databases_db_vectors .opblock-summary")
        await page.wait_for_selector(
            "#operations-vectors-get_v1_databases_db_vectors tr[data-param-name='limit']")
        await browser.close()
    assert problems == []


def test_the_integral_retry_leaves_user_data_as_sent() -> None:
    """``check`` accepts 10.0 for an integer field by retrying with integral floats made ints;
    metadata and filters are user data: a 10.0 there stays a float (stored and filtered as
    sent). Before: the retry turned every whole float of the body into an int."""
    import msgspec

    from jade.http.validate import check

    class Body(msgspec.Struct):
        topK: int
        metadata: dict[str, object] = {}
        filters: dict[str, object] = {}

    got = check({"topK": 10.0, "metadata": {"price": 10.0, "n": [2.0]},
                 "filters": {"price": 3.0}}, Body)
    assert got.topK == 10 and isinstance(got.topK, int)
    assert got.metadata == {"price": 10.0, "n": [2.0]}
    assert isinstance(got.metadata["price"], float) and isinstance(got.filters["price"], float)
