"""Synchronous replication: a write is acknowledged to its caller only once N replicas hold it
durably (PostgreSQL's ``synchronous_commit = on`` with ``synchronous_standby_names = 'ANY N
(names)'``; the settings ``replication.synchronous_replicas``, ``synchronous_names`` and
``synchronous_timeout_seconds``).

What a replica's position means: the highest LSN it has told us (``POST
/v1/replication/ack``, ``applied_lsn``) that it has committed to its own log, and an LSN of
*our* history: the primary counts it only up to what it streamed to that replica on a stream
whose starting record matched ours (``jade.http.replication``), so a replica from another
history (a fork, an old primary rejoining) confirms nothing. A replica commits a streamed
batch with LMDB's fsync before it acknowledges (``replica.follower``: the log, the stores and
the ack follow the commit), and the checksum chain makes "has LSN L" mean "has 1..L".

``confirmed_lsn`` is the N-th highest position among the replicas that count: every record up
to it is on N replicas' disks. A write waits (``wait``) on the event loop until its last LSN is
confirmed; one acknowledgement releases every write it covers, so concurrent writes share it as
they share a group commit. Neither the writer thread nor other requests wait: the write is
already durable and visible on the primary (as in PostgreSQL, where a transaction waiting for
its standbys is already committed locally). After ``timeout`` seconds the write is answered
``NotReplicated`` (503 ``replication_timeout``), which says that it IS written here.

Everything here runs on the event loop (acks are HTTP requests, waits are handlers): no lock.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from typing import Any

from jade.errors import NotReplicated


class SyncReplication:
    def __init__(self, required: int, names: str, timeout: float) -> None:
        self.required = required  # 0: asynchronous, nothing waits
        self.names = frozenset(n.strip() for n in names.split(",") if n.strip())
        self.timeout = timeout  # seconds; 0 = no limit
        self.positions: dict[str, int] = {}  # replica id -> confirmed LSN (counting replicas)
        self.confirmed_lsn = 0
        self.timeouts = 0  # writes answered NotReplicated (timed out or abandoned)
        self.waiting = 0  # writes waiting now
        self._heap: list[tuple[int, int, asyncio.Future[None]]] = []  # (lsn, seq, future)
        self._seq = itertools.count()

    # -- what counts ------------------------------------------------------------------------
    def counts(self, replica_id: str) -> bool:
        """Whether this replica's acknowledgements count (synchronous mode on, and it is
        named or no names are given)."""
        return self.required > 0 and (not self.names or replica_id in self.names)

    def position(self, replica_id: str, lsn: int) -> None:
        """The replica durably holds our records up to ``lsn`` (it may be lower than before:
        a replica restored from an older copy)."""
        if not self.counts(replica_id):
            return
        if self.positions.get(replica_id) == lsn:
            return
        self.positions[replica_id] = lsn
        ranked = sorted(self.positions.values(), reverse=True)
        self.confirmed_lsn = ranked[self.required - 1] if len(ranked) >= self.required else 0
        self._release()

    def forget(self, replica_id: str) -> None:
        """A replica removed for good (``DELETE /v1/replication/replicas/<id>``)."""
        if self.positions.pop(replica_id, None) is not None:
            ranked = sorted(self.positions.values(), reverse=True)
            self.confirmed_lsn = ranked[self.required - 1] if len(ranked) >= self.required else 0

    def reset(self) -> None:
        """This node became the primary (a promotion, a new epoch): positions acknowledged to
        it in an earlier term say nothing of this one's records; replicas report anew."""
        self.positions.clear()
        self.confirmed_lsn = 0

    def acknowledged(self, lsn: int) -> int:
        """How many counting replicas hold ``lsn``."""
        return sum(1 for p in self.positions.values() if p >= lsn)

    # -- waiting ----------------------------------------------------------------------------
    async def wait(self, lsn: int) -> float:
        """Return once ``lsn`` is on ``required`` replicas (at once in asynchronous mode), with
        the seconds waited; raise ``NotReplicated`` after the timeout."""
        if self.required <= 0 or lsn <= self.confirmed_lsn:
            return 0.0
        t0 = time.perf_counter()
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._heap, (lsn, next(self._seq), fut))
        self.waiting += 1
        try:
            await asyncio.wait_for(fut, self.timeout or None)
        except TimeoutError:
            self.timeouts += 1
            raise NotReplicated(self._refusal(lsn), written=True, lsn=lsn,
                                synchronous_replicas=self.required,
                                acknowledged=self.acknowledged(lsn)) from None
        finally:
            self.waiting -= 1
            if len(self._heap) > 2 * self.waiting + 64:  # timed-out entries: drop them
                self._heap = [w for w in self._heap if not w[2].done()]
                heapq.heapify(self._heap)
        return time.perf_counter() - t0

    def abandon(self, why: str) -> int:
        """Answer every waiting write now with ``NotReplicated`` (still ``written: true``), for
        a node that stops being the primary while writes wait (a lost leader lease): they can
        no longer be confirmed here. Returns how many."""
        n = 0
        for lsn, _, fut in self._heap:
            if not fut.done():
                fut.set_exception(NotReplicated(
                    f"the write IS durable in this node's log (LSN {lsn}), but {why}: it was "
                    f"not confirmed on {self.required} replica(s) and may be lost at the "
                    "failover; check it on the new primary before writing it again",
                    written=True, lsn=lsn, synchronous_replicas=self.required,
                    acknowledged=self.acknowledged(lsn)))
                n += 1
        self._heap = []
        self.timeouts += n
        return n

    def _release(self) -> None:
        heap = self._heap
        while heap and heap[0][0] <= self.confirmed_lsn:
            fut = heapq.heappop(heap)[2]
            if not fut.done():
                fut.set_result(None)

    def _refusal(self, lsn: int) -> str:
        got = self.acknowledged(lsn)
        who = ", ".join(sorted(self.names)) if self.names else "any replica"
        return (
            f"the write IS durable in this primary's log (LSN {lsn}) and visible here, but only "
            f"{got} of the {self.required} synchronous replica acknowledgement(s) it needs "
            f"({who}) arrived within {self.timeout:g} s: it is not confirmed on "
            f"{self.required} replica(s), and a failover now could lose it. Do not retry a "
            "create blindly (it would be written twice); a write that sets a value (upsert, "
            "update, delete) is safe to retry. /v1/replication/status shows the replicas")

    def json(self) -> dict[str, Any]:
        return {
            "synchronous_replicas": self.required,
            "synchronous_names": sorted(self.names),
            "timeout_seconds": self.timeout,
            "confirmed_lsn": self.confirmed_lsn,
            "waiting_writes": self.waiting,
            "timeouts": self.timeouts,
        }
