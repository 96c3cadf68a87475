"""Delete/re-insert churn for a bounded time does not grow the server without bound (issue 14,
item 5): the HNSW graph reuses the deleted slots (its element count, deleted slots included,
stays put) and the log is trimmed behind the window by the server's own scheduled jobs, with
archiving on (the default) and off, so its records stay within the window and the LMDB file,
which never shrinks, stops growing: the pages of trimmed records are reused.

An engine in-process with the server's scheduled jobs (``jade.http.jobs``) run every quarter
second instead of every minute, and a window of one second instead of an hour.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest

from jade.core.decide import Command
from jade.engine import Engine
from jade.http.app import build_app
from jade.http.jobs import add_jobs
from jade.http.keys import SCHEDULER
from jade.indexes.hnsw import HnswIndex
from tests.conftest import make_settings
from tests.test_index_checkpoint import create_cmd, upsert_cmd

DIM, N, BATCH = 64, 1000, 100  # N ids; each round deletes BATCH of them and inserts them again
WINDOW = 1  # seconds (backup.log_retention_seconds)
CHURN = 3.5  # seconds of churn
TICK, JOBS_EVERY = 0.1, 0.25  # one round per tick at most; the jobs every quarter second
WARM = WINDOW + 2 * JOBS_EVERY  # by then the log holds a window's worth of records


@pytest.mark.parametrize("archiving", [60, 0], ids=["archiving-on", "archiving-off"])
async def test_churn_keeps_the_index_and_the_log_bounded(tmp_path: Path, archiving: int) -> None:
    s = make_settings(tmp_path, log_retention_seconds=WINDOW, archive_interval_seconds=archiving,
                      hnsw_m=8, hnsw_ef_construction=32, index_threads=2)
    e = Engine(s)
    e.open()
    app = build_app(s, engine=e)
    sched = app[SCHEDULER]
    add_jobs(app, sched)  # not started: run below, more often than the timer would
    rng = np.random.default_rng(5)
    ids = [f"v{i}" for i in range(N)]
    try:
        e.submit_sync(create_cmd("c", "hnsw", dim=DIM))
        e.submit_sync(upsert_cmd("c", [(i, rng.normal(size=DIM).tolist(), {"r": 0}) for i in ids]))
        live = e.indexes.get("c")
        assert live is not None and isinstance(live.index, HnswIndex)
        hnsw = live.index.index
        start = time.monotonic()
        next_tick = next_jobs = start
        rounds = appended = warm_appended = 0
        warm_size: int | None = None
        trims = 0
        while time.monotonic() - start < CHURN:
            batch = ids[(rounds * BATCH) % N:(rounds * BATCH) % N + BATCH]
            assert e.writer is not None
            futs = [e.writer.submit(c, c.size) for c in (
                Command("vec.delete", {"db": "c", "ids": batch}),
                upsert_cmd("c", [(i, rng.normal(size=DIM).tolist(), {"r": rounds})
                                 for i in batch]),
            )]
            appended += sum(len(r.encoded()) for f in futs for r in f.result())
            rounds += 1
            # every slot of a deleted vector is taken again by its re-insert (once the index
            # follower has folded them into the graph)
            live.index.settle()
            assert int(hnsw.get_current_count()) == N and len(live) == N
            if time.monotonic() >= next_jobs:
                next_jobs += JOBS_EVERY
                before = time.time_ns()
                for name in list(sched.jobs):  # as the timer would, in its order
                    await sched.run(name)
                    assert sched.jobs[name].last_outcome == "success", sched.jobs[name]
                if time.monotonic() - start >= WARM:
                    # the log holds no record older than the window (but its last one)
                    first = e.log.get(e.log.first_lsn)
                    assert first is not None
                    assert (first.ts > before - WINDOW * 1_000_000_000
                            or e.log.first_lsn == e.log.last_lsn), (
                        f"record {first.lsn} is {(before - first.ts) / 1e9:.2f}s old after "
                        f"the jobs ran (window {WINDOW}s; log {e.log.first_lsn}.."
                        f"{e.log.last_lsn})")
                    trims += 1
                    if warm_size is None:
                        warm_size, warm_appended = os.path.getsize(s.db_path), appended
            next_tick += TICK
            time.sleep(max(0.0, next_tick - time.monotonic()))
        assert trims >= 4 and rounds >= 10, (trims, rounds)
        assert warm_size is not None
        # most of what was written is gone from the log ...
        assert e.log.first_lsn > e.log.last_lsn // 2, (e.log.first_lsn, e.log.last_lsn)
        # ... and the file grew by far less than the records appended since the log was full:
        # the pages of the trimmed records were reused
        grown, since = os.path.getsize(s.db_path) - warm_size, appended - warm_appended
        assert since > 0 and grown <= since // 4, (grown, since, warm_size)
    finally:
        e.close()
