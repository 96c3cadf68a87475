"""The route table: every route is declared once in ``ROUTES`` with its access class:
  ``public``  no credential (health, metrics)
  ``auth``    any valid credential (status)
  ``read``    reads a database (GET and search-like POSTs)
  ``write``   changes state: refused in readonly mode and on replicas
  ``admin``   administration
and its key rule (``keys``: what a caller through an API key may do there, whatever the key's
scopes; see ``KEY_RULES``), and its types: the request body, the query parameters and the
answer, named from ``schemas.py`` (msgspec structs) with a summary, the success status and the
content types. A new route declares them here and nowhere else.
The router, admission (``admission.py``), the validation of bodies and queries and the
handlers' parsed input (``validate.parsed`` / ``read_json`` / ``query_of``) and the OpenAPI
description (``openapi.py``) are built from it. Tests walk this table (auth, readonly and
API-key route walks), so a new route cannot escape the checks.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from jade.http import (
    admin,
    analytics,
    apikeys,
    auth,
    backups,
    bulk,
    cluster,
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
from jade.http import schemas as S


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
    # the API's description, declared once (jade/http/schemas.py): the request body's struct
    # (None: no body; ``S.TEXT``: a text body, JSON lines), the query parameters' struct, the
    # answer (a struct, ``S.ANY_JSON`` or ``S.TEXT``) with its status and content types. The
    # body's and the query's validation, the handler's parsed input and the OpenAPI document
    # are derived from them.
    summary: str = ""
    body: Any = None
    query: Any = None
    resp: Any = S.ANY_JSON
    status: int = 200
    ctype: tuple[str, ...] = ("application/json",)
    body_required: bool = True  # False: an empty body is an empty request (all defaults)


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
JSON = ("application/json",)
HTML = ("text/html",)
TAR = ("application/x-tar",)
NDJSON = ("application/x-ndjson",)
TEXT = S.TEXT

ROUTES: tuple[Route, ...] = (
    R("GET", "/health", system.health, "public", summary="Liveness and basic checks",
      resp=S.Health),
    R("GET", "/health/db", system.health_db, "public", summary="Storage health",
      resp=S.HealthDb),
    R("GET", "/metrics", system.metrics, "public", summary="Prometheus metrics (text format)",
      resp=TEXT, ctype=("text/plain",)),
    R("GET", "/status", system.status, "auth",
      summary="Server status with real numbers, mode and role", resp=S.Status),
    R("GET", "/openapi.json", openapi.spec_handler, "public", summary="This document"),
    R("GET", "/docs", openapi.docs_handler, "public",
      summary="Interactive API documentation (Swagger UI)", resp=TEXT, ctype=HTML),
    R("GET", "/docs/{name}", openapi.docs_asset, "public", summary="API documentation assets",
      resp=TEXT, ctype=("text/javascript", "text/css", "image/png")),
    R("GET", "/ui", ui_static.index, "public", summary="Web console", resp=TEXT, ctype=HTML),
    R("GET", "/ui/", ui_static.index, "public", summary="Web console (the same page)",
      resp=TEXT, ctype=HTML),
    R("GET", "/ui/{name}", ui_static.asset, "public", summary="Web console assets", resp=TEXT,
      ctype=("text/html", "text/javascript", "text/css")),
    # auth
    R("POST", "/v1/auth/register", auth.register, "public", mutates=True,
      summary="Register a user", body=S.Register, resp=S.Registered, status=201),
    R("POST", "/v1/auth/login", auth.login, "public", records=True, summary="Log in: a JWT",
      body=S.Login, resp=S.LoggedIn),
    R("POST", "/v1/auth/logout", auth.logout, "auth", records=True, enroll_ok=True,
      must_change_ok=True,
      summary="End the calling token's session (all: every session of the user)",
      body=S.Logout, body_required=False, resp=S.LoggedOut),
    R("POST", "/v1/auth/forgot-password", auth.forgot_password, "public", mutates=True,
      summary="Issue a password reset", body=S.ForgotPassword),
    R("POST", "/v1/auth/reset-password", auth.reset_password, "public", mutates=True,
      summary="Reset a password with a reset token", body=S.ResetPassword),
    R("POST", "/v1/auth/2fa/enroll", auth.totp_enroll, "auth", mutates=True, enroll_ok=True,
      keys="none", summary="Start TOTP enrolment", resp=S.TotpEnrolled),
    R("POST", "/v1/auth/2fa/confirm", auth.totp_confirm, "auth", mutates=True, enroll_ok=True,
      keys="none", summary="Confirm TOTP with a code", body=S.TotpConfirm),
    # users and keys
    R("POST", "/v1/users", users.create, "users", mutates=True, keys="admin",
      summary="Create a user", body=S.CreateUser, resp=S.User, status=201),
    R("GET", "/v1/users", users.list_, "users", summary="List users", query=S.UsersQuery,
      resp=S.UserList),
    R("GET", "/v1/users/{uid}", users.get, "auth", summary="Get a user", resp=S.User),
    R("PUT", "/v1/users/{uid}", users.update, "auth", mutates=True, keys="admin",
      summary="Update a user", body=S.UpdateUser, resp=S.User),
    R("DELETE", "/v1/users/{uid}", users.delete, "users", mutates=True, keys="admin",
      summary="Delete a user"),
    R("PUT", "/v1/users/{uid}/password", users.change_password, "auth", mutates=True,
      keys="none", must_change_ok=True,
      summary="Change a password: ends every session (the caller gets a new token) and, "
      "unless keep_api_keys, the API keys", body=S.ChangePassword, resp=S.PasswordChanged),
    R(
        "PUT",
        "/v1/admin/users/{uid}/reset-password",
        users.admin_reset_password,
        "admin",
        mutates=True,
        keys="admin",
        summary="Admin password reset",
        body=S.AdminResetPassword,
    ),
    R(
        "POST",
        "/v1/admin/users/{uid}/reset-password",
        users.admin_reset_password,
        "admin",
        mutates=True,
        keys="admin",
        summary="Admin password reset",
        body=S.AdminResetPassword,
    ),
    # anyone manages their own keys (API.md §4), production included; someone else's: admin
    R("POST", "/v1/api-keys", apikeys.create, "auth", mutates=True, keys="admin",
      summary="Create an API key (shown once)", body=S.CreateApiKey, resp=S.ApiKeyCreated,
      status=201),
    R("GET", "/v1/api-keys", apikeys.list_, "auth", summary="List API keys",
      query=S.UserIdQuery, resp=S.ApiKeyList),
    # through a key: that key itself (or any, with an admin key); see apikeys.delete
    R("DELETE", "/v1/api-keys/{key_id}", apikeys.delete, "auth", mutates=True,
      summary="Revoke an API key"),
    # security and administration
    R("GET", "/v1/security/audit-log", security.audit_log, "auth", summary="Audit events",
      query=S.AuditQuery, resp=S.AuditLog),
    R("GET", "/v1/security/sessions", security.sessions, "auth", summary="A user's sessions",
      query=S.SessionsQuery, resp=S.Sessions),
    R("GET", "/v1/security/audit-stats", security.audit_stats, "auth",
      summary="Audit counters"),
    R("GET", "/v1/admin/ip-blocks", admin.ip_blocks, "admin", summary="Blocked IPs",
      resp=S.IpBlocks),
    R("DELETE", "/v1/admin/ip-blocks/{ip}", admin.ip_unblock, "admin", records=True,
      summary="Unblock an IP"),
    R("POST", "/v1/admin/readonly", admin.readonly, "admin", records=True,
      summary="Refuse writes (a log record)", resp=S.Mode),
    R("POST", "/admin/readonly", admin.readonly, "admin", records=True,
      summary="Refuse writes (a log record)", resp=S.Mode),
    R("POST", "/v1/admin/readwrite", admin.readwrite, "admin", records=True,
      summary="Accept writes again", resp=S.Mode),
    R("POST", "/admin/readwrite", admin.readwrite, "admin", records=True,
      summary="Accept writes again", resp=S.Mode),
    R("POST", "/v1/admin/promote", admin.promote, "admin",
      summary="Promote this replica to primary (new epoch)"),
    R("GET", "/v1/replication/stream", replication.stream, "replicate",
      summary="Stream log records (replicator role)", query=S.StreamQuery, resp=TEXT,
      ctype=("application/x-jade-stream",)),
    R("POST", "/v1/replication/ack", replication.ack, "replicate",
      summary="A follower's applied position", body=S.ReplicationAck),
    R("GET", "/v1/replication/snapshot", replication.snapshot, "replicate",
      summary="A fresh snapshot for bootstrapping (tar)", resp=TEXT, ctype=TAR),
    R("GET", "/v1/replication/status", replication.status, "auth",
      summary="Replication positions and lag", resp=S.ReplicationStatus),
    R("GET", "/v1/cluster", cluster.view, "auth",
      summary="The cluster: members, roles, LSNs, lag, epoch, leader"),
    R("GET", "/health/cluster", cluster.ready, "public",
      summary="Readiness of a cluster member: 200 while it serves its role (?role=primary)"),
    R("DELETE", "/v1/replication/replicas/{rid}", admin.forget_replica, "admin",
      summary="Forget a follower"),
    R("POST", "/v1/admin/shutdown", admin.shutdown, "admin", summary="Graceful shutdown",
      resp=S.ShutdownStatus),
    R("POST", "/admin/shutdown", admin.shutdown, "admin", summary="Graceful shutdown",
      resp=S.ShutdownStatus),
    R("POST", "/v1/admin/snapshots", backups.create, "admin", summary="Take a hot snapshot",
      status=201),
    R("GET", "/v1/admin/snapshots", backups.list_, "admin", summary="List snapshots",
      resp=S.SnapshotList),
    R("GET", "/v1/admin/snapshots/{name}", backups.get, "admin",
      summary="Snapshot details and verification"),
    R("GET", "/v1/admin/snapshots/{name}/download", backups.download, "admin",
      summary="Download a snapshot (tar)", resp=TEXT, ctype=TAR),
    R("DELETE", "/v1/admin/snapshots/{name}", backups.delete, "admin",
      summary="Delete a snapshot"),
    R("GET", "/v1/admin/backup/window", backups.window, "admin",
      summary="Restorable LSN and time window"),
    # databases (search first: aiohttp tries the routes under one prefix in this order)
    R("POST", DB + "/search", search.search, "read", summary="Similarity search",
      body=S.Search, resp=S.SearchResults),
    R("POST", DB + "/search/advanced", search.search, "read",
      summary="Similarity search with filters", body=S.Search, resp=S.SearchResults),
    R("POST", DB + "/search/batch", bulk.search_batch, "read",
      summary="Many queries in one request", body=S.BatchSearch, resp=S.BatchSearchResults),
    # text (jade/http/text.py): BM25 indexes are a projection of the log (build, rebuild and
    # documents append records); hybrid and rerank searches read
    R("POST", DB + "/search/hybrid", text.hybrid, "read",
      summary="BM25 and vector rankings fused; filters apply before either ranking is cut",
      body=S.Hybrid, resp=S.HybridResults),
    R("POST", DB + "/search/rerank", text.rerank, "read",
      summary="Hybrid candidates (rerankTopN) reordered by the reranking model (503 when it "
      "is missing)", body=S.RerankSearch, resp=S.RerankSearchResults),
    R("POST", DB + "/bm25-index/build", text.build, "write", mutates=True,
      summary="Index metadata[textField] of every vector with BM25 (a record in the log; the "
      "index then follows every write). The build runs in steps between writes; the answer "
      "comes when it is done, or after 30 s with status 'building' and documentCount so far "
      "(the status route follows it)", body=S.Bm25Build, body_required=False,
      resp=S.Bm25Built),
    R("GET", DB + "/bm25-index/status", text.status, "read",
      summary="The BM25 index: documents, terms, progress of a build running now (404: none)",
      resp=S.Bm25Status),
    R("POST", DB + "/bm25-index/rebuild", text.rebuild, "write", mutates=True,
      summary="Index every vector's text again (textField: the index's own by default)",
      body=S.Bm25Rebuild, body_required=False, resp=S.Bm25Built),
    R("POST", DB + "/bm25-index/documents", text.documents, "write", mutates=True,
      summary="Add documents (by id) to the BM25 index (a record in the log; a later write of "
      "a vector of the same id replaces it)", body=S.Bm25Documents, resp=S.Bm25Added),
    R("POST", "/v1/databases", databases.create, "create", mutates=True,
      summary="Create a database", body=S.CreateDatabase, resp=S.DatabaseCreated, status=201),
    R("GET", "/v1/databases", databases.list_, "list", summary="List databases",
      query=S.DatabasePage, resp=S.DatabaseList),
    R("GET", DB, databases.get, "read", summary="Get a database", resp=S.Database),
    R("PUT", DB, databases.update, "write", mutates=True, summary="Update a database",
      body=S.UpdateDatabase),
    R("DELETE", DB, databases.delete, "write", mutates=True, summary="Delete a database"),
    R("GET", DB + "/grants", admin.grants_list, "read", summary="Grants on a database"),
    # who else may reach the database: write authority (and the handler: owner or admin)
    R("POST", DB + "/grants", admin.grants_set, "write", mutates=True,
      summary="Grant read or write", body=S.Grant, status=201),
    R("DELETE", DB + "/grants/{uid}", admin.grants_delete, "write", mutates=True,
      summary="Remove a grant"),
    R("POST", DB + "/vectors", vectors.store, "write", mutates=True,
      summary="Store (upsert) a vector ('values', or 'valuesB64': base64 of little-endian "
      "float32)", body=S.VectorIn, resp=S.VectorStored, status=201),
    R("POST", DB + "/vectors/batch", vectors.batch, "write", mutates=True,
      summary="Store many vectors: one record, all or nothing ('values' or 'valuesB64' per "
      "vector)", body=S.VectorBatch, resp=S.BatchStored, status=201),
    R("POST", DB + "/vectors/batch-get", vectors.batch_get, "read",
      summary="Fetch vectors by id", body=S.BatchGet, resp=S.VectorList),
    R("GET", DB + "/vectors", vectors.list_, "read", summary="List vectors",
      query=S.VectorPage, resp=S.VectorList),
    R("GET", DB + "/vectors/export", bulk.export, "read",  # before {vid}
      summary="Export as JSON lines (streamed)", query=S.ExportQuery, resp=TEXT, ctype=NDJSON),
    R("GET", DB + "/vectors/{vid}", vectors.get, "read", summary="Get a vector",
      resp=S.Vector),
    R("PUT", DB + "/vectors/{vid}", vectors.update, "write", mutates=True,
      summary="Replace a vector's values (and metadata)", body=S.UpdateVector),
    R("DELETE", DB + "/vectors/{vid}", vectors.delete, "write", mutates=True,
      summary="Delete a vector"),
    R("POST", DB + "/vectors/import", bulk.import_, "write", mutates=True,
      summary="Import JSON lines (streamed, chunked records)", body=TEXT, query=S.ImportQuery,
      status=201),
    R("POST", DB + "/indexes", indexes.create, "write", mutates=True,
      summary="Create (and serve from) an index", body=S.CreateIndex, resp=S.Index,
      status=201),
    R("GET", DB + "/indexes", indexes.list_, "read", summary="List indexes (a bare array)",
      resp=list[S.Index]),
    R("GET", DB + "/indexes/{iid}", indexes.get, "read", summary="Get an index", resp=S.Index),
    R("PUT", DB + "/indexes/{iid}", indexes.update, "write", mutates=True,
      summary="Change index parameters", body=S.UpdateIndex),
    R("DELETE", DB + "/indexes/{iid}", indexes.delete, "write", mutates=True,
      summary="Delete an index (exact search when none is left)"),
    # a dry run reads only; with "apply" the update goes through Engine.submit, which refuses
    # it in readonly mode and on a replica like any write
    R("POST", DB + "/indexes/{iid}/tune", indexes.tune, "write",
      summary="Choose efSearch from a recall target on sample queries (against exact search)",
      body=S.Tune, resp=S.Tuned),
    # query analytics (jade/http/analytics.py): reads of the database; feedback is not a write
    # to it (not in the log: readonly mode and replicas take it)
    R("GET", DB + "/analytics/stats", analytics.stats, "read",
      summary="Query statistics per time bucket", query=S.StatsQuery, resp=S.AnalyticsStats),
    R("GET", DB + "/analytics/queries", analytics.queries, "read",
      summary="Recorded queries, newest first", query=S.QueriesQuery,
      resp=S.AnalyticsQueries),
    R("GET", DB + "/analytics/patterns", analytics.patterns, "read",
      summary="Queries grouped by shape (kind, topK, filter fields and operators; or "
      "normalised text)", query=S.PatternsQuery, resp=S.AnalyticsPatterns),
    R("GET", DB + "/analytics/insights", analytics.insights, "read",
      summary="Summary, common patterns, slow and zero-result queries, trending, "
      "recommendations", query=S.Window, resp=S.AnalyticsInsights),
    R("GET", DB + "/analytics/trending", analytics.trending, "read",
      summary="Patterns asked more in the second half of the window than the first",
      query=S.TrendingQuery, resp=S.AnalyticsTrending),
    R("GET", DB + "/analytics/export", analytics.export, "read",
      summary="All recorded queries of the window (csv has a header row)",
      query=S.AnalyticsExportQuery, resp=S.AnalyticsExport,
      ctype=("application/json", "text/csv")),
    R("POST", DB + "/analytics/feedback", analytics.feedback, "read",
      summary="Feedback on a query", body=S.Feedback, resp=S.FeedbackRecorded, status=201),
    # text models (jade/text/models.py): embeddings and /v1/rerank for any credential (no
    # database involved); a database's reranking configuration (PUT: a record in the log)
    R("POST", "/v1/embeddings/generate", embeddings.generate, "auth",
      summary="Embed text with the server's model (all-MiniLM-L6-v2 int8, 384 dimensions); a "
      "list embeds up to 128 texts", body=S.Embed, resp=S.Embedded),
    R("POST", "/v1/rerank", embeddings.rerank, "auth",
      summary="Order documents by relevance to a query (the embedding model as a "
      "bi-encoder: cosine)", body=S.Rerank, resp=S.Reranked),
    R("GET", DB + "/reranking/config", reranking.get_config, "read",
      summary="A database's reranking configuration and statistics (statistics: this "
      "process since its start)", resp=S.RerankConfig),
    R("PUT", DB + "/reranking/config", reranking.set_config, "write", mutates=True,
      summary="Change a database's reranking configuration (a record in the log)",
      body=S.SetRerankConfig, resp=S.RerankConfig),
)

LONG_LIVED = frozenset({"/v1/replication/stream"})  # never "finish": shutdown does not wait
