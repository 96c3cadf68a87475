"""The route table: every route is declared once in ``ROUTES`` with its access class:
  ``public``  no credential (health, metrics)
  ``auth``    any valid credential (status)
  ``read``    reads a database (GET and search-like POSTs)
  ``write``   changes state: refused in readonly mode and on replicas
  ``admin``   administration
and its key rule (``keys``: what a caller through an API key may do there, whatever the key's
scopes; see ``KEY_RULES``).
The router, admission (``admission.py``) and the OpenAPI description (``openapi.py``) are built
from it. Tests walk this table (auth, readonly and API-key route walks), so a new route cannot
escape the checks.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aiohttp import web

from jade.http import (
    admin,
    analytics,
    apikeys,
    auth,
    backups,
    bulk,
    databases,
    embeddings,
    indexes,
    openapi,
    replication,
    reranking,
    search,
    security,
    system,
    text,
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
    must_change_ok: bool = False  # usable with a token of a user whose password is temporary
    keys: str = "any"  # see KEY_RULES


# What a caller through an API key may do on a route (applied in ``admission.admit`` by
# ``Permissions.check_key``; a login token passes every rule). Like GitHub's and GitLab's tokens,
# a key never changes the security of its own account: a leaked key, even a read-only one,
# must not lock the owner out (password, 2FA) or let someone else in (name, email, keys).
#   any    the access class and the key's scopes decide (data routes, reads, admin routes:
#          ``is_admin`` already requires the "admin" scope of a scoped key)
#   admin  an admin's key with the "admin" scope (or no scopes), and never on the key's own
#          account (the path's ``{uid}``): managing other users, minting API keys
#   none   a login token only: the account's own password and two-factor authentication
KEY_RULES = ("any", "admin", "none")


# public: no credential. auth: any valid credential. replicate: the replicator role (or admin).
# create/list: any user (not a replicator). read/write: a database, checked against ownership
# and grants. users: user management (admin only when ``user_admin_only``; handlers allow
# self-service). admin: the admin role. A route of the class "auth" whose handler acts on an
# account (users, API keys) lets anyone act on their own, and only an admin on someone else's.
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
    R("POST", "/v1/auth/logout", auth.logout, "auth", records=True, enroll_ok=True,
      must_change_ok=True),
    R("POST", "/v1/auth/forgot-password", auth.forgot_password, "public", mutates=True),
    R("POST", "/v1/auth/reset-password", auth.reset_password, "public", mutates=True),
    R("POST", "/v1/auth/2fa/enroll", auth.totp_enroll, "auth", mutates=True, enroll_ok=True,
      keys="none"),
    R("POST", "/v1/auth/2fa/confirm", auth.totp_confirm, "auth", mutates=True, enroll_ok=True,
      keys="none"),
    # users and keys
    R("POST", "/v1/users", users.create, "users", mutates=True, keys="admin"),
    R("GET", "/v1/users", users.list_, "users"),
    R("GET", "/v1/users/{uid}", users.get, "auth"),
    R("PUT", "/v1/users/{uid}", users.update, "auth", mutates=True, keys="admin"),
    R("DELETE", "/v1/users/{uid}", users.delete, "users", mutates=True, keys="admin"),
    R("PUT", "/v1/users/{uid}/password", users.change_password, "auth", mutates=True,
      keys="none", must_change_ok=True),
    R(
        "PUT",
        "/v1/admin/users/{uid}/reset-password",
        users.admin_reset_password,
        "admin",
        mutates=True,
        keys="admin",
    ),
    R(
        "POST",
        "/v1/admin/users/{uid}/reset-password",
        users.admin_reset_password,
        "admin",
        mutates=True,
        keys="admin",
    ),
    # anyone manages their own keys (API.md §4), production included; someone else's: admin
    R("POST", "/v1/api-keys", apikeys.create, "auth", mutates=True, keys="admin"),
    R("GET", "/v1/api-keys", apikeys.list_, "auth"),
    # through a key: that key itself (or any, with an admin key); see apikeys.delete
    R("DELETE", "/v1/api-keys/{key_id}", apikeys.delete, "auth", mutates=True),
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
    # text (jade/http/text.py): BM25 indexes are a projection of the log (build, rebuild and
    # documents append records); hybrid and rerank searches read
    R("POST", DB + "/search/hybrid", text.hybrid, "read"),
    R("POST", DB + "/search/rerank", text.rerank, "read"),
    R("POST", DB + "/bm25-index/build", text.build, "write", mutates=True),
    R("GET", DB + "/bm25-index/status", text.status, "read"),
    R("POST", DB + "/bm25-index/rebuild", text.rebuild, "write", mutates=True),
    R("POST", DB + "/bm25-index/documents", text.documents, "write", mutates=True),
    R("POST", "/v1/databases", databases.create, "create", mutates=True),
    R("GET", "/v1/databases", databases.list_, "list"),
    R("GET", DB, databases.get, "read"),
    R("PUT", DB, databases.update, "write", mutates=True),
    R("DELETE", DB, databases.delete, "write", mutates=True),
    R("GET", DB + "/grants", admin.grants_list, "read"),
    # who else may reach the database: write authority (and the handler: owner or admin)
    R("POST", DB + "/grants", admin.grants_set, "write", mutates=True),
    R("DELETE", DB + "/grants/{uid}", admin.grants_delete, "write", mutates=True),
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
    # query analytics (jade/http/analytics.py): reads of the database; feedback is not a write
    # to it (not in the log: readonly mode and replicas take it)
    R("GET", DB + "/analytics/stats", analytics.stats, "read"),
    R("GET", DB + "/analytics/queries", analytics.queries, "read"),
    R("GET", DB + "/analytics/patterns", analytics.patterns, "read"),
    R("GET", DB + "/analytics/insights", analytics.insights, "read"),
    R("GET", DB + "/analytics/trending", analytics.trending, "read"),
    R("GET", DB + "/analytics/export", analytics.export, "read"),
    R("POST", DB + "/analytics/feedback", analytics.feedback, "read"),
    # text models (jade/text/models.py): embeddings and /v1/rerank for any credential (no
    # database involved); a database's reranking configuration (PUT: a record in the log)
    R("POST", "/v1/embeddings/generate", embeddings.generate, "auth"),
    R("POST", "/v1/rerank", embeddings.rerank, "auth"),
    R("GET", DB + "/reranking/config", reranking.get_config, "read"),
    R("PUT", DB + "/reranking/config", reranking.set_config, "write", mutates=True),
)

LONG_LIVED = frozenset({"/v1/replication/stream"})  # never "finish": shutdown does not wait
