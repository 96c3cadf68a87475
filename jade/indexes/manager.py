"""The index projection: one ``LiveDb`` per database, kept in step with the log.

``apply(record)`` is called by the writer thread after each durable commit (and during start-up
replay). Checkpoints save each dirty index with the LSN it covers; start-up loads a checkpoint
and replays only the log records after it, or rebuilds from the vector store when there is no
usable checkpoint (missing, damaged, built with other parameters, or older than the log's first
retained record).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import threading
import time
from typing import Any

import numpy as np

from jade.indexes.live import IndexSpec, LiveDb
from jade.indexes.vector_index import FlatIndex, HnswIndex, VectorIndex
from jade.settings import Settings
from jade.stores.data import DataStore, serving_index
from wal.codec import Record
from wal.files import fsync_path
from wal.log import Log, LogError

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = 1


def spec_of(db: dict[str, Any], settings: Settings) -> IndexSpec:
    idx = serving_index(db)
    if idx is None:
        return IndexSpec("", "flat", 0, 0, 0)
    p = idx.get("parameters", {})
    return IndexSpec(
        idx["id"],
        idx["kind"],
        int(p.get("M", settings.hnsw_m)),
        int(p.get("efConstruction", settings.hnsw_ef_construction)),
        int(p.get("efSearch", settings.hnsw_ef_search)),
    )


class IndexManager:
    def __init__(self, store: DataStore, settings: Settings) -> None:
        self.store = store
        self.settings = settings
        self.dir = settings.index_dir
        self.dbs: dict[str, LiveDb] = {}
        self._lock = threading.Lock()  # checkpoints vs writer-thread applies
        self.last_checkpoint_ts: float | None = None
        self.replayed_on_start = 0
        self.applied_lsn = 0  # every record up to here has been applied to every LiveDb

    def get(self, db_id: str) -> LiveDb | None:
        return self.dbs.get(db_id)

    # -- apply ------------------------------------------------------------------------------
    def apply(self, rec: Record) -> None:
        with self._lock:
            self._apply(rec)
            self.applied_lsn = rec.lsn

    def _apply(self, rec: Record, only: str | None = None) -> None:
        t, b = rec.type, rec.body
        db_id = b.get("db") or b.get("id")
        if only is not None and db_id != only:
            return
        if t == "vec.upsert":
            live = self.dbs.get(db_id)
            if live is None:
                return
            vecs = np.frombuffer(b["values"], dtype="<f4").reshape(len(b["ids"]), live.dim)
            live.upsert(np.asarray(b["labels"], dtype=np.int64), vecs, list(b["metadata"]))
        elif t == "vec.delete":
            live = self.dbs.get(db_id)
            if live is not None:
                live.delete(list(b["labels"]))
        elif t == "db.create":
            db = self.store.database(db_id)
            if db is not None:
                live = LiveDb(
                    db_id,
                    db["dimension"],
                    db["metric"],
                    spec_of(db, self.settings),
                    threads=self.settings.index_threads,
                )
                live.dirty = True  # an empty index is checkpointed too
                self.dbs[db_id] = live
        elif t == "db.delete":
            self.dbs.pop(db_id, None)
            self._remove_checkpoint(db_id)
        elif t in ("db.update", "index.create", "index.update", "index.delete"):
            self._reconcile(db_id)
        else:
            return
        live = self.dbs.get(db_id)
        if live is not None:
            live.covered_lsn = rec.lsn

    def _reconcile(self, db_id: str) -> None:
        """After a catalog change: adopt a new efSearch in place, rebuild on anything else."""
        db = self.store.database(db_id)
        live = self.dbs.get(db_id)
        if db is None or live is None:
            return
        spec = spec_of(db, self.settings)
        if spec.build_key() == live.spec.build_key() and db["dimension"] == live.dim:
            if spec.ef_search != live.spec.ef_search:
                live.index.set_ef(spec.ef_search)
            live.spec = spec
            return
        self.dbs[db_id] = self._rebuild(db)

    def _rebuild(self, db: dict[str, Any]) -> LiveDb:
        spec = spec_of(db, self.settings)
        live = LiveDb(
            db["id"], db["dimension"], db["metric"], spec, threads=self.settings.index_threads
        )
        live.index = live.new_index(spec, capacity=max(1024, db["count"] + 1024))
        for chunk in self.store.scan(db["id"], chunk=8192):
            labels = np.array([v.label for v in chunk], dtype=np.int64)
            data = np.frombuffer(b"".join(v.values for v in chunk), dtype="<f4")
            live.upsert(labels, data.reshape(len(chunk), live.dim), [v.metadata for v in chunk])
        live.dirty = True
        return live

    # -- start-up ---------------------------------------------------------------------------
    def open(self, wal: Log) -> dict[str, Any]:
        """Bring every database's index up to the store's applied LSN. Returns a report."""
        report: dict[str, Any] = {"loaded": 0, "rebuilt": 0, "replayed_records": 0}
        applied = self.store.applied_lsn()
        for db in self.store.databases():
            live = self._load_checkpoint(db, wal, applied)
            if live is None:
                live = self._rebuild(db)
                live.covered_lsn = applied
                report["rebuilt"] += 1
                self.dbs[db["id"]] = live
                continue
            report["loaded"] += 1
            self.dbs[db["id"]] = live
            n = 0
            for rec in wal.iterate(live.covered_lsn, upto=applied, verify=False):
                self._apply(rec, only=db["id"])
                n += 1
            live = self.dbs[db["id"]]
            live.covered_lsn = applied
            live.dirty = n > 0
            report["replayed_records"] += n
        self.replayed_on_start = report["replayed_records"]
        self.applied_lsn = applied
        return report

    def _paths(self, db_id: str) -> tuple[str, str]:
        base = os.path.join(self.dir, db_id)
        return base, os.path.join(base, "index.json")

    def _load_checkpoint(self, db: dict[str, Any], wal: Log, applied: int) -> LiveDb | None:
        base, meta_path = self._paths(db["id"])
        try:
            with open(meta_path) as fh:
                meta = json.load(fh)
        except (OSError, ValueError):
            return None
        spec = spec_of(db, self.settings)
        ok = (
            meta.get("format") == CHECKPOINT_FORMAT
            and meta.get("build_key") == list(spec.build_key())
            and meta.get("dim") == db["dimension"]
            and meta.get("metric") == db["metric"]
            and int(meta.get("lsn", -1)) <= applied
            and int(meta.get("lsn", -1)) + 1 >= wal.first_lsn
        )
        if not ok:
            log.info("index checkpoint of %s not usable; rebuilding", db["id"])
            return None
        path = os.path.join(base, meta["file"])
        try:
            index: VectorIndex
            if spec.kind == "hnsw":
                index = HnswIndex.load(
                    path,
                    db["dimension"],
                    db["metric"],
                    m=spec.m,
                    ef_construction=spec.ef_construction,
                    ef_search=spec.ef_search,
                    threads=self.settings.index_threads,
                )
            else:
                index = FlatIndex.load(path, db["dimension"], db["metric"])
        except Exception as exc:  # a damaged file: never trust it, rebuild instead
            log.warning("index checkpoint of %s unreadable (%s); rebuilding", db["id"], exc)
            return None
        live = LiveDb(
            db["id"],
            db["dimension"],
            db["metric"],
            spec,
            threads=self.settings.index_threads,
            index=index,
        )
        live.covered_lsn = int(meta["lsn"])
        # metadata as of the checkpoint: the store is newer, the tail replay fixes the rest
        for chunk in self.store.scan(db["id"], chunk=8192):
            live.load_metadata([v.label for v in chunk], [v.metadata for v in chunk])
        return live

    # -- checkpoints ------------------------------------------------------------------------
    def checkpoint(self, force: bool = False) -> int:
        """Save every dirty index (all with ``force``). Returns how many were written."""
        n = 0
        with self._lock:
            for db_id, live in list(self.dbs.items()):
                # everything up to applied_lsn is reflected (records of other databases too)
                live.covered_lsn = max(live.covered_lsn, self.applied_lsn)
                if not (live.dirty or force):
                    continue
                self._save(db_id, live)
                live.dirty = False
                n += 1
        self.last_checkpoint_ts = time.time()
        return n

    def _save(self, db_id: str, live: LiveDb) -> None:
        base, meta_path = self._paths(db_id)
        os.makedirs(base, exist_ok=True)
        name = f"{live.index.kind}-{live.covered_lsn}.bin"
        tmp = os.path.join(base, name + ".tmp")
        live.index.save(tmp)
        for suffix in ("", ".deleted.json"):
            if os.path.exists(tmp + suffix):
                fsync_path(tmp + suffix)
                os.replace(tmp + suffix, os.path.join(base, name + suffix))
        meta = {
            "format": CHECKPOINT_FORMAT,
            "lsn": live.covered_lsn,
            "file": name,
            "build_key": list(live.spec.build_key()),
            "dim": live.dim,
            "metric": live.metric,
            "count": len(live),
            "saved_at": time.time(),
        }
        with open(meta_path + ".tmp", "w") as fh:
            json.dump(meta, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(meta_path + ".tmp", meta_path)
        for old in os.listdir(base):
            if old.startswith(("hnsw-", "flat-")) and not old.startswith(name):
                os.remove(os.path.join(base, old))

    def _remove_checkpoint(self, db_id: str) -> None:
        shutil.rmtree(self._paths(db_id)[0], ignore_errors=True)

    def checkpoint_age_seconds(self) -> float | None:
        if self.last_checkpoint_ts is None:
            return None
        return time.time() - self.last_checkpoint_ts



__all__ = ["IndexManager", "LogError", "spec_of"]
