"""The data projection: catalog (databases, their indexes), vectors and system state, kept in the
same LMDB environment as the log and applied in the same transaction as the records that change
it (DESIGN.md: "the log and the catalog/vector projection may share one LMDB environment and one
transaction"). So its applied LSN always equals the log's last LSN after a commit, and a crash
can never leave the two apart.

Layout (sub-databases):
  ``dbs``  db_id -> msgpack dict (name, description, dimension, index info, counts, next label)
  ``vec``  db_id NUL vector_id -> msgpack [label, float32 bytes, metadata]
  ``lbl``  db_id NUL label (8 bytes BE) -> vector_id
  ``txt``  db_id NUL doc_id -> msgpack text: the documents given to the database's text index
           directly (``text.docs``, ``/bm25-index/documents``), so the text projection can be
           rebuilt from the store; an id's entry goes when a vector write of the same id comes
           later (the latest write of an id decides, as in the projection); the catalog entry
           counts them (``text_docs``)
  ``sys``  b"applied_lsn" -> 8 bytes BE; b"mode" -> b"readwrite" | b"readonly"
  ``meta`` b"schema" -> the fold's version (``STORE_SCHEMA``)

Every value of ``dbs``, ``vec``, ``lbl`` and ``txt`` is sealed (schema 3): followed by the
CRC-32 of its key and its bytes (4 bytes BE; ``seal``). LMDB keeps no checksum of its pages, and
a flipped bit in a value was served as a wrong vector, wrong metadata or a 500. Every read
checks the seal (``_open``): a value that does not match is refused with ``StorageDamaged``
naming the file, the database and the vector, logged once and counted (``damaged``, the metric
``store_value_damaged_total``), never served. A search hit whose stored value is damaged fails
that request the same way (as PostgreSQL's "invalid page"): a result list silently missing its
best match would be a wrong answer too.

``apply`` is deterministic: it reads only the record and the state, never a clock.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import lmdb
import msgpack
import numpy as np

from jade import events as ev
from jade.errors import StorageDamaged
from wal.codec import Record, pack, unpack
from wal.lmdbenv import Env
from wal.seal import seal, unseal

log = logging.getLogger(__name__)

SEP = b"\x00"
# the fold's version (``schema``): 2 is the typed events' (``jade.events``), 3 seals every value
STORE_SCHEMA = 3
SEALED = (b"dbs", b"vec", b"lbl", b"txt")  # the sub-databases whose values carry their checksum



def vkey(db_id: str, vec_id: str) -> bytes:
    return db_id.encode() + SEP + vec_id.encode()


def lkey(db_id: str, label: int) -> bytes:
    return db_id.encode() + SEP + label.to_bytes(8, "big")


def prefix(db_id: str) -> bytes:
    return db_id.encode() + SEP


class VersionedCache:
    """Answers kept while a version number stays the same. The version is read before the
    value is loaded, so a change committed meanwhile (the owner bumps the version after the
    commit) drops the entry instead of keeping a stale value under the new version."""

    def __init__(self, version: Callable[[], int], limit: int = 10_000) -> None:
        self._version = version
        self._limit = limit
        self._hits: dict[Any, tuple[int, Any]] = {}

    def get(self, key: Any, load: Callable[[], Any]) -> Any:
        version = self._version()
        hit = self._hits.get(key)
        if hit is not None and hit[0] == version:
            return hit[1]
        value = load()
        if len(self._hits) >= self._limit:
            self._hits.clear()
        self._hits[key] = (version, value)
        return value


@dataclass(frozen=True, slots=True)
class StoredVector:
    id: str
    label: int
    values: bytes  # float32 little-endian
    metadata: Any

    def array(self) -> np.ndarray:
        return np.frombuffer(self.values, dtype="<f4")


def ms(ts_ns: int) -> int:
    return ts_ns // 1_000_000


class DataStore:
    def __init__(self, env: Env) -> None:
        self.env = env
        self.dbs = env.db(b"dbs")
        self.vec = env.db(b"vec")
        self.lbl = env.db(b"lbl")
        try:  # a read-only open of a store written before it had text documents: none
            self.txt: Any = env.db(b"txt")
        except lmdb.Error:
            self.txt = None
        self.sys = env.db(b"sys")
        # bumped by the engine after every commit holding a catalog event (``is_catalog``)
        self.catalog_version = 0
        self._cached = VersionedCache(lambda: self.catalog_version)
        # packs ``vec`` values as ``pack`` does (the same bytes), without a packer per call;
        # only the transaction holding the environment's write lock uses it
        self._packer = msgpack.Packer(use_bin_type=True)
        self.damaged = 0  # values refused because they did not match their checksum (metric)
        self._damaged: set[bytes] = set()  # their keys: each is logged and counted once
        self.sealed = False  # False: a store of an older release, until upgraded
        self.sealed = self.schema() >= 3
        if self.sealed and not env.readonly and self._recorded_schema() is None:
            self.upgrade()  # a new store records its schema: its values are sealed from now on

    # -- sealed values -------------------------------------------------------------------------
    def _open(self, key: bytes, raw: bytes, what: str) -> Any:
        """The value stored under ``key``, after checking its seal (``what`` names it for the
        error: "vector X of database Y"...)."""
        if not self.sealed:
            return unpack(raw)
        body = unseal(key, raw)
        if body is None:
            raise self._refuse(key, what)
        return unpack(body)

    def _refuse(self, key: bytes, what: str) -> StorageDamaged:
        msg = (f"{self.env.path}: the stored {what} does not match its checksum (the file is "
               "damaged); refused, not served: run `jade verify`, restore from a snapshot")
        if key not in self._damaged:
            self._damaged.add(key)
            self.damaged += 1
            log.error("%s", msg)
        return StorageDamaged(msg, file=self.env.path)

    def _vec(self, db_id: str, key: bytes, raw: bytes) -> tuple[int, bytes, Any]:
        """A ``vec`` value: (label, float32 bytes, metadata), its seal checked."""
        if self.sealed:
            body = unseal(key, raw)
            if body is None:
                vid = key[len(db_id.encode()) + 1 :].decode(errors="replace")
                raise self._refuse(key, f"vector {vid!r} of database {db_id}")
            raw = body
        label, values, metadata = unpack(raw)
        return label, values, metadata

    def _put(self, txn: lmdb.Transaction[bytes], key: bytes, value: bytes, db: Any) -> None:
        txn.put(key, seal(key, value), db=db)

    # -- the fold's own schema -----------------------------------------------------------------
    def schema(self) -> int:
        """The version of the fold that wrote this store (``STORE_SCHEMA``; 1: before the typed
        events, when nothing recorded it)."""
        recorded = self._recorded_schema()
        if recorded is None:
            return 1 if self.databases() or self.applied_lsn() else STORE_SCHEMA
        return recorded

    def _recorded_schema(self) -> int | None:
        try:
            meta = self.env.db(b"meta")
        except lmdb.Error:  # a read-only open of a store that never had one
            return None
        with self.env.read() as txn:
            raw = txn.get(b"schema", db=meta)
        return int(raw) if raw is not None else None

    def upgrade(self) -> int:
        """Bring a store written by an older fold to what the current fold of the same records
        gives (so a fresh replay still equals it): schema 1 catalogs kept index parameters
        partial and in another key order. Returns the schema it was at. Idempotent."""
        was = self.schema()
        if self._recorded_schema() == STORE_SCHEMA:
            return was  # nothing written: a start-up checks the files before it writes
        meta = self.env.db(b"meta")

        def body(txn: lmdb.Transaction[bytes]) -> None:
            if was < 2:
                for key, raw in list(txn.cursor(db=self.dbs)):
                    db = unpack(raw)
                    db["indexes"] = [_upgrade_index_v1(i) for i in db["indexes"]]
                    txn.put(key, pack(db), db=self.dbs)
            if was < 3:  # every value sealed with its checksum
                for sub in (self.dbs, self.vec, self.lbl):
                    cur = txn.cursor(db=sub)
                    if cur.first():
                        while True:
                            key = cur.key()
                            cur.put(key, seal(key, cur.value()))
                            if not cur.next():
                                break
            txn.put(b"schema", str(STORE_SCHEMA).encode(), db=meta)

        self.env.write(body)
        self.sealed = True
        return was

    # -- reads (any thread; each opens a short read transaction unless given one) --------------
    def applied_lsn(self, txn: lmdb.Transaction[bytes] | None = None) -> int:
        if txn is None:
            with self.env.read() as t:
                return self.applied_lsn(t)
        raw = txn.get(b"applied_lsn", db=self.sys)
        return int.from_bytes(raw, "big") if raw else 0

    def mode(self, txn: lmdb.Transaction[bytes] | None = None) -> str:
        if txn is None:
            with self.env.read() as t:
                return self.mode(t)
        raw = txn.get(b"mode", db=self.sys)
        return raw.decode() if raw else "readwrite"

    def database(
        self, db_id: str, txn: lmdb.Transaction[bytes] | None = None
    ) -> dict[str, Any] | None:
        if txn is None:
            with self.env.read() as t:
                return self.database(db_id, t)
        key = db_id.encode()
        raw = txn.get(key, db=self.dbs)
        return self._open(key, raw, f"catalog entry of database {db_id}") if raw else None

    def database_cached(self, db_id: str) -> dict[str, Any] | None:
        """``database`` from memory while no catalog record has committed since it was read.
        Its ``count`` and ``next_label`` may lag (vector writes do not invalidate it): for the
        hot read paths, which need only the database's shape."""
        return self._cached.get(db_id, lambda: self.database(db_id))  # type: ignore[no-any-return]

    def mode_cached(self) -> str:
        return self._cached.get(b"mode", self.mode)  # type: ignore[no-any-return]

    def databases(self) -> list[dict[str, Any]]:
        with self.env.read() as txn:
            return [self._open(k, v, f"catalog entry of database {k.decode(errors='replace')}")
                    for k, v in txn.cursor(db=self.dbs)]

    def vector(
        self, db_id: str, vec_id: str, txn: lmdb.Transaction[bytes] | None = None
    ) -> StoredVector | None:
        if txn is None:
            with self.env.read() as t:
                return self.vector(db_id, vec_id, t)
        key = vkey(db_id, vec_id)
        raw = txn.get(key, db=self.vec)
        if raw is None:
            return None
        label, values, metadata = self._vec(db_id, key, raw)
        return StoredVector(vec_id, label, values, metadata)

    def vectors(self, db_id: str, ids: list[str]) -> list[StoredVector]:
        out = []
        with self.env.read() as txn:
            for vid in ids:
                v = self.vector(db_id, vid, txn)
                if v is not None:
                    out.append(v)
        return out

    def page(self, db_id: str, offset: int, limit: int) -> list[StoredVector]:
        """Vectors in id order (byte order of the UTF-8 id)."""
        pre = prefix(db_id)
        out: list[StoredVector] = []
        with self.env.read() as txn:
            cur = txn.cursor(db=self.vec)
            if not cur.set_range(pre):
                return out
            skipped = 0
            for key, raw in cur:
                if not key.startswith(pre):
                    break
                if skipped < offset:
                    skipped += 1
                    continue
                label, values, metadata = self._vec(db_id, key, raw)
                out.append(StoredVector(key[len(pre) :].decode(), label, values, metadata))
                if len(out) >= limit:
                    break
        return out

    def scan(self, db_id: str, chunk: int = 4096) -> Iterator[list[StoredVector]]:
        """All vectors of a database in id order, in chunks, each read in its own short
        transaction (ids never contain NUL, so ``key + NUL`` is the next possible key)."""
        pre = prefix(db_id)
        start = pre
        while True:
            batch: list[StoredVector] = []
            with self.env.read() as txn:
                cur = txn.cursor(db=self.vec)
                if not cur.set_range(start):
                    return
                for key, raw in cur:
                    if not key.startswith(pre):
                        break
                    label, values, metadata = self._vec(db_id, key, raw)
                    batch.append(StoredVector(key[len(pre) :].decode(), label, values, metadata))
                    if len(batch) >= chunk:
                        start = key + SEP
                        break
            if batch:
                yield batch
            if len(batch) < chunk:
                return

    def vectors_after(self, db_id: str, after: str | None, limit: int,
                      txn: lmdb.Transaction[bytes] | None = None) -> list[StoredVector]:
        """The first ``limit`` vectors of the database in id order after the id ``after``
        (None: from the first)."""
        if txn is None:
            with self.env.read() as t:
                return self.vectors_after(db_id, after, limit, t)
        pre = prefix(db_id)
        out: list[StoredVector] = []
        cur = txn.cursor(db=self.vec)
        if not cur.set_range(pre + after.encode() + SEP if after is not None else pre):
            return out
        for key, raw in cur:
            if not key.startswith(pre) or len(out) >= limit:
                break
            label, values, metadata = self._vec(db_id, key, raw)
            out.append(StoredVector(key[len(pre):].decode(), label, values, metadata))
        return out

    def text_docs(self, db_id: str, after: str | None = None, limit: int = 4096,
                  txn: lmdb.Transaction[bytes] | None = None) -> list[tuple[str, str]]:
        """The database's documents given directly (``txt``), ``(id, text)`` in id order, the
        first ``limit`` after the id ``after`` (None: from the first)."""
        if txn is None:
            with self.env.read() as t:
                return self.text_docs(db_id, after, limit, t)
        out: list[tuple[str, str]] = []
        if self.txt is None:
            return out
        pre = prefix(db_id)
        cur = txn.cursor(db=self.txt)
        if not cur.set_range(pre + after.encode() + SEP if after is not None else pre):
            return out
        for key, raw in cur:
            if not key.startswith(pre) or len(out) >= limit:
                break
            doc_id = key[len(pre):].decode()
            out.append((doc_id, self._open(key, raw, f"text document {doc_id!r} of database "
                                                     f"{db_id}")))
        return out

    def ids_for_labels(self, db_id: str, labels: list[int]) -> list[str | None]:
        pre = prefix(db_id)
        lbl = self.lbl
        keys = [pre + label.to_bytes(8, "big") for label in labels]
        with self.env.read() as txn:
            get = txn.get
            raws = [get(key, db=lbl) for key in keys]
        if not self.sealed:
            return [raw.decode() if raw is not None else None for raw in raws]
        out: list[str | None] = []
        for key, raw in zip(keys, raws, strict=True):
            if raw is None:
                out.append(None)
                continue
            body = unseal(key, raw)
            if body is None:
                label = int.from_bytes(key[len(pre):], "big")
                raise self._refuse(key, f"id of label {label} of database {db_id}")
            out.append(body.decode())
        return out

    # -- apply (writer thread, inside the log's transaction) -----------------------------------
    def apply(self, txn: lmdb.Transaction[bytes], rec: Record, event: ev.Event) -> None:
        """Fold one event into the catalog and vectors, in the log's transaction (so the store's
        applied LSN moves with the log, record by record)."""
        handler = _APPLY.get(event.type)
        if handler is not None:
            handler(self, txn, rec, event)
        txn.put(b"applied_lsn", rec.lsn.to_bytes(8, "big"), db=self.sys)

    def apply_group(self, entries: list[tuple[Record, ev.Event]]) -> None:
        """Replay: fold ``entries`` (in LSN order, right after ``applied_lsn``) in one write
        transaction of the store's own (see ``jade.engine.replay``)."""

        def body(txn: lmdb.Transaction[bytes]) -> None:
            for rec, event in entries:
                self.apply(txn, rec, event)

        self.env.write(body)

    def _put_db(self, txn: lmdb.Transaction[bytes], db: dict[str, Any]) -> None:
        self._put(txn, db["id"].encode(), pack(db), self.dbs)

    def _db_create(self, txn: lmdb.Transaction[bytes], rec: Record, e: ev.DbCreate) -> None:
        now = ms(rec.ts)
        index = _index_dict(e.index, now)
        db = {
            "id": e.db,
            "name": e.name,
            "description": e.description,
            "dimension": e.dimension,
            "metric": e.metric,
            "index_type": e.index_type,
            "indexes": [index],
            "extra": e.extra,
            "created_at": now,
            "updated_at": now,
            "count": 0,
            "next_label": 0,
            "owner": rec.actor,
        }
        self._put_db(txn, db)

    def _db_update(self, txn: lmdb.Transaction[bytes], rec: Record, e: ev.DbUpdate) -> None:
        db = self.database(e.db, txn)
        if db is None:
            return
        now = ms(rec.ts)
        changes = e.changes.fields()
        if e.changes.indexes is not None:
            # a replaced index list keeps the times the record carries (set by the handler)
            changes["indexes"] = [
                {**_index_dict(i, now), "created_at": i.created_at or now,
                 "updated_at": i.updated_at or now}
                for i in e.changes.indexes
            ]
        db.update(changes)
        db["updated_at"] = now
        self._put_db(txn, db)

    def _db_delete(self, txn: lmdb.Transaction[bytes], rec: Record, e: ev.DbDelete) -> None:
        db_id = e.db
        txn.delete(db_id.encode(), db=self.dbs)
        for sub in (self.vec, self.lbl, self.txt):
            pre = prefix(db_id)
            cur = txn.cursor(db=sub)
            if cur.set_range(pre):
                while cur.key().startswith(pre):
                    if not cur.delete():
                        break

    def _vec_upsert(self, txn: lmdb.Transaction[bytes], rec: Record, e: ev.VecUpsert) -> None:
        db_id = e.db
        db = self.database(db_id, txn)
        if db is None:
            return
        row = db["dimension"] * 4
        values = memoryview(e.values)  # each vector's slice is packed without a copy of its own
        pre = prefix(db_id)
        put, vec, lbl, pack_vec = txn.put, self.vec, self.lbl, self._packer.pack
        added = 0
        for i, (vid, label, md) in enumerate(zip(e.ids, e.labels, e.metadata, strict=True)):
            key = pre + vid.encode()  # vkey, lkey and _put inlined: this loop runs per vector
            value = seal(key, pack_vec([label, values[i * row : (i + 1) * row], md]))
            if put(key, value, db=vec, overwrite=False):  # a new vector (one lookup, not two)
                added += 1
                lbl_key = pre + label.to_bytes(8, "big")
                put(lbl_key, seal(lbl_key, vid.encode()), db=lbl)
            else:
                put(key, value, db=vec)
        db["count"] += added
        if db.get("text_docs"):  # documents given directly of the same ids: replaced
            self._drop_text_docs(txn, db, e.ids)
        db["next_label"] = max(db["next_label"], e.next_label)
        db["updated_at"] = ms(rec.ts)
        self._put_db(txn, db)

    def _vec_delete(self, txn: lmdb.Transaction[bytes], rec: Record, e: ev.VecDelete) -> None:
        db_id = e.db
        db = self.database(db_id, txn)
        if db is None:
            return
        removed = 0
        for vid in e.ids:
            key = vkey(db_id, vid)
            raw = txn.get(key, db=self.vec)
            if raw is None:
                continue
            label = self._vec(db_id, key, raw)[0]  # the event's labels say the same
            txn.delete(key, db=self.vec)
            txn.delete(lkey(db_id, label), db=self.lbl)
            removed += 1
        db["count"] -= removed
        if db.get("text_docs"):
            self._drop_text_docs(txn, db, e.ids)
        db["updated_at"] = ms(rec.ts)
        self._put_db(txn, db)

    def _index_create(self, txn: lmdb.Transaction[bytes], rec: Record, e: ev.IndexCreate) -> None:
        db = self.database(e.db, txn)
        if db is None:
            return
        db["indexes"].append(_index_dict(e.index, ms(rec.ts)))
        self._put_db(txn, db)

    def _index_update(self, txn: lmdb.Transaction[bytes], rec: Record, e: ev.IndexUpdate) -> None:
        db = self.database(e.db, txn)
        if db is None:
            return
        for index in db["indexes"]:
            if index["id"] == e.index_id:
                index["parameters"] = {**index["parameters"], **e.parameters}
                index["updated_at"] = ms(rec.ts)
        self._put_db(txn, db)

    def _index_delete(self, txn: lmdb.Transaction[bytes], rec: Record, e: ev.IndexDelete) -> None:
        db = self.database(e.db, txn)
        if db is None:
            return
        db["indexes"] = [i for i in db["indexes"] if i["id"] != e.index_id]
        self._put_db(txn, db)

    def _system_mode(self, txn: lmdb.Transaction[bytes], rec: Record, e: ev.SystemMode) -> None:
        txn.put(b"mode", e.mode.encode(), db=self.sys)

    def _text_index_set(self, txn: lmdb.Transaction[bytes], rec: Record, e: ev.TextIndexSet
                        ) -> None:
        """The database's text index definition (``jade.text``), kept in its catalog entry so
        the text projection can be rebuilt from the store when the log no longer reaches."""
        db = self.database(e.db, txn)
        if db is None:
            return
        db["text_index"] = {"field": e.field, "tokenizer": e.tokenizer, "lsn": rec.lsn,
                            "created_at": ms(rec.ts)}
        self._put_db(txn, db)

    def _text_docs(self, txn: lmdb.Transaction[bytes], rec: Record, e: ev.TextDocs) -> None:
        """Documents given to the database's text index directly: kept by id (the latest text
        of an id), counted in the catalog entry (``text_docs``)."""
        db = self.database(e.db, txn)
        if db is None:
            return
        pre = prefix(e.db)
        added = 0
        for doc_id, text in zip(e.ids, e.texts, strict=True):
            key = pre + doc_id.encode()
            value = seal(key, pack(text))
            if txn.put(key, value, db=self.txt, overwrite=False):
                added += 1
            else:
                txn.put(key, value, db=self.txt)
        db["text_docs"] = db.get("text_docs", 0) + added
        self._put_db(txn, db)

    def _drop_text_docs(self, txn: lmdb.Transaction[bytes], db: dict[str, Any],
                        ids: list[str]) -> None:
        """A vector write of these ids came after their documents given directly: they go
        (the caller writes ``db``)."""
        pre = prefix(db["id"])
        removed = 0
        for vid in ids:
            if txn.delete(pre + vid.encode(), db=self.txt):
                removed += 1
        db["text_docs"] -= removed

    def _rerank_config(self, txn: lmdb.Transaction[bytes], rec: Record, e: ev.RerankConfigSet
                       ) -> None:
        """The database's reranking configuration (``jade.text.models.rerank_config``), in its
        catalog entry: deleted with the database."""
        db = self.database(e.db, txn)
        if db is None:
            return
        db["rerank"] = e.config()
        self._put_db(txn, db)


def _upgrade_index_v1(index: dict[str, Any]) -> dict[str, Any]:
    """A schema-1 catalog index as the current fold writes it (same key order, parameters
    complete), keeping its times."""
    i = ev.upgrade_index(index)
    return {**_index_dict(i, 0), "created_at": i.created_at, "updated_at": i.updated_at}


def _index_dict(index: ev.IndexDef, now: int) -> dict[str, Any]:
    """An index as the catalog keeps it, created and updated at the record's time."""
    return {
        "id": index.id,
        "name": index.name,
        "requested": index.requested,
        "kind": index.kind,
        "parameters": dict(index.parameters),
        "created_at": now,
        "updated_at": now,
    }


_APPLY: dict[str, Callable[[DataStore, lmdb.Transaction[bytes], Record, Any], None]] = {
    ev.DbCreate.type: DataStore._db_create,
    ev.DbUpdate.type: DataStore._db_update,
    ev.DbDelete.type: DataStore._db_delete,
    ev.VecUpsert.type: DataStore._vec_upsert,
    ev.VecDelete.type: DataStore._vec_delete,
    ev.IndexCreate.type: DataStore._index_create,
    ev.IndexUpdate.type: DataStore._index_update,
    ev.IndexDelete.type: DataStore._index_delete,
    ev.SystemMode.type: DataStore._system_mode,
    ev.RerankConfigSet.type: DataStore._rerank_config,
    ev.TextIndexSet.type: DataStore._text_index_set,
    ev.TextDocs.type: DataStore._text_docs,
}


def serving_index(db: dict[str, Any]) -> dict[str, Any] | None:
    """The index that answers searches: the most recently created one (None → exact scan)."""
    return db["indexes"][-1] if db["indexes"] else None
