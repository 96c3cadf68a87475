"""The index projection: one ``LiveDb`` per database, kept in step with the log.

``apply(record)`` is called by the writer thread after each durable commit (and during start-up
replay). Checkpoints save each dirty index with the LSN it covers; start-up loads a checkpoint
and replays only the log records after it, or rebuilds from the vector store when there is no
usable checkpoint (missing, damaged, built with other parameters, or older than the log's first
retained record).

A checkpoint of one database is ``<index_dir>/<db id>/index.json`` and the files it names: the
index file and whatever ``VectorIndex.save`` writes beside it (``<file><suffix>``), and the
metadata file ``<file>.metadata.msgpack`` (labels, metadata, inverted terms). All of them or
none: a missing or damaged member makes the whole checkpoint not usable (rebuild).

Locks: ``_lock`` keeps the LiveDbs and ``applied_lsn`` in step (the writer thread's ``apply``
holds it); a checkpoint holds it only to capture a database in memory, then writes the capture
without it. ``_checkpoint_lock``: one checkpoint at a time. ``_files_lock``: switching a
database's ``index.json`` vs removing its directory (``db.delete``); taken inside ``_lock``,
never the other way round.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import threading
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from jade.indexes import checkpoint as ckpt
from jade.indexes.live import IndexSpec, LiveDb
from jade.indexes.vector_index import FlatIndex, HnswIndex, IndexCapture, VectorIndex
from jade.settings import Settings
from jade.stores.data import DataStore, serving_index
from wal.codec import Record
from wal.files import fsync_path, write_atomic
from wal.log import Log, LogError

log = logging.getLogger(__name__)

# 2: the metadata side (``meta``, ``terms``) is part of the checkpoint (``checkpoint.py``)
CHECKPOINT_FORMAT = 2
MD_SUFFIX = ".metadata.msgpack"  # the metadata file: ``<index file><MD_SUFFIX>``
# every name in a checkpoint directory: ``index.json`` (and its ``write_atomic`` tmp file), the
# files of a checkpoint (``<kind>-<lsn>[-k].bin...``, ``_save``)
_CHECKPOINT_NAMES = ("index.json", "index.json.tmp")
_CHECKPOINT_PREFIXES = ("hnsw-", "flat-")


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
        self._lock = threading.Lock()  # the LiveDbs: writer-thread applies vs captures
        self._checkpoint_lock = threading.Lock()  # one checkpoint at a time
        self._files_lock = threading.Lock()  # index.json switches vs directory removal
        self.last_checkpoint_ts: float | None = None
        self.replayed_on_start = 0
        self.applied_lsn = 0  # every record up to here has been applied to every LiveDb
        self._saved: dict[str, dict[str, Any]] = {}  # db id -> its index.json on disk
        self.open_seconds: dict[str, float] = {}  # where ``open`` spent its time

    def get(self, db_id: str) -> LiveDb | None:
        return self.dbs.get(db_id)

    # -- apply ------------------------------------------------------------------------------
    def apply(self, rec: Record) -> None:
        with self._lock:
            self._apply(rec)
            self.applied_lsn = rec.lsn

    def _apply(self, rec: Record, only: str | None = None) -> bool:
        """Apply one record to the LiveDb it concerns (only to ``only``'s when given). Returns
        whether it concerned an index (False: another database's, auth, or unknown)."""
        t, b = rec.type, rec.body
        db_id: str = b.get("db") or b.get("id") or ""
        if only is not None and db_id != only:
            return False
        if t == "vec.upsert":
            live = self.dbs.get(db_id)
            if live is None:
                return False
            vecs = np.frombuffer(b["values"], dtype="<f4").reshape(len(b["ids"]), live.dim)
            live.upsert(np.asarray(b["labels"], dtype=np.int64), vecs, list(b["metadata"]))
        elif t == "vec.delete":
            live = self.dbs.get(db_id)
            if live is None:
                return False
            live.delete(list(b["labels"]))
        elif t == "db.create":
            db = self.store.database(db_id)
            if db is None:
                return False
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
            return False
        live = self.dbs.get(db_id)
        if live is not None:
            live.covered_lsn = rec.lsn
        return True

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
    def open(self, wal: Log, *, remove_orphans: bool = True) -> dict[str, Any]:
        """Bring every database's index up to the store's applied LSN: load its checkpoint and
        replay the log records after it, or rebuild it from the store; with ``remove_orphans``
        (not for a read-only check: ``jade verify``) remove the checkpoint directories of
        databases the store does not have. Returns a report:
        ``loaded``/``rebuilt`` databases and ``replayed_records``, the log records that changed
        an index (each counted once). ``open_seconds`` says where the time went."""
        report: dict[str, Any] = {"loaded": 0, "rebuilt": 0, "replayed_records": 0}
        t0 = time.perf_counter()
        secs = {"index_files": 0.0, "metadata": 0.0, "rebuild": 0.0, "replay": 0.0}
        applied = self.store.applied_lsn()
        loaded: dict[str, int] = {}  # db id -> the LSN its checkpoint covers
        listed = self._listed_dirs()  # before the store is read: see _remove_orphans
        dbs = list(self.store.databases())
        if remove_orphans:
            self._remove_orphans(listed, {db["id"] for db in dbs})
        for db in dbs:
            live = self._load_checkpoint(db, wal, applied, secs)
            if live is None:
                t = time.perf_counter()
                live = self._rebuild(db)
                live.covered_lsn = applied
                secs["rebuild"] += time.perf_counter() - t
                report["rebuilt"] += 1
            else:
                report["loaded"] += 1
                loaded[db["id"]] = live.covered_lsn
            self.dbs[db["id"]] = live
        t = time.perf_counter()
        counts = self._replay(wal, loaded, applied)
        secs["replay"] = time.perf_counter() - t
        for db_id, n in counts.items():
            live = self.dbs[db_id]  # a catalog record in the tail may have replaced it
            live.covered_lsn = applied
            live.dirty = n > 0
            report["replayed_records"] += n
        self.replayed_on_start = report["replayed_records"]
        self.applied_lsn = applied
        secs["total"] = time.perf_counter() - t0
        self.open_seconds = secs
        log.info(
            "indexes ready in %.2fs: %d from checkpoints (index files %.2fs, metadata %.2fs), "
            "%d rebuilt from the store (%.2fs), %d log records replayed (%.2fs)",
            secs["total"],
            report["loaded"],
            secs["index_files"],
            secs["metadata"],
            report["rebuilt"],
            secs["rebuild"],
            report["replayed_records"],
            secs["replay"],
        )
        return report

    def _replay(self, wal: Log, loaded: dict[str, int], applied: int) -> dict[str, int]:
        """One pass over the log tail after the oldest loaded checkpoint, applying each record
        to its own database's index if that checkpoint does not cover it yet. Returns, per
        loaded database, how many records changed its index."""
        counts = dict.fromkeys(loaded, 0)
        if not loaded or min(loaded.values()) >= applied:
            return counts
        for rec in wal.iterate(min(loaded.values()), upto=applied, verify=False):
            db_id: str = rec.body.get("db") or rec.body.get("id") or ""
            covered = loaded.get(db_id)
            if covered is not None and rec.lsn > covered and self._apply(rec, only=db_id):
                counts[db_id] += 1
        return counts

    def _paths(self, db_id: str) -> tuple[str, str]:
        base = os.path.join(self.dir, db_id)
        return base, os.path.join(base, "index.json")

    def _listed_dirs(self) -> list[str]:
        try:
            return [n for n in os.listdir(self.dir) if os.path.isdir(os.path.join(self.dir, n))]
        except FileNotFoundError:
            return []

    def _remove_orphans(self, listed: list[str], known: set[str]) -> None:
        """Remove the checkpoint directories of databases not in the store: left by a crash
        between a ``db.delete`` commit and the removal of its directory, or restored from a
        snapshot that had one. ``listed`` was read before ``known``, so a database created
        meanwhile (by another process reading this directory, e.g. ``jade verify``) cannot be
        taken for an orphan. A directory holding anything but checkpoint files is left alone."""
        for name in listed:
            if name in known:
                continue
            path = os.path.join(self.dir, name)
            try:
                files = os.listdir(path)
            except OSError:
                continue
            if all(f in _CHECKPOINT_NAMES or f.startswith(_CHECKPOINT_PREFIXES) for f in files):
                shutil.rmtree(path, ignore_errors=True)
                log.info(
                    "removed the index checkpoint directory %s (%d files): database %s is not "
                    "in the store",
                    path,
                    len(files),
                    name,
                    extra={"db": name},
                )
            else:
                log.warning(
                    "%s: not a database in the store, but holds files other than a checkpoint's; "
                    "left alone",
                    path,
                    extra={"db": name},
                )

    def _load_checkpoint(
        self, db: dict[str, Any], wal: Log, applied: int, secs: dict[str, float]
    ) -> LiveDb | None:
        """The database's checkpoint as a LiveDb at the LSN it covers, or None when it is not
        usable: missing, of another format or build, not replayable from the retained log, or
        any of its files missing, damaged or disagreeing on the vector count."""
        base, meta_path = self._paths(db["id"])
        try:
            with open(meta_path) as fh:
                meta = json.load(fh)
            md_file = str(meta["metadata"]["file"])
            count = int(meta["count"])
            lsn = int(meta["lsn"])
            ok = int(meta["metadata"]["count"]) == count
        except (OSError, ValueError, KeyError, TypeError):
            ok, meta, lsn = False, {}, -1
        spec = spec_of(db, self.settings)
        ok = (
            ok
            and meta.get("format") == CHECKPOINT_FORMAT
            and meta.get("build_key") == list(spec.build_key())
            and meta.get("dim") == db["dimension"]
            and meta.get("metric") == db["metric"]
            and lsn <= applied
            and lsn + 1 >= wal.first_lsn
        )
        if not ok:
            log.info("index checkpoint of %s not usable; rebuilding", db["id"])
            return None
        path = os.path.join(base, meta["file"])
        try:
            t = time.perf_counter()
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
            t2 = time.perf_counter()
            secs["index_files"] += t2 - t
            if len(index) != count:
                raise ckpt.CheckpointError(f"index file holds {len(index)} vectors, want {count}")
            # metadata as of the checkpoint: the store is newer, the tail replay fixes the rest
            md, terms = ckpt.read_metadata(os.path.join(base, md_file), count)
            secs["metadata"] += time.perf_counter() - t2
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
        live.meta, live.terms = md, terms
        live.covered_lsn = lsn
        self._saved[db["id"]] = meta
        return live

    # -- checkpoints ------------------------------------------------------------------------
    def checkpoint(self, force: bool = False) -> int:
        """Save every dirty index (all with ``force``). Returns how many were written. A clean
        index whose checkpoint is older than ``applied_lsn`` only has its ``index.json`` moved
        forward (nothing of it changed since), so its start-up replay stays short and the log
        may be truncated past its old LSN without forcing a rebuild.

        Writes go on meanwhile: ``_lock``, which the writer thread's ``apply`` needs, is held
        per database only for ``_capture`` (an in-memory copy of the state at its
        ``covered_lsn``); the files are written and fsynced after (``_save``). A database
        deleted or rebuilt meanwhile loses that capture (``_stale``). One checkpoint at a time.
        A failed save raises, and leaves that database dirty and its previous checkpoint as it
        was."""
        n = 0
        with self._checkpoint_lock:
            with self._lock:
                ids = list(self.dbs)
            for db_id in ids:
                with self._lock:
                    live = self.dbs.get(db_id)
                    if live is None:
                        continue  # deleted meanwhile
                    # everything up to applied_lsn is reflected (records of other databases too)
                    live.covered_lsn = lsn = max(live.covered_lsn, self.applied_lsn)
                    cap = None
                    if live.dirty or force or db_id not in self._saved:
                        cap = self._capture(db_id, live)
                        live.dirty = False
                if cap is None:
                    self._advance(db_id, live, lsn)
                    continue
                try:
                    n += self._save(cap)
                except BaseException:
                    live.dirty = True  # not saved: the next checkpoint tries again
                    raise
                finally:
                    with self._lock:
                        live.release_capture()
        self.last_checkpoint_ts = time.time()
        return n

    def _capture(self, db_id: str, live: LiveDb) -> _Capture:
        """Under ``_lock``: the database as of ``live.covered_lsn``. Memory copies only (~50 ms
        per 100k hnsw vectors of dimension 128, see ``HnswIndex.capture``; the metadata side is
        two dict copies, ``LiveDb.capture_metadata``). Also creates the directory: only here,
        under the lock, so a save finishing after a ``db.delete`` cannot bring it back."""
        base = self._paths(db_id)[0]
        os.makedirs(base, exist_ok=True)
        present = set(os.listdir(base))
        kind, lsn = live.index.kind, live.covered_lsn
        name, k = f"{kind}-{lsn}.bin", 0
        while any(f.startswith(name) for f in present):  # never overwrite a live member
            k += 1
            name = f"{kind}-{lsn}-{k}.bin"
        index = live.index.capture()
        meta, terms = live.capture_metadata()  # last: nothing may fail after it (release)
        doc = {
            "format": CHECKPOINT_FORMAT,
            "lsn": lsn,
            "file": name,
            "build_key": list(live.spec.build_key()),
            "dim": live.dim,
            "metric": live.metric,
            "count": len(live),
        }
        return _Capture(db_id, live, name, index, meta, terms, doc)

    def _save(self, cap: _Capture) -> bool:
        """Write a capture as a complete new checkpoint under a name no file has, then switch
        ``index.json`` to it, then remove the old one: a crash at any point leaves one whole
        checkpoint. Runs without ``_lock``. Returns False when the database was deleted or
        rebuilt meanwhile (nothing of this save is left then)."""
        base, meta_path = self._paths(cap.db_id)
        name, tmp = cap.name, cap.name + ".tmp"
        try:
            cap.index.write(os.path.join(base, tmp))
            # the index file and whatever the index wrote beside it (``<tmp><suffix>``)
            for f in os.listdir(base):
                if f.startswith(tmp):
                    fsync_path(os.path.join(base, f))
                    os.replace(os.path.join(base, f), os.path.join(base, name + f[len(tmp) :]))
            md_file = name + MD_SUFFIX
            count = ckpt.write_metadata(os.path.join(base, md_file), cap.meta, cap.terms)
            fsync_path(base)  # the renames are durable before index.json names the files
        except OSError:
            if self._stale(cap):  # its directory went away under the writes
                return False
            raise
        meta = {**cap.doc, "metadata": {"file": md_file, "count": count}, "saved_at": time.time()}
        with self._files_lock:
            current = self.dbs.get(cap.db_id) is cap.live
            if current:
                self._write_json(meta_path, meta)
                self._saved[cap.db_id] = meta
        if not current:
            self._stale(cap)
            return False
        for old in _listdir(base):
            if old.startswith(_CHECKPOINT_PREFIXES) and not old.startswith(name):
                try:
                    os.remove(os.path.join(base, old))
                except FileNotFoundError:
                    pass  # the database was deleted meanwhile
        return True

    def _stale(self, cap: _Capture) -> bool:
        """Whether the database of ``cap`` was deleted or replaced (rebuilt, or deleted and
        created again) since the capture; if so, remove what its save wrote. A deleted
        database's directory is removed (again: a file the save created while ``db.delete``
        removed the directory can keep it); a replaced one keeps its directory and
        ``index.json``, minus this save's files."""
        with self._files_lock:
            live = self.dbs.get(cap.db_id)
            if live is cap.live:
                return False
            base = self._paths(cap.db_id)[0]
            if live is None:
                shutil.rmtree(base, ignore_errors=True)
            else:
                for f in _listdir(base):
                    if f.startswith(cap.name):
                        os.remove(os.path.join(base, f))
        log.info(
            "index checkpoint of %s at LSN %d dropped: the database was %s while it was saved",
            cap.db_id,
            cap.doc["lsn"],
            "deleted" if live is None else "replaced",
            extra={"db": cap.db_id},
        )
        return True

    def _advance(self, db_id: str, live: LiveDb, lsn: int) -> None:
        """Move a clean checkpoint's ``index.json`` to ``lsn`` (same files), unless the database
        was deleted or rebuilt since ``lsn`` was read."""
        with self._files_lock:
            saved = self._saved.get(db_id)
            if saved is None or saved.get("lsn") == lsn or self.dbs.get(db_id) is not live:
                return
            meta = {**saved, "lsn": lsn}
            self._write_json(self._paths(db_id)[1], meta)
            self._saved[db_id] = meta

    @staticmethod
    def _write_json(path: str, doc: dict[str, Any]) -> None:
        write_atomic(path, json.dumps(doc).encode())

    def _remove_checkpoint(self, db_id: str) -> None:
        """Under ``_lock``, after the database left ``dbs``: a save in flight sees that before
        it switches ``index.json`` (``_files_lock``) and drops its files (``_stale``)."""
        with self._files_lock:
            self._saved.pop(db_id, None)
            shutil.rmtree(self._paths(db_id)[0], ignore_errors=True)

    def oldest_checkpoint_lsn(self) -> int | None:
        """The lowest LSN a checkpoint on disk covers (None: there is none). A start-up replays
        the log after each checkpoint's LSN, so log truncation keeps every record after this
        one (``Backups.truncation_limit``); a database without a checkpoint is rebuilt from
        the store and needs no log."""
        with self._files_lock:
            return min((int(m["lsn"]) for m in self._saved.values()), default=None)

    def checkpoint_age_seconds(self) -> float | None:
        if self.last_checkpoint_ts is None:
            return None
        return time.time() - self.last_checkpoint_ts


@dataclass(slots=True)
class _Capture:
    """One database's checkpoint as ``_capture`` took it under the lock, for ``_save``."""

    db_id: str
    live: LiveDb  # the LiveDb captured: if ``dbs`` holds another one now, the capture is stale
    name: str  # the checkpoint's file name, not used in the directory yet
    index: IndexCapture
    meta: dict[int, Any]
    terms: ckpt.Terms
    doc: dict[str, Any]  # its index.json, but for the metadata file and the save time


def _listdir(path: str) -> list[str]:
    try:
        return os.listdir(path)
    except FileNotFoundError:
        return []


__all__ = ["IndexManager", "LogError", "spec_of"]
