"""Point-in-time restore: newest snapshot at or before the target, then the archived and live
records up to the target (inclusive), into a new data directory.

Targets: an LSN, a time (the last record with ``ts <= T``), or the latest record available. A
target outside the window is an error, never "the closest state": an LSN before the oldest
snapshot or past the last record; a time before the oldest snapshot, or after what the sources
read are known to cover. A time after the last record is the state after that record as long as
some source is known complete up to that time:

- the live log, read directly (offline, or beside the server, or inside it): up to the moment it
  is read — unless it is behind the archive or the newest snapshot (not their history's log),
  or belongs to a replica (``primary_url`` set: its records are the primary's, as far as it has
  received them), when it covers up to its last record;
- the archive: up to its seal (``archive.coverage``), or its last record for segments written
  before seals were recorded;
- the newest snapshot: up to its last record;

the latest of those read. Records are appended through the same path a replica uses
(``jade.engine.commit.Replicated``): LSN continuity, epoch and the checksum chain are verified
before anything is applied.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from datetime import UTC
from typing import Any

import lmdb

from jade import datadir
from jade.backup import archive, snapshot
from jade.engine import RESTORE_INCOMPLETE, Engine
from jade.engine.commit import Replicated
from jade.settings import Settings
from wal.codec import CodecError, Record
from wal.files import fsync_path, write_atomic
from wal.lmdbenv import Env
from wal.log import Log, LogError

logger = logging.getLogger(__name__)


class RestoreError(RuntimeError):
    pass


@dataclass(frozen=True, slots=True)
class Window:
    earliest_lsn: int
    earliest_ts: int
    latest_lsn: int
    latest_ts: int
    snapshots: int
    archived_upto: int
    # the latest time a time target may name (0: nothing to restore) and the source that bounds
    # it: "live log", "archive" or "newest snapshot"
    restorable_until: int = 0
    restorable_by: str = ""

    def json(self) -> dict[str, Any]:
        return {
            "earliest_lsn": self.earliest_lsn,
            "earliest_time": _iso(self.earliest_ts),
            "latest_lsn": self.latest_lsn,
            "latest_time": _iso(self.latest_ts),
            "latest_restorable_time": _iso(self.restorable_until),
            "latest_restorable_by": self.restorable_by or None,
            "snapshots": self.snapshots,
            "archived_upto_lsn": self.archived_upto,
        }


@dataclass(frozen=True, slots=True)
class _Bound:
    """What one source is known to cover: a time target ``<= limit`` (a whole microsecond, so
    its printed form is exact) is a well-defined state."""

    limit: int
    source: str  # "live log", "archive", "newest snapshot"
    detail: str  # for messages: "read at ...", "sealed at ...", "its last record, at ..."


def _ceil_us(ts: int) -> int:
    """``ts`` (ns) rounded up to a whole microsecond, the precision of an RFC 3339 target."""
    return -(-ts // 1000) * 1000


def _floor_us(ts: int) -> int:
    return ts // 1000 * 1000


def _iso(ts: int) -> str | None:
    """RFC 3339 with microseconds, rounded UP (exact integer arithmetic): a time printed for a
    record, given back as a restore target, reaches that record (``ts <= target``)."""
    if not ts:
        return None
    from datetime import datetime

    sec, us = divmod(_ceil_us(ts) // 1000, 1_000_000)
    return datetime.fromtimestamp(sec, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S") + f".{us:06d}Z"


class _Live:
    """The source data directory's log, opened read-only (the server may be running in another
    process). Inside the server's own process the engine's open ``Log`` must be passed instead:
    LMDB (and py-lmdb) refuse to open one environment twice in one process."""

    def __init__(self, db_path: str, log: Log | None = None) -> None:
        self.env: Env | None = None
        self.log: Log | None = log
        if log is None and os.path.exists(db_path):
            try:
                self.env = Env(db_path, readonly=True)
                self.log = Log(self.env)
            except lmdb.Error as exc:
                if self.env is not None:
                    self.env.close()
                detail = str(exc) if db_path in str(exc) else f"{db_path}: {exc}"
                raise RestoreError(f"cannot read the log: {detail}") from None

    def close(self) -> None:
        if self.env is not None:
            self.env.close()


def window(settings: Settings, log: Log | None = None) -> Window:
    """The restorable range. ``log``: the source's open log when called inside the server. Its
    ``restorable_until`` is the bound ``resolve_target`` applies to a time target (a restore
    reading the same sources later accepts it: the bound only grows)."""
    snaps = snapshot.listing(settings.backup_dir)
    read_at = time.time_ns()  # before the live log's tail is read
    live = _Live(settings.db_path, log)
    try:
        latest_lsn, latest_ts, bound = _survey(settings, live, read_at, snaps)
    finally:
        live.close()
    until, by = (bound.limit, bound.source) if bound is not None else (0, "")
    if not snaps:
        return Window(
            0, 0, latest_lsn, latest_ts, 0, archive.last_archived(settings.backup_dir), until, by
        )
    return Window(
        snaps[0].lsn,
        snaps[0].ts,
        latest_lsn,
        latest_ts,
        len(snaps),
        archive.last_archived(settings.backup_dir),
        until,
        by,
    )


def _survey(
    settings: Settings, live: _Live, read_at: int, snaps: list[snapshot.SnapshotInfo]
) -> tuple[int, int, _Bound | None]:
    """(last LSN, its time, the upper bound of a time target) over the archive, the live log
    and the snapshots. ``read_at``: the moment taken just before the live log's tail was read.

    A source covers a time when every record stamped up to it is in that source (records are
    stamped with the wall clock when appended, clamped never to go backwards). The live log read
    directly covers up to the moment of reading; the archive up to its seal; a snapshot, or a
    log that only copies another (a replica's), up to its last record."""
    lsn = ts = 0
    bounds: list[_Bound] = []
    cov = archive.coverage(settings.backup_dir)
    if cov is not None:
        lsn, ts = cov.lsn, cov.last_ts
    wal = live.log
    if wal is not None:
        # the tail first, then compare: the moment of reading is ``read_at``
        wal_lsn, wal_ts = wal.last_lsn, wal.last_ts
        if wal_lsn > lsn:
            lsn, ts = wal_lsn, wal_ts
        behind = wal_lsn < max(cov.lsn if cov else 0, snaps[-1].lsn if snaps else 0)
        if settings.primary_url or behind or wal_lsn == 0:
            if wal_lsn:
                why = "a replica's copy" if settings.primary_url else "behind the backups"
                bounds.append(
                    _Bound(
                        _ceil_us(wal_ts),
                        "live log",
                        f"{why}: its last record, at {_iso(wal_ts)}",
                    )
                )
        else:
            limit = max(_floor_us(read_at), _ceil_us(wal_ts))
            bounds.append(_Bound(limit, "live log", f"read at {_iso(limit)}"))
    if cov is not None:
        if cov.sealed:
            limit = max(_floor_us(cov.until_ts), _ceil_us(cov.last_ts))
            bounds.append(_Bound(limit, "archive", f"sealed at {_iso(limit)}"))
        else:
            bounds.append(
                _Bound(
                    _ceil_us(cov.last_ts),
                    "archive",
                    f"its last record, at {_iso(cov.last_ts)}: no seal time recorded in "
                    f"{cov.segment}",
                )
            )
    if snaps:
        bounds.append(
            _Bound(
                _ceil_us(snaps[-1].ts),
                "newest snapshot",
                f"{snaps[-1].name}: its last record, at {_iso(snaps[-1].ts)}",
            )
        )
    # the latest bound; on a tie the first named (live log, archive, snapshot)
    best = max(bounds, key=lambda b: b.limit, default=None)
    return lsn, ts, best


def resolve_target(
    settings: Settings,
    *,
    lsn: int | None = None,
    ts: int | None = None,
    latest: bool = False,
    log: Log | None = None,
) -> tuple[int, snapshot.SnapshotInfo]:
    """The target LSN and the snapshot to start from, or ``RestoreError``."""
    snaps = snapshot.listing(settings.backup_dir)
    if not snaps:
        raise RestoreError(f"no snapshot in {snapshot.snapshots_dir(settings.backup_dir)}")
    oldest = snaps[0]
    read_at = time.time_ns()  # before the live log's tail is read
    live = _Live(settings.db_path, log)
    try:
        latest_lsn, _, bound = _survey(settings, live, read_at, snaps)
        if latest:
            target = max(latest_lsn, snaps[-1].lsn)
        elif lsn is not None:
            if lsn < oldest.lsn:
                raise RestoreError(
                    f"LSN {lsn} is before the window: before the oldest snapshot "
                    f"{oldest.name} (LSN {oldest.lsn})"
                )
            if lsn > max(latest_lsn, snaps[-1].lsn):
                raise RestoreError(
                    f"LSN {lsn} is past the end of the available log "
                    f"(last record {max(latest_lsn, snaps[-1].lsn)})"
                )
            target = lsn
        elif ts is not None:
            if ts < oldest.ts:
                raise RestoreError(
                    f"time {_iso(ts)} is before the window: before the oldest snapshot "
                    f"{oldest.name} (LSN {oldest.lsn}, at {_iso(oldest.ts)})"
                )
            # never None here: the newest snapshot bounds it at least
            assert bound is not None
            # targets have microsecond precision: a printed bound (or the last record's own
            # rounded time) given back is in
            if ts > bound.limit:
                raise RestoreError(
                    f"time {_iso(ts)} is after what the {bound.source} is known to cover "
                    f"({bound.detail}): the state at {_iso(ts)} is unknown"
                )
            target = _lsn_at_time(settings, live, ts)
        else:
            raise RestoreError("give a target: an LSN, a time or latest")
    finally:
        live.close()
    start = [s for s in snaps if s.lsn <= target]
    if not start:
        raise RestoreError(f"no snapshot at or before LSN {target}")
    return target, start[-1]


def _lsn_at_time(settings: Settings, live: _Live, ts: int) -> int:
    best = archive.lsn_at_time(settings.backup_dir, ts)
    found = best[0] if best else 0
    if live.log is not None:
        found = max(found, live.log.lsn_at_time(ts))
    for s in snapshot.listing(settings.backup_dir):
        if s.ts <= ts:
            found = max(found, s.lsn)
    return found


def _records(settings: Settings, after: int, upto: int, log: Log | None = None) -> Iterator[Record]:
    """Records (after, upto] from the archive, then the live log for the rest. A damaged
    segment ends the archive's part: the live log serves from there if it still holds those
    records; if not, the error names the segment and the records lost."""
    nxt = after
    damaged = ""
    for seg in archive.segments(settings.backup_dir):
        if seg.last <= nxt or seg.first > upto:
            continue
        if seg.first > nxt + 1:
            break  # a gap in the archive: the live log must serve the rest
        try:
            _, recs, _, _ = archive.read(seg)
        except archive.ArchiveError as exc:
            damaged = (f"archive segment {seg.name} (LSN {seg.first}..{seg.last}) is damaged "
                       f"({exc})")
            logger.warning("%s; reading LSN %d on from the live log", damaged, nxt + 1)
            break
        for rec in recs:
            if nxt < rec.lsn <= upto:
                nxt = rec.lsn
                yield rec
        if nxt >= upto:
            return
    live = _Live(settings.db_path, log)
    try:
        lost = f"{damaged}: " if damaged else ""
        if live.log is None or live.log.last_lsn < upto:
            raise RestoreError(f"{lost}records after LSN {nxt} are neither archived nor in the "
                               "log")
        if live.log.first_lsn > nxt + 1:
            raise RestoreError(
                f"{lost}records {nxt + 1}..{live.log.first_lsn - 1} are missing: "
                "truncated from the log and not in the archive"
            )
        yield from live.log.iterate(nxt, upto=upto, verify=True)
    finally:
        live.close()


def target_settings(source: Settings, target_dir: str) -> Settings:
    return replace(
        source,
        data_dir=target_dir,
        db_path=os.path.join(target_dir, snapshot.DATA_FILE),
        auth_db_path=os.path.join(target_dir, snapshot.AUTH_FILE),
        index_dir=os.path.join(target_dir, "indexes"),
        backup_dir=os.path.join(target_dir, "backups"),
        log_dir=os.path.join(target_dir, "logs"),
    )


def restore(
    source: Settings,
    target_dir: str,
    *,
    lsn: int | None = None,
    ts: int | None = None,
    latest: bool = False,
    force: bool = False,
    verify_key: str = "",
    progress: Callable[[int, int], None] | None = None,
    source_log: Log | None = None,
) -> dict[str, Any]:
    """Restore into ``target_dir``. ``source_log``: the source's open log when this process is
    the server itself (the file cannot be opened a second time here).

    Every failure is a ``RestoreError`` naming the cause (a damaged snapshot, archive segment or
    log record is refused, never loaded); a failed restore leaves no half-restored directory
    behind, and neither does a killed one: the restore fills a temporary sibling of the target
    (``<target>.restoring-<pid>-<ns>``, same file system) under an in-progress marker
    (``RESTORE_INCOMPLETE``, which every opener refuses), and only once every record is applied,
    the engine closed and the files synced is the marker replaced by ``RESTORED`` (what was
    asked, the LSN reached, the snapshot) and the directory renamed to the target. With
    ``force`` an existing target is moved aside only then, and deleted after the new one is in
    place. The temporary directories of killed restores to the same target are removed first
    (those with the in-progress marker and no live holder)."""
    try:
        target, snap = resolve_target(source, lsn=lsn, ts=ts, latest=latest, log=source_log)
    except (archive.ArchiveError, LogError, CodecError) as exc:
        raise RestoreError(str(exc)) from None
    problems = snapshot.verify(snap.path, verify_key=verify_key)
    if problems:
        raise RestoreError(f"snapshot {snap.name} is damaged: " + "; ".join(problems))
    tdir = os.path.abspath(target_dir)
    for what, path in (
        ("data directory", source.data_dir),
        ("data file", source.db_path),
        ("backup directory", source.backup_dir),
    ):
        p = os.path.abspath(path)
        if p == tdir or p.startswith(tdir + os.sep):
            raise RestoreError(f"refusing to restore over the source {what} ({path})")
    if os.path.exists(target_dir) and os.listdir(target_dir):
        if not force:
            raise RestoreError(f"{target_dir} is not empty (use --force to replace it)")
        holder = datadir.holder(target_dir)
        if holder is not None:  # --force never deletes a directory a live process owns
            raise RestoreError(f"{target_dir} is in use by {datadir.describe(holder)}; stop it "
                               "first")
    final = os.path.realpath(target_dir)
    parent, base = os.path.split(final)
    os.makedirs(parent, exist_ok=True)
    removed = _remove_leftovers(parent, base)
    name = f"{base}{_TEMP}{os.getpid()}-{time.time_ns()}"
    tmp = os.path.join(parent, name)
    asked = {"latest": latest, "lsn": lsn, "time": _iso_ns(ts) if ts is not None else None}
    info: dict[str, Any] = {
        "source": {
            "data_dir": source.data_dir,
            "db_path": source.db_path,
            "backup_dir": source.backup_dir,
        },
        "target_dir": final,
        "asked": asked,
        "target_lsn": target,
        "snapshot": snap.name,
        "snapshot_lsn": snap.lsn,
        "pid": os.getpid(),
        "started_at": _iso_ns(time.time_ns()),
    }
    # the temporary directory appears with its marker in it (made under a hidden name first):
    # never an empty directory a server would take for a new, empty database
    stage = os.path.join(parent, "." + name)
    os.mkdir(stage)
    try:
        write_atomic(
            os.path.join(stage, RESTORE_INCOMPLETE),
            json.dumps({"state": "in progress", **info}, indent=1).encode() + b"\n",
        )
        os.rename(stage, tmp)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    # held for the whole restore (its engine shares it): no other restore removes this
    # directory as a leftover, no server opens it
    lock = datadir.hold(tmp, "jade restore")
    try:
        if not os.path.exists(os.path.join(tmp, RESTORE_INCOMPLETE)):  # taken before the lock
            raise RestoreError(f"{tmp} was removed by another restore to {target_dir}")
        result = _restore_into(source, tmp, target, snap, progress, source_log)
        _complete(tmp, {
            "state": "complete",
            **info,
            "reached_lsn": result["reached_lsn"],
            "reached_time": result["target_time"],
            "replayed": result["replayed"],
            "finished_at": _iso_ns(time.time_ns()),
        })
        _move_in(tmp, final, target_dir, force)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)  # gone already once moved in
        if isinstance(exc, (archive.ArchiveError, LogError, CodecError)):
            raise RestoreError(f"{exc} (nothing restored)") from None
        raise
    finally:
        lock.release()
    return {
        **result,
        "target_dir": target_dir,
        "marker": os.path.join(target_dir, RESTORED),
        "removed_leftovers": removed,
    }


# Beside RESTORE_INCOMPLETE (``jade.engine``): the completion marker of a restored directory,
# kept (it says where the data came from); the temporary directory's infix.
RESTORED = "RESTORED"
_TEMP = ".restoring-"


def _iso_ns(ts: int) -> str:
    """RFC 3339 with nanoseconds (exact: a time asked is recorded as given)."""
    from datetime import datetime

    sec, ns = divmod(ts, 1_000_000_000)
    return datetime.fromtimestamp(sec, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S") + f".{ns:09d}Z"


def read_marker(data_dir: str) -> tuple[str, dict[str, Any]] | None:
    """(``RESTORE_INCOMPLETE`` or ``RESTORED``, its content) for a restore's directory (the
    in-progress one first), None for any other; unreadable content comes back as ``{}``."""
    for name in (RESTORE_INCOMPLETE, RESTORED):
        path = os.path.join(data_dir, name)
        if os.path.exists(path):
            try:
                with open(path, "rb") as fh:
                    content = json.loads(fh.read())
            except (OSError, ValueError):
                content = None
            return name, content if isinstance(content, dict) else {}
    return None


def _remove_leftovers(parent: str, base: str) -> list[str]:
    """Remove what restores to ``parent/base`` that did not finish (killed) left: temporary
    directories holding the in-progress marker that no restore holds, and hidden ones killed
    while being made (nothing in them but the marker) whose pid is not alive. A finished one
    that was not renamed in (killed at that moment) is kept."""
    pattern = re.compile(r"(\.?)" + re.escape(base) + re.escape(_TEMP) + r"(\d+)-\d+")
    removed = []
    for name in sorted(os.listdir(parent)):
        m = pattern.fullmatch(name)
        d = os.path.join(parent, name)
        if m is None or os.path.islink(d) or not os.path.isdir(d):
            continue
        try:
            names = set(os.listdir(d))
        except OSError:
            continue
        if m[1]:  # hidden: made, then renamed once its marker is written (no lock yet)
            marker_only = names <= {RESTORE_INCOMPLETE, RESTORE_INCOMPLETE + ".tmp"}
            unfinished = marker_only and not _alive(int(m[2]))
        else:
            unfinished = RESTORE_INCOMPLETE in names
        if not unfinished:
            continue
        try:  # held while it goes: a process that holds it (a restore at work) is never robbed
            lock = datadir.hold(d, _CLEANUP)
        except datadir.DataDirBusy:
            continue
        try:
            if lock.info.get("purpose") == _CLEANUP:  # not held by a restore in this process
                shutil.rmtree(d, ignore_errors=True)
                removed.append(d)
        finally:
            lock.release()
    return removed


_CLEANUP = "jade restore (removing a leftover)"


def _alive(pid: int) -> bool:
    """Whether ``pid`` names a live process (this one included)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):
        return False
    except PermissionError:  # another user's
        return True
    return True


def _complete(tmp: str, marker: dict[str, Any]) -> None:
    """Every file and directory synced, then the in-progress marker replaced by ``RESTORED``
    (written first: there is never a moment with neither)."""
    for d, _, names in os.walk(tmp, topdown=False):
        for n in names:
            fsync_path(os.path.join(d, n))
        fsync_path(d)
    write_atomic(os.path.join(tmp, RESTORED), json.dumps(marker, indent=1).encode() + b"\n")
    os.remove(os.path.join(tmp, RESTORE_INCOMPLETE))
    fsync_path(tmp)


def _move_in(tmp: str, final: str, target_dir: str, force: bool) -> None:
    """Rename the complete ``tmp`` to ``final``. A non-empty target (``force``: checked before)
    is held, moved aside, and deleted once the new directory is in its place."""
    parent = os.path.dirname(final)
    if force and os.path.isdir(final) and os.listdir(final):
        try:  # nobody opens it from here on; refused if a server started meanwhile
            old = datadir.hold(final, "jade restore --force")
        except datadir.DataDirBusy as exc:
            raise RestoreError(f"{target_dir} is in use by {datadir.describe(exc.info)}; stop "
                               "it first") from None
        aside = f"{final}.replaced-{os.getpid()}-{time.time_ns()}"
        try:
            os.rename(final, aside)
            try:
                os.rename(tmp, final)
            except BaseException:
                os.rename(aside, final)
                raise
            fsync_path(parent)
        finally:
            old.release()
        shutil.rmtree(aside, ignore_errors=True)
        return
    try:
        os.rename(tmp, final)  # replaces an empty directory, never a non-empty one
    except OSError as exc:
        raise RestoreError(f"cannot move the restored directory to {target_dir}: "
                           f"{exc.strerror} (nothing restored)") from None
    fsync_path(parent)


def _restore_into(
    source: Settings,
    target_dir: str,
    target: int,
    snap: snapshot.SnapshotInfo,
    progress: Callable[[int, int], None] | None,
    source_log: Log | None,
) -> dict[str, Any]:
    for rel in snapshot.read_manifest(snap.path)["files"]:
        dst = os.path.join(target_dir, rel)
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        # complete or absent under its name (a killed copy never leaves a truncated file)
        shutil.copy2(os.path.join(snap.path, rel), dst + ".part")
        os.replace(dst + ".part", dst)
    ts_settings = target_settings(source, target_dir)
    engine = Engine(ts_settings)
    engine.open(restoring=True)
    replayed = 0
    total = target - snap.lsn
    try:
        assert engine.writer is not None
        batch: list[Record] = []
        for rec in _records(source, snap.lsn, target, source_log):
            batch.append(rec)
            if len(batch) >= 512:
                engine.index_room_sync()
                engine.writer.submit(Replicated(batch)).result()
                replayed += len(batch)
                batch = []
                if progress:
                    progress(replayed, total)
        if batch:
            engine.writer.submit(Replicated(batch)).result()
            replayed += len(batch)
            if progress:
                progress(replayed, total)
        if engine.log.last_lsn != target:
            raise RestoreError(f"restore ended at LSN {engine.log.last_lsn}, wanted {target}")
        result = {
            "target_lsn": target,
            "target_time": _iso(engine.log.last_ts),
            "snapshot": snap.name,
            "snapshot_lsn": snap.lsn,
            "reached_lsn": engine.log.last_lsn,
            "replayed": replayed,
        }
    finally:
        engine.close(checkpoint=True)
    return result
