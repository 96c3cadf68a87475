"""What the primary knows of its followers (kept in memory; followers re-register on connect).
Their applied LSNs hold log truncation."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any


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

    def json(self, primary_lsn: int) -> dict[str, Any]:
        return {
            "replica_id": self.replica_id,
            "address": self.address,
            "connected": self.streams > 0,
            "streamed_lsn": self.streamed_lsn,
            "received_lsn": self.received_lsn,
            "applied_lsn": self.applied_lsn,
            "lag_records": max(0, primary_lsn - self.applied_lsn),
            "last_seen_seconds_ago": round(time.time() - self.last_seen, 3),
        }


class Replicas:
    """What the primary knows of its followers. Their applied LSNs hold log truncation."""

    def __init__(self) -> None:
        self.by_id: dict[str, ReplicaState] = {}

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
        return self.by_id.pop(replica_id, None) is not None
