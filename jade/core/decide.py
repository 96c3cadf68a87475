"""Commands and the decisions that turn them into log records.

A ``Command`` is what a handler asks for, already validated for shape. ``decide`` runs on the
writer thread inside the log's write transaction, so it sees the exact state the records will be
applied to: existence checks (404), dimension checks, label assignment and metadata carried over
on partial updates are decided here and written into the record bodies. ``apply`` then never has
to guess, which keeps it deterministic on the primary, on replicas and in a restore.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import lmdb

from jade.errors import Conflict, InvalidArgument, NotFound, ReadOnly
from jade.stores.data import DataStore
from wal.writer import Draft

MISSING = "\x00missing"  # metadata placeholder: "keep the stored metadata"


@dataclass(frozen=True, slots=True)
class Command:
    type: str
    body: dict[str, Any]
    actor: str = "system"
    size: int = field(default=0, compare=False)  # approximate bytes, for group bounds


# Commands allowed while the server is readonly (the switch back, and nothing else).
READONLY_ALLOWED = frozenset({"system.mode"})


def decide(store: DataStore, txn: lmdb.Transaction, cmd: Command) -> list[Draft]:
    if cmd.type not in READONLY_ALLOWED and store.mode(txn) == "readonly":
        raise ReadOnly("the server is in readonly mode; writes are refused")
    fn = _DECIDE.get(cmd.type)
    if fn is None:
        raise InvalidArgument(f"unknown command {cmd.type!r}")
    return fn(store, txn, cmd)


def _db(store: DataStore, txn: lmdb.Transaction, db_id: str) -> dict[str, Any]:
    db = store.database(db_id, txn)
    if db is None:
        raise NotFound("Database not found", code="not_found", database_id=db_id)
    return db


def _db_create(store: DataStore, txn: lmdb.Transaction, cmd: Command) -> list[Draft]:
    # apply would overwrite the catalog entry and leave the old vectors behind it
    if store.database(cmd.body["id"], txn) is not None:
        raise Conflict("Database already exists", database_id=cmd.body["id"])
    return [Draft("db.create", cmd.actor, cmd.body)]


def _db_update(store: DataStore, txn: lmdb.Transaction, cmd: Command) -> list[Draft]:
    db = _db(store, txn, cmd.body["id"])
    changes = dict(cmd.body["changes"])
    if "dimension" in changes and changes["dimension"] != db["dimension"] and db["count"] > 0:
        raise InvalidArgument(
            f"vectorDimension cannot change on a database holding {db['count']} vectors",
            code="dimension_locked",
        )
    new_index = changes.pop("new_index", None)
    if new_index is not None:
        changes["indexes"] = [new_index]
    return [Draft("db.update", cmd.actor, {"id": db["id"], "changes": changes})]


def _db_delete(store: DataStore, txn: lmdb.Transaction, cmd: Command) -> list[Draft]:
    _db(store, txn, cmd.body["id"])
    return [Draft("db.delete", cmd.actor, {"id": cmd.body["id"]})]


def _vec_upsert(store: DataStore, txn: lmdb.Transaction, cmd: Command) -> list[Draft]:
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
    body = {
        "db": db["id"],
        "ids": ids,
        "labels": labels,
        "values": values,
        "metadata": metadata,
        "next_label": next_label,
    }
    return [Draft("vec.upsert", cmd.actor, body)]


def _vec_delete(store: DataStore, txn: lmdb.Transaction, cmd: Command) -> list[Draft]:
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
    return [Draft("vec.delete", cmd.actor, {"db": db["id"], "ids": ids, "labels": labels})]


def _index_create(store: DataStore, txn: lmdb.Transaction, cmd: Command) -> list[Draft]:
    _db(store, txn, cmd.body["db"])
    return [Draft("index.create", cmd.actor, cmd.body)]


def _index_change(store: DataStore, txn: lmdb.Transaction, cmd: Command) -> list[Draft]:
    db = _db(store, txn, cmd.body["db"])
    if not any(i["id"] == cmd.body["index_id"] for i in db["indexes"]):
        raise NotFound("Index not found", index_id=cmd.body["index_id"])
    return [Draft(cmd.type, cmd.actor, cmd.body)]


def _system_mode(store: DataStore, txn: lmdb.Transaction, cmd: Command) -> list[Draft]:
    if cmd.body.get("mode") not in ("readonly", "readwrite"):
        raise Conflict("mode must be readonly or readwrite")
    return [Draft("system.mode", cmd.actor, {"mode": cmd.body["mode"]})]


_DECIDE: dict[str, Callable[[DataStore, lmdb.Transaction, Command], list[Draft]]] = {
    "db.create": _db_create,
    "db.update": _db_update,
    "db.delete": _db_delete,
    "vec.upsert": _vec_upsert,
    "vec.delete": _vec_delete,
    "index.create": _index_create,
    "index.update": _index_change,
    "index.delete": _index_change,
    "system.mode": _system_mode,
}
