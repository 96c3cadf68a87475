"""Failover benchmark (issue 19): three ``jade serve`` subprocesses and a real etcd (Debian's
``etcd-server``), writers inserting steadily through whichever node is the primary (following
503 ``not_primary`` and its ``X-Primary-Url``). The primary is killed with SIGKILL; measured:

- elected:  kill -> the leader key names another node (etcd's lease expiry + one tick),
- failover: kill -> the first write acknowledged by the new primary (what a client sees),
- lost:     writes the killed primary acknowledged that the elected replica never received
            (asynchronous mode's risk; each one is in the old primary's ``diverged`` file).

The episode is the one ``tests/test_cluster.py`` runs (``failover_episode``), repeated.

    python bench/failover.py                 # 5 episodes with lease TTL 2 s, 3 with TTL 5 s
    python bench/failover.py --quick         # 3 episodes with TTL 2 s
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from tests.etcd_server import ETCD  # noqa: E402
from tests.test_cluster import failover_episode  # noqa: E402


async def run(ttl: int, episodes: int) -> None:
    rows = []
    for i in range(episodes):
        with tempfile.TemporaryDirectory(prefix="jade-failover-") as root:
            out = await failover_episode(root, ttl=ttl)
        rows.append(out)
        print(f"  TTL {ttl}s episode {i + 1}: elected {out['elected_seconds']:.2f}s, first "
              f"write on the new primary {out['failover_seconds']:.2f}s after the kill, "
              f"{out['acks']} writes acknowledged, {out['lost_async']} lost (async), "
              f"{out['moved_aside']} moved aside", flush=True)
    f = [r["failover_seconds"] for r in rows]
    e = [r["elected_seconds"] for r in rows]
    print(f"TTL {ttl}s, {episodes} episodes: failover (kill -> first acknowledged write on the "
          f"new primary) median {statistics.median(f):.2f}s, max {max(f):.2f}s; election "
          f"median {statistics.median(e):.2f}s; acknowledged writes lost (async) "
          f"{sum(r['lost_async'] for r in rows)} of {sum(r['acks'] for r in rows)}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    if ETCD is None:
        sys.exit("etcd is not installed (apt-get install etcd-server, or `make etcd`)")
    plan = [(2, 3)] if args.quick else [(2, 5), (5, 3)]
    for ttl, n in plan:
        asyncio.run(run(ttl, n))


if __name__ == "__main__":
    main()
