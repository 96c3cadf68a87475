"""What the client returns: typed, frozen views of the server's answers (msgspec structs decoded
straight from the response bytes). Field names are Python's; each maps to the API's own name
(``databaseId`` -> ``id``, ``vectorDimension`` -> ``dimension``...). Fields the server adds
later are ignored, so an older SDK keeps working against a newer server."""

from __future__ import annotations

from typing import Any

import msgspec

JSON = Any  # a metadata value: whatever JSON the vector was stored with


class DatabaseStats(msgspec.Struct, frozen=True, rename="camel"):
    vector_count: int = 0
    index_count: int = 0
    storage_size: int = 0
    indexed_vectors: int = 0


class Database(msgspec.Struct, frozen=True):
    """A database as ``GET /v1/databases/{id}`` describes it."""

    id: str = msgspec.field(name="databaseId")
    name: str = ""
    description: str = ""
    dimension: int = msgspec.field(name="vectorDimension", default=0)
    index_type: str = msgspec.field(name="indexType", default="")
    metric: str = "cosine"
    created_at: str = ""
    updated_at: str = ""
    stats: DatabaseStats = msgspec.field(default_factory=DatabaseStats)

    @property
    def vector_count(self) -> int:
        return self.stats.vector_count


class DatabasePage(msgspec.Struct, frozen=True):
    databases: list[Database]
    total: int = 0


class Vector(msgspec.Struct, frozen=True):
    """A stored vector: its id, its float32 values (as Python floats) and its metadata."""

    id: str
    values: list[float] = msgspec.field(default_factory=list)
    metadata: dict[str, JSON] | None = None


class VectorList(msgspec.Struct, frozen=True):
    vectors: list[Vector]


class Hit(msgspec.Struct, frozen=True):
    """One search result: the vector's id and its score (higher is nearer: cosine similarity,
    the server's score for the database's metric); ``vector`` when metadata or values were asked
    for."""

    id: str = msgspec.field(name="vectorId")
    score: float = 0.0
    vector: Vector | None = None

    @property
    def metadata(self) -> dict[str, JSON] | None:
        return self.vector.metadata if self.vector is not None else None

    @property
    def values(self) -> list[float] | None:
        v = self.vector
        return v.values if v is not None and v.values else None


class SearchAnswer(msgspec.Struct, frozen=True):
    results: list[Hit]


class BatchAnswer(msgspec.Struct, frozen=True):
    results: list[SearchAnswer]


class HybridHit(msgspec.Struct, frozen=True, rename="camel"):
    """One hybrid result: the fused score and, where each side ranked it, the vector and the
    BM25 scores."""

    id: str = msgspec.field(name="vectorId")
    score: float = msgspec.field(name="hybridScore", default=0.0)
    vector_score: float | None = None
    bm25_score: float | None = None
    vector: Vector | None = None

    @property
    def metadata(self) -> dict[str, JSON] | None:
        return self.vector.metadata if self.vector is not None else None


class HybridAnswer(msgspec.Struct, frozen=True):
    results: list[HybridHit]


class Health(msgspec.Struct, frozen=True):
    """``GET /health``: ``status`` is "healthy" (or "starting", "degraded")."""

    status: str
    version: str = ""
    timestamp: int = 0
    checks: dict[str, JSON] = msgspec.field(default_factory=dict)


class Status(msgspec.Struct, frozen=True):
    """``GET /status``, its main fields typed; the rest of the object (performance, log,
    indexes, replication...) is in ``details``."""

    status: str
    version: str = ""
    mode: str = ""
    role: str = ""
    uptime_seconds: int = 0
    details: dict[str, JSON] = msgspec.field(default_factory=dict)
