"""The OpenAPI document, derived from the route table (``ROUTES``) and the types it names
(``jade/http/schemas.py``): named component schemas from the msgspec structs, tags, summaries,
path and query parameters (with their bounds and enums), one ``Error`` schema for every error
answer, the security schemes. Nothing here lists the routes again. Committed as
``openapi.json`` (``jade openapi > openapi.json``; a test fails when it is stale), served at
``/openapi.json``, and shown at ``/docs`` by Swagger UI (its files come from the
``swagger-ui-bundle`` package and are served by ``/docs/{name}``: no CDN).

The document is OpenAPI 3.0.3 (Swagger UI 4, which the package ships, reads no 3.1): msgspec
writes JSON Schema 2020-12, converted by ``_to_30`` (``null`` in a union becomes
``nullable``, a numeric ``exclusiveMinimum`` the boolean form)."""

from __future__ import annotations

import os
import re
from typing import Any

import msgspec
from aiohttp import web

from jade import __version__
from jade.errors import NotFound
from jade.http import schemas as S

J = dict[str, Any]
REF = "#/components/schemas/{name}"
ERROR_CODES = ("400", "401", "403", "404", "405", "409", "413", "415", "429", "503")
# the first path segment after /v1 (or the path's own) names the tag; database sub-resources
# by their own name
_TAG_OF_SEGMENT = {
    "auth": "auth", "users": "users", "api-keys": "api keys", "security": "security",
    "admin": "administration", "replication": "replication", "embeddings": "text models",
    "rerank": "text models", "databases": "databases", "vectors": "vectors",
    "search": "search", "bm25-index": "text search", "indexes": "indexes",
    "analytics": "analytics", "grants": "databases", "reranking": "text search",
}
TAGS = (
    ("system", "Health, metrics, status and this documentation"),
    ("auth", "Log in and out, register, passwords, two-factor authentication"),
    ("users", "User accounts"),
    ("api keys", "API keys (X-API-Key or Bearer)"),
    ("security", "Audit log and sessions"),
    ("administration", "Read-only mode, shutdown, snapshots, blocked addresses"),
    ("replication", "Followers: the log stream, snapshots and positions"),
    ("databases", "Databases and who may reach them"),
    ("vectors", "Store, fetch, list, import and export vectors"),
    ("search", "Similarity search"),
    ("indexes", "Vector indexes and their tuning"),
    ("text search", "BM25 indexes, hybrid search and reranking"),
    ("text models", "Embeddings and reranking with the server's model"),
    ("analytics", "Query analytics and feedback"),
    ("console", "The web console"),
)


def tag_of(path: str) -> str:
    parts = [p for p in path.split("/") if p and p != "v1"]
    if not parts or parts[0] in ("health", "metrics", "status", "openapi.json", "docs"):
        return "system"
    if parts[0] == "ui":
        return "console"
    if parts[0] == "databases" and len(parts) > 2:
        return _TAG_OF_SEGMENT.get(parts[2], "databases")
    return _TAG_OF_SEGMENT.get(parts[0], "system")


def _is_struct(t: Any) -> bool:
    return isinstance(t, type) and issubclass(t, msgspec.Struct)


def build(routes: tuple[Any, ...]) -> J:
    # every type a route names, in one pass: shared structs become one named component each
    types: list[Any] = [S.Error]
    for r in routes:
        types += [t for t in (r.body, r.query, r.resp) if t is not None and t is not S.TEXT]
    schemas, components = msgspec.json.schema_components(types, ref_template=REF)
    schema_of = {id(t): _to_30(s) for t, s in zip(types, schemas, strict=True)}
    components = {name: _to_30(s) for name, s in components.items()}
    error = schema_of[id(S.Error)]
    paths: J = {}
    for r in routes:
        responses: J = {str(r.status): {
            "description": "success",
            "content": {c: {"schema": _schema(r.resp, c, schema_of)} for c in r.ctype},
        }}
        for code in ERROR_CODES:
            responses[code] = {"$ref": f"#/components/responses/Error{code}"}
        entry: J = {
            "tags": [tag_of(r.path)],
            "summary": r.summary,
            "operationId": f"{r.method.lower()}_{_slug(r.path)}",
            "responses": responses,
            "x-access": r.access,
            # through an API key: any | admin (an admin's key, never its own account) | none
            "x-keys": r.keys,
        }
        if _is_struct(r.body) and r.body.__doc__:
            entry["description"] = _text(r.body.__doc__)
        params = [{"name": n, "in": "path", "required": True, "schema": {"type": "string"}}
                  for n in re.findall(r"{(\w+)}", r.path)]
        if r.query is not None:
            params += _query_parameters(components[r.query.__name__])
        if params:
            entry["parameters"] = params
        if r.access != "public":
            entry["security"] = [{"bearer": []}, {"apiKey": []}]
        if r.body is S.TEXT:  # JSON lines; as bytes for clients that know no ndjson
            entry["requestBody"] = {"required": True, "content": {
                "application/x-ndjson": {"schema": {"type": "string"}},
                "application/octet-stream": {"schema": {"type": "string",
                                                        "format": "binary"}}}}
        elif r.body is not None:
            entry["requestBody"] = {"required": r.body_required, "content": {
                "application/json": {"schema": schema_of[id(r.body)]}}}
        paths.setdefault(r.path, {})[r.method.lower()] = entry
    used = {tag for item in paths.values() for op in item.values() for tag in op["tags"]}
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "JadeVectorDB",
            "version": __version__,
            "description": "JadeVectorDB REST API (Python server). Every error answer is an "
                           "`Error`: a stable `error` code and a `message`.",
        },
        "tags": [{"name": n, "description": d} for n, d in TAGS if n in used],
        "paths": dict(sorted(paths.items())),
        "components": {
            "schemas": dict(sorted(components.items())),
            "responses": {f"Error{code}": {"description": "error", "content": {
                "application/json": {"schema": error}}} for code in ERROR_CODES},
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT or API key",
                           "description": "A token from POST /v1/auth/login, or an API key"},
                "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
            },
        },
    }


def _schema(t: Any, ctype: str, schema_of: dict[int, J]) -> J:
    if t is S.TEXT or not ctype.endswith("json"):
        return {"type": "string"}
    return schema_of[id(t)]


def _query_parameters(component: J) -> list[J]:
    """A query struct's fields as OpenAPI query parameters (bounds, enums and defaults kept)."""
    required = set(component.get("required", ()))
    out = []
    for name, prop in component["properties"].items():
        prop = dict(prop)
        prop.pop("nullable", None)  # absent is the way to say "none" in a query
        p: J = {"name": name, "in": "query", "required": name in required, "schema": prop}
        if "description" in prop:
            p["description"] = prop.pop("description")
        out.append(p)
    return out


def _text(doc: str) -> str:
    return re.sub(r"\s*\n\s*", " ", doc.strip()).replace("``", "`")


def _to_30(s: Any) -> Any:
    """JSON Schema 2020-12 (msgspec) as OpenAPI 3.0's schema dialect."""
    if isinstance(s, list):
        return [_to_30(x) for x in s]
    if not isinstance(s, dict):
        return s
    s = {k: _to_30(v) for k, v in s.items() if k != "title" and v != []}  # required: []
    if "description" in s and isinstance(s["description"], str):
        s["description"] = _text(s["description"])
    any_of = s.get("anyOf")
    if isinstance(any_of, list) and {"type": "null"} in any_of:
        rest = [x for x in any_of if x != {"type": "null"}]
        del s["anyOf"]
        inner = rest[0] if len(rest) == 1 else {"anyOf": rest}
        if "$ref" in inner:
            inner = {"allOf": [inner]}
        s = {**inner, **s, "nullable": True}
        if s.get("default", 0) is None:
            del s["default"]
    if isinstance(s.get("examples"), list) and s["examples"]:  # 3.0 has one example
        s["example"] = s.pop("examples")[0]
    for bound, plain in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
        if isinstance(s.get(bound), (int, float)) and not isinstance(s[bound], bool):
            s[plain] = s[bound]
            s[bound] = True
    return s


def _slug(path: str) -> str:
    slug = re.sub(r"[^a-z0-9]+", "_", path.lower()).strip("_")
    return slug + "_slash" if path.endswith("/") and len(path) > 1 else slug


# -- /docs: Swagger UI, from the swagger-ui-bundle package, served here -------------------------

DOCS_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>JadeVectorDB API</title>
<link rel="stylesheet" href="/docs/swagger-ui.css">
<link rel="icon" type="image/png" href="/docs/favicon-32x32.png"></head>
<body><noscript>The machine-readable description: <a href="/openapi.json">/openapi.json</a>
</noscript><div id="swagger-ui" data-url="/openapi.json"></div>
<script src="/docs/swagger-ui-bundle.js"></script><script src="/docs/init.js"></script>
</body></html>
"""
# no inline script (the CSP below allows none): the page's own start-up is a file too
INIT_JS = b"""window.addEventListener('load', function () {
  var node = document.getElementById('swagger-ui');
  window.ui = SwaggerUIBundle({
    url: node.getAttribute('data-url'), dom_id: '#swagger-ui', deepLinking: true,
    presets: [SwaggerUIBundle.presets.apis], layout: 'BaseLayout',
    persistAuthorization: false, tryItOutEnabled: false
  });
});
"""
DOCS_ASSETS = {
    "swagger-ui-bundle.js": "text/javascript",
    "swagger-ui.css": "text/css",
    "favicon-32x32.png": "image/png",
}
# as the console's (jade/http/ui_static.py): only this server's own files and requests, nothing
# inline, never framed; Swagger UI needs no more (its icons are data: URIs)
DOCS_CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
            "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
            "frame-ancestors 'none'")
DOCS_HEADERS = {
    "Content-Security-Policy": DOCS_CSP,
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
}
_asset_cache: dict[str, bytes] = {}


def _swagger_dir() -> str:
    import swagger_ui_bundle  # type: ignore[import-untyped]

    return str(swagger_ui_bundle.swagger_ui_path)


async def spec_handler(request: web.Request) -> web.Response:
    from jade.http.keys import OPENAPI
    from jade.http.middleware import json_response

    return json_response(request.app[OPENAPI])


async def docs_handler(request: web.Request) -> web.Response:
    return web.Response(text=DOCS_PAGE, content_type="text/html",
                        headers={**DOCS_HEADERS, "Cache-Control": "no-cache"})


async def docs_asset(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    if name == "init.js":
        body, ctype = INIT_JS, "text/javascript"
    elif name in DOCS_ASSETS:
        ctype = DOCS_ASSETS[name]
        body = _asset_cache.get(name, b"")
        if not body:
            with open(os.path.join(_swagger_dir(), name), "rb") as fh:
                body = _asset_cache[name] = fh.read()
    else:
        raise NotFound("no such file", name=name)
    return web.Response(body=body, content_type=ctype, headers={
        **DOCS_HEADERS, "Cache-Control": "public, max-age=86400"})
