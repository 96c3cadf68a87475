"""The OpenAPI description, built from the route table (``ROUTES``) plus the request and response
shapes below, committed as ``openapi.json`` (``jade openapi > openapi.json``; a test fails when
a route has no entry or an entry no route) and served at ``/openapi.json`` with a docs page at
``/docs``."""

from __future__ import annotations

import re
from typing import Any

from aiohttp import web

from jade import __version__

S = dict[str, Any]

STR: S = {"type": "string"}
INT: S = {"type": "integer"}
NUM: S = {"type": "number"}
BOOL: S = {"type": "boolean"}
OBJ: S = {"type": "object"}
VEC: S = {"type": "array", "items": NUM, "minItems": 1}
STRS: S = {"type": "array", "items": STR}


def obj(props: dict[str, S] | None = None, required: tuple[str, ...] = ()) -> S:
    out: S = {"type": "object", "properties": props or {}}
    if required:
        out["required"] = list(required)
    return out


ERROR = obj({"error": STR, "message": STR}, ("error", "message"))
VECTOR = obj({"id": STR, "values": VEC, "metadata": OBJ}, ("id",))
# what a write takes: the values as JSON numbers, or as base64 of little-endian float32
VECTOR_IN = obj({"id": STR, "values": VEC, "valuesB64": STR, "metadata": OBJ}, ("id",))
RESULT = obj(
    {"vectorId": STR, "score": NUM, "vector": obj({"id": STR, "values": VEC, "metadata": OBJ})},
    ("vectorId", "score"),
)
SEARCH = obj({"count": INT, "results": {"type": "array", "items": RESULT}}, ("count", "results"))
DATABASE = obj(
    {
        "databaseId": STR,
        "name": STR,
        "description": STR,
        "vectorDimension": INT,
        "indexType": STR,
        "metric": STR,
        "index": OBJ,
        "created_at": STR,
        "updated_at": STR,
        "stats": OBJ,
    },
    ("databaseId", "name", "vectorDimension", "indexType"),
)
USER = obj(
    {"user_id": STR, "username": STR, "email": STR, "is_active": BOOL, "roles": STRS},
    ("user_id", "username"),
)
INDEX = obj(
    {"indexId": STR, "databaseId": STR, "type": STR, "status": STR, "parameters": OBJ},
    ("indexId", "databaseId", "type"),
)
INDEX_PARAMS = obj({"M": INT, "efConstruction": INT, "efSearch": INT})
SEARCH_BODY = obj(
    {
        "queryVector": VEC,
        "topK": {"type": "integer", "minimum": 1},
        "threshold": NUM,
        "includeMetadata": BOOL,
        "includeValues": BOOL,
        "includeVectorData": BOOL,
        "filters": OBJ,
        "efSearch": INT,
    },
    ("queryVector",),
)

# (method, path) -> (summary, request body schema or None, success status, response schema,
# response content type)
OPS: dict[tuple[str, str], tuple[str, S | None, int, S, str]] = {}


def op(
    method: str,
    path: str,
    summary: str,
    body: S | None = None,
    status: int = 200,
    resp: S | None = None,
    ctype: str = "application/json",
) -> None:
    OPS[(method, path)] = (summary, body, status, resp or OBJ, ctype)


DB = "/v1/databases/{db}"
op(
    "GET",
    "/health",
    "Liveness and basic checks",
    resp=obj(
        {"status": STR, "timestamp": INT, "version": STR, "checks": OBJ}, ("status", "checks")
    ),
)
op(
    "GET",
    "/health/db",
    "Storage health",
    resp=obj({"status": STR, "healthy": BOOL, "checks": OBJ}, ("status", "healthy")),
)
op("GET", "/metrics", "Prometheus metrics (text format)", resp=STR, ctype="text/plain")
op(
    "GET",
    "/status",
    "Server status with real numbers, mode and role",
    resp=obj(
        {"status": STR, "version": STR, "uptime": STR, "mode": STR, "role": STR},
        ("status", "version", "uptime"),
    ),
)
op(
    "POST",
    "/v1/auth/register",
    "Register a user",
    obj(
        {"username": STR, "password": STR, "email": STR, "roles": STRS, "is_admin": BOOL},
        ("username", "password"),
    ),
    201,
    obj({"user_id": STR, "username": STR}, ("user_id",)),
)
op(
    "POST",
    "/v1/auth/login",
    "Log in: a JWT",
    obj({"username": STR, "password": STR, "totp_code": STR}, ("username", "password")),
    resp=obj(
        {"token": STR, "user_id": STR, "expires_at": STR, "token_type": STR}, ("token", "user_id")
    ),
)
op(
    "POST",
    "/v1/auth/logout",
    "End the calling token's session (all: every session of the user)",
    obj({"all": BOOL}),
    resp=obj({"message": STR, "user_id": STR, "sessions_ended": INT}, ("message", "user_id")),
)
op(
    "POST",
    "/v1/auth/forgot-password",
    "Issue a password reset",
    obj({"username": STR, "email": STR}),
)
op(
    "POST",
    "/v1/auth/reset-password",
    "Reset a password with a reset token",
    obj({"reset_token": STR, "new_password": STR}, ("reset_token", "new_password")),
)
op(
    "POST",
    "/v1/auth/2fa/enroll",
    "Start TOTP enrolment",
    resp=obj({"secret": STR, "otpauth_uri": STR}, ("secret", "otpauth_uri")),
)
op("POST", "/v1/auth/2fa/confirm", "Confirm TOTP with a code", obj({"code": STR}, ("code",)))
op(
    "POST",
    "/v1/users",
    "Create a user",
    obj({"username": STR, "password": STR, "roles": STRS, "email": STR}, ("username", "password")),
    201,
    USER,
)
op(
    "GET",
    "/v1/users",
    "List users",
    resp=obj({"users": {"type": "array", "items": USER}, "count": INT}, ("users",)),
)
op("GET", "/v1/users/{uid}", "Get a user", resp=USER)
op(
    "PUT",
    "/v1/users/{uid}",
    "Update a user",
    obj({"is_active": BOOL, "roles": STRS, "username": STR, "email": STR}),
    resp=USER,
)
op("DELETE", "/v1/users/{uid}", "Delete a user")
op(
    "PUT",
    "/v1/users/{uid}/password",
    "Change a password: ends every session (the caller gets a new token) and, unless "
    "keep_api_keys, the API keys",
    obj(
        {"old_password": STR, "new_password": STR, "keep_api_keys": BOOL},
        ("old_password", "new_password"),
    ),
    resp=obj(
        {"success": BOOL, "message": STR, "api_keys_revoked": INT, "token": STR,
         "expires_at": STR, "token_type": STR},
        ("success", "message"),
    ),
)
for m in ("PUT", "POST"):
    op(
        m,
        "/v1/admin/users/{uid}/reset-password",
        "Admin password reset",
        obj({"new_password": STR}, ("new_password",)),
    )
op(
    "POST",
    "/v1/api-keys",
    "Create an API key (shown once)",
    obj(
        {"user_id": STR, "description": STR, "permissions": STRS, "validity_days": INT},
        ("user_id",),
    ),
    201,
    obj({"api_key": STR, "key_id": STR}, ("api_key", "key_id")),
)
op(
    "GET",
    "/v1/api-keys",
    "List API keys",
    resp=obj({"api_keys": {"type": "array", "items": OBJ}, "count": INT}, ("api_keys",)),
)
op("DELETE", "/v1/api-keys/{key_id}", "Revoke an API key")
op(
    "GET",
    "/v1/security/audit-log",
    "Audit events",
    resp=obj({"events": {"type": "array", "items": OBJ}, "count": INT}, ("events",)),
)
op(
    "GET",
    "/v1/security/sessions",
    "A user's sessions",
    resp=obj({"sessions": {"type": "array", "items": OBJ}}, ("sessions",)),
)
op("GET", "/v1/security/audit-stats", "Audit counters")
op(
    "GET",
    "/v1/admin/ip-blocks",
    "Blocked IPs",
    resp=obj({"blocked": {"type": "array", "items": OBJ}}, ("blocked",)),
)
op("DELETE", "/v1/admin/ip-blocks/{ip}", "Unblock an IP")
for p in ("/v1/admin/readonly", "/admin/readonly"):
    op("POST", p, "Refuse writes (a log record)", resp=obj({"mode": STR}, ("mode",)))
for p in ("/v1/admin/readwrite", "/admin/readwrite"):
    op("POST", p, "Accept writes again", resp=obj({"mode": STR}, ("mode",)))
for p in ("/v1/admin/shutdown", "/admin/shutdown"):
    op("POST", p, "Graceful shutdown", resp=obj({"status": STR}, ("status",)))
op("POST", "/v1/admin/snapshots", "Take a hot snapshot", status=201)
op(
    "GET",
    "/v1/admin/snapshots",
    "List snapshots",
    resp=obj({"snapshots": {"type": "array", "items": OBJ}}, ("snapshots",)),
)
op("GET", "/v1/admin/snapshots/{name}", "Snapshot details and verification")
op(
    "GET",
    "/v1/admin/snapshots/{name}/download",
    "Download a snapshot (tar)",
    resp=STR,
    ctype="application/x-tar",
)
op("DELETE", "/v1/admin/snapshots/{name}", "Delete a snapshot")
op("GET", "/v1/admin/backup/window", "Restorable LSN and time window")
op("POST", "/v1/admin/promote", "Promote this replica to primary (new epoch)")
op(
    "GET",
    "/v1/replication/stream",
    "Stream log records (replicator role)",
    resp=STR,
    ctype="application/x-jade-stream",
)
op(
    "POST",
    "/v1/replication/ack",
    "A follower's applied position",
    obj({"received_lsn": INT, "applied_lsn": INT}),
)
op(
    "GET",
    "/v1/replication/snapshot",
    "A fresh snapshot for bootstrapping (tar)",
    resp=STR,
    ctype="application/x-tar",
)
op(
    "GET",
    "/v1/replication/status",
    "Replication positions and lag",
    resp=obj({"role": STR}, ("role",)),
)
op("DELETE", "/v1/replication/replicas/{rid}", "Forget a follower")
op(
    "POST",
    "/v1/databases",
    "Create a database",
    obj(
        {
            "name": STR,
            "description": STR,
            "vectorDimension": INT,
            "indexType": STR,
            "metric": STR,
            "indexParameters": INDEX_PARAMS,
        },
        ("name", "vectorDimension"),
    ),
    201,
    obj({"databaseId": STR, "status": STR}, ("databaseId",)),
)
op(
    "GET",
    "/v1/databases",
    "List databases",
    resp=obj({"databases": {"type": "array", "items": DATABASE}, "total": INT}, ("databases",)),
)
op("GET", DB, "Get a database", resp=DATABASE)
op(
    "PUT",
    DB,
    "Update a database",
    obj(
        {
            "name": STR,
            "description": STR,
            "vectorDimension": INT,
            "indexType": STR,
            "indexParameters": INDEX_PARAMS,
        }
    ),
)
op("DELETE", DB, "Delete a database")
op("GET", DB + "/grants", "Grants on a database")
op(
    "POST",
    DB + "/grants",
    "Grant read or write",
    obj({"user_id": STR, "permission": STR}, ("user_id", "permission")),
    201,
)
op("DELETE", DB + "/grants/{uid}", "Remove a grant")
op(
    "POST",
    DB + "/vectors",
    "Store (upsert) a vector ('values', or 'valuesB64': base64 of little-endian float32)",
    VECTOR_IN,
    201,
    obj({"status": STR, "vectorId": STR}, ("vectorId",)),
)
op(
    "POST",
    DB + "/vectors/batch",
    "Store many vectors: one record, all or nothing ('values' or 'valuesB64' per vector)",
    obj({"vectors": {"type": "array", "items": VECTOR_IN, "minItems": 1}}, ("vectors",)),
    201,
    obj({"status": STR, "count": INT}, ("count",)),
)
op(
    "POST",
    DB + "/vectors/batch-get",
    "Fetch vectors by id",
    obj({"ids": STRS, "vector_ids": STRS, "vectorIds": STRS}),
    resp=obj({"vectors": {"type": "array", "items": VECTOR}, "count": INT}, ("vectors",)),
)
op(
    "GET",
    DB + "/vectors",
    "List vectors",
    resp=obj({"vectors": {"type": "array", "items": VECTOR}, "total": INT}, ("vectors",)),
)
op(
    "GET",
    DB + "/vectors/export",
    "Export as JSON lines (streamed)",
    resp=STR,
    ctype="application/x-ndjson",
)
op("GET", DB + "/vectors/{vid}", "Get a vector", resp=VECTOR)
op(
    "PUT",
    DB + "/vectors/{vid}",
    "Replace a vector's values (and metadata)",
    obj({"values": VEC, "metadata": OBJ}, ("values",)),
)
op("DELETE", DB + "/vectors/{vid}", "Delete a vector")
op("POST", DB + "/vectors/import", "Import JSON lines (streamed, chunked records)", STR, 201)
op("POST", DB + "/search", "Similarity search", SEARCH_BODY, resp=SEARCH)
op("POST", DB + "/search/advanced", "Similarity search with filters", SEARCH_BODY, resp=SEARCH)
op(
    "POST",
    DB + "/search/batch",
    "Many queries in one request",
    obj(
        {
            "queries": {"type": "array", "items": VEC},
            "queriesB64": STR,
            "topK": INT,
            "includeMetadata": BOOL,
        }
    ),
    resp=obj({"count": INT, "results": {"type": "array", "items": SEARCH}}, ("results",)),
)
op(
    "POST",
    DB + "/indexes",
    "Create (and serve from) an index",
    obj({"type": STR, "name": STR, "parameters": INDEX_PARAMS}, ("type",)),
    201,
    INDEX,
)
op("GET", DB + "/indexes", "List indexes (a bare array)", resp={"type": "array", "items": INDEX})
op("GET", DB + "/indexes/{iid}", "Get an index", resp=INDEX)
op(
    "PUT",
    DB + "/indexes/{iid}",
    "Change index parameters",
    obj({"parameters": INDEX_PARAMS}, ("parameters",)),
)
op("DELETE", DB + "/indexes/{iid}", "Delete an index (exact search when none is left)")
op(
    "POST",
    DB + "/indexes/{iid}/tune",
    "Choose efSearch from a recall target on sample queries (against exact search)",
    obj({"targetRecall": {"type": "number", "minimum": 0, "exclusiveMinimum": True,
                          "maximum": 1},
         "queries": {"type": "array", "items": VEC, "minItems": 1, "maxItems": 2000},
         "topK": {"type": "integer", "minimum": 1, "maximum": 1000},
         "apply": BOOL}, ("targetRecall", "queries")),
    resp=obj({"efSearch": {"type": "integer", "nullable": True}, "recall": NUM, "reached": BOOL,
              "applied": BOOL, "previousEfSearch": INT, "queries": INT,
              "curve": {"type": "array", "items": obj({"efSearch": INT, "recall": NUM,
                                                        "queriesPerSecond": NUM})}},
             ("efSearch", "recall", "reached", "applied", "curve")),
)
# BM25 and hybrid search (jade/http/text.py): the text index is a projection of the log
BM25_BUILD = obj({"status": STR, "message": STR, "documentCount": INT, "textField": STR,
                  "durationMs": NUM, "totalDocuments": INT},
                 ("status", "message", "documentCount"))
HYBRID_BODY = {
    "queryText": {"type": "string", "maxLength": 10000},
    "queryVector": VEC,
    "topK": {"type": "integer", "minimum": 1},
    "filters": OBJ,
}
op("POST", DB + "/bm25-index/build",
   "Index metadata[textField] of every vector with BM25 (a record in the log; the index then "
   "follows every write). incremental: nothing to do when it already indexes that field. "
   "The build runs in steps between writes; the answer comes when it is done, or after 30 s "
   "with status 'building' and documentCount so far (the status route follows it)",
   obj({"textField": STR, "incremental": BOOL}), resp=BM25_BUILD)
op("GET", DB + "/bm25-index/status",
   "The BM25 index: documents, terms, progress of a build running now (404: none)",
   resp=obj({"status": STR, "totalDocuments": INT, "processedDocuments": INT,
             "indexedTerms": INT, "progressPercentage": NUM, "durationMs": NUM,
             "indexStats": OBJ},
            ("status", "totalDocuments", "processedDocuments", "indexedTerms",
             "progressPercentage")))
op("POST", DB + "/bm25-index/rebuild",
   "Index every vector's text again (textField: the index's own by default)",
   obj({"textField": STR}), resp=BM25_BUILD)
op("POST", DB + "/bm25-index/documents",
   "Add documents (by id) to the BM25 index (a record in the log; a later write of a vector "
   "of the same id replaces it)",
   obj({"documents": {"type": "array", "minItems": 1, "maxItems": 10000,
                      "items": obj({"doc_id": STR, "text": STR}, ("doc_id", "text"))}},
       ("documents",)),
   resp=obj({"status": STR, "message": STR, "addedCount": INT, "totalDocuments": INT,
             "totalTerms": INT}, ("status", "addedCount", "totalDocuments")))
op("POST", DB + "/search/hybrid",
   "BM25 and vector rankings fused (rrf; weighted: RRF weighted by alpha; linear and "
   "weighted_linear: alpha * vector + (1 - alpha) * BM25, each min-max scaled); filters "
   "apply before either ranking is cut",
   obj({**HYBRID_BODY,
        "fusionMethod": {"type": "string",
                         "enum": ["rrf", "linear", "weighted", "weighted_linear"]},
        "alpha": {"type": "number", "minimum": 0, "maximum": 1},
        "k": {"type": "integer", "minimum": 1},
        "includeMetadata": BOOL, "includeVectorData": BOOL, "includeScores": BOOL}),
   resp=obj({"count": INT, "fusionMethod": STR, "bm25Building": BOOL,
             "results": {"type": "array", "items": obj(
                 {"vectorId": STR, "hybridScore": NUM, "vectorScore": NUM, "bm25Score": NUM,
                  "vector": obj({"id": STR, "values": VEC, "metadata": OBJ})},
                 ("vectorId", "hybridScore"))}},
            ("count", "fusionMethod", "results")))
op("POST", DB + "/search/rerank",
   "Hybrid candidates (rerankTopN) reordered by the reranking model (503 when it is missing)",
   obj({**HYBRID_BODY, "fusionMethod": STR, "enableReranking": BOOL,
        "rerankTopN": {"type": "integer", "minimum": 1, "maximum": 1000}}, ("queryText",)),
   resp=obj({"count": INT, "reranked": BOOL, "modelName": STR, "bm25Building": BOOL,
             "timings": obj({"totalMs": NUM, "retrievalMs": NUM, "rerankMs": NUM}),
             "results": {"type": "array", "items": obj(
                 {"docId": STR, "vectorScore": NUM, "bm25Score": NUM, "hybridScore": NUM,
                  "rerankScore": NUM, "combinedScore": NUM, "metadata": OBJ},
                 ("docId", "hybridScore"))}},
            ("count", "timings", "results")))
# text models (jade/text/models.py)
TEXT = {"type": "string", "minLength": 1, "maxLength": 8192}
op(
    "POST",
    "/v1/embeddings/generate",
    "Embed text with the server's model (all-MiniLM-L6-v2 int8, 384 dimensions); a list embeds "
    "up to 128 texts",
    obj({"input": {"oneOf": [TEXT, {"type": "array", "items": TEXT, "minItems": 1,
                                    "maxItems": 128}]},
         "input_type": STR, "model": STR, "provider": STR}, ("input",)),
    resp=obj({"input": {"oneOf": [STR, STRS]}, "input_type": STR, "model": STR,
              "provider": STR, "embedding": VEC, "embeddings": {"type": "array", "items": VEC},
              "dimension": INT, "status": STR, "generated_at": STR},
             ("model", "embedding", "dimension", "status")),
)
op(
    "POST",
    "/v1/rerank",
    "Order documents by relevance to a query (the embedding model as a bi-encoder: cosine)",
    obj({"query": TEXT,
         "documents": {"type": "array", "minItems": 1, "maxItems": 256,
                       "items": obj({"id": STR, "text": STR}, ("id", "text"))},
         "topK": {"type": "integer", "minimum": 1}}, ("query", "documents")),
    resp=obj({"latencyMs": NUM, "model": STR, "count": INT,
              "results": {"type": "array",
                          "items": obj({"id": STR, "score": NUM, "rank": INT},
                                       ("id", "score", "rank"))}},
             ("latencyMs", "results")),
)
RERANK_CONFIG = obj(
    {"databaseId": STR, "modelName": STR, "batchSize": INT, "scoreThreshold": NUM,
     "combineScores": BOOL, "rerankWeight": NUM, "status": STR,
     "statistics": obj({"totalRequests": INT, "failedRequests": INT, "avgLatencyMs": NUM,
                        "totalDocumentsReranked": INT})},
    ("modelName", "batchSize", "scoreThreshold", "combineScores", "rerankWeight", "status",
     "statistics"),
)
op("GET", DB + "/reranking/config", "A database's reranking configuration and statistics "
   "(statistics: this process since its start)", resp=RERANK_CONFIG)
op(
    "PUT",
    DB + "/reranking/config",
    "Change a database's reranking configuration (a record in the log)",
    obj({"modelName": STR, "batchSize": {"type": "integer", "minimum": 1, "maximum": 4096},
         "scoreThreshold": {"type": "number", "minimum": -1, "maximum": 1},
         "combineScores": BOOL,
         "rerankWeight": {"type": "number", "minimum": 0, "maximum": 1}}),
    resp=RERANK_CONFIG,
)
# query analytics (jade/http/analytics.py): windows are start_time/end_time (ISO 8601 or epoch s)
AN_QUERY = obj({"query_id": STR, "timestamp": STR, "query_type": STR, "latency_ms": NUM,
                "result_count": INT, "success": BOOL, "status": INT, "error": STR,
                "user_id": STR, "top_k": INT, "filter_shape": STR, "query_text": STR,
                "signature": STR, "top_result_ids": STRS})
AN_SUMMARY = obj({"total_queries": INT, "successful_queries": INT, "failed_queries": INT,
                  "zero_result_queries": INT, "avg_latency_ms": NUM, "p50_latency_ms": NUM,
                  "p95_latency_ms": NUM, "p99_latency_ms": NUM, "vector_queries": INT,
                  "filtered_queries": INT, "batch_queries": INT, "hybrid_queries": INT,
                  "bm25_queries": INT, "reranked_queries": INT, "unique_users": INT})
AN_PATTERN = obj({"pattern": STR, "kind": STR, "count": INT, "avg_latency_ms": NUM,
                  "zero_result_count": INT, "failed_count": INT, "first_seen": STR,
                  "last_seen": STR})
AN_TREND = obj({"pattern": STR, "kind": STR, "recent_count": INT, "previous_count": INT,
                "growth_rate": NUM, "new": BOOL})
AN_WINDOW = {"database_id": STR, "start_time": STR, "end_time": STR}
op("GET", DB + "/analytics/stats",
   "Query statistics per time bucket (?start_time&end_time&granularity=hourly|daily|weekly)",
   resp=obj({**AN_WINDOW, "granularity": STR, "summary": AN_SUMMARY,
             "stats": {"type": "array", "items": obj({"time_bucket": STR,
                                                       **AN_SUMMARY["properties"]})}},
            ("database_id", "stats")))
op("GET", DB + "/analytics/queries", "Recorded queries, newest first (?limit&offset)",
   resp=obj({**AN_WINDOW, "total": INT, "limit": INT, "offset": INT,
             "queries": {"type": "array", "items": AN_QUERY}}, ("queries",)))
op("GET", DB + "/analytics/patterns",
   "Queries grouped by shape (kind, topK, filter fields and operators; or normalised text) "
   "(?min_count&limit)",
   resp=obj({**AN_WINDOW, "min_count": INT, "total_patterns": INT,
             "patterns": {"type": "array", "items": AN_PATTERN}}, ("patterns",)))
op("GET", DB + "/analytics/insights",
   "Summary, common patterns, slow and zero-result queries, trending, recommendations",
   resp=obj({"database_id": STR, "summary": AN_SUMMARY,
             "common_patterns": {"type": "array", "items": AN_PATTERN},
             "slow_queries": {"type": "array", "items": AN_QUERY},
             "zero_result_queries": {"type": "array", "items": AN_QUERY},
             "trending": {"type": "array", "items": AN_TREND}, "recommendations": STRS},
            ("summary", "common_patterns", "slow_queries", "zero_result_queries", "trending")))
op("GET", DB + "/analytics/trending",
   "Patterns asked more in the second half of the window than the first (?min_growth&limit)",
   resp=obj({**AN_WINDOW, "min_growth": NUM, "window_split": STR,
             "trending": {"type": "array", "items": AN_TREND}}, ("trending",)))
op("GET", DB + "/analytics/export",
   "All recorded queries of the window (?format=json|csv; csv has a header row)",
   resp=obj({**AN_WINDOW, "format": STR, "total_queries": INT,
             "queries": {"type": "array", "items": AN_QUERY},
             "feedback": {"type": "array", "items": OBJ}}, ("queries",)),
   ctype="application/json|text/csv")
op("POST", DB + "/analytics/feedback",
   "Feedback on a query (queryId from its X-Query-Id header; snake_case names accepted too)",
   obj({"queryId": STR, "userId": STR, "rating": {"type": "integer", "minimum": 1, "maximum": 5},
        "feedbackText": STR, "clickedResultId": STR,
        "clickedRank": {"type": "integer", "minimum": 0}}, ("queryId",)),
   201, obj({"success": BOOL, "query_id": STR, "message": STR, "query_known": BOOL},
            ("success", "query_id", "message")))
op("GET", "/openapi.json", "This document")
op("GET", "/docs", "API documentation page", resp=STR, ctype="text/html")
op("GET", "/ui", "Web console", resp=STR, ctype="text/html")
op("GET", "/ui/", "Web console (the same page)", resp=STR, ctype="text/html")
op("GET", "/ui/{name}", "Web console assets", resp=STR,
   ctype="text/html|text/javascript|text/css")


def build(routes: tuple[Any, ...]) -> S:
    paths: S = {}
    for r in routes:
        key = (r.method, r.path)
        if key not in OPS:
            raise KeyError(f"no OpenAPI entry for {r.method} {r.path}")
        summary, body, status, resp, ctype = OPS[key]
        params = [
            {"name": n, "in": "path", "required": True, "schema": STR}
            for n in re.findall(r"{(\w+)}", r.path)
        ]
        responses: S = {
            str(status): {"description": "success", "content": {ctype: {"schema": resp}}}
        }
        for code in ("400", "401", "403", "404", "405", "409", "413", "415", "429", "503"):
            responses[code] = {
                "description": "error",
                "content": {"application/json": {"schema": ERROR}},
            }
        entry: S = {
            "summary": summary,
            "operationId": f"{r.method.lower()}_{_slug(r.path)}",
            "responses": responses,
            "x-access": r.access,
            # through an API key: any | admin (an admin's key, never its own account) | none
            "x-keys": r.keys,
        }
        if params:
            entry["parameters"] = params
        if r.access != "public":
            entry["security"] = [{"bearer": []}, {"apiKey": []}]
        if body is not None:
            btype = "application/x-ndjson" if body == STR else "application/json"
            entry["requestBody"] = {"required": True, "content": {btype: {"schema": body}}}
        paths.setdefault(r.path, {})[r.method.lower()] = entry
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "JadeVectorDB",
            "version": __version__,
            "description": "JadeVectorDB REST API (Python server).",
        },
        "paths": dict(sorted(paths.items())),
        "components": {
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer"},
                "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
            }
        },
    }


def _slug(path: str) -> str:
    slug = re.sub(r"[^a-z0-9]+", "_", path.lower()).strip("_")
    return slug + "_slash" if path.endswith("/") and len(path) > 1 else slug


DOCS_PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>JadeVectorDB API</title>
<style>body{font:14px system-ui,sans-serif;margin:2em;max-width:70em}
code{background:#f3f3f3;padding:0 .3em}td,th{padding:.2em .6em;text-align:left}
tr:nth-child(even){background:#fafafa}</style></head>
<body><h1>JadeVectorDB API</h1><p>The machine-readable description:
<a href="/openapi.json">/openapi.json</a>.</p><table id="ops"><thead><tr><th>method</th>
<th>path</th><th>access</th><th>API keys</th><th>summary</th></tr></thead><tbody></tbody></table>
<script>
fetch('/openapi.json').then(r => r.json()).then(spec => {
  const tb = document.querySelector('#ops tbody');
  for (const [path, ops] of Object.entries(spec.paths)) {
    for (const [m, op] of Object.entries(ops)) {
      const tr = document.createElement('tr');
      for (const t of [m.toUpperCase(), path, op['x-access'], op['x-keys'], op.summary]) {
        const td = document.createElement('td'); td.textContent = t; tr.appendChild(td);
      }
      tb.appendChild(tr);
    }
  }
});
</script></body></html>
"""


async def spec_handler(request: web.Request) -> web.Response:
    from jade.http.keys import OPENAPI
    from jade.http.middleware import json_response

    return json_response(request.app[OPENAPI])


async def docs_handler(request: web.Request) -> web.Response:
    return web.Response(text=DOCS_PAGE, content_type="text/html")
