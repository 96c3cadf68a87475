"""The text projection: every database's BM25 index (``bm25.py``), a fold of the log.

Records that reach it (the writer's group after its commit, start-up's replay, a replica's
stream and a restore, which all apply through the same ``apply_group``):
  - ``text.index.set``  the database's index is (re)defined over ``metadata[field]``: new empty
                        tables, and a build that fills them from the store (below);
  - ``text.docs``       documents given directly (``/bm25-index/documents``);
  - ``vec.upsert``      each vector's document is its ``metadata[field]`` text; a vector
                        without that text has none (a document of the same id given
                        directly is replaced too: the latest write of an id decides);
  - ``vec.delete``      the vectors' documents go;
  - ``db.delete``       the database's index goes.

The build. An index is filled from the data store (``jade.stores.data``: the fold of the same
log, which keeps both the vectors and the documents given directly, ``txt``), in id order, a
bounded step at a time (``build_step``: at most ``STEP_DOCS`` ids or ``STEP_SECONDS``), so a
large build never holds the writer for its length. The build's cursor is the last id it has
indexed; it is committed with the step's documents and the applied LSN in one SQLite
transaction. While an index builds, a record's id at or before the cursor is applied as
usual and an id after it is skipped: the build reads that id later, from the store, with the
value of the latest record that wrote it (the store is the fold of the log to an LSN at least
the projection's), and every record after that read is applied because the id is then behind
the cursor. So every id ends with the document of the last record that wrote it, whichever
steps the build was cut into and at whichever LSN each read the store: the index a build
reaches is the same on the primary, on a replica, after a replay and after a rebuild from the
store. For an id with both a vector and a document given directly in the store, the document
wins (the store drops it when a vector write of the id comes later).

The writer runs a step after each group and, while a build is unfinished, keeps running
longer steps when idle, each cut short after its current ``READ_CHUNK`` as soon as a write
is waiting (``jade.engine.commit.Writer``); a start-up finishes unfinished builds before the
server serves (``open``). Searches meanwhile answer from what is built (``building``).

Durability: the file records the LSN it has applied in the same SQLite transaction as the
changes (``Bm25File.commit``); groups that hold nothing for it only move the LSN in memory,
written by ``checkpoint`` (scheduled, and at close). On open it replays the log after its LSN
up to the store's; when the log no longer reaches back there (truncated), or the file is not
usable, it is rebuilt from the store: every database whose catalog entry names a text index
gets its index defined again and built from the store's vectors and documents.

A group that cannot be applied (a bug, a full disk) is rolled back; the projection is then
``behind`` (text searches answer 503) and the next group first replays what it missed from
the log.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from jade import events as ev
from jade import faults
from jade.stores.data import DataStore
from jade.text.bm25 import (
    FORMAT,
    NO_LABEL,
    SRC_DOC,
    SRC_VECTOR,
    TOKENIZERS,
    Bm25File,
    Hit,
    IndexDef,
)
from wal.codec import Record
from wal.log import Log

Entry = tuple[Record, ev.Event]

log = logging.getLogger(__name__)

FILE = "bm25.sqlite"
STEP_DOCS = 2000  # ids a build step indexes at most ...
STEP_SECONDS = 0.02  # ... and about how long it runs (the writer's other work waits for it)
IDLE_STEP_DOCS = 50_000  # a step while the writer is idle, cut short when a write comes
IDLE_STEP_SECONDS = 0.25
READ_CHUNK = 256  # ids read from the store at a time within a step (a waiting write waits
#                   at most one of these: a few milliseconds)


def text_of(metadata: Any, field_name: str) -> str | None:
    """The text a vector's metadata gives its document (None: no document)."""
    if not isinstance(metadata, dict):
        return None
    value = metadata.get(field_name)
    if isinstance(value, str):
        return value or None
    if isinstance(value, list):
        joined = " ".join(v for v in value if isinstance(v, str))
        return joined or None
    return None


@dataclass(slots=True)
class Build:
    """A database's index build: ``cursor`` the last id indexed ("" before the first; None:
    built), ``processed`` the ids it has passed. Both are in the file with the documents."""

    cursor: str | None = ""
    processed: int = 0
    started: float = field(default_factory=time.monotonic)  # this process's (not stored)
    seconds: float | None = None  # the build's length, when this process saw it all

    @property
    def done(self) -> bool:
        return self.cursor is None

    def behind(self, doc_id: str) -> bool:
        """Whether a record of ``doc_id`` is applied now (else the build reads it later).
        Python orders strings by code point, as the store orders their UTF-8 keys."""
        return self.cursor is None or doc_id <= self.cursor


class TextProjection:
    def __init__(self, store: DataStore, directory: str) -> None:
        self.store = store  # read by the builds only
        self.dir = directory
        self.path = os.path.join(directory, FILE)
        self.file: Bm25File | None = None
        self.defs: dict[str, IndexDef] = {}  # the fold's own state (the writer's)
        # what searches use: ``defs`` as of the file's last commit (new tables are not
        # visible to other connections before it)
        self.visible: dict[str, IndexDef] = {}
        self.builds: dict[str, Build] = {}  # every index's build (cursor None: built)
        self.applied = 0  # in memory: every record up to here is folded
        self.applied_sum = b""  # the checksum of the record at ``applied``
        self.behind: str | None = None  # why the projection is behind the log (None: level)
        self.failures = 0
        self.replayed_on_start = 0
        self.rebuilt_on_start = False
        self.built_on_start = 0  # ids indexed by the builds a start-up finished
        self._log: Log | None = None
        self._retry_at = 0.0  # a build step that failed is tried again from then
        self._stepping = False  # a build step is running (its commit not visible yet)
        self._lock = threading.RLock()  # the writer's file connection, ``defs``, ``builds``

    # -- life cycle -------------------------------------------------------------------------
    def open(self, wal: Log) -> dict[str, Any]:
        """Bring the file to the store's applied LSN: replay of the log after its own LSN, or
        a rebuild from the store when the log does not reach back there; then finish every
        unfinished build (nothing is served before this returns)."""
        from jade.engine.replay import replay  # the one replay function (jade.engine imports us)

        self._log = wal
        t0 = time.perf_counter()
        target = self.store.applied_lsn()
        f = self._open_file()
        own, own_sum = f.applied_lsn(), f.applied_checksum()
        why = ""
        if own > target:
            why = f"it is at LSN {own}, ahead of the store ({target})"
        elif own and own >= wal.first_lsn:
            rec = wal.get(own)
            if rec is None or rec.checksum != own_sum:
                why = f"its LSN {own} is of another history than this log's (a re-seed)"
        if why:
            log.warning("text index file %s not usable (%s); starting it again", self.path, why)
            self._reset()
            own = 0
        if own + 1 < wal.first_lsn and own < target:
            log.warning("text index file %s is at LSN %d, the log starts at %d: rebuilding "
                        "from the store", self.path, own, wal.first_lsn)
            self._reset()
            self._rebuild_from_store(target, self._checksum(target))
            self.rebuilt_on_start = True
        else:
            self.applied, self.applied_sum = own, own_sum
            self.replayed_on_start = replay(wal, _Fold(self), upto=target)
        if self.applied < target:
            self.applied, self.applied_sum = target, self._checksum(target)
        pending = [db for db, b in self.builds.items() if not b.done]
        self.built_on_start = self.finish_builds()
        report = {"databases": len(self.defs), "replayed_records": self.replayed_on_start,
                  "rebuilt": self.rebuilt_on_start, "builds_finished": len(pending),
                  "seconds": round(time.perf_counter() - t0, 3)}
        log.info("text indexes ready: %s", report)
        return report

    def _open_file(self) -> Bm25File:
        os.makedirs(self.dir, exist_ok=True)
        try:
            f = Bm25File(self.path)
            if f.format() != FORMAT:
                f.close()
                raise ValueError(f"format {f.format()}, this release writes {FORMAT}")
            self._load(f)
        except Exception as exc:  # damaged: the log (or the store) has it all
            log.warning("text index file %s not usable (%s); starting it again", self.path, exc)
            self._remove_files()
            f = Bm25File(self.path)
            self.defs, self.visible, self.builds = {}, {}, {}
        self.file = f
        return f

    def _load(self, f: Bm25File) -> None:
        """``defs`` and ``builds`` as the file holds them."""
        self.defs = f.indexes()
        self.visible = dict(self.defs)
        old = self.builds
        self.builds = {}
        for db, (cursor, processed) in f.cursors().items():
            b = old.get(db)
            if b is not None and b.cursor == cursor:
                self.builds[db] = b  # the same build (its start time kept)
            else:
                self.builds[db] = Build(cursor, processed)

    def _remove_files(self) -> None:
        for suffix in ("", "-wal", "-shm"):
            try:
                os.remove(self.path + suffix)
            except FileNotFoundError:
                pass

    def _reset(self) -> None:
        assert self.file is not None
        self.file.close()
        self._remove_files()
        self.file = Bm25File(self.path)
        self.defs, self.visible, self.builds = {}, {}, {}
        self.applied, self.applied_sum = 0, b""

    def _checksum(self, lsn: int) -> bytes:
        rec = self._log.get(lsn) if self._log is not None and lsn else None
        return rec.checksum if rec is not None else b""

    def _rebuild_from_store(self, lsn: int, checksum: bytes) -> None:
        """Every index the catalog names defined again at ``lsn``, empty, its build to run
        (``finish_builds``): the store holds its vectors and its documents given directly."""
        f = self.file
        assert f is not None
        f.begin()
        try:
            for db in self.store.databases():
                spec = db.get("text_index")
                if spec is None:
                    continue
                self._define(db["id"], str(spec["field"]), str(spec["tokenizer"]),
                             int(spec["lsn"]))
            f.commit(lsn, checksum)
        except BaseException:
            f.rollback()
            raise
        self.applied, self.applied_sum = lsn, checksum
        self.visible = dict(self.defs)
        log.warning("text indexes defined again from the store at LSN %d (%d databases); "
                    "their builds follow", lsn, len(self.defs))

    def close(self, checkpoint: bool = True) -> None:
        with self._lock:
            if self.file is None:
                return
            if checkpoint:
                try:
                    self.checkpoint()
                except Exception as exc:
                    log.warning("text index checkpoint at stop failed (%s)", exc)
            self.file.close()
            self.file = None

    def applied_lsn(self) -> int:
        return self.applied

    def checkpoint(self) -> int:
        """Record the LSN reached in memory (groups with nothing for the text indexes) and
        fold SQLite's write-ahead file into the database file. Returns the LSN recorded."""
        with self._lock:
            f = self.file
            if f is None or self.behind is not None:
                return f.applied_lsn() if f is not None else 0
            if f.applied_lsn() < self.applied:
                f.set_applied(self.applied, self.applied_sum)
            f.wal_checkpoint()
            return self.applied

    def settle(self) -> int:
        """Make the file's recorded LSN the one reached in memory (the records since its last
        commit held nothing for it) and return it: the log before it is no longer needed here.
        The writer calls it before a truncation, which keeps every record after it (a start-up
        replays them)."""
        with self._lock:
            f = self.file
            if f is None:
                return self.applied
            if self.behind is None and f.applied_lsn() < self.applied:
                f.set_applied(self.applied, self.applied_sum)
            return f.applied_lsn()

    # -- the fold ---------------------------------------------------------------------------
    def apply_group(self, entries: list[Entry]) -> None:
        """Fold a committed group (the writer thread). Never raises: a group that fails is
        rolled back and the projection is behind until a later group catches it up."""
        if not entries:
            return
        with self._lock:
            if self.file is None:
                return
            if self.behind is not None:
                self._catch_up(entries[-1][0].lsn)
                return
            try:
                self._apply(entries)
            except Exception as exc:
                self.failures += 1
                self.behind = f"LSN {entries[0][0].lsn}-{entries[-1][0].lsn}: " \
                              f"{type(exc).__name__}: {exc}"
                log.exception("text indexes could not apply a committed group; text searches "
                              "answer 503 until they catch up from the log")

    def repair(self) -> None:
        """Catch up with the log while the writer is idle (a projection behind is otherwise
        caught up only by the next group): the writer thread, like the index projection's."""
        with self._lock:
            if self.file is not None and self.behind is not None and self._log is not None:
                self._catch_up(self._log.last_lsn)

    def _catch_up(self, upto: int) -> None:
        from jade.engine.replay import replay

        assert self._log is not None
        try:
            replay(self._log, _Fold(self), upto=upto)
        except Exception as exc:
            self.behind = f"catching up failed: {type(exc).__name__}: {exc}"
            return
        log.warning("text indexes caught up with the log at LSN %d", upto)
        self.behind = None

    def _apply(self, entries: list[Entry]) -> None:
        """Fold ``entries`` after ``applied`` in one transaction; raises (rolled back)."""
        faults.hit("text.apply")
        todo = [(r, e) for r, e in entries if r.lsn > self.applied and self._concerns(e)]
        last, last_sum = entries[-1][0].lsn, entries[-1][0].checksum
        if last <= self.applied:
            return
        if not todo:
            self.applied, self.applied_sum = last, last_sum
            return
        f = self.file
        assert f is not None
        f.begin()
        try:
            for rec, event in todo:
                self._fold(rec.lsn, event)
            f.commit(last, last_sum)
        except BaseException:
            f.rollback()
            self._load(f)  # what the file holds: the fold's changes are undone
            raise
        finally:
            self.visible = dict(self.defs)
        self.applied, self.applied_sum = last, last_sum

    def _concerns(self, e: ev.Event) -> bool:
        if isinstance(e, (ev.TextIndexSet, ev.TextDocs)):
            return True
        if isinstance(e, (ev.VecUpsert, ev.VecDelete, ev.DbDelete)):
            return e.db in self.defs
        return False

    def _fold(self, lsn: int, e: ev.Event) -> None:
        f = self.file
        assert f is not None
        if isinstance(e, ev.VecUpsert):
            d = self.defs.get(e.db)
            if d is None:
                return
            b = self.builds[e.db]
            for vid, label, md in zip(e.ids, e.labels, e.metadata, strict=True):
                if not b.behind(vid):
                    continue  # the build reads it from the store later
                text = text_of(md, d.field)
                if text is None:
                    f.delete(d.k, vid)
                else:
                    f.upsert(d.k, vid, text, label, SRC_VECTOR)
        elif isinstance(e, ev.VecDelete):
            d = self.defs.get(e.db)
            if d is not None:
                b = self.builds[e.db]
                for vid in e.ids:
                    if b.behind(vid):
                        f.delete(d.k, vid)
        elif isinstance(e, ev.TextDocs):
            d = self.defs.get(e.db)
            if d is not None:
                b = self.builds[e.db]
                for doc_id, text in zip(e.ids, e.texts, strict=True):
                    if b.behind(doc_id):
                        f.upsert(d.k, doc_id, text, NO_LABEL, SRC_DOC)
        elif isinstance(e, ev.TextIndexSet):
            if e.tokenizer not in TOKENIZERS:
                raise ev.EventError(f"LSN {lsn}: tokenizer {e.tokenizer!r} is not one this "
                                    f"release indexes with ({sorted(TOKENIZERS)})")
            self._define(e.db, e.field, e.tokenizer, lsn)
        elif isinstance(e, ev.DbDelete):
            d = self.defs.pop(e.db, None)
            if d is not None:
                f.drop_index(e.db, d.k)
            self.builds.pop(e.db, None)

    def _define(self, db_id: str, field_name: str, tokenizer: str, lsn: int) -> None:
        """(Re)define ``db_id``'s index: new empty tables, its build from the first id."""
        f = self.file
        assert f is not None
        old = self.defs.pop(db_id, None)
        if old is not None:
            f.drop_index(db_id, old.k)
        self.defs[db_id] = f.create_index(db_id, field_name, tokenizer, lsn)
        self.builds[db_id] = Build()

    # -- the builds -------------------------------------------------------------------------
    def building(self, db_id: str | None = None) -> bool:
        """Whether ``db_id``'s index (any index: None) is still being built."""
        if self._stepping:  # a step's cursors may say done before its commit is visible
            return True
        if db_id is not None:
            b = self.builds.get(db_id)
            return b is not None and not b.done
        return any(not b.done for b in list(self.builds.values()))

    def wants_step(self) -> bool:
        """Whether the writer should run ``build_step`` now (an unfinished build, the
        projection level, no step failed in the last second)."""
        return (self.file is not None and self.behind is None
                and time.monotonic() >= self._retry_at and self.building())

    def build_step(self, seconds: float = STEP_SECONDS, docs: int = STEP_DOCS,
                   interrupt: Callable[[], bool] | None = None) -> int:
        """Index the next ids of the unfinished builds, at most ``docs`` of them or about
        ``seconds`` long, and no more than ``READ_CHUNK`` once ``interrupt`` says so (writes
        are waiting), in one transaction with the cursors (the writer thread, between groups:
        the store is then at the projection's LSN). Returns the ids passed."""
        with self._lock:
            f = self.file
            if f is None or self.behind is not None or not self.building():
                return 0
            t0 = time.perf_counter()
            done = 0
            self._stepping = True
            f.begin()
            try:
                def more() -> bool:
                    return (done < docs and time.perf_counter() - t0 < seconds
                            and not (done and interrupt is not None and interrupt()))

                for db_id in sorted(self.builds):
                    b = self.builds[db_id]
                    while not b.done and more():
                        done += self._step(db_id, b, min(READ_CHUNK, docs - done))
                    if not more():
                        break
                f.commit(self.applied, self.applied_sum)
            except BaseException as exc:
                f.rollback()
                self._load(f)
                self.failures += 1
                self._retry_at = time.monotonic() + 1.0
                log.exception("a text index build step failed (%s); it is tried again", exc)
                return 0
            finally:
                self._stepping = False
            return done

    def _step(self, db_id: str, b: Build, n: int) -> int:
        """Index the next ``n`` ids of ``db_id`` after its cursor (inside the transaction)."""
        f = self.file
        assert f is not None and b.cursor is not None
        d = self.defs[db_id]
        after = b.cursor or None
        with self.store.env.read() as txn:
            vecs = self.store.vectors_after(db_id, after, n, txn)
            docs = self.store.text_docs(db_id, after, n, txn)
        # the ids both lists cover: up to the last of a list that was cut at n
        bound: str | None = None
        for got in ([v.id for v in vecs], [i for i, _ in docs]):
            if len(got) >= n and (bound is None or got[-1] < bound):
                bound = got[-1]
        rows: dict[str, tuple[str, str, int, int]] = {}
        for v in vecs:
            if bound is not None and v.id > bound:
                break
            text = text_of(v.metadata, d.field)
            if text is not None:
                rows[v.id] = (v.id, text, v.label, SRC_VECTOR)
        for doc_id, text in docs:
            if bound is not None and doc_id > bound:
                break
            rows[doc_id] = (doc_id, text, NO_LABEL, SRC_DOC)  # the later write of the id
        passed = len({v.id for v in vecs if bound is None or v.id <= bound}
                     | {i for i, _ in docs if bound is None or i <= bound})
        f.insert_new(d.k, [rows[i] for i in sorted(rows)])
        b.processed += passed
        b.cursor = bound
        if bound is None:
            b.seconds = time.monotonic() - b.started
        f.set_cursor(db_id, b.cursor, b.processed)
        return max(passed, 1)

    def finish_builds(self) -> int:
        """Run every unfinished build to its end (a start-up, before anything is served).
        Returns the ids indexed."""
        n = 0
        while self.building() and self.behind is None:
            step = self.build_step(seconds=1.0, docs=50_000)
            if not step:
                break
            n += step
        return n

    # -- reads ------------------------------------------------------------------------------
    def index_of(self, db_id: str) -> IndexDef | None:
        return self.visible.get(db_id)

    def search(self, db_id: str, text: str, limit: int, admit: Any = None,
               deadline_check: Any = None) -> list[Hit]:
        d = self.visible.get(db_id)
        f = self.file
        if d is None or f is None:
            return []
        return f.search(d.k, text, limit, admit, deadline_check)

    def texts(self, db_id: str, ids: list[str]) -> dict[str, str]:
        d = self.visible.get(db_id)
        f = self.file
        if d is None or f is None:
            return {}
        return f.texts(d.k, ids)

    def status(self, db_id: str) -> dict[str, Any] | None:
        """The database's index as ``/bm25-index/status`` tells it (None: it has none)."""
        d = self.defs.get(db_id)
        f = self.file
        if d is None or f is None:
            return None
        build = self.builds.get(db_id)
        v = self.visible.get(db_id)
        try:
            docs = f.count(v.k) if v is not None else 0
            direct = f.count(v.k, SRC_DOC) if v is not None else 0
            terms = f.terms(v.k) if v is not None else 0
        except Exception:  # dropped by a commit meanwhile: the next call sees the new one
            docs = direct = terms = 0
        stats: dict[str, Any] = {
            "textField": d.field,
            "tokenizer": d.tokenizer,
            "engine": "sqlite-fts5-bm25",
            "vectorDocuments": docs - direct,
            "addedDocuments": direct,
            "definedAtLsn": d.set_lsn,
            "appliedLsn": self.applied,
        }
        if build is not None and not build.done:
            processed = build.processed
            db = self.store.database(db_id) or {}
            # the ids the build passes: the store's vectors and documents given directly
            total = max(processed, int(db.get("count", 0)) + int(db.get("text_docs", 0)))
            return {
                "status": "building",
                "totalDocuments": total,
                "processedDocuments": processed,
                "indexedTerms": terms,
                "progressPercentage": round(100.0 * processed / max(total, 1), 1),
                "indexStats": {**stats, "indexedDocuments": docs},
            }
        out: dict[str, Any] = {
            "status": "ready" if self.behind is None else "behind",
            "totalDocuments": docs,
            "processedDocuments": docs,
            "indexedTerms": terms,
            "progressPercentage": 100.0,
            "indexStats": stats,
        }
        if build is not None and build.seconds is not None:
            out["durationMs"] = round(build.seconds * 1000.0, 3)
        return out


class _Fold:
    """The replay target of the projection (start-up, catching up): ``_apply`` raising."""

    def __init__(self, proj: TextProjection) -> None:
        self.proj = proj

    def applied_lsn(self) -> int:
        return self.proj.applied

    def apply_group(self, entries: list[Entry]) -> None:
        self.proj._apply(entries)
