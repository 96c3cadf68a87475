"""The API's types, declared once: each route of ``ROUTES`` (routes.py) names its request body,
query parameters and answer from this module, and from that one declaration come

- the validation of the body (``validate.read_json`` / ``validate.parsed``: msgspec against the
  route's struct, every mismatch a 400 naming the field path) and of the query
  (``validate.query_of``);
- the handler's parsed input (``validate.parsed(request, Type)``, ``validate.query_of``);
- the OpenAPI document (``openapi.build``: named component schemas from these structs).

Requests are lenient where the server always was: unknown fields are accepted, ``null`` is the
field's default, an integral float is an integer (10.0); numbers given as strings are not
numbers. Checks that need state (the database's dimension, the caller's rights) stay in the
handlers. Answers declare what the handlers send: a field that may be absent is ``UNSET``.

Struct docstrings become the schemas' descriptions: they are written for the reader of /docs.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

import msgspec
from msgspec import UNSET, Meta, Struct, UnsetType

from jade.auth.audit import EVENT_TYPES

# -- shared pieces ------------------------------------------------------------------------------

Obj = dict[str, Any]
Vec = Annotated[list[float], Meta(min_length=1, description="a vector: JSON numbers")]
Text = Annotated[str, Meta(min_length=1, max_length=8192)]
PosInt = Annotated[int, Meta(ge=1)]
Fraction = Annotated[float, Meta(ge=0, le=1)]


class Req(Struct, kw_only=True):
    """Base of the request bodies: unknown fields accepted (the reference client sends some)."""


class Resp(Struct, kw_only=True):
    """Base of the answers."""


class Query(Struct, kw_only=True):
    """Base of the query parameters (strings on the wire, converted to the declared types)."""


class Error(Resp, kw_only=True):
    """Every error: a stable machine-readable ``error`` code and a ``message`` for people
    (naming the field when the input is wrong); some carry more fields (``limit``, ``lsn``...)."""

    error: str
    message: str


class Message(Resp, kw_only=True):
    """A plain acknowledgement (its fields vary by route)."""

    status: str | UnsetType = UNSET
    message: str | UnsetType = UNSET
    success: bool | UnsetType = UNSET


# -- system -------------------------------------------------------------------------------------


class Health(Resp, kw_only=True):
    """Liveness: ``status`` and the checks behind it."""

    status: str
    checks: Obj
    timestamp: int | UnsetType = UNSET
    version: str | UnsetType = UNSET


class HealthDb(Resp, kw_only=True):
    """Storage health."""

    status: str
    healthy: bool
    checks: Obj | UnsetType = UNSET


class Status(Resp, kw_only=True):
    """Server status: version, uptime, mode (readwrite/readonly) and role (primary/replica)."""

    status: str
    version: str
    uptime: str
    mode: str | UnsetType = UNSET
    role: str | UnsetType = UNSET


# -- auth ---------------------------------------------------------------------------------------


class Register(Req, kw_only=True):
    """A new user: ``is_admin`` and ``roles`` count only when an admin calls."""

    username: str
    password: str
    email: str | None = None
    roles: list[str] | str | None = None  # a single role as a string too
    is_admin: bool | None = None


class Registered(Resp, kw_only=True):
    user_id: str
    username: str | UnsetType = UNSET


class Login(Req, kw_only=True):
    """Credentials; ``totp_code`` for an account with two-factor authentication."""

    username: str
    password: str
    totp_code: str | int | None = None


class LoggedIn(Resp, kw_only=True):
    """A JWT to send as ``Authorization: Bearer <token>``."""

    token: str
    user_id: str
    expires_at: str | UnsetType = UNSET
    token_type: str | UnsetType = UNSET


class Logout(Req, kw_only=True):
    """``all``: end every session of the user, not only the calling token's."""

    all: bool | None = None


class LoggedOut(Resp, kw_only=True):
    message: str
    user_id: str
    sessions_ended: int | UnsetType = UNSET


class ForgotPassword(Req, kw_only=True):
    username: str | None = None
    email: str | None = None


class ResetPassword(Req, kw_only=True):
    reset_token: str
    new_password: str


class TotpEnrolled(Resp, kw_only=True):
    """The TOTP secret, once, and its ``otpauth://`` URI for an authenticator app."""

    secret: str
    otpauth_uri: str


class TotpConfirm(Req, kw_only=True):
    code: str | int


# -- users and API keys -------------------------------------------------------------------------


class User(Resp, kw_only=True):
    user_id: str
    username: str
    email: str | UnsetType = UNSET
    is_active: bool | UnsetType = UNSET
    roles: list[str] | UnsetType = UNSET


class UserList(Resp, kw_only=True):
    users: list[User]
    count: int | UnsetType = UNSET


class CreateUser(Req, kw_only=True):
    username: str
    password: str
    roles: list[str] | None = None
    email: str | None = None


class UpdateUser(Req, kw_only=True):
    """The fields to change; the others stay."""

    is_active: bool | None = None
    roles: list[str] | None = None
    username: str | None = None
    email: str | None = None


class ChangePassword(Req, kw_only=True):
    """Ends every session (the caller gets a new token) and, unless ``keep_api_keys``, revokes
    the user's API keys."""

    old_password: str
    new_password: str
    keep_api_keys: bool | None = None


class PasswordChanged(Resp, kw_only=True):
    success: bool
    message: str
    api_keys_revoked: int | UnsetType = UNSET
    token: str | UnsetType = UNSET
    expires_at: str | UnsetType = UNSET
    token_type: str | UnsetType = UNSET


class AdminResetPassword(Req, kw_only=True):
    new_password: str


class UsersQuery(Query, kw_only=True):
    role: str | None = None
    status: str | None = None


class CreateApiKey(Req, kw_only=True):
    """A key for ``user_id`` (yours, or anyone's for an admin); ``permissions`` are its scopes."""

    user_id: str
    description: Annotated[str, Meta(max_length=512)] | None = None
    permissions: list[str] | None = None
    validity_days: Annotated[int, Meta(ge=0, le=36500)] | None = None  # 0: no expiry


class ApiKeyCreated(Resp, kw_only=True):
    """The key itself is shown only here."""

    api_key: str
    key_id: str


class ApiKeyList(Resp, kw_only=True):
    api_keys: list[Obj]
    count: int | UnsetType = UNSET


class UserIdQuery(Query, kw_only=True):
    user_id: str | None = None


# -- security and administration ----------------------------------------------------------------


class AuditQuery(Query, kw_only=True):
    limit: Annotated[int, Meta(ge=1, le=10000)] = 100
    event_type: Annotated[str, Meta(extra_json_schema={"enum": list(EVENT_TYPES)})] | None = None
    user_id: str | None = None


class AuditLog(Resp, kw_only=True):
    events: list[Obj]
    count: int | UnsetType = UNSET


class Sessions(Resp, kw_only=True):
    sessions: list[Obj]


class SessionsQuery(Query, kw_only=True):
    user_id: str


class IpBlocks(Resp, kw_only=True):
    blocked: list[Obj]


class Mode(Resp, kw_only=True):
    mode: str


class ShutdownStatus(Resp, kw_only=True):
    status: str


class SnapshotList(Resp, kw_only=True):
    snapshots: list[Obj]


class ReplicationAck(Req, kw_only=True):
    """A follower's received and applied positions."""

    received_lsn: Annotated[int, Meta(ge=0)] | None = None
    applied_lsn: Annotated[int, Meta(ge=0)] | None = None


class ReplicationStatus(Resp, kw_only=True):
    role: str


class StreamQuery(Query, kw_only=True):
    after: Annotated[int, Meta(ge=0)] = 0
    replica_id: str | None = None
    checksum: str | None = None


# -- databases ----------------------------------------------------------------------------------

IndexTypeName = Annotated[str, Meta(description="HNSW, IVF, LSH or FLAT (any case)",
                                     examples=["HNSW"])]
MetricName = Annotated[str, Meta(description="cosine, euclidean (l2) or dot (ip, inner_product)",
                                 examples=["cosine"])]


class HnswParameters(Req, kw_only=True):
    M: Annotated[int, Meta(ge=2, le=128)] | None = None
    efConstruction: Annotated[int, Meta(ge=4, le=4096)] | None = None
    efSearch: Annotated[int, Meta(ge=1, le=10000)] | None = None


class CreateDatabase(Req, kw_only=True):
    codes: ClassVar[dict[str, str]] = {"vectorDimension*": "invalid_dimension"}

    name: Annotated[str, Meta(max_length=256, examples=["products"])]
    vectorDimension: Annotated[int, Meta(ge=1, le=10000, examples=[384])]
    description: Annotated[str, Meta(max_length=4096)] | None = None
    indexType: IndexTypeName | None = None
    metric: MetricName | None = None
    indexParameters: HnswParameters | None = None
    distanceMetric: MetricName | None = None  # the reference client's name for metric
    sharding: Any = None  # kept with the database, as given
    replication: Any = None
    metadataSchema: Any = None


class DatabaseCreated(Resp, kw_only=True):
    databaseId: str
    status: str | UnsetType = UNSET


class UpdateDatabase(Req, kw_only=True):
    """The fields to change; the others stay."""

    codes: ClassVar[dict[str, str]] = {"vectorDimension*": "invalid_dimension"}

    name: str | None = None
    description: str | None = None
    vectorDimension: int | None = None
    indexType: IndexTypeName | None = None
    indexParameters: HnswParameters | None = None


class Database(Resp, kw_only=True):
    databaseId: str
    name: str
    vectorDimension: int
    indexType: str
    description: str | UnsetType = UNSET
    metric: str | UnsetType = UNSET
    index: Obj | UnsetType = UNSET
    created_at: str | UnsetType = UNSET
    updated_at: str | UnsetType = UNSET
    stats: Obj | UnsetType = UNSET


class DatabaseList(Resp, kw_only=True):
    databases: list[Database]
    total: int | UnsetType = UNSET


class Page(Query, kw_only=True):
    """A page of a list: ``limit`` items from ``offset``."""

    offset: Annotated[int, Meta(ge=0, le=10**9)] = 0


class DatabasePage(Page, kw_only=True):
    limit: Annotated[int, Meta(ge=1, le=100000)] = 1000


class Grant(Req, kw_only=True):
    words: ClassVar[dict[str, str]] = {"permission": "'read' or 'write'"}

    user_id: str
    permission: Literal["read", "write"]


# -- vectors ------------------------------------------------------------------------------------


class Vector(Resp, kw_only=True):
    id: str
    values: list[float] | UnsetType = UNSET
    metadata: Obj | None | UnsetType = UNSET


class VectorIn(Req, kw_only=True):
    """One vector: ``values`` as JSON numbers, or ``valuesB64``: base64 of little-endian
    float32."""

    id: str
    values: list[float] | None = None
    valuesB64: str | None = None
    metadata: Obj | None = None


class VectorStored(Resp, kw_only=True):
    vectorId: str
    status: str | UnsetType = UNSET


class VectorBatch(Req, kw_only=True):
    vectors: Annotated[list[VectorIn], Meta(min_length=1)]


class BatchStored(Resp, kw_only=True):
    count: int
    status: str | UnsetType = UNSET


class BatchGet(Req, kw_only=True):
    """The ids to fetch (any of the three names)."""

    ids: list[str] | None = None
    vector_ids: list[str] | None = None
    vectorIds: list[str] | None = None


class VectorList(Resp, kw_only=True):
    vectors: list[Vector]
    total: int | UnsetType = UNSET
    count: int | UnsetType = UNSET


class VectorPage(Page, kw_only=True):
    limit: Annotated[int, Meta(ge=1, le=10_000)] = 50


class UpdateVector(Req, kw_only=True):
    """New values; ``metadata``: absent keeps the vector's, null clears it."""

    values: list[float]
    metadata: Obj | None | UnsetType = UNSET


class ExportQuery(Query, kw_only=True):
    values: Literal["true", "false"] = "true"


class ImportQuery(Query, kw_only=True):
    chunk: Annotated[int, Meta(ge=1, le=100_000)] = 1000


# -- search -------------------------------------------------------------------------------------


class Search(Req, kw_only=True):
    """A similarity search; ``filters``: API.md §7.2."""

    codes: ClassVar[dict[str, str]] = {"filters*": "invalid_filter"}
    words: ClassVar[dict[str, str]] = {"filters": "an object"}

    queryVector: list[float]
    topK: Annotated[int, Meta(ge=1, le=10000)] | None = None
    threshold: Annotated[float, Meta(ge=-1, le=1)] | None = None
    includeMetadata: bool | None = None
    includeValues: bool | None = None
    includeVectorData: bool | None = None
    filters: Obj | None = None
    efSearch: Annotated[int, Meta(ge=1, le=10000)] | None = None


class SearchResult(Resp, kw_only=True):
    vectorId: str
    score: float
    vector: Vector | UnsetType = UNSET


class SearchResults(Resp, kw_only=True):
    count: int
    results: list[SearchResult]
    strategy: str | UnsetType = UNSET


class BatchSearch(Req, kw_only=True):
    """Many queries: ``queries`` as JSON numbers or ``queriesB64`` (little-endian float32)."""

    words: ClassVar[dict[str, str]] = {"queriesB64": "a base64 string of float32 values"}

    queries: list[list[float]] | None = None
    queriesB64: str | None = None
    topK: Annotated[int, Meta(ge=1, le=1000)] | None = None
    efSearch: Annotated[int, Meta(ge=1, le=10000)] | None = None
    includeMetadata: bool | None = None


class BatchSearchResults(Resp, kw_only=True):
    results: list[SearchResults]
    count: int | UnsetType = UNSET


# -- indexes ------------------------------------------------------------------------------------


class Index(Resp, kw_only=True):
    indexId: str
    databaseId: str
    type: str
    status: str | UnsetType = UNSET
    parameters: Obj | UnsetType = UNSET


class CreateIndex(Req, kw_only=True):
    type: IndexTypeName
    name: str | None = None
    parameters: HnswParameters | None = None


class UpdateIndex(Req, kw_only=True):
    parameters: HnswParameters


class Tune(Req, kw_only=True):
    """Choose efSearch from a recall target on sample queries (against exact search);
    ``apply`` sets it on the index."""

    codes: ClassVar[dict[str, str]] = {"queries": "invalid_queries"}

    targetRecall: Annotated[float, Meta(gt=0, le=1)]
    queries: Annotated[list[list[float]], Meta(min_length=1, max_length=2000)]
    topK: Annotated[int, Meta(ge=1, le=1000)] | None = None
    apply: bool | None = None


class TunePoint(Resp, kw_only=True):
    efSearch: int | UnsetType = UNSET
    recall: float | UnsetType = UNSET
    queriesPerSecond: float | UnsetType = UNSET


class Tuned(Resp, kw_only=True):
    efSearch: int | None
    recall: float
    reached: bool
    applied: bool
    curve: list[TunePoint]
    previousEfSearch: int | UnsetType = UNSET
    queries: int | UnsetType = UNSET


# -- text: BM25, hybrid, rerank -----------------------------------------------------------------


class Bm25Build(Req, kw_only=True):
    """Index ``metadata[textField]``; ``incremental``: nothing to do when already indexed."""

    textField: str | None = None
    incremental: bool | None = None


class Bm25Rebuild(Req, kw_only=True):
    textField: str | None = None


class Bm25Built(Resp, kw_only=True):
    status: str
    message: str
    documentCount: int
    textField: str | UnsetType = UNSET
    durationMs: float | UnsetType = UNSET
    totalDocuments: int | UnsetType = UNSET


class Bm25Status(Resp, kw_only=True):
    status: str
    totalDocuments: int
    processedDocuments: int
    indexedTerms: int
    progressPercentage: float
    durationMs: float | UnsetType = UNSET
    indexStats: Obj | UnsetType = UNSET


class Document(Req, kw_only=True):
    """A document: ``doc_id`` (or ``id``) and its text."""

    doc_id: str | None = None
    id: str | None = None
    text: str


class Bm25Documents(Req, kw_only=True):
    documents: Annotated[list[Document], Meta(min_length=1, max_length=10000)]


class Bm25Added(Resp, kw_only=True):
    status: str
    addedCount: int
    totalDocuments: int
    message: str | UnsetType = UNSET
    totalTerms: int | UnsetType = UNSET


FusionMethod = Annotated[str, Meta(
    description="rrf, linear, weighted or weighted_linear (any case)")]


class Hybrid(Req, kw_only=True):
    """BM25 and vector rankings fused (rrf; weighted: RRF weighted by alpha; linear and
    weighted_linear: alpha * vector + (1 - alpha) * BM25, each min-max scaled)."""

    codes: ClassVar[dict[str, str]] = {"fusionMethod": "invalid_fusion_method"}

    queryText: Annotated[str, Meta(max_length=10000)] | None = None
    queryVector: list[float] | None = None
    topK: PosInt | None = None
    filters: Obj | None = None
    fusionMethod: FusionMethod | None = None
    alpha: Fraction | None = None
    k: PosInt | None = None
    includeMetadata: bool | None = None
    includeVectorData: bool | None = None
    includeScores: bool | None = None


class HybridResult(Resp, kw_only=True):
    vectorId: str
    hybridScore: float
    vectorScore: float | UnsetType = UNSET
    bm25Score: float | UnsetType = UNSET
    vector: Vector | UnsetType = UNSET


class HybridResults(Resp, kw_only=True):
    count: int
    fusionMethod: str
    results: list[HybridResult]
    bm25Building: bool | UnsetType = UNSET


class RerankSearch(Req, kw_only=True):
    """Hybrid candidates (``rerankTopN``) reordered by the reranking model."""

    codes: ClassVar[dict[str, str]] = {"fusionMethod": "invalid_fusion_method"}

    queryText: Annotated[str, Meta(max_length=10000)]
    queryVector: list[float] | None = None
    topK: PosInt | None = None
    filters: Obj | None = None
    fusionMethod: str | None = None
    enableReranking: bool | None = None
    rerankTopN: Annotated[int, Meta(ge=1, le=1000)] | None = None


class Timings(Resp, kw_only=True):
    totalMs: float | UnsetType = UNSET
    retrievalMs: float | UnsetType = UNSET
    rerankMs: float | UnsetType = UNSET


class RerankedResult(Resp, kw_only=True):
    docId: str
    hybridScore: float
    vectorScore: float | UnsetType = UNSET
    bm25Score: float | UnsetType = UNSET
    rerankScore: float | UnsetType = UNSET
    combinedScore: float | UnsetType = UNSET
    metadata: Obj | None | UnsetType = UNSET


class RerankSearchResults(Resp, kw_only=True):
    count: int
    timings: Timings
    results: list[RerankedResult]
    reranked: bool | UnsetType = UNSET
    modelName: str | UnsetType = UNSET
    bm25Building: bool | UnsetType = UNSET


# -- text models --------------------------------------------------------------------------------


class Embed(Req, kw_only=True):
    """Text to embed: one string, or a list of up to 128."""

    codes: ClassVar[dict[str, str]] = {"input*": "invalid_input"}

    # checked by the handler, which names each case (invalid_input, input_too_long,
    # too_many_inputs): the bounds are in the description
    input: Annotated[str | list[str], Meta(
        description="one text (1 to 8192 characters), or a list of 1 to 128 of them")]
    input_type: str | None = None
    model: str | None = None
    provider: str | None = None


class Embedded(Resp, kw_only=True):
    model: str
    embedding: list[float]
    dimension: int
    status: str
    input: str | list[str] | UnsetType = UNSET
    input_type: str | UnsetType = UNSET
    provider: str | UnsetType = UNSET
    embeddings: list[list[float]] | UnsetType = UNSET
    generated_at: str | UnsetType = UNSET


class RerankDocument(Req, kw_only=True):
    id: str
    text: str


class Rerank(Req, kw_only=True):
    query: Text
    documents: Annotated[list[RerankDocument | Text], Meta(min_length=1, max_length=256)]
    topK: PosInt | None = None


class RerankScore(Resp, kw_only=True):
    id: str
    score: float
    rank: int


class Reranked(Resp, kw_only=True):
    latencyMs: float
    results: list[RerankScore]
    model: str | UnsetType = UNSET
    count: int | UnsetType = UNSET


class RerankStatistics(Resp, kw_only=True):
    totalRequests: int | UnsetType = UNSET
    failedRequests: int | UnsetType = UNSET
    avgLatencyMs: float | UnsetType = UNSET
    totalDocumentsReranked: int | UnsetType = UNSET


class RerankConfig(Resp, kw_only=True):
    modelName: str
    batchSize: int
    scoreThreshold: float
    combineScores: bool
    rerankWeight: float
    status: str
    statistics: RerankStatistics
    databaseId: str | UnsetType = UNSET


class SetRerankConfig(Req, kw_only=True):
    """The fields to change; the others stay."""

    codes: ClassVar[dict[str, str]] = dict.fromkeys(
        ("modelName", "batchSize", "scoreThreshold", "combineScores", "rerankWeight"),
        "invalid_config")

    modelName: str | None = None
    batchSize: Annotated[int, Meta(ge=1, le=4096)] | None = None
    scoreThreshold: Annotated[float, Meta(ge=-1, le=1)] | None = None
    combineScores: bool | None = None
    rerankWeight: Fraction | None = None


# -- query analytics ----------------------------------------------------------------------------

TimeParam = Annotated[str, Meta(description="ISO 8601 (2025-01-31T12:00:00Z) or epoch seconds")]
AnalyticsLimit = Annotated[int, Meta(ge=1, le=1000)]


class Window(Query, kw_only=True):
    """The time window: the retention period up to now by default."""

    start_time: TimeParam | None = None
    end_time: TimeParam | None = None


class StatsQuery(Window, kw_only=True):
    granularity: Literal["hourly", "daily", "weekly"] = "hourly"


class QueriesQuery(Window, kw_only=True):
    limit: AnalyticsLimit = 100
    offset: Annotated[int, Meta(ge=0, le=10**9)] = 0


class PatternsQuery(Window, kw_only=True):
    min_count: Annotated[int, Meta(ge=1, le=10**9)] = 2
    limit: AnalyticsLimit = 100


class TrendingQuery(Window, kw_only=True):
    min_growth: Annotated[float, Meta(ge=-1, le=1e9)] = 0.5
    limit: AnalyticsLimit = 100


class AnalyticsExportQuery(Window, kw_only=True):
    format: Literal["json", "csv"] = "json"


class AnalyticsQuery(Resp, kw_only=True):
    query_id: str | UnsetType = UNSET
    timestamp: str | UnsetType = UNSET
    query_type: str | UnsetType = UNSET
    latency_ms: float | UnsetType = UNSET
    result_count: int | UnsetType = UNSET
    success: bool | UnsetType = UNSET
    status: int | UnsetType = UNSET
    error: str | None | UnsetType = UNSET
    user_id: str | None | UnsetType = UNSET
    top_k: int | None | UnsetType = UNSET
    filter_shape: str | None | UnsetType = UNSET
    query_text: str | None | UnsetType = UNSET
    signature: str | UnsetType = UNSET
    top_result_ids: list[str] | UnsetType = UNSET


class AnalyticsSummary(Resp, kw_only=True):
    total_queries: int | UnsetType = UNSET
    successful_queries: int | UnsetType = UNSET
    failed_queries: int | UnsetType = UNSET
    zero_result_queries: int | UnsetType = UNSET
    avg_latency_ms: float | UnsetType = UNSET
    p50_latency_ms: float | UnsetType = UNSET
    p95_latency_ms: float | UnsetType = UNSET
    p99_latency_ms: float | UnsetType = UNSET
    vector_queries: int | UnsetType = UNSET
    filtered_queries: int | UnsetType = UNSET
    batch_queries: int | UnsetType = UNSET
    hybrid_queries: int | UnsetType = UNSET
    bm25_queries: int | UnsetType = UNSET
    reranked_queries: int | UnsetType = UNSET
    unique_users: int | UnsetType = UNSET


class AnalyticsBucket(AnalyticsSummary, kw_only=True):
    time_bucket: str | UnsetType = UNSET


class AnalyticsPattern(Resp, kw_only=True):
    pattern: str | UnsetType = UNSET
    kind: str | UnsetType = UNSET
    count: int | UnsetType = UNSET
    avg_latency_ms: float | UnsetType = UNSET
    zero_result_count: int | UnsetType = UNSET
    failed_count: int | UnsetType = UNSET
    first_seen: str | UnsetType = UNSET
    last_seen: str | UnsetType = UNSET


class AnalyticsTrend(Resp, kw_only=True):
    pattern: str | UnsetType = UNSET
    kind: str | UnsetType = UNSET
    recent_count: int | UnsetType = UNSET
    previous_count: int | UnsetType = UNSET
    growth_rate: float | None | UnsetType = UNSET
    new: bool | UnsetType = UNSET


class AnalyticsHead(Resp, kw_only=True):
    database_id: str | UnsetType = UNSET
    start_time: str | UnsetType = UNSET
    end_time: str | UnsetType = UNSET


class AnalyticsStats(AnalyticsHead, kw_only=True):
    stats: list[AnalyticsBucket]
    granularity: str | UnsetType = UNSET
    summary: AnalyticsSummary | UnsetType = UNSET


class AnalyticsQueries(AnalyticsHead, kw_only=True):
    queries: list[AnalyticsQuery]
    total: int | UnsetType = UNSET
    limit: int | UnsetType = UNSET
    offset: int | UnsetType = UNSET


class AnalyticsPatterns(AnalyticsHead, kw_only=True):
    patterns: list[AnalyticsPattern]
    min_count: int | UnsetType = UNSET
    total_patterns: int | UnsetType = UNSET


class AnalyticsInsights(Resp, kw_only=True):
    summary: AnalyticsSummary
    common_patterns: list[AnalyticsPattern]
    slow_queries: list[AnalyticsQuery]
    zero_result_queries: list[AnalyticsQuery]
    trending: list[AnalyticsTrend]
    database_id: str | UnsetType = UNSET
    recommendations: list[str] | UnsetType = UNSET


class AnalyticsTrending(AnalyticsHead, kw_only=True):
    trending: list[AnalyticsTrend]
    min_growth: float | UnsetType = UNSET
    window_split: str | UnsetType = UNSET


class AnalyticsExport(AnalyticsHead, kw_only=True):
    queries: list[AnalyticsQuery]
    format: str | UnsetType = UNSET
    total_queries: int | UnsetType = UNSET
    feedback: list[Obj] | UnsetType = UNSET


class Feedback(Req, kw_only=True):
    """Feedback on a query (``queryId`` from its ``X-Query-Id`` header; snake_case names are
    accepted too)."""

    queryId: str | None = None
    userId: str | None = None
    rating: Annotated[int, Meta(ge=1, le=5)] | None = None
    feedbackText: str | None = None
    clickedResultId: str | None = None
    clickedRank: Annotated[int, Meta(ge=0)] | None = None


class FeedbackRecorded(Resp, kw_only=True):
    success: bool
    query_id: str
    message: str
    query_known: bool | UnsetType = UNSET


# Markers for answers that are not JSON objects (``Route.resp``)
TEXT = str  # a text or binary body (its content types: ``Route.ctype``)
ANY_JSON = Obj  # a JSON object this module does not detail


def all_structs() -> tuple[type[Struct], ...]:
    """Every struct declared here (tests walk them)."""
    return tuple(v for v in globals().values()
                 if isinstance(v, type) and issubclass(v, Struct) and v.__module__ == __name__)


__all__ = ["UNSET", "msgspec"]
