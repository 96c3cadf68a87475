"""The backup side of a running server: snapshot now, archive new records, truncate the log
within the retention rules. Blocking work; the HTTP layer and the scheduler run these in worker
threads."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from jade.backup import archive, snapshot
from jade.engine import Engine
from jade.engine.commit import Truncate

log = logging.getLogger(__name__)


class Backups:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.settings = engine.settings
        self._lock = threading.Lock()  # snapshot, archive and truncation never overlap
        # holders of log positions, each a callable giving the highest LSN the log may drop
        # for it (None: it holds nothing back): the index checkpoints (a start-up replays the
        # log after each); others (replicas) register theirs
        self.position_holders: list[Callable[[], int | None]] = [self._index_checkpoints]

    def snapshot(self) -> snapshot.SnapshotInfo:
        e, s = self.engine, self.settings
        with self._lock:
            e.indexes.checkpoint()  # a fresh checkpoint makes the restore's replay short
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
        with self._lock:
            made = archive.archive_new(
                self.engine.log, self.settings.backup_dir, self.settings.archive_segment_records
            )
            removed = self._truncate()
        return {"segments": [m.name for m in made], "truncated": removed}

    def truncation_limit(self) -> int:
        """The highest LSN the log may drop: within retention, and never past the oldest
        snapshot, the last archived record, a replica's position or the oldest index
        checkpoint (a start-up can always replay the log after every checkpoint, rather than
        rebuild that index from the store)."""
        s, wal = self.settings, self.engine.log
        if s.log_retention_seconds <= 0:
            return 0
        limit = wal.lsn_at_time(time.time_ns() - s.log_retention_seconds * 1_000_000_000)
        snaps = snapshot.listing(s.backup_dir)
        limit = min(limit, snaps[0].lsn if snaps else 0)
        limit = min(limit, archive.last_archived(s.backup_dir))
        for holder in self.position_holders:
            pos = holder()
            if pos is not None:
                limit = min(limit, pos)
        return limit

    def _index_checkpoints(self) -> int | None:
        return self.engine.indexes.oldest_checkpoint_lsn()

    def _truncate(self) -> int:
        limit = self.truncation_limit()
        if limit < self.engine.log.first_lsn:
            return 0
        # through the writer: the running server's log has one writer
        lsn = min(limit + 1, self.engine.log.last_lsn)
        if lsn <= self.engine.log.first_lsn or self.engine.writer is None:
            return 0
        job = Truncate(lsn)
        self.engine.writer.submit(job).result()
        n = job.removed
        if n:
            log.info("log truncated: %d records up to LSN %d removed", n, limit)
        return n
