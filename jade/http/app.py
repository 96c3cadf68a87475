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

import asyncio
import logging
import os
import secrets
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from jade.auth.audit import Audit
from jade.auth.service import LOOPBACK_ADMIN, AuthService, now_ms
from jade.backup.jobs import Backups
from jade.core.decide import Command
from jade.engine import Engine
from jade.errors import (
    Forbidden,
    InvalidArgument,
    NotPrimary,
    ReadOnly,
    Unauthorized,
    Unavailable,
)
from jade.http import (
    admin,
    apikeys,
    auth,
    backups,
    bulk,
    databases,
    indexes,
    openapi,
    replication,
    search,
    security,
    system,
    ui_static,
    users,
    vectors,
)
from jade.http.keys import (
    ACCESS,
    ACTOR,
    AUDIT,
    AUTH,
    AUTH_HEALTH,
    BACKUPS,
    CLIENT_IP,
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
from jade.http.middleware import InFlight, request_middleware
from jade.http.replication_state import Replicas
from jade.metrics import Metrics
from jade.scheduler import Scheduler
from jade.settings import Settings

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Route:
    method: str
    path: str
    handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    access: str  # see ACCESS_CLASSES
    mutates: bool = False  # refused (503 read_only) in readonly mode
    records: bool = False  # appends to the log even in readonly mode (login...): primary only
    enroll_ok: bool = False  # usable with an enrol-only token (admin without TOTP)


# public: no credential. auth: any valid credential. replicate: the replicator role (or admin).
# create/list: any user (not a replicator). read/write: a database, checked against ownership
# and grants. users: user management (admin only when ``user_admin_only``; handlers allow
# self-service). admin: the admin role.
ACCESS_CLASSES = (
    "public", "auth", "create", "list", "read", "write", "users", "admin", "replicate",
)

DB = "/v1/databases/{db}"
R = Route

ROUTES: tuple[Route, ...] = (
    R("GET", "/health", system.health, "public"),
    R("GET", "/health/db", system.health_db, "public"),
    R("GET", "/metrics", system.metrics, "public"),
    R("GET", "/status", system.status, "auth"),
    R("GET", "/openapi.json", openapi.spec_handler, "public"),
    R("GET", "/docs", openapi.docs_handler, "public"),
    R("GET", "/ui", ui_static.index, "public"),
    R("GET", "/ui/{name}", ui_static.asset, "public"),
    # auth
    R("POST", "/v1/auth/register", auth.register, "public", mutates=True),
    R("POST", "/v1/auth/login", auth.login, "public", records=True),
    R("POST", "/v1/auth/logout", auth.logout, "auth", records=True, enroll_ok=True),
    R("POST", "/v1/auth/forgot-password", auth.forgot_password, "public", mutates=True),
    R("POST", "/v1/auth/reset-password", auth.reset_password, "public", mutates=True),
    R("POST", "/v1/auth/2fa/enroll", auth.totp_enroll, "auth", mutates=True, enroll_ok=True),
    R("POST", "/v1/auth/2fa/confirm", auth.totp_confirm, "auth", mutates=True, enroll_ok=True),
    # users and keys
    R("POST", "/v1/users", users.create, "users", mutates=True),
    R("GET", "/v1/users", users.list_, "users"),
    R("GET", "/v1/users/{uid}", users.get, "auth"),
    R("PUT", "/v1/users/{uid}", users.update, "auth", mutates=True),
    R("DELETE", "/v1/users/{uid}", users.delete, "users", mutates=True),
    R("PUT", "/v1/users/{uid}/password", users.change_password, "auth", mutates=True),
    R(
        "PUT",
        "/v1/admin/users/{uid}/reset-password",
        users.admin_reset_password,
        "admin",
        mutates=True,
    ),
    R(
        "POST",
        "/v1/admin/users/{uid}/reset-password",
        users.admin_reset_password,
        "admin",
        mutates=True,
    ),
    R("POST", "/v1/api-keys", apikeys.create, "users", mutates=True),
    R("GET", "/v1/api-keys", apikeys.list_, "users"),
    R("DELETE", "/v1/api-keys/{key_id}", apikeys.delete, "users", mutates=True),
    # security and administration
    R("GET", "/v1/security/audit-log", security.audit_log, "auth"),
    R("GET", "/v1/security/sessions", security.sessions, "auth"),
    R("GET", "/v1/security/audit-stats", security.audit_stats, "auth"),
    R("GET", "/v1/admin/ip-blocks", admin.ip_blocks, "admin"),
    R("DELETE", "/v1/admin/ip-blocks/{ip}", admin.ip_unblock, "admin", records=True),
    R("POST", "/v1/admin/readonly", admin.readonly, "admin", records=True),
    R("POST", "/admin/readonly", admin.readonly, "admin", records=True),
    R("POST", "/v1/admin/readwrite", admin.readwrite, "admin", records=True),
    R("POST", "/admin/readwrite", admin.readwrite, "admin", records=True),
    R("POST", "/v1/admin/promote", admin.promote, "admin"),
    R("GET", "/v1/replication/stream", replication.stream, "replicate"),
    R("POST", "/v1/replication/ack", replication.ack, "replicate"),
    R("GET", "/v1/replication/snapshot", replication.snapshot, "replicate"),
    R("GET", "/v1/replication/status", replication.status, "auth"),
    R("DELETE", "/v1/replication/replicas/{rid}", admin.forget_replica, "admin"),
    R("POST", "/v1/admin/shutdown", admin.shutdown, "admin"),
    R("POST", "/admin/shutdown", admin.shutdown, "admin"),
    R("POST", "/v1/admin/snapshots", backups.create, "admin"),
    R("GET", "/v1/admin/snapshots", backups.list_, "admin"),
    R("GET", "/v1/admin/snapshots/{name}", backups.get, "admin"),
    R("GET", "/v1/admin/snapshots/{name}/download", backups.download, "admin"),
    R("DELETE", "/v1/admin/snapshots/{name}", backups.delete, "admin"),
    R("GET", "/v1/admin/backup/window", backups.window, "admin"),
    # databases (search first: aiohttp tries the routes under one prefix in this order)
    R("POST", DB + "/search", search.search, "read"),
    R("POST", DB + "/search/advanced", search.search, "read"),
    R("POST", DB + "/search/batch", bulk.search_batch, "read"),
    R("POST", "/v1/databases", databases.create, "create", mutates=True),
    R("GET", "/v1/databases", databases.list_, "list"),
    R("GET", DB, databases.get, "read"),
    R("PUT", DB, databases.update, "write", mutates=True),
    R("DELETE", DB, databases.delete, "write", mutates=True),
    R("GET", DB + "/grants", admin.grants_list, "read"),
    R("POST", DB + "/grants", admin.grants_set, "read", mutates=True),
    R("DELETE", DB + "/grants/{uid}", admin.grants_delete, "read", mutates=True),
    R("POST", DB + "/vectors", vectors.store, "write", mutates=True),
    R("POST", DB + "/vectors/batch", vectors.batch, "write", mutates=True),
    R("POST", DB + "/vectors/batch-get", vectors.batch_get, "read"),
    R("GET", DB + "/vectors", vectors.list_, "read"),
    R("GET", DB + "/vectors/export", bulk.export, "read"),  # before {vid}
    R("GET", DB + "/vectors/{vid}", vectors.get, "read"),
    R("PUT", DB + "/vectors/{vid}", vectors.update, "write", mutates=True),
    R("DELETE", DB + "/vectors/{vid}", vectors.delete, "write", mutates=True),
    R("POST", DB + "/vectors/import", bulk.import_, "write", mutates=True),
    R("POST", DB + "/indexes", indexes.create, "write", mutates=True),
    R("GET", DB + "/indexes", indexes.list_, "read"),
    R("GET", DB + "/indexes/{iid}", indexes.get, "read"),
    R("PUT", DB + "/indexes/{iid}", indexes.update, "write", mutates=True),
    R("DELETE", DB + "/indexes/{iid}", indexes.delete, "write", mutates=True),
    # a dry run reads only; with "apply" the update goes through Engine.submit, which refuses
    # it in readonly mode and on a replica like any write
    R("POST", DB + "/indexes/{iid}/tune", indexes.tune, "write"),
)

@dataclass(slots=True)
class _Series:
    """The metric children one (method, status, route) observes."""

    requests: Any
    op: Any = None
    op_duration: Any = None


PROBES = frozenset({"/health", "/health/db", "/metrics", "/openapi.json", "/docs", "/ui",
                    "/ui/{name}"})
FORWARDING_HEADERS = ("X-Forwarded-For", "X-Real-IP", "Forwarded")
LONG_LIVED = frozenset({"/v1/replication/stream"})  # never "finish": shutdown does not wait


def admit(request: web.Request) -> Awaitable[None] | None:
    """Authenticate, throttle and authorize every request through the route table: raises to
    refuse; returns what to wait for before the handler runs (a read's ``X-Min-LSN``)."""
    resource = request.match_info.route.resource
    route: Route | None = request.app[ACCESS].get(
        (request.method, resource.canonical if resource else "")
    )
    if route is None:  # 404/405: let aiohttp answer
        return None
    svc = request.app[AUTH]
    engine = request.app[ENGINE]
    if engine.env is None and route.path not in PROBES:
        raise Unavailable("the data directory is being re-opened (replica re-seed); retry")
    ip = svc.client_ip(request.remote, request.headers)
    request[CLIENT_IP] = ip
    if engine.role == "replica" and (route.mutates or route.records):
        raise NotPrimary("this node is a read replica; send writes to the primary",
                         primary=request.app[SETTINGS].primary_url)
    if route.access == "public":
        if route.path not in PROBES:
            svc.check_blocked(ip)
            try:  # register honours an admin caller; a bad credential is simply ignored
                principal = svc.authenticate(request.headers)
            except Unauthorized:
                principal = None
            # an enrol-only token (admin without TOTP) carries no admin powers anywhere
            if principal is not None and not principal.enroll_only:
                request[PRINCIPAL] = principal
                request[ACTOR] = principal.user_id
            # refused before the handler runs, so the answer cannot depend on the input (a
            # forgot-password for an unknown name must not differ from one for a known name)
            if route.mutates and engine.mode() == "readonly":
                raise ReadOnly("the server is in readonly mode; writes are refused")
        return None
    svc.check_blocked(ip)
    principal = svc.authenticate(request.headers)
    if principal is None:
        settings = request.app[SETTINGS]
        if (  # a local caller, not a local reverse proxy relaying someone else
            route.access == "admin"
            and settings.loopback_admin
            and svc.is_loopback(request.remote or "")
            and not any(h in request.headers for h in FORWARDING_HEADERS)
        ):
            principal = LOOPBACK_ADMIN
        else:
            raise Unauthorized(
                "authentication required: send Authorization: Bearer <token or API key>",
                code="missing_credentials",
            )
    if principal.enroll_only and not route.enroll_ok:
        raise Forbidden(
            "admin accounts must enrol in two-factor authentication first "
            "(POST /v1/auth/2fa/enroll)",
            code="totp_enrollment_required",
        )
    if principal.is_replicator_only and route.access != "replicate":
        raise Forbidden("the replicator role may only stream the log", code="permission_denied")
    svc.limit(svc.api_limit, principal.key_id or principal.user_id, "api")
    request[PRINCIPAL] = principal
    request[ACTOR] = principal.user_id
    access = route.access
    if access in ("read", "write"):
        svc.authorize(principal, access, request.match_info.get("db"))
    elif access in ("create", "list", "admin", "replicate"):
        svc.authorize(principal, access)
    if route.mutates and engine.mode() == "readonly":
        raise ReadOnly("the server is in readonly mode; writes are refused")
    if route.mutates:
        return None
    raw = request.headers.get("X-Min-LSN") or (request.query_string and
                                               request.query.get("min_lsn"))
    return _wait_min_lsn(request, engine, raw) if raw else None


async def _wait_min_lsn(request: web.Request, engine: Engine, raw: str) -> None:
    """Read-your-writes: a read carrying ``X-Min-LSN`` (or ``?min_lsn=``) waits until this node
    has applied that LSN, up to ``read_wait_seconds``; else 503 with the node's LSN."""
    try:
        want = int(raw)
    except ValueError:
        raise InvalidArgument("X-Min-LSN / min_lsn must be an integer") from None
    if not await engine.log.wait_for(want, request.app[SETTINGS].read_wait_seconds):
        raise Unavailable(
            f"this node has applied LSN {engine.log.last_lsn}, not yet {want}",
            code="lsn_not_reached", lsn=engine.log.last_lsn, wanted=want)


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


def _add_jobs(app: web.Application, sched: Scheduler) -> None:
    settings = app[SETTINGS]
    engine = app[ENGINE]
    svc = app[AUTH]

    async def checkpoint() -> int:
        return await asyncio.to_thread(engine.indexes.checkpoint)

    async def prune_auth() -> int:
        if engine.role == "replica":
            return 0  # the primary prunes; its records reach us
        now = now_ms()
        expired = sum(1 for s in svc.store.sessions() if s["expires_at"] <= now) + sum(
            1 for b in svc.store.blocks() if b["until"] <= now)
        if expired:
            await engine.submit(Command("auth.prune", {"now": now}))
        return expired

    async def cleanup_limits() -> int:
        return svc.cleanup()

    bk = app[BACKUPS]

    async def take_snapshot() -> dict[str, object]:
        return await asyncio.to_thread(bk.scheduled_snapshot)

    async def archive_log() -> dict[str, object]:
        return await asyncio.to_thread(bk.archive_and_truncate)

    sched.add("index_checkpoint", settings.checkpoint_interval_seconds, checkpoint)
    sched.add("snapshot", settings.snapshot_interval_seconds, take_snapshot)
    sched.add("archive", settings.archive_interval_seconds, archive_log)
    sched.add("auth_prune", 300, prune_auth)
    sched.add("rate_limit_cleanup", 60, cleanup_limits)


def build_app(settings: Settings, engine: Engine | None = None) -> web.Application:
    """The aiohttp application. With no ``engine`` one is opened on start-up and closed on
    clean-up (with an index checkpoint)."""
    inflight = InFlight(LONG_LIVED)
    app = web.Application(
        middlewares=[request_middleware(admit, inflight)],
        client_max_size=settings.max_body_bytes,
    )
    app[SETTINGS] = settings
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

    # the labelled children per (method, status, route): ``labels()`` costs more than ``inc()``
    children: dict[tuple[str, int, str], _Series] = {}

    def series(method: str, status: int, path: str) -> _Series:
        m = app[METRICS]
        out = _Series(m.http_requests.labels(method, str(status)))
        route = app[ACCESS].get((method, path))
        if route is not None:
            # the runbook's database and user operation series, named by the handler
            name = f"{route.handler.__module__.rsplit('.', 1)[-1]}.{route.handler.__name__}"
            outcome = "success" if status < 400 else "error"
            if route.path.startswith("/v1/databases"):
                out.op = m.db_operations.labels(name, outcome)
                out.op_duration = m.db_operation_duration.labels(name)
            elif route.path.startswith(("/v1/users", "/v1/admin/users", "/v1/api-keys")):
                out.op = m.user_operations.labels(name)
        return out

    def observe(request: web.Request, status: int, seconds: float) -> None:
        resource = request.match_info.route.resource
        key = (request.method, status, resource.canonical if resource else "")
        s = children.get(key)
        if s is None:
            if len(children) > 4096:  # methods and statuses are few; this is only a bound
                children.clear()
            s = children[key] = series(*key)
        s.requests.inc()
        app[METRICS].http_duration.observe(seconds)
        if s.op is not None:
            s.op.inc()
        if s.op_duration is not None:
            s.op_duration.observe(seconds)

    app[OBSERVE] = observe

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

        def on_group(requests: int, records: int, seconds: float) -> None:
            m = app[METRICS]
            m.wal_group_requests.observe(requests)
            m.wal_append_duration.observe(seconds)
            m.wal_records.inc(records)

        eng.group_observers.append(on_group)
        await _bootstrap_admin(app)
        sched = app[SCHEDULER]
        _add_jobs(app, sched)
        sched.start()
        yield
        sched.shutdown()
        if own_engine:
            eng.close(checkpoint=True)

    app[SHUTDOWN] = asyncio.Event()
    app[SCHEDULER] = Scheduler(app[METRICS])
    app[BACKUPS] = Backups(app[ENGINE])
    app[REPLICAS] = Replicas()
    app[BACKUPS].position_holders.append(app[REPLICAS].min_position)
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
