"""Wiring only: the route table, the middlewares, and the engine's life cycle.

Every route is declared once in ``ROUTES`` with its access class:
  ``public``  no credential (health, metrics)
  ``auth``    any valid credential (status)
  ``read``    reads a database (GET and search-like POSTs)
  ``write``   changes state: refused in readonly mode and on replicas
  ``admin``   administration
Tests walk this table (auth and readonly route walks), so a new route cannot escape the checks.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

from aiohttp import web

from jade.engine import Engine
from jade.errors import Unauthorized
from jade.http import databases, indexes, search, system, vectors
from jade.http.keys import ACCESS, ACTOR, ENGINE, METRICS, OBSERVE, ROUTE_TABLE, SETTINGS
from jade.http.middleware import Handler, errors_middleware
from jade.metrics import Metrics
from jade.settings import Settings

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Route:
    method: str
    path: str
    handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    access: str


DB = "/v1/databases/{db}"

ROUTES: tuple[Route, ...] = (
    Route("GET", "/health", system.health, "public"),
    Route("GET", "/health/db", system.health_db, "public"),
    Route("GET", "/metrics", system.metrics, "public"),
    Route("GET", "/status", system.status, "auth"),
    Route("POST", "/v1/databases", databases.create, "write"),
    Route("GET", "/v1/databases", databases.list_, "read"),
    Route("GET", DB, databases.get, "read"),
    Route("PUT", DB, databases.update, "write"),
    Route("DELETE", DB, databases.delete, "write"),
    Route("POST", DB + "/vectors", vectors.store, "write"),
    Route("POST", DB + "/vectors/batch", vectors.batch, "write"),
    Route("POST", DB + "/vectors/batch-get", vectors.batch_get, "read"),
    Route("GET", DB + "/vectors", vectors.list_, "read"),
    Route("GET", DB + "/vectors/{vid}", vectors.get, "read"),
    Route("PUT", DB + "/vectors/{vid}", vectors.update, "write"),
    Route("DELETE", DB + "/vectors/{vid}", vectors.delete, "write"),
    Route("POST", DB + "/search", search.search, "read"),
    Route("POST", DB + "/search/advanced", search.search, "read"),
    Route("POST", DB + "/indexes", indexes.create, "write"),
    Route("GET", DB + "/indexes", indexes.list_, "read"),
    Route("GET", DB + "/indexes/{iid}", indexes.get, "read"),
    Route("PUT", DB + "/indexes/{iid}", indexes.update, "write"),
    Route("DELETE", DB + "/indexes/{iid}", indexes.delete, "write"),
)


@web.middleware
async def access_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """The switch issue 3 replaces: until authentication exists, non-public routes are open only
    when ``open_data_routes`` is on (development default; forced off in production)."""
    info = request.match_info.route.resource
    access = request.app[ACCESS].get((request.method, info.canonical if info else ""), "public")
    if access != "public" and not request.app[SETTINGS].open_data_routes:
        raise Unauthorized("authentication required")
    request[ACTOR] = "anonymous"
    return await handler(request)


def build_app(settings: Settings, engine: Engine | None = None) -> web.Application:
    """The aiohttp application. With no ``engine`` one is opened on start-up and closed on
    clean-up (with an index checkpoint)."""
    app = web.Application(
        middlewares=[errors_middleware, access_middleware],
        client_max_size=settings.max_body_bytes,
    )
    app[SETTINGS] = settings
    app[METRICS] = Metrics()
    own_engine = engine is None
    app[ENGINE] = engine if engine is not None else Engine(settings)
    app[ACCESS] = {}
    for r in ROUTES:
        app.router.add_route(r.method, r.path, r.handler)
        app[ACCESS][(r.method, r.path)] = r.access
    app[ROUTE_TABLE] = ROUTES

    def observe(request: web.Request, status: int, seconds: float) -> None:
        m = app[METRICS]
        m.http_requests.labels(request.method, str(status)).inc()
        m.http_duration.observe(seconds)

    app[OBSERVE] = observe

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        eng: Engine = app[ENGINE]
        if own_engine:
            report = eng.open()
            log.info(
                "opened %s at LSN %d in %.2fs (store replayed %d, indexes %s)",
                settings.db_path,
                report.last_lsn,
                report.seconds,
                report.store_replayed,
                report.index,
            )

        def on_group(requests: int, records: int, seconds: float) -> None:
            m = app[METRICS]
            m.wal_group_requests.observe(requests)
            m.wal_append_duration.observe(seconds)
            m.wal_records.inc(records)

        eng.group_observers.append(on_group)
        yield
        if own_engine:
            eng.close(checkpoint=True)

    app.cleanup_ctx.append(lifecycle)
    return app
