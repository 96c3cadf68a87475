"""Commands and the decisions that turn them into events (``jade.events``).

A ``Command`` is what a handler asks for, already validated for shape. ``decide`` runs on the
writer thread inside the log's write transaction, so it sees the exact state the events will be
applied to: existence checks (404), dimension checks, label assignment, metadata carried over
on partial updates and every index parameter the client left out (from ``Defaults``, the
settings of the node that decides) are decided here and written into the events. Projections
then never have to guess, which keeps them deterministic on the primary, on replicas, in a
restore and after a restart with other settings.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import lmdb

from jade import events as ev
from jade.errors import Conflict, InvalidArgument, NotFound
from jade.stores.data import DataStore

MISSING = "\x00missing"  # metadata placeholder: "keep the stored metadata"


@dataclass(frozen=True, slots=True)
class Command:
    type: str
    body: dict[str, Any]
    actor: str = "system"
    size: int = field(default=0, compare=False)  # approximate bytes, for group bounds


@dataclass(frozen=True, slots=True)
class Defaults:
    """What a command leaves out is decided from these (the deciding node's settings)."""

    hnsw: dict[str, int] = field(
        default_factory=lambda: dict(ev.V1_HNSW_DEFAULTS)
    )  # M, efConstruction, efSearch


def decide(store: DataStore, txn: lmdb.Transaction[bytes], cmd: Command, defaults: Defaults
           ) -> list[ev.Event]:
    fn = _DECIDE.get(cmd.type)
    if fn is None:
        raise InvalidArgument(f"unknown command {cmd.type!r}")
    return fn(store, txn, cmd, defaults)


def _index(raw: dict[str, Any], defaults: Defaults) -> ev.IndexDef:
    params = ev.fill_parameters(str(raw["kind"]), dict(raw.get("parameters") or {}),
                                defaults.hnsw)
    return ev.IndexDef(
        id=raw["id"],
        kind=raw["kind"],
        requested=raw.get("requested", ""),
        name=raw.get("name", ""),
        parameters=params,
        created_at=int(raw.get("created_at", 0)),
        updated_at=int(raw.get("updated_at", 0)),
    )


def _db(store: DataStore, txn: lmdb.Transaction[bytes], db_id: str) -> dict[str, Any]:
    db = store.database(db_id, txn)
    if db is None:
        raise NotFound("Database not found", code="not_found", database_id=db_id)
    return db


def _db_create(store: DataStore, txn: lmdb.Transaction[bytes], cmd: Command, d: Defaults
               ) -> list[ev.Event]:
    b = cmd.body
    # apply would overwrite the catalog entry and leave the old vectors behind it
    if store.database(b["db"], txn) is not None:
        raise Conflict("Database already exists", database_id=b["db"])
    return [
        ev.DbCreate(
            db=b["db"],
            name=b["name"],
            description=b.get("description", ""),
            dimension=b["dimension"],
            metric=b["metric"],
            index_type=b["index_type"],
            index=_index(b["index"], d),
            extra=b.get("extra", {}),
        )
    ]


def _db_update(store: DataStore, txn: lmdb.Transaction[bytes], cmd: Command, d: Defaults
               ) -> list[ev.Event]:
    db = _db(store, txn, cmd.body["db"])
    changes = dict(cmd.body["changes"])
    if "dimension" in changes and changes["dimension"] != db["dimension"] and db["count"] > 0:
        raise InvalidArgument(
            f"vectorDimension cannot change on a database holding {db['count']} vectors",
            code="dimension_locked",
        )
    new_index = changes.pop("new_index", None)
    indexes = [_index(new_index, d)] if new_index is not None else None
    return [ev.DbUpdate(db=db["id"], changes=ev.DbChanges(indexes=indexes, **changes))]


def _db_delete(store: DataStore, txn: lmdb.Transaction[bytes], cmd: Command, d: Defaults
               ) -> list[ev.Event]:
    _db(store, txn, cmd.body["db"])
    return [ev.DbDelete(db=cmd.body["db"])]


def _vec_upsert(store: DataStore, txn: lmdb.Transaction[bytes], cmd: Command, d: Defaults
                ) -> list[ev.Event]:
    b = cmd.body
    db = _db(store, txn, b["db"])
    dim = db["dimension"]
    ids: list[str] = b["ids"]
    values: bytes = b["values"]
    if len(values) != len(ids) * dim * 4:
        raise InvalidArgument(
            f"dimension mismatch: the database expects vectors of {dim} values",
            code="dimension_mismatch",
        )
    must_exist = b.get("must_exist", False)
    next_label = db["next_label"]
    labels: list[int] = []
    metadata: list[Any] = []
    seen: dict[str, int] = {}
    resolved: dict[str, Any] = {}  # id -> its metadata as of the previous item of this batch
    for vid, md in zip(ids, b["metadata"], strict=True):
        if vid in seen:  # the same id twice in one batch: the later one wins, same label
            labels.append(seen[vid])
            if md == MISSING:
                md = resolved[vid]
            resolved[vid] = md
            metadata.append(md)
            continue
        old = store.vector(db["id"], vid, txn)
        if old is None:
            if must_exist:
                raise NotFound("Vector not found", vector_id=vid)
            label = next_label
            next_label += 1
        else:
            label = old.label
        if md == MISSING:
            md = old.metadata if old is not None else None
        seen[vid] = label
        resolved[vid] = md
        labels.append(label)
        metadata.append(md)
    return [
        ev.VecUpsert(
            db=db["id"],
            ids=ids,
            labels=labels,
            values=values,
            metadata=metadata,
            next_label=next_label,
        )
    ]


def _vec_delete(store: DataStore, txn: lmdb.Transaction[bytes], cmd: Command, d: Defaults
                ) -> list[ev.Event]:
    b = cmd.body
    db = _db(store, txn, b["db"])
    ids, labels = [], []
    for vid in dict.fromkeys(b["ids"]):
        old = store.vector(db["id"], vid, txn)
        if old is None:
            if b.get("must_exist", True):
                raise NotFound("Vector not found", vector_id=vid)
            continue
        ids.append(vid)
        labels.append(old.label)
    return [ev.VecDelete(db=db["id"], ids=ids, labels=labels)]


def _index_create(store: DataStore, txn: lmdb.Transaction[bytes], cmd: Command, d: Defaults
                  ) -> list[ev.Event]:
    _db(store, txn, cmd.body["db"])
    return [ev.IndexCreate(db=cmd.body["db"], index=_index(cmd.body["index"], d))]


def _index_change(store: DataStore, txn: lmdb.Transaction[bytes], cmd: Command, d: Defaults
                  ) -> list[ev.Event]:
    b = cmd.body
    db = _db(store, txn, b["db"])
    if not any(i["id"] == b["index_id"] for i in db["indexes"]):
        raise NotFound("Index not found", index_id=b["index_id"])
    if cmd.type == "index.update":
        return [ev.IndexUpdate(db=b["db"], index_id=b["index_id"],
                               parameters=dict(b["parameters"]))]
    return [ev.IndexDelete(db=b["db"], index_id=b["index_id"])]


def _system_mode(store: DataStore, txn: lmdb.Transaction[bytes], cmd: Command, d: Defaults
                 ) -> list[ev.Event]:
    if cmd.body.get("mode") not in ("readonly", "readwrite"):
        raise Conflict("mode must be readonly or readwrite")
    return [ev.SystemMode(mode=cmd.body["mode"])]


def _system_promote(store: DataStore, txn: lmdb.Transaction[bytes], cmd: Command, d: Defaults
                    ) -> list[ev.Event]:
    return [ev.SystemPromote(epoch=int(cmd.body["epoch"]),
                             previous_primary=cmd.body.get("previous_primary"))]


def _text_index_set(store: DataStore, txn: lmdb.Transaction[bytes], cmd: Command, d: Defaults
                    ) -> list[ev.Event]:
    """Define (or rebuild) the database's text index. ``incremental`` on an index already over
    the same field changes nothing: the index follows every write already (no record)."""
    b = cmd.body
    db = _db(store, txn, b["db"])
    current = db.get("text_index")
    if b.get("incremental") and current is not None and current["field"] == b["field"]:
        return []
    return [ev.TextIndexSet(db=db["id"], field=b["field"], tokenizer=b["tokenizer"])]


def _text_docs(store: DataStore, txn: lmdb.Transaction[bytes], cmd: Command, d: Defaults
               ) -> list[ev.Event]:
    """Documents for the database's text index; a database without one gets one first (over
    the default field), so the documents land in an index that follows the vectors too."""
    b = cmd.body
    db = _db(store, txn, b["db"])
    out: list[ev.Event] = []
    if db.get("text_index") is None:
        out.append(ev.TextIndexSet(db=db["id"], field=b["default_field"],
                                   tokenizer=b["tokenizer"]))
    out.append(ev.TextDocs(db=db["id"], ids=list(b["ids"]), texts=list(b["texts"])))
    return out


def _rerank_config(store: DataStore, txn: lmdb.Transaction[bytes], cmd: Command, d: Defaults
                   ) -> list[ev.Event]:
    """The database's complete reranking configuration: the request's fields over the current
    ones (or the defaults), so the record alone says what the configuration is."""
    db = _db(store, txn, cmd.body["db"])
    config = {**ev.RERANK_DEFAULTS, **(db.get("rerank") or {}), **cmd.body["changes"]}
    return [ev.RerankConfigSet(
        db=db["id"],
        model_name=str(config["model_name"]),
        batch_size=int(config["batch_size"]),
        score_threshold=float(config["score_threshold"]),
        combine_scores=bool(config["combine_scores"]),
        rerank_weight=float(config["rerank_weight"]),
    )]


_DECIDE: dict[
    str, Callable[[DataStore, lmdb.Transaction[bytes], Command, Defaults], list[ev.Event]]
] = {
    ev.DbCreate.type: _db_create,
    ev.DbUpdate.type: _db_update,
    ev.DbDelete.type: _db_delete,
    ev.VecUpsert.type: _vec_upsert,
    ev.VecDelete.type: _vec_delete,
    ev.IndexCreate.type: _index_create,
    ev.IndexUpdate.type: _index_change,
    ev.IndexDelete.type: _index_change,
    ev.SystemMode.type: _system_mode,
    ev.SystemPromote.type: _system_promote,
    ev.RerankConfigSet.type: _rerank_config,
    ev.TextIndexSet.type: _text_index_set,
    ev.TextDocs.type: _text_docs,
}
