"""What the primary knows of its followers (kept in memory; followers re-register on connect).
Their applied LSNs hold log truncation, and with synchronous replication their confirmed
positions release the writes waiting for them (``jade.engine.sync``; ``confirm_replicated`` is
the wait of a write's answer, called by the middleware)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from jade.engine.sync import SyncReplication
from jade.errors import NotReplicated

if TYPE_CHECKING:
    from jade.engine import Engine
    from jade.metrics import Metrics


@dataclass
class ReplicaState:
    replica_id: str
    address: str
    user_id: str
    streams: int = 0  # open streams (a reconnect may overlap the old, not yet dead one)
    streamed_lsn: int = 0
    received_lsn: int = 0
    applied_lsn: int = 0
    last_seen: float = field(default_factory=time.time)

    @property
    def confirmed_lsn(self) -> int:
        """What it holds durably of *our* history: what it acknowledged, but no further than
        what we streamed it on a stream whose starting record matched ours."""
        return min(self.applied_lsn, self.streamed_lsn)

    def json(self, primary_lsn: int, sync: SyncReplication | None = None) -> dict[str, Any]:
        out = {
            "replica_id": self.replica_id,
            "address": self.address,
            "connected": self.streams > 0,
            "streamed_lsn": self.streamed_lsn,
            "received_lsn": self.received_lsn,
            "applied_lsn": self.applied_lsn,
            "lag_records": max(0, primary_lsn - self.applied_lsn),
            "last_seen_seconds_ago": round(time.time() - self.last_seen, 3),
        }
        if sync is not None:
            out["synchronous"] = sync.counts(self.replica_id)
            out["confirmed_lsn"] = self.confirmed_lsn
        return out


class Replicas:
    """What the primary knows of its followers. Their applied LSNs hold log truncation."""

    def __init__(self, sync: SyncReplication | None = None) -> None:
        self.by_id: dict[str, ReplicaState] = {}
        self.sync = sync

    def confirmed(self, state: ReplicaState) -> None:
        """``state`` acknowledged or (re)started a stream: its confirmed position may release
        writes waiting for synchronous replicas."""
        if self.sync is not None:
            self.sync.position(state.replica_id, state.confirmed_lsn)

    def synchronous_connected(self) -> int:
        """Replicas that count as synchronous with a stream open."""
        sync = self.sync
        return 0 if sync is None else sum(
            1 for s in self.by_id.values() if s.streams > 0 and sync.counts(s.replica_id))

    def get(self, replica_id: str, address: str, user_id: str) -> ReplicaState:
        st = self.by_id.get(replica_id)
        if st is None:
            st = self.by_id[replica_id] = ReplicaState(replica_id, address, user_id)
        st.address = address
        return st

    def min_position(self) -> int | None:
        if not self.by_id:
            return None
        return min(s.applied_lsn for s in self.by_id.values())

    def forget(self, replica_id: str) -> bool:
        if self.sync is not None:
            self.sync.forget(replica_id)
        return self.by_id.pop(replica_id, None) is not None


async def confirm_replicated(engine: Engine, metrics: Metrics, lsn: int) -> None:
    """Before a write's answer: with ``replication.synchronous_replicas`` N > 0 on a primary,
    wait until N replicas hold ``lsn`` durably; ``NotReplicated`` (503, ``written: true``)
    after ``replication.synchronous_timeout_seconds``. Only this request waits: the write is
    durable and visible here already."""
    sync = engine.sync
    if sync.required <= 0 or engine.role != "primary":
        return
    t0 = time.perf_counter()
    try:
        await sync.wait(lsn)
    except NotReplicated:
        metrics.replication_sync_timeouts.inc()
        raise
    finally:
        metrics.replication_sync_wait.observe(time.perf_counter() - t0)
