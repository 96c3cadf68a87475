"""The index projection: one ``LiveDb`` per database, a fold of the log's events.

Each database's dimension, metric and list of indexes (with their complete parameters) are the
projection's own state, folded from ``db.*`` and ``index.*`` events; ``vec.*`` events are
reshaped with that dimension. Applying never reads the catalog or the settings, so the same
events give the same indexes on the primary, a replica applying hundreds of records as one
group, a restore and a restart, whatever each node's configuration.

Where a fold starts from other than the empty state:
- a checkpoint (``checkpoints.py``), which carries the database's own state at its LSN, then
  the log's records after it (``replay``);
- or, with no usable checkpoint, the vector store: one consistent read of the catalog entry and
  vectors at the store's applied LSN, which is the fold of the same log up to that LSN.
After start-up each database's state is compared with the catalog's; a disagreement is a bug
somewhere, and the database is rebuilt from the store (logged).

With the follower started (``start_follower``; the engine does, unless ``index_lag_max_vectors``
is 0), a group's vector writes are staged (``HnswIndex.stage``: the exact rows, the metadata and
its terms at once) and inserted into the graph by the follower's thread behind the
acknowledgement (``follow.py``); searches stay exact about them. Everything else (start-up's
replay, rebuilds, index changes) folds at once. A fold the follower cannot do is a failed apply
(``fold_failed``), handled as below.

A record that cannot be applied to a database (``apply_group``) marks it failed: it leaves the
projection (searches answer 503 until it is back), ``/health/db`` says so, the failure is
counted and logged, and the database is rebuilt from the store at the LSN of the group that
failed (the writer thread owns the store then: nothing moves it meanwhile). A failed rebuild is
tried again by the next group that touches the database, and every second while the writer is
idle (``repair``).

Locks: ``_lock`` keeps the LiveDbs and ``applied_lsn`` in step (the writer thread's apply holds
it); a checkpoint holds it only to capture a database in memory. ``_checkpoint_lock``: one
checkpoint at a time. ``_files_lock``: switching a database's ``index.json`` vs removing its
directory; taken inside ``_lock``, never the other way round.
"""

from __future__ import annotations

import ctypes
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from jade import events as ev
from jade import faults
from jade.indexes.checkpoints import CheckpointStore
from jade.indexes.follow import Follower
from jade.indexes.live import IndexSpec, LiveDb, spec_of
from jade.stores.data import DataStore
from wal.codec import Record
from wal.log import Log

log = logging.getLogger(__name__)

Entry = tuple[Record, ev.Event]


def catalog_indexes(db: dict[str, Any]) -> list[ev.IndexDef]:
    """A catalog entry's indexes as events describe them (entries written before schema 2 may
    lack parameters: the defaults of the release that wrote them, as ``events.of`` fills)."""
    return [ev.upgrade_index(i) for i in db["indexes"]]


def catalog_spec(db: dict[str, Any]) -> IndexSpec:
    """What a catalog entry's serving index is built with (for answers about it)."""
    indexes = catalog_indexes(db)
    return spec_of(indexes[-1] if indexes else None)


class IndexProjection:
    def __init__(self, store: DataStore, index_dir: str, *, threads: int = 0) -> None:
        self.store = store  # read only to rebuild a database at a known LSN, never in a fold
        self.threads = threads
        self.dbs: dict[str, LiveDb] = {}
        self._lock = threading.Lock()
        self._checkpoint_lock = threading.Lock()
        self._files_lock = threading.Lock()
        self.files = CheckpointStore(index_dir, self.dbs.get, self._files_lock, threads)
        self.applied_lsn = 0  # every record up to here is applied (or its database failed)
        self.failed: dict[str, str] = {}  # db id -> why its index is not served
        self.failures = 0  # records that could not be applied (a metric)
        self.on_failure: list[Callable[[str, str], None]] = []
        self.last_checkpoint_ts: float | None = None
        self.replayed_on_start = 0
        self.open_seconds: dict[str, float] = {}
        self.follower: Follower | None = None
        # the databases that staged vector writes, until seen level (``_behind``)
        self._lagging: dict[int, LiveDb] = {}
        self._lag_lock = threading.Lock()

    def start_follower(self) -> Follower:
        """From now on vector writes are staged and folded by the follower's thread."""
        if self.follower is None:
            self.follower = Follower(self.fold_failed)
        return self.follower

    def stop_follower(self) -> None:
        if self.follower is not None:
            self.follower.stop()
            self.follower = None

    def _behind(self) -> list[tuple[int, tuple[int, float] | None]]:
        """(staged vectors, oldest) of each served database whose graph is behind. Only the
        databases that staged since they were last seen level are looked at (every vector
        write asks: ``Engine.index_room``), not every database; one no longer served (deleted,
        failed, rebuilt) is forgotten: nothing folds its graph again."""
        out = []
        with self._lag_lock:
            for key, live in list(self._lagging.items()):
                n, since = live.index.lag()
                if n == 0 or self.dbs.get(live.db_id) is not live:
                    del self._lagging[key]  # staging adds it again (after the stage)
                else:
                    out.append((n, since))
        return out

    def lag(self) -> tuple[int, float, int]:
        """How far the graphs are behind the applied log: (records, seconds, vectors) since
        the oldest write staged and not folded; (0, 0.0, 0) when level."""
        vectors, oldest = 0, None
        for n, since in self._behind():
            vectors += n
            if since is not None and (oldest is None or since[1] < oldest[1]):
                oldest = since
        if oldest is None:
            return 0, 0.0, vectors
        return (max(1, self.applied_lsn - oldest[0] + 1),
                max(0.0, time.monotonic() - oldest[1]), vectors)

    def lag_vectors(self) -> int:
        return sum(n for n, _ in self._behind())

    def fold_failed(self, live: LiveDb, exc: Exception) -> None:
        """The follower could not fold ``live``'s staged writes into its graph: the database
        is taken out of service and rebuilt from the store by the writer (``repair``)."""
        why = f"index insertion failed: {type(exc).__name__}: {exc}"
        with self._lock:
            if self.dbs.get(live.db_id) is live:
                self._failed(live.db_id, why)

    def get(self, db_id: str) -> LiveDb | None:
        return self.dbs.get(db_id)

    @property
    def checkpoints_damaged(self) -> int:
        """Checkpoints not loaded because a file was missing or damaged (a metric)."""
        return self.files.damaged

    # -- the fold ---------------------------------------------------------------------------
    def apply_group(self, entries: list[Entry]) -> None:
        """Fold a committed group. Never raises: a database whose record fails is taken out
        and rebuilt (see the module doc)."""
        staged: dict[int, LiveDb] = {}
        with self._lock:
            broken: dict[str, str] = {}
            for rec, event in entries:
                db_id = event.db_id
                if not event.touches_index or db_id is None or db_id in broken:
                    continue
                if db_id in self.failed and db_id not in broken:
                    broken[db_id] = self.failed[db_id]  # its rebuild covers this group
                    continue
                try:
                    live = self._fold(rec, event, stage=self.follower is not None)
                except Exception as exc:
                    why = f"LSN {rec.lsn} ({rec.type}): {type(exc).__name__}: {exc}"
                    broken[db_id] = why
                    self._failed(db_id, why)
                    continue
                if live is not None and isinstance(event, (ev.VecUpsert, ev.VecDelete)):
                    staged[id(live)] = live
            if entries:
                self.applied_lsn = entries[-1][0].lsn
            for db_id in broken:
                self._repair(db_id)
        if staged and self.follower is not None:
            with self._lag_lock:  # after the stage: see ``_behind``
                self._lagging.update(staged)
            self.follower.kick(staged.values())

    def _fold(self, rec: Record, e: ev.Event, *, stage: bool = False) -> LiveDb | None:
        """Apply one record; with ``stage``, vector writes are staged for the follower. Returns
        the database's LiveDb after it (None: deleted or not held)."""
        faults.hit("index.apply")
        db_id = e.db_id
        assert db_id is not None
        if isinstance(e, ev.DbCreate):
            live = LiveDb(db_id, e.dimension, e.metric, spec_of(e.index), threads=self.threads,
                          indexes=[e.index])
            live.dirty = True  # an empty index is checkpointed too
            self.dbs[db_id] = live
        elif isinstance(e, ev.DbDelete):
            self.dbs.pop(db_id, None)
            self.failed.pop(db_id, None)
            self.files.remove(db_id)
            return None
        else:
            held = self.dbs.get(db_id)
            if held is None:
                return None  # a database this projection does not hold (deleted later in a replay)
            live = held
            if isinstance(e, ev.VecUpsert):
                n = len(e.ids)
                if len(e.values) != n * live.dim * 4:
                    raise ev.EventError(f"{n} vectors of {len(e.values)} bytes do not have the "
                                        f"database's dimension {live.dim}")
                vecs = np.frombuffer(e.values, dtype="<f4").reshape(n, live.dim)
                live.upsert(np.asarray(e.labels, dtype=np.int64), vecs, list(e.metadata),
                            rec.lsn if stage else None)
            elif isinstance(e, ev.VecDelete):
                live.delete(list(e.labels), rec.lsn if stage else None)
            elif isinstance(e, ev.DbUpdate):
                live = self._db_update(live, e)
            elif isinstance(e, ev.IndexCreate):
                live = self._reindex(live, [*live.indexes, e.index])
            elif isinstance(e, ev.IndexUpdate):
                live = self._reindex(live, [
                    _with_params(i, e.parameters) if i.id == e.index_id else i
                    for i in live.indexes
                ])
            elif isinstance(e, ev.IndexDelete):
                live = self._reindex(live, [i for i in live.indexes if i.id != e.index_id])
        live.covered_lsn = rec.lsn
        return live

    def _db_update(self, live: LiveDb, e: ev.DbUpdate) -> LiveDb:
        indexes = e.changes.indexes if e.changes.indexes is not None else live.indexes
        dim = e.changes.dimension
        if dim is not None and dim != live.dim:
            if len(live):
                # decide refuses this on a non-empty database; a log saying otherwise
                # leaves vectors of the old dimension in the store that no index can hold
                log.error("db.update of %s changes the dimension %d -> %d with %d vectors "
                          "indexed; they are dropped from the index", live.db_id, live.dim,
                          dim, len(live), extra={"db": live.db_id})
            new = LiveDb(live.db_id, dim, live.metric, spec_of(indexes[-1] if indexes else None),
                         threads=self.threads, indexes=indexes)
            new.dirty = True
            self.dbs[live.db_id] = new
            return new
        return self._reindex(live, indexes)

    def _reindex(self, live: LiveDb, indexes: list[ev.IndexDef]) -> LiveDb:
        """Adopt a new list of indexes: a new efSearch in place, a rebuild from the
        projection's own vectors on anything else that changes the serving index. A change in
        place (efSearch, or an index that does not serve: updated or deleted) makes the
        database dirty: a checkpoint's ``index.json`` carries the list, and a clean database's
        checkpoint is only moved forward (``advance``), which would carry the old list to the
        new LSN (a restart then holds an index the catalog deleted, which serves once the
        indexes after it are deleted)."""
        spec = spec_of(indexes[-1] if indexes else None)
        if spec.build_key() == live.spec.build_key():
            if spec.ef_search != live.spec.ef_search:
                live.index.set_ef(spec.ef_search)
            if spec != live.spec or list(indexes) != live.indexes:
                live.dirty = True
            live.spec, live.indexes = spec, list(indexes)
            return live
        new = live.rebuilt(indexes)
        self.dbs[live.db_id] = new
        return new

    # -- failure and repair -----------------------------------------------------------------
    def _failed(self, db_id: str, why: str) -> None:
        self.failures += 1
        self.failed[db_id] = why
        self.dbs.pop(db_id, None)  # never serve a diverged index: searches answer 503
        log.error("index of %s could not apply a committed record (%s); it is not served "
                  "until it is rebuilt", db_id, why, extra={"db": db_id})
        for fn in self.on_failure:
            try:
                fn(db_id, why)
            except Exception:
                log.exception("index failure observer failed")

    def _repair(self, db_id: str) -> bool:
        """Under ``_lock``, on the writer thread: rebuild ``db_id`` from the store, which is
        at ``applied_lsn`` here."""
        try:
            faults.hit("index.rebuild")
            db = self.store.database(db_id)
            if db is None:  # deleted later in the same group
                self.failed.pop(db_id, None)
                return True
            live = self._rebuild(db)
            live.covered_lsn = self.applied_lsn
        except Exception as exc:
            why = f"rebuild failed: {type(exc).__name__}: {exc}"
            self.failed[db_id] = why
            log.error("index of %s: %s; not served, tried again shortly", db_id, why,
                      extra={"db": db_id})
            return False
        self.dbs[db_id] = live
        self.failed.pop(db_id, None)
        log.warning("index of %s rebuilt from the store at LSN %d (%d vectors) after a failed "
                    "apply", db_id, self.applied_lsn, len(live), extra={"db": db_id})
        return True

    def mark_failed(self, db_ids: set[str], why: str) -> None:
        """Take ``db_ids`` out of service as failed (rebuilt by ``repair``); for a failure the
        fold itself could not contain."""
        with self._lock:
            for db_id in db_ids:
                if db_id in self.dbs or db_id in self.failed:
                    self._failed(db_id, why)

    def repair(self) -> int:
        """Try to rebuild every failed database. Called by the writer thread while idle (every
        second while one is failed): the store is at ``applied_lsn`` then."""
        with self._lock:
            return sum(self._repair(db_id) for db_id in list(self.failed))

    def _rebuild(self, db: dict[str, Any]) -> LiveDb:
        indexes = catalog_indexes(db)
        spec = spec_of(indexes[-1] if indexes else None)
        live = LiveDb(db["id"], db["dimension"], db["metric"], spec, threads=self.threads,
                      indexes=indexes)
        live.index = live.new_index(spec, capacity=max(1024, db["count"] + 1024))
        for chunk in self.store.scan(db["id"], chunk=8192):
            labels = np.array([v.label for v in chunk], dtype=np.int64)
            data = np.frombuffer(b"".join(v.values for v in chunk), dtype="<f4")
            live.upsert(labels, data.reshape(len(chunk), live.dim), [v.metadata for v in chunk])
        live.dirty = True
        return live

    # -- start-up ---------------------------------------------------------------------------
    def open(self, wal: Log, *, remove_orphans: bool = True) -> dict[str, Any]:
        """Bring every database's index to the store's applied LSN: its checkpoint plus the
        log after it, or a rebuild from the store. With ``remove_orphans`` (not for a read-only
        check: ``jade verify``) remove the checkpoint directories of databases the store does
        not have. Returns ``loaded``/``rebuilt`` databases and ``replayed_records``."""
        from jade.engine.replay import replay  # the one replay function

        report: dict[str, Any] = {"loaded": 0, "rebuilt": 0, "replayed_records": 0}
        t0 = time.perf_counter()
        secs = {"index_files": 0.0, "metadata": 0.0, "rebuild": 0.0, "replay": 0.0}
        applied = self.store.applied_lsn()
        listed = self.files.listed_dirs()  # before the store is read: see remove_orphans
        catalog = {db["id"]: db for db in self.store.databases()}
        if remove_orphans:
            self.files.remove_orphans(listed, set(catalog))
            self.files.sweep([d for d in listed if d in catalog])
        loaded: dict[str, int] = {}
        for db_id in catalog:
            live = self.files.load(db_id, wal.first_lsn, applied, secs)
            if live is not None:
                self.dbs[db_id] = live
                loaded[db_id] = live.covered_lsn
        tail = _Tail(self, loaded)
        t = time.perf_counter()
        if loaded and min(loaded.values()) < applied:
            replay(wal, tail, after=min(loaded.values()), upto=applied, verify=False)
        secs["replay"] = time.perf_counter() - t
        for db_id, db in catalog.items():
            live = self.dbs.get(db_id)
            why = tail.broken.get(db_id) or (_disagrees(live, db) if live is not None
                                               else "no checkpoint")
            if why:
                if live is not None:
                    log.warning("index of %s: %s; rebuilding from the store", db_id, why,
                                extra={"db": db_id})
                t = time.perf_counter()
                live = self._rebuild(db)
                secs["rebuild"] += time.perf_counter() - t
                report["rebuilt"] += 1
            else:
                assert live is not None
                report["loaded"] += 1
                live.dirty = tail.counts.get(db_id, 0) > 0
            live.covered_lsn = applied
            self.dbs[db_id] = live
        for db_id in set(self.dbs) - set(catalog):
            self.dbs.pop(db_id)  # created and deleted in the tail
        report["replayed_records"] = sum(tail.counts.values())
        self.replayed_on_start = report["replayed_records"]
        self.applied_lsn = applied
        _give_back_freed_memory()
        secs["total"] = time.perf_counter() - t0
        self.open_seconds = secs
        log.info(
            "indexes ready in %.2fs: %d from checkpoints (index files %.2fs, metadata %.2fs), "
            "%d rebuilt from the store (%.2fs), %d log records replayed (%.2fs)",
            secs["total"], report["loaded"], secs["index_files"], secs["metadata"],
            report["rebuilt"], secs["rebuild"], report["replayed_records"], secs["replay"],
        )
        return report

    # -- checkpoints ------------------------------------------------------------------------
    def checkpoint(self, force: bool = False) -> int:
        """Save every dirty index (all with ``force``). Returns how many were written. A clean
        index whose checkpoint is older than ``applied_lsn`` only has its ``index.json`` moved
        forward. Writes go on meanwhile: ``_lock`` is held per database only for the in-memory
        capture; the files are written after. A failed save raises, and leaves that database
        dirty and its previous checkpoint as it was."""
        n = 0
        with self._checkpoint_lock:
            with self._lock:
                ids = list(self.dbs)
            for db_id in ids:
                early = self.dbs.get(db_id)
                if early is not None:  # most of the graph's lag folded while writes go on
                    try:
                        early.index.fold()
                    except Exception as exc:
                        self.fold_failed(early, exc)
                with self._lock:
                    live = self.dbs.get(db_id)
                    if live is None:
                        continue  # deleted (or failed) meanwhile
                    live.covered_lsn = lsn = max(live.covered_lsn, self.applied_lsn)
                    cap = None
                    if live.dirty or force or db_id not in self.files.saved:
                        cap = self.files.capture(db_id, live)
                        live.dirty = False
                if cap is None:
                    self.files.advance(db_id, live, lsn)
                    continue
                try:
                    n += self.files.save(cap)
                except BaseException:
                    live.dirty = True  # not saved: the next checkpoint tries again
                    raise
                finally:
                    with self._lock:
                        live.release_capture()
        self.last_checkpoint_ts = time.time()
        return n

    def oldest_checkpoint_lsn(self) -> int | None:
        """The lowest LSN a checkpoint on disk covers (None: there is none). A start-up replays
        the log after each checkpoint's LSN, so log truncation keeps every record after it."""
        return self.files.oldest_lsn()

    def checkpoint_age_seconds(self) -> float | None:
        if self.last_checkpoint_ts is None:
            return None
        return time.time() - self.last_checkpoint_ts


class _Tail:
    """The replay target of a start-up: each record goes to its own database's index if that
    database was loaded from a checkpoint that does not cover it yet."""

    def __init__(self, proj: IndexProjection, loaded: dict[str, int]) -> None:
        self.proj = proj
        self.loaded = loaded
        self.counts: dict[str, int] = dict.fromkeys(loaded, 0)
        self.broken: dict[str, str] = {}
        self.lsn = min(loaded.values(), default=0)

    def applied_lsn(self) -> int:
        return self.lsn

    def apply_group(self, entries: list[Entry]) -> None:
        for rec, event in entries:
            db_id = event.db_id
            covered = self.loaded.get(db_id or "")
            if (covered is None or rec.lsn <= covered or not event.touches_index
                    or db_id in self.broken):
                continue
            try:
                self.proj._fold(rec, event)
                self.counts[db_id] += 1  # type: ignore[index]
            except Exception as exc:
                self.broken[db_id] = f"LSN {rec.lsn} ({rec.type}) failed: {exc}"  # type: ignore[index]
        if entries:
            self.lsn = entries[-1][0].lsn


def _give_back_freed_memory() -> None:
    """Return to the system the heap pages the start-up's temporaries freed (file bodies,
    decoding, rebuild batches): glibc keeps them otherwise, ~90 bytes a vector at 200k
    (bench/restart.py). No-op where the C library has no ``malloc_trim``."""
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _disagrees(live: LiveDb, db: dict[str, Any]) -> str:
    """Why the folded state of a database differs from the catalog's ('' if it does not)."""
    spec = catalog_spec(db)
    if live.dim != db["dimension"] or live.metric != db["metric"]:
        return (f"folded dimension/metric {live.dim}/{live.metric} differ from the catalog's "
                f"{db['dimension']}/{db['metric']}")
    if spec != live.spec:
        return f"folded index {live.spec} differs from the catalog's {spec}"
    if len(live) != db["count"]:
        return f"{len(live)} vectors folded, the catalog counts {db['count']}"
    return ""


def _with_params(index: ev.IndexDef, params: dict[str, int]) -> ev.IndexDef:
    return ev.IndexDef(id=index.id, kind=index.kind, requested=index.requested, name=index.name,
                       parameters={**index.parameters, **params},
                       created_at=index.created_at, updated_at=index.updated_at)
