"""The backup side of a running server: snapshot now, archive new records, trim the log within
the retention rule. Blocking work; the HTTP layer and the scheduler run these in worker threads.

The retention rule is PostgreSQL's. PostgreSQL recycles WAL after a checkpoint unless it is
still needed by ``wal_keep_size``, a replication slot (capped by ``max_slot_wal_keep_size``) or
archiving that has not succeeded yet (``archive_command``). Here the log is trimmed by default
(by the archive job, or by the ``log_truncate`` job when archiving is off), and it keeps every
record after the lowest position of its holders (``holds``):

- ``window``: the records of the last ``backup.log_retention_seconds`` (default an hour; 0 keeps
  everything) — ``wal_keep_size``, in time;
- ``archive`` (archiving on): every record not yet archived — ``archive_command``;
- ``snapshots`` (archiving off): every record after the oldest snapshot, so that a restore to
  any time since it can read the live log (with archiving on, the oldest snapshot and the
  archive do that, and the live log need not go back so far);
- ``replicas``: every record a registered replica has not applied — a replication slot — but
  none older than ``replication.max_hold_seconds`` (``max_slot_wal_keep_size``, in time). A
  replica further behind holds the log back to that age only, one already behind the log's
  first record holds nothing: its stream answers ``reseed`` (``jade.http.replication``) and it
  bootstraps again from a snapshot;
- ``index_checkpoints``: every record after the oldest index checkpoint, so a start-up replays
  the tail into it instead of rebuilding that index from the store (PostgreSQL's own
  checkpoint); a checkpoint that keeps failing therefore holds the log;
- ``auth_store``: every record the auth store has not folded durably (the writer clamps each
  truncation to it itself: ``jade.engine.commit.AuthStage.settle``);
- anything else registered in ``position_holders``.

The log never drops its last record. ``retention_status`` shows the rule, each holder and the
one that binds (``/status`` ``retention``).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from jade.backup import archive, offsite, snapshot
from jade.engine import Engine
from jade.engine.commit import Truncate
from wal.log import LogError

log = logging.getLogger(__name__)

TRUNCATE_CHUNK = 10_000  # records removed per job of the writer

RULE = (
    "like PostgreSQL's WAL recycling: the log keeps every record after the lowest position of "
    "its holders and drops the older ones (never its last record). window: the records of the "
    "last backup.log_retention_seconds (0 keeps everything; wal_keep_size). archive (archiving "
    "on): every record not yet archived (archive_command). snapshots (archiving off): every "
    "record after the oldest snapshot. replicas: every record a registered replica has not "
    "applied, none older than replication.max_hold_seconds (a replication slot and "
    "max_slot_wal_keep_size); a replica further behind re-seeds from a snapshot. "
    "index_checkpoints: every record after the oldest index checkpoint (replayed at start-up). "
    "auth_store: every record the auth store has not folded."
)


# how ``holds`` names the position of a holder in ``position_holders``
_WHAT = {"index_checkpoints": "the oldest index checkpoint"}


class ReplicaPosition(Protocol):
    @property
    def replica_id(self) -> str: ...

    @property
    def applied_lsn(self) -> int: ...


class ReplicaPositions(Protocol):
    """What the primary knows of its replicas (``jade.http.replication_state.Replicas``)."""

    @property
    def by_id(self) -> Mapping[str, ReplicaPosition]: ...


@dataclass(frozen=True, slots=True)
class Hold:
    """One holder's position: the log may drop the records up to ``lsn`` for it and keeps the
    ones after (None: it holds nothing back). ``why`` says so in words."""

    lsn: int | None
    why: str

    def json(self) -> dict[str, Any]:
        return {"lsn": self.lsn, "why": self.why}


class Backups:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.settings = engine.settings
        self._lock = threading.Lock()  # snapshot, archive and truncation never overlap
        # other holders of log positions, by name: each a callable giving the highest LSN the
        # log may drop for it (None: it holds nothing back)
        self.position_holders: dict[str, Callable[[], int | None]] = {
            "index_checkpoints": self._index_checkpoints
        }
        # the primary's view of its replicas (the HTTP layer sets it: ``jade.http.app``)
        self.replicas: ReplicaPositions | None = None
        self.now_ns: Callable[[], int] = time.time_ns  # the clock of the window (tests move it)
        self.last_truncation: dict[str, Any] | None = None
        # the second location of the backups (``jade.backup.offsite``; none configured: no
        # target). A bad one refuses the start here, before the port opens
        self.offsite = offsite.Offsite(self.settings)

    def snapshot(self) -> snapshot.SnapshotInfo:
        e, s = self.engine, self.settings
        with self._lock:
            try:
                e.indexes.checkpoint()  # a fresh checkpoint makes the restore's replay short
            except OSError as exc:  # a full data disk: a snapshot to another disk goes on
                log.warning("index checkpoint before the snapshot failed (%s); the snapshot "
                            "takes the previous checkpoints (its restore replays more)", exc)
            assert e.env is not None and e.auth_env is not None
            return snapshot.create(
                e.env, e.auth_env, s.index_dir, s.backup_dir, signing_key=s.snapshot_signing_key
            )

    def scheduled_snapshot(self) -> dict[str, Any]:
        info = self.snapshot()
        gone = snapshot.apply_retention(
            self.settings.backup_dir, self.settings.snapshot_retention_days
        )
        return {"snapshot": info.name, "lsn": info.lsn, "deleted": gone}

    def archive_and_truncate(self) -> dict[str, Any]:
        """The archive job: archive the new records, then trim the log."""
        with self._lock:
            made = archive.archive_new(
                self.engine.log, self.settings.backup_dir, self.settings.archive_segment_records
            )
            removed = self._truncate()
        return {"segments": [m.name for m in made], "truncated": removed}

    def truncate(self) -> dict[str, Any]:
        """The ``log_truncate`` job (archiving off): trim the log within the retention rule."""
        with self._lock:
            removed = self._truncate()
        return {"truncated": removed, "first_lsn": self.engine.log.first_lsn}

    def push_offsite(self) -> dict[str, Any]:
        """The ``offsite`` job: copy the new snapshots and archive segments to every offsite
        target. Not under the lock: a long upload must not hold the archive and the log's
        trimming back (a snapshot deleted meanwhile by retention is skipped)."""
        return self.offsite.push_all()

    @property
    def archiving(self) -> bool:
        return self.settings.archive_interval_seconds > 0

    # -- the rule -------------------------------------------------------------------------------
    def holds(self) -> dict[str, Hold]:
        """Every holder's position (the module doc lists them)."""
        return self._holds()[0]

    def _holds(self) -> tuple[dict[str, Hold], list[dict[str, Any]]]:
        """(every holder's position, each registered replica's row)."""
        s = self.settings
        now = self.now_ns()
        out: dict[str, Hold] = {}
        if s.log_retention_seconds <= 0:
            out["window"] = Hold(0, "backup.log_retention_seconds is 0: keep everything")
        else:
            out["window"] = Hold(
                self._lsn_at(now - s.log_retention_seconds * 1_000_000_000),
                f"the records of the last {s.log_retention_seconds} s",
            )
        if self.archiving:
            last = archive.last_archived(s.backup_dir)
            out["archive"] = Hold(last, f"the records after the last archived one (LSN {last})")
            out["snapshots"] = Hold(
                None, "archiving is on: the snapshots and the archive make the restore window"
            )
        else:
            out["archive"] = Hold(None, "archiving is off")
            snaps = snapshot.listing(s.backup_dir)
            out["snapshots"] = (
                Hold(
                    snaps[0].lsn,
                    f"archiving is off: the records after the oldest snapshot {snaps[0].name} "
                    f"(LSN {snaps[0].lsn})",
                )
                if snaps
                else Hold(None, "archiving is off and there is no snapshot")
            )
        out["replicas"], rows = self._replicas(now)
        for name, holder in self.position_holders.items():
            pos = holder()
            what = _WHAT.get(name, name)
            out[name] = (
                Hold(pos, f"the records after {what} (LSN {pos})")
                if pos is not None
                else Hold(None, f"no {what}")
            )
        out["auth_store"] = self._auth_hold()
        return out, rows

    def truncation_limit(self) -> int:
        """The highest LSN the log may drop: the lowest position of its holders."""
        return min((h.lsn for h in self.holds().values() if h.lsn is not None), default=0)

    def retention_status(self) -> dict[str, Any]:
        """The retention rule, its settings, every holder's position, the one that binds, the
        limit (records up to it may be dropped) and the log's extent (``/status``)."""
        s, wal = self.settings, self.engine.log
        holds, rows = self._holds()
        held = {k: h for k, h in holds.items() if h.lsn is not None}
        limit = min((h.lsn for h in held.values() if h.lsn is not None), default=0)
        binding = [k for k, h in held.items() if h.lsn == limit]
        first, last = wal.first_lsn, wal.last_lsn
        try:
            file_bytes = os.path.getsize(s.db_path)
        except OSError:
            file_bytes = None
        return {
            "rule": RULE,
            "settings": {
                "backup.log_retention_seconds": s.log_retention_seconds,
                "replication.max_hold_seconds": s.replica_max_hold_seconds,
                "backup.archive_interval_seconds": s.archive_interval_seconds,
                "backup.snapshot_interval_seconds": s.snapshot_interval_seconds,
                "index.checkpoint_interval_seconds": s.checkpoint_interval_seconds,
            },
            "archiving": self.archiving,
            "limit_lsn": limit,
            # records up to limit_lsn may go (never the last one): what the next run removes
            "removable": max(0, min(limit, last - 1) - first + 1),
            "binding": binding,
            "holders": {k: h.json() for k, h in holds.items()},
            "replicas": rows,
            "first_lsn": first,
            "last_lsn": last,
            "records": max(0, last - first + 1),
            "data_file_bytes": file_bytes,
            "last_truncation": self.last_truncation,
        }

    # -- the holders ----------------------------------------------------------------------------
    def _lsn_at(self, ts_ns: int) -> int:
        for _ in range(3):
            try:
                return self.engine.log.lsn_at_time(ts_ns)
            except LogError:  # a truncation committed under the search: search again
                continue
        return self.engine.log.lsn_at_time(ts_ns)

    def _replicas(self, now: int) -> tuple[Hold, list[dict[str, Any]]]:
        s, wal = self.settings, self.engine.log
        reps = list(self.replicas.by_id.values()) if self.replicas is not None else []
        if not reps:
            return Hold(None, "no replica registered"), []
        cap = s.replica_max_hold_seconds
        # records up to floor are older than the cap: no replica holds them
        floor = self._lsn_at(now - cap * 1_000_000_000) if cap > 0 else 0
        rows: list[dict[str, Any]] = []
        for r in reps:
            pos = r.applied_lsn
            hold: int | None
            if pos < wal.first_lsn - 1:
                hold, why = None, (
                    f"behind the log's first record (LSN {wal.first_lsn}): it must re-seed "
                    "from a snapshot"
                )
            elif pos < floor:
                hold, why = floor, (
                    f"behind by more than replication.max_hold_seconds ({cap} s): held only "
                    f"to LSN {floor}, then it re-seeds from a snapshot"
                )
            else:
                hold, why = pos, f"the records after its applied LSN {pos}"
            rows.append(
                {"replica_id": r.replica_id, "applied_lsn": pos, "holds_lsn": hold, "why": why}
            )
        held = [row for row in rows if row["holds_lsn"] is not None]
        if not held:
            return Hold(None, "no registered replica can continue from this log"), rows
        low = min(held, key=lambda row: int(row["holds_lsn"]))
        return Hold(int(low["holds_lsn"]), f"replica {low['replica_id']}: {low['why']}"), rows

    def _index_checkpoints(self) -> int | None:
        return self.engine.indexes.oldest_checkpoint_lsn()

    def _auth_hold(self) -> Hold:
        w = self.engine.writer
        if w is None:
            return Hold(None, "the engine is not open")
        stage = w.auth
        if stage.behind is not None:
            return Hold(stage.applied, f"behind the log ({stage.behind}): records after the "
                        f"LSN it has folded ({stage.applied})")
        return Hold(stage.applied, f"records after the LSN it has folded ({stage.applied})")

    # -- trimming -------------------------------------------------------------------------------
    def _truncate(self) -> int:
        wal = self.engine.log
        limit = self.truncation_limit()
        # through the writer (the running server's log has one writer), TRUNCATE_CHUNK records
        # per job: the writes queued meanwhile go in between (the first trim of a log kept
        # for long may remove millions of records)
        lsn = min(limit + 1, wal.last_lsn)
        n = 0
        while lsn > wal.first_lsn and self.engine.writer is not None:
            job = Truncate(min(lsn, wal.first_lsn + TRUNCATE_CHUNK))
            self.engine.writer.submit(job).result()
            if not job.removed:
                break  # the writer clamped it (the auth store's position)
            n += job.removed
        if n:
            log.info("log truncated: %d records up to LSN %d removed", n, wal.first_lsn - 1)
            self.last_truncation = {"time": time.time(), "removed": n, "first_lsn": wal.first_lsn}
        return n
