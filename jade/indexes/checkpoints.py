"""Index checkpoint storage: the files of one database's saved index, and nothing of the fold.

A checkpoint of one database is ``<index_dir>/<db id>/index.json`` and the files it names: the
index file and whatever the index writes beside it (``<file><suffix>``), and the metadata file
``<file>.metadata.msgpack`` (labels, metadata, inverted terms: ``metadata_file.py``). All of them
or none: a missing or damaged member makes the whole checkpoint not usable (the projection then
rebuilds).

``index.json`` (format 4) carries the projection's own state of the database at the LSN it
covers — dimension, metric and its list of indexes with their complete parameters — so a
start-up from it needs neither the catalog nor the settings; and under ``checksums`` the SHA-256
of every file of the checkpoint (``{file name: hex}``), computed from the files as written
(before ``index.json`` names them). ``load`` checks every one, streamed, before any file is
parsed: hnswlib's ``load_index`` trusts its input, and damaged neighbour links crash the process
at the first searches that follow them. A file that is missing, damaged or has no checksum is
logged by name and counted (``damaged``: the metric ``index_checkpoint_damaged_total``), and the
database rebuilt from the store. Files of an older format are not used, and the database is
rebuilt once from the store: format 2 (before the typed events) lacks the database's state,
format 3 the checksums, so nothing proves its files whole.

Crash safety: a capture is written under a name no file has, fsynced and renamed, and only then
does ``index.json`` switch to it (``write_atomic``); the old files are removed last. A crash at
any point leaves one whole checkpoint.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import msgspec

from jade import events as ev
from jade.indexes import metadata_file as ckpt
from jade.indexes.base import IndexCapture, VectorIndex
from jade.indexes.flat import FlatIndex
from jade.indexes.hnsw import HnswIndex
from jade.indexes.live import LiveDb, spec_of
from jade.indexes.packed_meta import PackedMeta
from wal.files import fsync_path, sha256_file, write_atomic

log = logging.getLogger(__name__)

FORMAT = 4  # 3: the database's own state (dim, metric, indexes); 4: its files' checksums
MD_SUFFIX = ".metadata.msgpack"  # the metadata file: ``<index file><MD_SUFFIX>``
# every name in a checkpoint directory: ``index.json`` (and its ``write_atomic`` tmp file), the
# files of a checkpoint (``<kind>-<lsn>[-k].bin...``)
_NAMES = ("index.json", "index.json.tmp")
_PREFIXES = ("hnsw-", "flat-")


@dataclass(slots=True)
class Capture:
    """One database's checkpoint as ``capture`` took it (under the projection's lock)."""

    db_id: str
    live: LiveDb  # the LiveDb captured: if the projection holds another one now, it is stale
    name: str  # the checkpoint's file name, not used in the directory yet
    index: IndexCapture
    meta: PackedMeta
    terms: ckpt.Terms
    doc: dict[str, Any]  # its index.json, but for the metadata file and the save time


class CheckpointStore:
    """The checkpoint files under ``directory``. ``current(db_id)`` tells which LiveDb the
    projection holds now: a save whose capture is no longer current is dropped."""

    def __init__(self, directory: str, current: Callable[[str], LiveDb | None],
                 files_lock: Any, threads: int = 0) -> None:
        self.dir = directory
        self._current = current
        self._files_lock = files_lock  # index.json switches vs directory removal
        self.threads = threads
        self.saved: dict[str, dict[str, Any]] = {}  # db id -> its index.json on disk
        self.damaged = 0  # checkpoints not loaded: a file missing, damaged, unreadable (metric)

    def paths(self, db_id: str) -> tuple[str, str]:
        base = os.path.join(self.dir, db_id)
        return base, os.path.join(base, "index.json")

    # -- loading ----------------------------------------------------------------------------
    def load(self, db_id: str, first_lsn: int, applied: int, secs: dict[str, float]
             ) -> LiveDb | None:
        """The database's checkpoint as a LiveDb at the LSN it covers, or None when it is not
        usable: missing, of another format, not replayable from the retained log, newer than
        the store, or any of its files missing, damaged or disagreeing on the vector count."""
        base, meta_path = self.paths(db_id)
        try:
            with open(meta_path) as fh:
                meta = json.load(fh)
            if meta.get("format") != FORMAT:
                log.info("index checkpoint of %s is of format %s (want %d); rebuilding once",
                         db_id, meta.get("format"), FORMAT, extra={"db": db_id})
                return None
            md_file = str(meta["metadata"]["file"])
            count = int(meta["count"])
            lsn = int(meta["lsn"])
            dim, metric = int(meta["dim"]), str(meta["metric"])
            indexes = msgspec.convert(meta["indexes"], list[ev.IndexDef])
            ok = int(meta["metadata"]["count"]) == count
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError, AttributeError,
                msgspec.ValidationError) as exc:
            self.damaged += 1
            log.warning("index checkpoint of %s: %s unreadable (%s); rebuilding from the store",
                        db_id, meta_path, exc, extra={"db": db_id})
            return None
        spec = spec_of(indexes[-1] if indexes else None)
        ok = (ok and meta.get("build_key") == list(spec.build_key())
              and lsn <= applied and lsn + 1 >= first_lsn)
        if not ok:
            log.info("index checkpoint of %s not usable (LSN %d, log from %d, store at %d); "
                     "rebuilding", db_id, lsn, first_lsn, applied, extra={"db": db_id})
            return None
        t = time.perf_counter()
        problems = check_files(base, meta)  # before any parser sees a byte of them
        secs["index_files"] += time.perf_counter() - t
        if problems:
            self.damaged += 1
            for problem in problems:
                log.warning("index checkpoint of %s damaged: %s (in %s); rebuilding from the "
                            "store", db_id, problem, base, extra={"db": db_id})
            return None
        path = os.path.join(base, meta["file"])
        try:
            t = time.perf_counter()
            index: VectorIndex
            if spec.kind == "hnsw":
                index = HnswIndex.load(path, dim, metric, m=spec.m,
                                       ef_construction=spec.ef_construction,
                                       ef_search=spec.ef_search, threads=self.threads)
            else:
                index = FlatIndex.load(path, dim, metric)
            t2 = time.perf_counter()
            secs["index_files"] += t2 - t
            if len(index) != count:
                raise ckpt.CheckpointError(f"index file holds {len(index)} vectors, want {count}")
            md, terms = ckpt.read_metadata(os.path.join(base, md_file), count)
            secs["metadata"] += time.perf_counter() - t2
        except Exception as exc:  # whole files that do not load: never trust them, rebuild
            self.damaged += 1
            log.warning("index checkpoint of %s (%s) unreadable (%s); rebuilding from the store",
                        db_id, path, exc, extra={"db": db_id})
            return None
        live = LiveDb(db_id, dim, metric, spec, threads=self.threads, index=index,
                      indexes=indexes)
        live.meta, live.terms = md, terms
        live.covered_lsn = lsn
        self.saved[db_id] = meta
        return live

    def check(self, db_id: str) -> tuple[Any, list[str]]:
        """For ``jade verify``: the format of the database's checkpoint (None: it has none) and
        what ``load`` would find damaged in it, each problem naming its file ([]: every file
        matches its checksum). A checkpoint of another format has no checksums to check."""
        base, meta_path = self.paths(db_id)
        try:
            with open(meta_path) as fh:
                meta = json.load(fh)
            fmt = meta.get("format")
        except FileNotFoundError:
            return None, []
        except (OSError, ValueError, AttributeError) as exc:
            return FORMAT, [f"index.json: unreadable ({exc})"]
        return fmt, check_files(base, meta) if fmt == FORMAT else []

    # -- saving -----------------------------------------------------------------------------
    def capture(self, db_id: str, live: LiveDb) -> Capture:
        """Under the projection's lock: the database as of ``live.covered_lsn``. Memory copies
        only. Also creates the directory: only here, under the lock, so a save finishing after
        a ``db.delete`` cannot bring it back."""
        base = self.paths(db_id)[0]
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
            "format": FORMAT,
            "lsn": lsn,
            "file": name,
            "build_key": list(live.spec.build_key()),
            "dim": live.dim,
            "metric": live.metric,
            "indexes": msgspec.to_builtins(live.indexes),
            "count": len(live),
        }
        return Capture(db_id, live, name, index, meta, terms, doc)

    def save(self, cap: Capture) -> bool:
        """Write a capture as a complete new checkpoint, switch ``index.json`` to it, remove
        the old one. Runs without the projection's lock. Returns False when the database was
        deleted or rebuilt meanwhile (nothing of this save is left then)."""
        base, meta_path = self.paths(cap.db_id)
        name, tmp = cap.name, cap.name + ".tmp"
        sums: dict[str, str] = {}  # every file of the checkpoint: its checksum as written
        try:
            cap.index.write(os.path.join(base, tmp))
            for f in os.listdir(base):
                if f.startswith(tmp):
                    fsync_path(os.path.join(base, f))
                    sums[name + f[len(tmp):]] = sha256_file(os.path.join(base, f))
                    os.replace(os.path.join(base, f), os.path.join(base, name + f[len(tmp):]))
            md_file = name + MD_SUFFIX
            count = ckpt.write_metadata(os.path.join(base, md_file), cap.meta, cap.terms)
            sums[md_file] = sha256_file(os.path.join(base, md_file))
            fsync_path(base)  # the renames are durable before index.json names the files
        except OSError:
            if self.stale(cap):  # its directory went away under the writes
                return False
            # a full disk: what this save wrote is named by no index.json, and would eat the
            # space the operator frees (the previous checkpoint stays as it was)
            self._discard(base, name)
            raise
        meta = {**cap.doc, "metadata": {"file": md_file, "count": count}, "checksums": sums,
                "saved_at": time.time()}
        with self._files_lock:
            current = self._current(cap.db_id) is cap.live
            if current:
                _write_json(meta_path, meta)
                self.saved[cap.db_id] = meta
        if not current:
            self.stale(cap)
            return False
        for old in _listdir(base):
            if old.startswith(_PREFIXES) and not old.startswith(name):
                try:
                    os.remove(os.path.join(base, old))
                except FileNotFoundError:
                    pass  # the database was deleted meanwhile
        return True

    @staticmethod
    def _discard(base: str, name: str) -> None:
        for f in _listdir(base):
            if f.startswith(name):
                try:
                    os.remove(os.path.join(base, f))
                except OSError:
                    pass

    def sweep(self, listed: list[str]) -> int:
        """At start-up: remove what failed or interrupted saves left in the checkpoint
        directories (temp files, files of a checkpoint no ``index.json`` names). A directory
        whose ``index.json`` cannot be read is left alone (its database is rebuilt and saved
        afresh, which then replaces it). Returns the bytes freed."""
        freed = 0
        for db_dir in listed:
            base = os.path.join(self.dir, db_dir)
            meta_path = os.path.join(base, "index.json")
            try:
                with open(meta_path) as fh:
                    doc = json.load(fh)
                keep = {str(doc["file"]), str(doc["metadata"]["file"]),
                        *map(str, doc.get("checksums", {}))}
            except FileNotFoundError:
                keep = set()
            except (OSError, ValueError, KeyError, TypeError):
                continue
            for f in _listdir(base):
                if f.endswith(".tmp") or (f.startswith(_PREFIXES)
                                          and not any(f.startswith(k) for k in keep)):
                    path = os.path.join(base, f)
                    try:
                        size = os.path.getsize(path)
                        os.remove(path)
                    except OSError:
                        continue
                    freed += size
                    log.info("removed %s (%d bytes): left by a checkpoint that did not "
                             "complete", path, size, extra={"db": db_dir})
        return freed

    def stale(self, cap: Capture) -> bool:
        """Whether the database of ``cap`` was deleted or replaced since the capture; if so,
        remove what its save wrote (a deleted database's whole directory)."""
        with self._files_lock:
            live = self._current(cap.db_id)
            if live is cap.live:
                return False
            base = self.paths(cap.db_id)[0]
            if live is None:
                shutil.rmtree(base, ignore_errors=True)
            else:
                for f in _listdir(base):
                    if f.startswith(cap.name):
                        os.remove(os.path.join(base, f))
        log.info(
            "index checkpoint of %s at LSN %d dropped: the database was %s while it was saved",
            cap.db_id, cap.doc["lsn"], "deleted" if live is None else "replaced",
            extra={"db": cap.db_id},
        )
        return True

    def advance(self, db_id: str, live: LiveDb, lsn: int) -> None:
        """Move a clean checkpoint's ``index.json`` to ``lsn`` (same files), unless the
        database was deleted or rebuilt since ``lsn`` was read."""
        with self._files_lock:
            saved = self.saved.get(db_id)
            if saved is None or saved.get("lsn") == lsn or self._current(db_id) is not live:
                return
            meta = {**saved, "lsn": lsn}
            _write_json(self.paths(db_id)[1], meta)
            self.saved[db_id] = meta

    def remove(self, db_id: str) -> None:
        """After the database left the projection: a save in flight sees that before it
        switches ``index.json`` and drops its files (``stale``)."""
        with self._files_lock:
            self.saved.pop(db_id, None)
            shutil.rmtree(self.paths(db_id)[0], ignore_errors=True)

    def oldest_lsn(self) -> int | None:
        """The lowest LSN a checkpoint on disk covers (None: there is none)."""
        with self._files_lock:
            return min((int(m["lsn"]) for m in self.saved.values()), default=None)

    # -- orphans ----------------------------------------------------------------------------
    def listed_dirs(self) -> list[str]:
        try:
            return [n for n in os.listdir(self.dir) if os.path.isdir(os.path.join(self.dir, n))]
        except FileNotFoundError:
            return []

    def remove_orphans(self, listed: list[str], known: set[str]) -> None:
        """Remove the checkpoint directories of databases not in the store (left by a crash
        between a ``db.delete`` commit and the removal of its directory, or restored from a
        snapshot that had one). ``listed`` was read before ``known``, so a database created
        meanwhile cannot be taken for an orphan. A directory holding anything but checkpoint
        files is left alone."""
        for name in listed:
            if name in known:
                continue
            path = os.path.join(self.dir, name)
            try:
                files = os.listdir(path)
            except OSError:
                continue
            if all(f in _NAMES or f.startswith(_PREFIXES) for f in files):
                shutil.rmtree(path, ignore_errors=True)
                log.info("removed the index checkpoint directory %s (%d files): database %s is "
                         "not in the store", path, len(files), name, extra={"db": name})
            else:
                log.warning("%s: not a database in the store, but holds files other than a "
                            "checkpoint's; left alone", path, extra={"db": name})


def check_files(base: str, doc: dict[str, Any]) -> list[str]:
    """What is wrong with the files of the checkpoint that ``doc`` (its ``index.json``, format
    4) describes in the directory ``base``, each problem naming its file ([]: all whole). The
    index file and the metadata file must have a checksum, and so must every file beside the
    index file (``<file><suffix>``: hnswlib's loader reads ``<file>.deleted.json`` whatever
    ``index.json`` says); each file listed must be there and match its checksum."""
    try:
        sums, file, md_file = doc["checksums"], doc["file"], doc["metadata"]["file"]
        if not (isinstance(sums, dict) and isinstance(file, str) and isinstance(md_file, str)
                and all(isinstance(v, str) for v in sums.values())):
            raise TypeError("not a map of file names to checksums")
    except (KeyError, TypeError) as exc:
        return [f"index.json: no checksums of its files ({type(exc).__name__}: {exc})"]
    problems = [f"{n}: no checksum in index.json" for n in (file, md_file) if n not in sums]
    problems += [f"{n}: beside the index file, but no checksum in index.json"
                 for n in sorted(_listdir(base))
                 if n.startswith(file) and n not in sums and n != md_file and
                 not n.endswith(".tmp")]
    for n, want in sums.items():
        if os.path.basename(n) != n or n in _NAMES:
            problems.append(f"{n}: not a file of a checkpoint")
            continue
        try:
            got = sha256_file(os.path.join(base, n))
        except FileNotFoundError:
            problems.append(f"{n}: missing")
            continue
        except OSError as exc:
            problems.append(f"{n}: unreadable ({exc.strerror or exc})")
            continue
        if got != want:
            problems.append(f"{n}: checksum mismatch (damaged or truncated)")
    return problems


def _write_json(path: str, doc: dict[str, Any]) -> None:
    write_atomic(path, json.dumps(doc).encode())


def _listdir(path: str) -> list[str]:
    try:
        return os.listdir(path)
    except FileNotFoundError:
        return []
