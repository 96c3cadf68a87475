"""The event vocabulary: one frozen, typed class per log record type.

A record's ``type`` names its class here and its ``body`` is the class's fields (msgpack map),
plus ``v``, the body schema version. Every default is resolved before the append (by
``jade.core.decide`` / ``jade.auth.decide``), so an event says everything a projection needs:
projections fold events and read nothing else (no catalog "as it is now", no settings, no
clock).

What each class is for is said once, by class attributes, and every set of types derives from
them: ``is_catalog`` (changes what the catalog/mode caches answer), ``is_auth`` (folded into the
auth store), ``readonly_ok`` (accepted while the server is in readonly mode),
``touches_index`` (folded into the in-memory indexes).

Schema versions (``v`` in the body; absent means 1):
  1  written before the typed vocabulary: databases named by ``id`` in ``db.*`` bodies, index
     parameters left out when the client gave none (filled here with the defaults of the
     release that wrote them: M 16, efConstruction 200, efSearch 64), lockouts written as
     ``auth.user.update``.
  2  every event names its database as ``db``; index parameters are complete.
Old records are upgraded on read (``of``); their bytes, and so the checksum chain, never change.
"""

from __future__ import annotations

from typing import Any, ClassVar

import msgspec

from wal.codec import Record

SCHEMA = 2

# The defaults of every release that wrote schema 1: what an index built from a v1 record
# without parameters was built with (Settings' defaults then and now).
V1_HNSW_DEFAULTS = {"M": 16, "efConstruction": 200, "efSearch": 64}


class EventError(ValueError):
    """A record whose body does not fit its type (or whose type is unknown)."""


class IndexDef(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One index of a database, as decided: its parameters complete for its kind."""

    id: str
    kind: str  # "hnsw" | "flat": what is built
    requested: str = ""  # the type the client asked for (HNSW, IVF, LSH, FLAT)
    name: str = ""
    parameters: dict[str, int] = {}
    created_at: int = 0
    updated_at: int = 0


class Event(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    type: ClassVar[str] = ""
    is_catalog: ClassVar[bool] = False
    is_auth: ClassVar[bool] = False
    readonly_ok: ClassVar[bool] = False
    touches_index: ClassVar[bool] = False

    @property
    def db_id(self) -> str | None:
        """The database this event concerns (None: none)."""
        return getattr(self, "db", None)

    def body(self) -> dict[str, Any]:
        """The record body: the fields as msgpack-ready builtins, bytes kept as bytes."""
        out: dict[str, Any] = msgspec.to_builtins(self, builtin_types=(bytes, bytearray))
        out["v"] = SCHEMA
        return out


# -- data ------------------------------------------------------------------------------------


class DbCreate(Event, frozen=True, kw_only=True):
    type: ClassVar[str] = "db.create"
    is_catalog: ClassVar[bool] = True
    touches_index: ClassVar[bool] = True
    db: str
    name: str
    description: str = ""
    dimension: int
    metric: str
    index_type: str
    index: IndexDef
    extra: dict[str, Any] = {}


class DbChanges(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True,
                forbid_unknown_fields=True):
    name: str | None = None
    description: str | None = None
    dimension: int | None = None
    index_type: str | None = None
    indexes: list[IndexDef] | None = None  # replaces the database's indexes

    def fields(self) -> dict[str, Any]:
        out: dict[str, Any] = msgspec.to_builtins(self)
        return out


class DbUpdate(Event, frozen=True, kw_only=True):
    type: ClassVar[str] = "db.update"
    is_catalog: ClassVar[bool] = True
    touches_index: ClassVar[bool] = True
    db: str
    changes: DbChanges


class DbDelete(Event, frozen=True, kw_only=True):
    type: ClassVar[str] = "db.delete"
    is_catalog: ClassVar[bool] = True
    touches_index: ClassVar[bool] = True
    db: str


class VecUpsert(Event, frozen=True, kw_only=True):
    type: ClassVar[str] = "vec.upsert"
    touches_index: ClassVar[bool] = True
    db: str
    ids: list[str]
    labels: list[int]
    values: bytes  # float32 little-endian, len(ids) rows of the database's dimension
    metadata: list[Any]
    next_label: int


class VecDelete(Event, frozen=True, kw_only=True):
    type: ClassVar[str] = "vec.delete"
    touches_index: ClassVar[bool] = True
    db: str
    ids: list[str]
    labels: list[int]


class IndexCreate(Event, frozen=True, kw_only=True):
    type: ClassVar[str] = "index.create"
    is_catalog: ClassVar[bool] = True
    touches_index: ClassVar[bool] = True
    db: str
    index: IndexDef


class IndexUpdate(Event, frozen=True, kw_only=True):
    type: ClassVar[str] = "index.update"
    is_catalog: ClassVar[bool] = True
    touches_index: ClassVar[bool] = True
    db: str
    index_id: str
    parameters: dict[str, int]


class IndexDelete(Event, frozen=True, kw_only=True):
    type: ClassVar[str] = "index.delete"
    is_catalog: ClassVar[bool] = True
    touches_index: ClassVar[bool] = True
    db: str
    index_id: str


class SystemMode(Event, frozen=True, kw_only=True):
    type: ClassVar[str] = "system.mode"
    is_catalog: ClassVar[bool] = True
    readonly_ok: ClassVar[bool] = True
    mode: str


class SystemPromote(Event, frozen=True, kw_only=True):
    """The epoch applies to this record and every one after it (fencing). Allowed in readonly
    mode: a promotion changes no data, and a replica of a readonly primary must be promotable."""

    type: ClassVar[str] = "system.promote"
    readonly_ok: ClassVar[bool] = True
    epoch: int
    previous_primary: str | None = None


# -- auth ------------------------------------------------------------------------------------


class UserCreate(Event, frozen=True, kw_only=True):
    type: ClassVar[str] = "auth.user.create"
    is_auth: ClassVar[bool] = True
    user_id: str
    username: str
    email: str = ""
    password_hash: str
    roles: list[str]
    must_change_password: bool = False


class UserUpdate(Event, frozen=True, kw_only=True):
    type: ClassVar[str] = "auth.user.update"
    is_auth: ClassVar[bool] = True
    user_id: str
    # user fields, plus two instructions to the fold: ``revoke_tokens`` kills the tokens (and,
    # unless ``keep_keys``, the API keys) issued before; ``totp_last_step``: a TOTP code's time
    # step was used (a confirmation), no code of that step or before is good again
    changes: dict[str, Any]


class UserLock(Event, frozen=True, kw_only=True):
    """A lockout after failed logins: security bookkeeping, so accepted in readonly mode."""

    type: ClassVar[str] = "auth.user.lock"
    is_auth: ClassVar[bool] = True
    readonly_ok: ClassVar[bool] = True
    user_id: str
    until: int


class UserDelete(Event, frozen=True, kw_only=True):
    type: ClassVar[str] = "auth.user.delete"
    is_auth: ClassVar[bool] = True
    user_id: str


class KeyCreate(Event, frozen=True, kw_only=True):
    type: ClassVar[str] = "auth.key.create"
    is_auth: ClassVar[bool] = True
    key_id: str
    user_id: str
    hash: str
    key_prefix: str
    description: str = ""
    permissions: list[Any] = []
    expires_at: int | None = None


class KeyRevoke(Event, frozen=True, kw_only=True):
    type: ClassVar[str] = "auth.key.revoke"
    is_auth: ClassVar[bool] = True
    key_id: str


class SessionCreate(Event, frozen=True, kw_only=True):
    type: ClassVar[str] = "auth.session.create"
    is_auth: ClassVar[bool] = True
    readonly_ok: ClassVar[bool] = True
    jti: str
    user_id: str
    ip: str = ""
    expires_at: int
    totp_step: int = 0  # the TOTP time step the login's code was for (0: none): used up


class SessionRevoke(Event, frozen=True, kw_only=True):
    type: ClassVar[str] = "auth.session.revoke"
    is_auth: ClassVar[bool] = True
    readonly_ok: ClassVar[bool] = True
    jti: str
    expires_at: int = 0


class Prune(Event, frozen=True, kw_only=True):
    """Forget sessions, revocations, blocks and reset tokens that expired before ``now``."""

    type: ClassVar[str] = "auth.prune"
    is_auth: ClassVar[bool] = True
    readonly_ok: ClassVar[bool] = True
    now: int


class GrantSet(Event, frozen=True, kw_only=True):
    type: ClassVar[str] = "auth.grant.set"
    is_auth: ClassVar[bool] = True
    db: str
    user_id: str
    permission: str | None = None  # None: the grant is removed


class BlockSet(Event, frozen=True, kw_only=True):
    type: ClassVar[str] = "auth.block.set"
    is_auth: ClassVar[bool] = True
    readonly_ok: ClassVar[bool] = True
    ip: str
    until: int | None = None  # None or 0: the block is lifted
    reason: str = ""
    failures: int = 0


class ResetCreate(Event, frozen=True, kw_only=True):
    type: ClassVar[str] = "auth.reset.create"
    is_auth: ClassVar[bool] = True
    hash: str
    user_id: str
    expires_at: int


class ResetUse(Event, frozen=True, kw_only=True):
    type: ClassVar[str] = "auth.reset.use"
    is_auth: ClassVar[bool] = True
    hash: str


# -- text (BM25) -----------------------------------------------------------------------------


class TextIndexSet(Event, frozen=True, kw_only=True):
    """A database's text index is defined (or rebuilt) over ``metadata[field]``: the text
    projection (``jade.text.projection``) re-indexes every vector of the database from the
    store and every later upsert. ``tokenizer`` is fixed by the node that decided it, so every
    node folds and scores with the same one."""

    type: ClassVar[str] = "text.index.set"
    is_catalog: ClassVar[bool] = True
    db: str
    field: str
    tokenizer: str


class TextDocs(Event, frozen=True, kw_only=True):
    """Documents given to a database's text index directly (``/bm25-index/documents``): text
    by id, beside the vectors' own text."""

    type: ClassVar[str] = "text.docs"
    db: str
    ids: list[str]
    texts: list[str]


# -- reranking --------------------------------------------------------------------------------

# A database's reranking configuration before any RerankConfigSet (jade.text.models.rerank_config)
RERANK_DEFAULTS: dict[str, Any] = {
    "model_name": "",  # "": the server's reranker (jade.text.models.reranker_name)
    "batch_size": 32,
    "score_threshold": 0.0,
    "combine_scores": True,
    "rerank_weight": 0.7,
}


class RerankConfigSet(Event, frozen=True, kw_only=True):
    """A database's reranking configuration, complete (the fields the request left out carried
    over from the previous one or the defaults when deciding). Folded into the database's
    catalog entry (``rerank``), so it is deleted with the database."""

    type: ClassVar[str] = "db.rerank_config"
    is_catalog: ClassVar[bool] = True
    db: str
    model_name: str
    batch_size: int
    score_threshold: float
    combine_scores: bool
    rerank_weight: float

    def config(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in RERANK_DEFAULTS}


def _all(cls: type[Event]) -> list[type[Event]]:
    out: list[type[Event]] = []
    for sub in cls.__subclasses__():
        out.append(sub)
        out.extend(_all(sub))
    return out


EVENTS: dict[str, type[Event]] = {c.type: c for c in _all(Event)}
CATALOG_TYPES = frozenset(t for t, c in EVENTS.items() if c.is_catalog)
AUTH_TYPES = frozenset(t for t, c in EVENTS.items() if c.is_auth)
READONLY_OK_TYPES = frozenset(t for t, c in EVENTS.items() if c.readonly_ok)
INDEX_TYPES = frozenset(t for t, c in EVENTS.items() if c.touches_index)


# -- reading records -------------------------------------------------------------------------


def of(rec: Record) -> Event:
    """The typed event of a record, upgraded from an older schema if needed. Raises
    ``EventError`` for an unknown type or a body that does not fit it."""
    cls = EVENTS.get(rec.type)
    if cls is None:
        raise EventError(f"LSN {rec.lsn}: unknown record type {rec.type!r}")
    body = dict(rec.body)
    version = body.pop("v", 1)
    if version == 1:
        body = _upgrade_v1(rec.type, body)
    elif version != SCHEMA:
        raise EventError(f"LSN {rec.lsn}: {rec.type} body schema {version} is newer than this "
                         f"release reads ({SCHEMA}): upgrade this node")
    try:
        return msgspec.convert(body, cls)
    except msgspec.ValidationError as exc:
        raise EventError(f"LSN {rec.lsn}: {rec.type} body does not fit: {exc}") from None


def fill_parameters(kind: str, params: dict[str, int], defaults: dict[str, int]) -> dict[str, int]:
    """An index's parameters with every one its kind uses decided (``defaults`` for the rest)."""
    if kind != "hnsw":
        return dict(params)
    return {**defaults, **params}


def upgrade_index(index: dict[str, Any]) -> IndexDef:
    """An index as schema 1 wrote it (in a record or the catalog) as schema 2 says it: the
    parameters its kind uses decided (the defaults of the release that wrote it). A schema-2
    index passes unchanged."""
    d = dict(index)
    d["parameters"] = fill_parameters(
        str(d.get("kind", "")), dict(d.get("parameters") or {}), V1_HNSW_DEFAULTS
    )
    return msgspec.convert(d, IndexDef)


def _index_v1(index: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = msgspec.to_builtins(upgrade_index(index))
    return out


def _upgrade_v1(type_: str, body: dict[str, Any]) -> dict[str, Any]:
    if type_ in ("db.create", "db.update", "db.delete") and "id" in body:
        body["db"] = body.pop("id")
    if type_ in ("db.create", "index.create"):
        body["index"] = _index_v1(body["index"])
    if type_ == "db.update":
        changes = dict(body["changes"])
        if changes.get("indexes") is not None:
            changes["indexes"] = [_index_v1(i) for i in changes["indexes"]]
        body["changes"] = changes
    return body


__all__ = [
    "AUTH_TYPES",
    "CATALOG_TYPES",
    "EVENTS",
    "INDEX_TYPES",
    "READONLY_OK_TYPES",
    "SCHEMA",
    "Event",
    "EventError",
    "IndexDef",
    "of",
]
