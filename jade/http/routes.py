"""The route table: every route is declared once in ``ROUTES`` with its access class:
  ``public``  no credential (health, metrics)
  ``auth``    any valid credential (status)
  ``read``    reads a database (GET and search-like POSTs)
  ``write``   changes state: refused in readonly mode and on replicas
  ``admin``   administration
The router, admission (``admission.py``) and the OpenAPI description (``openapi.py``) are built
from it. Tests walk this table (auth and readonly route walks), so a new route cannot escape the
checks.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aiohttp import web

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
    R("GET", "/ui/", ui_static.index, "public"),
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

LONG_LIVED = frozenset({"/v1/replication/stream"})  # never "finish": shutdown does not wait
