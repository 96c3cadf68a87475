"""Wiring only: ``build_app`` composes the route table (``routes.py``), the middleware with its
admission check (``middleware.py``, ``admission.py``), the metrics observers (``observers.py``),
the scheduled jobs (``jobs.py``) and the engine's life cycle (with the development JWT secret
and the bootstrap admin).
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import uuid
from collections.abc import AsyncIterator

from aiohttp import web

from jade.auth.audit import Audit
from jade.auth.service import AuthService
from jade.backup.jobs import Backups
from jade.core.decide import Command
from jade.engine import Engine
from jade.http import analytics, openapi
from jade.http.admission import admit
from jade.http.inflight import InFlight
from jade.http.jobs import add_jobs
from jade.http.keys import (
    ACCESS,
    AUDIT,
    AUTH,
    AUTH_HEALTH,
    BACKUPS,
    ENGINE,
    INFLIGHT,
    METRICS,
    OBSERVE,
    OPENAPI,
    PRINCIPAL,
    REPLICAS,
    ROUTE_TABLE,
    SCHEDULER,
    SETTINGS,
    SHUTDOWN,
    VISIBLE_DATABASES,
)
from jade.http.middleware import request_middleware
from jade.http.observers import group_observer, request_observer
from jade.http.replication_state import Replicas
from jade.http.routes import LONG_LIVED, ROUTES
from jade.metrics import Metrics
from jade.scheduler import Scheduler
from jade.settings import Settings
from jade.text import models

log = logging.getLogger(__name__)


def _dev_secret(settings: Settings) -> str:
    """Development without JWT_SECRET: a random secret kept beside the data, so tokens survive
    restarts. Production never gets here (settings refuse to load without a secret)."""
    if settings.jwt_secret:
        return settings.jwt_secret
    path = os.path.join(settings.data_dir, "jwt_secret")
    os.makedirs(settings.data_dir, exist_ok=True)
    try:
        with open(path) as fh:
            secret = fh.read().strip()
        if len(secret) >= 32:
            return secret
    except FileNotFoundError:
        pass
    secret = secrets.token_hex(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(secret)
    return secret


async def _bootstrap_admin(app: web.Application) -> None:
    """``JADEVECTORDB_ADMIN_PASSWORD`` on an empty system creates ``admin`` (who must change the
    password at first login), as the reference server does in production."""
    settings = app[SETTINGS]
    svc = app[AUTH]
    if not settings.admin_password or svc.store.user_count() > 0 or app[ENGINE].role != "primary":
        return
    hashed = await asyncio.to_thread(svc.hash_password, settings.admin_password)
    await app[ENGINE].submit(
        Command(
            "auth.user.create",
            {
                "user_id": uuid.uuid4().hex[:16],
                "username": "admin",
                "email": "",
                "password_hash": hashed,
                "roles": ["admin"],
                "bootstrap": True,
                "must_change_password": True,
            },
        )
    )
    log.info("created user 'admin' from JADEVECTORDB_ADMIN_PASSWORD")


def build_app(settings: Settings, engine: Engine | None = None) -> web.Application:
    """The aiohttp application. With no ``engine`` one is opened on start-up and closed on
    clean-up (with an index checkpoint)."""
    inflight = InFlight(LONG_LIVED)
    app = web.Application(
        middlewares=[request_middleware(admit, inflight)],
        client_max_size=settings.max_body_bytes,
    )
    app[SETTINGS] = settings
    models.configure(settings.text_model_path)  # the text models load at first use
    app[INFLIGHT] = inflight
    app[METRICS] = Metrics()
    own_engine = engine is None
    app[ENGINE] = engine if engine is not None else Engine(settings)
    app[ACCESS] = {}
    for r in ROUTES:
        app.router.add_route(r.method, r.path, r.handler)
        app[ACCESS][(r.method, r.path)] = r
    app[ROUTE_TABLE] = ROUTES
    app[OPENAPI] = openapi.build(ROUTES)
    app[OBSERVE] = request_observer(app)

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        eng: Engine = app[ENGINE]
        if own_engine:  # in a thread: the loop keeps answering meanwhile (serve's "starting")
            report = await asyncio.to_thread(eng.open)
            log.info(
                "opened %s at LSN %d in %.2fs (store replayed %d, indexes %s)",
                settings.db_path,
                report.last_lsn,
                report.seconds,
                report.store_replayed,
                report.index,
            )

        eng.group_observers.append(group_observer(app))
        await _bootstrap_admin(app)
        sched = app[SCHEDULER]
        add_jobs(app, sched)
        sched.start()
        yield
        sched.shutdown()
        if own_engine:
            eng.close(checkpoint=True)

    app[SHUTDOWN] = asyncio.Event()
    app[SCHEDULER] = Scheduler(app[METRICS])
    app[BACKUPS] = Backups(app[ENGINE])
    analytics.install(app, settings)  # loaded at start, flushed by a job and at clean-up
    app[REPLICAS] = Replicas(app[ENGINE].sync)  # acks release synchronous writes
    app[BACKUPS].replicas = app[REPLICAS]  # their positions hold log truncation
    svc = AuthService(settings, app[ENGINE], app[METRICS], _dev_secret(settings))
    app[AUTH] = svc
    app[AUDIT] = Audit(os.path.join(settings.log_dir, "audit.log"))
    app[VISIBLE_DATABASES] = lambda request, dbs: (
        svc.visible(request[PRINCIPAL], dbs) if PRINCIPAL in request else dbs
    )
    def auth_health() -> tuple[bool, str]:
        try:
            app[ENGINE].auth.applied_lsn()
            return True, "ok"
        except Exception as exc:  # any failure to read is the answer
            return False, f"error: {type(exc).__name__}"

    app[AUTH_HEALTH] = auth_health
    app.cleanup_ctx.append(lifecycle)
    return app
