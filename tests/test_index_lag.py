"""Writes acknowledged at the log, HNSW graphs behind them (issue 16, item 1).

The index follower is held on purpose (``Follower.hold``) so the graphs lag: every search must
still answer about every acknowledged write exactly (a new vector found, an overwritten one
with its new value, a deleted one never), whether unfiltered, filtered or batched; writes wait
and then get 503 ``index_behind`` beyond ``index_lag_max_vectors``; a SIGKILL while the graphs
lag loses nothing acknowledged; a fold that fails is repaired from the store.
"""

from __future__ import annotations

import asyncio
import os
import random
import sys
import time
from typing import Any

import numpy as np
import pytest

from jade import faults
from jade.engine import Engine
from jade.http.keys import ENGINE
from jade.settings import Settings
from tests.conftest import ROOT, Api, ServerProcess, login, make_settings, running_server

DIM = 8


def unit(rng: np.random.Generator, n: int) -> np.ndarray:
    v = rng.normal(size=(n, DIM)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def engine_of(srv: Any) -> Engine:
    engine: Engine = srv.app[ENGINE]
    return engine


async def put(api: Api, db: str, ids: list[str], vecs: np.ndarray,
              meta: list[dict[str, Any]] | None = None) -> tuple[int, Any]:
    body = {"vectors": [{"id": i, "values": v.tolist(), "metadata": (meta or [{}] * len(ids))[n]}
                        for n, (i, v) in enumerate(zip(ids, vecs, strict=True))]}
    return await api.post(f"/v1/databases/{db}/vectors/batch", body)


async def top(api: Api, db: str, q: np.ndarray, k: int = 5, **extra: Any
              ) -> list[tuple[str, float]]:
    st, body = await api.post(f"/v1/databases/{db}/search",
                              {"queryVector": q.tolist(), "topK": k, **extra})
    assert st == 200, body
    return [(r["vectorId"], r["score"]) for r in body["results"]]


async def hnsw_db(api: Api) -> str:
    return await api.create_db(DIM, indexType="HNSW", metric="cosine")


@pytest.fixture
def lag_settings(tmp_path: Any) -> Settings:
    return make_settings(tmp_path)


async def test_searches_see_every_acknowledged_write_while_the_graph_lags(
        lag_settings: Settings) -> None:
    rng = np.random.default_rng(1)
    async with running_server(lag_settings) as srv:
        api, engine = srv.user, engine_of(srv)
        db = await hnsw_db(api)
        base = unit(rng, 300)
        st, body = await put(api, db, [f"b{i}" for i in range(300)], base,
                             [{"part": "base"}] * 300)
        assert st in (200, 201), body
        live = engine.indexes.get(db)
        assert live is not None and engine.indexes.follower is not None
        live.index.settle()
        engine.indexes.follower.hold()
        try:
            # new vectors, acknowledged while the graph does not hold them
            fresh = unit(rng, 40)
            st, body = await put(api, db, [f"n{i}" for i in range(40)], fresh,
                                 [{"part": "new"}] * 40)
            assert st in (200, 201), body
            assert engine.indexes.lag()[2] >= 40, "the follower is held: the graph must lag"
            graph_ids = set(live.index.index.get_ids_list())
            for i in range(40):
                assert int(live.index.get_present(np.arange(10_000))[0].max()) >= 0
                hits = await top(api, db, fresh[i], 3)
                assert hits[0][0] == f"n{i}" and hits[0][1] > 0.999, (i, hits)
            assert not {lab for lab in graph_ids if lab >= 300}, "the graph took them early"
            # overwrite: the old value of b5 is gone from every answer, the new one is found
            old5 = base[5].copy()
            new5 = unit(rng, 1)[0]
            st, _ = await api.put(f"/v1/databases/{db}/vectors/b5",
                                  {"values": new5.tolist(), "metadata": {"part": "base"}})
            assert st == 200
            hits = await top(api, db, new5, 3)
            assert hits[0] == ("b5", pytest.approx(1.0, abs=1e-4)), hits
            hits = dict(await top(api, db, old5, 400, threshold=-1))  # every vector
            assert hits["b5"] == pytest.approx(float(old5 @ new5), abs=1e-4), \
                "b5 must be scored with its new value"
            # deletes: never returned, by any kind of search
            gone = ["b7", "n3"]
            for vid in gone:
                st, _ = await api.delete(f"/v1/databases/{db}/vectors/{vid}")
                assert st in (200, 204)
            for q in (base[7], fresh[3]):
                ids = [v for v, _ in await top(api, db, q, 20)]
                assert not set(ids) & set(gone), ids
                ids = [v for v, _ in await top(api, db, q, 20, filters={"part": "base"})]
                assert "b7" not in ids
                ids = [v for v, _ in await top(api, db, q, 20, filters={"part": "new"})]
                assert "n3" not in ids and ids, ids
            # filtered: the new vectors match by their metadata at once
            hits = await top(api, db, fresh[9], 3, filters={"part": "new"})
            assert hits[0][0] == "n9", hits
            # batch search goes through the same merge
            st, body = await api.post(f"/v1/databases/{db}/search/batch",
                                      {"queries": [fresh[11].tolist(), base[7].tolist()],
                                       "topK": 3})
            assert st == 200, body
            first = [r["vectorId"] for r in body["results"][0]["results"]]
            second = [r["vectorId"] for r in body["results"][1]["results"]]
            assert first[0] == "n11" and "b7" not in second, body
            # the lag is visible to operators
            st, status = await srv.admin.get("/status")
            assert st == 200 and status["indexes"]["lag"]["vectors"] >= 40, status
            assert status["indexes"]["lag"]["records"] >= 1
            st, text = await srv.admin.get("/metrics")
            assert "jadevectordb_index_lag_vectors" in str(text)
        finally:
            engine.indexes.follower.release()
        deadline = time.monotonic() + 20
        while engine.indexes.lag()[2] and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        assert engine.indexes.lag() == (0, 0.0, 0)
        # the graph now holds exactly the store's vectors
        live = engine.indexes.get(db)
        assert live is not None
        held = set(int(x) for x in live.index.index.get_ids_list()) - live.index.deleted
        assert len(held) == 300 + 40 - 2
        hits = await top(api, db, new5, 1)
        assert hits[0][0] == "b5"
        st, status = await srv.admin.get("/status")
        assert status["indexes"]["lag"]["vectors"] == 0


async def test_concurrent_writers_and_searchers_never_miss_an_acknowledged_write(
        lag_settings: Settings) -> None:
    """Writers upsert and delete while searchers check each acknowledged write at once; the
    follower is held and released now and then so the graph lags by varying amounts."""
    rng = np.random.default_rng(2)
    async with running_server(lag_settings) as srv:
        api, engine = srv.user, engine_of(srv)
        db = await hnsw_db(api)
        follower = engine.indexes.follower
        assert follower is not None
        problems: list[str] = []
        deleted: set[str] = set()
        stop = time.monotonic() + 4.0
        pool = unit(rng, 4000)

        async def writer(w: int) -> None:
            n = 0
            while time.monotonic() < stop:
                vid = f"w{w}-{n}"
                v = pool[(w * 1000 + n) % len(pool)] + np.float32(0.001 * w)
                st, body = await put(api, db, [vid], v[None, :])
                if st not in (200, 201):
                    problems.append(f"write {vid}: {st} {body}")
                    return
                hits = await top(api, db, v, 3)
                if not hits or hits[0][0] != vid and hits[0][1] < 0.9999:
                    problems.append(f"{vid} acknowledged, not found first: {hits}")
                if n % 5 == 4:
                    st, _ = await api.delete(f"/v1/databases/{db}/vectors/{vid}")
                    deleted.add(vid)
                    ids = [x for x, _ in await top(api, db, v, 10)]
                    if vid in ids:
                        problems.append(f"{vid} deleted, still found: {ids}")
                n += 1

        async def searcher() -> None:
            while time.monotonic() < stop:
                q = unit(rng, 1)[0]
                for vid, _ in await top(api, db, q, 10):
                    if vid in deleted:
                        problems.append(f"deleted {vid} returned")

        async def toggler() -> None:
            while time.monotonic() < stop:
                follower.hold()
                await asyncio.sleep(random.uniform(0.05, 0.3))
                follower.release()
                await asyncio.sleep(random.uniform(0.01, 0.1))

        await asyncio.gather(*(writer(w) for w in range(4)), searcher(), toggler())
        follower.release()
        assert not problems, problems[:5]


async def test_writes_beyond_the_bound_wait_then_get_503_and_resume(tmp_path: Any) -> None:
    s = make_settings(tmp_path, index_lag_max_vectors=50, index_lag_wait_seconds=1)
    rng = np.random.default_rng(3)
    async with running_server(s) as srv:
        api, engine = srv.user, engine_of(srv)
        db = await hnsw_db(api)
        follower = engine.indexes.follower
        assert follower is not None
        follower.hold()
        try:
            st, body = await put(api, db, [f"a{i}" for i in range(50)], unit(rng, 50))
            assert st in (200, 201), body
            t0 = time.monotonic()
            st, body = await put(api, db, ["over"], unit(rng, 1))
            waited = time.monotonic() - t0
            assert st == 503 and body["error"] == "index_behind", body
            assert 0.9 <= waited < 5, waited
            async with api.session.post(
                    f"{api.base}/v1/databases/{db}/vectors/batch", headers=api.headers,
                    json={"vectors": [{"id": "x", "values": [0.1] * DIM}]}) as r:
                assert r.status == 503 and int(r.headers["Retry-After"]) >= 1
            # nothing of the refused writes was stored
            st, _ = await api.get(f"/v1/databases/{db}/vectors/over")
            assert st == 404
            # reads go on meanwhile
            assert await top(api, db, unit(rng, 1)[0], 3)
            st, text = await srv.admin.get("/metrics")
            assert "jadevectordb_writes_refused_index_behind_total 2.0" in str(text), text
            # a write waiting for room goes through once the graph catches up
            pending = asyncio.ensure_future(put(api, db, ["waits"], unit(rng, 1)))
            await asyncio.sleep(0.3)
            assert not pending.done()
            follower.release()
            st, body = await pending
            assert st in (200, 201), body
        finally:
            follower.release()
        st, body = await put(api, db, ["after"], unit(rng, 1))
        assert st in (200, 201), body


async def test_a_failed_fold_is_repaired_from_the_store(lag_settings: Settings) -> None:
    rng = np.random.default_rng(4)
    async with running_server(lag_settings) as srv:
        api, engine = srv.user, engine_of(srv)
        db = await hnsw_db(api)
        vecs = unit(rng, 30)
        faults.arm("index.fold")
        try:
            st, body = await put(api, db, [f"v{i}" for i in range(30)], vecs)
            assert st in (200, 201), body  # acknowledged: the fold happens after
            deadline = time.monotonic() + 10
            while engine.indexes.failures == 0 and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
            assert engine.indexes.failures == 1
        finally:
            faults.disarm()
        deadline = time.monotonic() + 10
        while (engine.indexes.failed or engine.indexes.get(db) is None) \
                and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        assert not engine.indexes.failed
        # the failed graph's batch is not counted as lag for ever (nothing folds it again)
        assert engine.indexes.lag() == (0, 0.0, 0)
        for i in range(30):
            hits = await top(api, db, vecs[i], 1)
            assert hits[0][0] == f"v{i}", hits


async def test_a_checkpoint_while_the_graph_lags_holds_every_write(tmp_path: Any) -> None:
    s = make_settings(tmp_path)
    rng = np.random.default_rng(5)
    vecs = unit(rng, 200)
    async with running_server(s) as srv:
        api, engine = srv.user, engine_of(srv)
        db = await hnsw_db(api)
        follower = engine.indexes.follower
        assert follower is not None
        follower.hold()
        st, body = await put(api, db, [f"v{i}" for i in range(200)], vecs)
        assert st in (200, 201), body
        await asyncio.to_thread(engine.indexes.checkpoint)
        assert engine.indexes.lag()[2] == 0, "a checkpoint folds what it captures"
        follower.release()
    # a restart loads that checkpoint (nothing to replay) and finds every vector
    engine = Engine(s)
    engine.open()
    try:
        assert engine.report.index["loaded"] == 1 and engine.report.index["rebuilt"] == 0
        assert engine.indexes.replayed_on_start == 0
        live = engine.indexes.get(db)
        assert live is not None and len(live.index) == 200
        for i in range(0, 200, 7):
            labels, _, _ = live.search(vecs[i], 1, None, exact_scan_max=0, cache_size=0)
            assert live.ids_for(labels.tolist(), engine.store) == [f"v{i}"]
    finally:
        engine.close()


HELD_SERVE = os.path.join(ROOT, "tests", "fixtures", "serve_index_held.py")


async def test_sigkill_while_the_graph_lags_loses_nothing_acknowledged(tmp_path: Any) -> None:
    """A real server whose follower never folds: every write is only staged when SIGKILL
    comes; the restart (a normal server) replays the log and finds each one."""
    import aiohttp

    rng = np.random.default_rng(6)
    vecs = unit(rng, 120)
    sp = ServerProcess(str(tmp_path / "data"), argv=[sys.executable, HELD_SERVE])
    sp.start()
    try:
        async with aiohttp.ClientSession() as session:
            anon = Api(sp.base, session)
            st, body = await anon.post("/v1/auth/register", {
                "username": "admin", "password": "Admin_Secure123@", "is_admin": True})
            assert st == 201, body
            api = Api(sp.base, session, {"Authorization": "Bearer " + await login(
                anon, "admin", "Admin_Secure123@")})
            db = await hnsw_db(api)
            for lo in range(0, 120, 10):
                st, body = await put(api, db, [f"v{i}" for i in range(lo, lo + 10)],
                                     vecs[lo : lo + 10])
                assert st in (200, 201), body
            st, body = await api.delete(f"/v1/databases/{db}/vectors/v3")
            assert st in (200, 204)
            st, status = await api.get("/status")
            assert status["indexes"]["lag"]["vectors"] >= 120, status["indexes"]
    finally:
        sp.kill()
    sp2 = ServerProcess(str(tmp_path / "data"), port=sp.port)
    sp2.start()
    try:
        async with aiohttp.ClientSession() as session:
            anon = Api(sp2.base, session)
            api = Api(sp2.base, session, {"Authorization": "Bearer " + await login(
                anon, "admin", "Admin_Secure123@")})
            for i in range(120):
                ids = [v for v, _ in await top(api, db, vecs[i], 3)]
                if i == 3:
                    assert "v3" not in ids
                else:
                    assert ids[0] == f"v{i}", (i, ids)
    finally:
        sp2.stop()


def test_a_search_racing_folds_never_misses_a_staged_vector() -> None:
    """Stage-and-fold on one thread, searches for every vector on another: each search
    finds every vector staged before it began, whatever point of a fold it meets (found by
    the state machine: a fold that emptied ``pending`` before it set ``folding`` left a
    moment where the graph, lacking the batch, answered alone)."""
    import threading

    from jade.indexes.hnsw import HnswIndex

    idx = HnswIndex(DIM, "cosine", m=8, ef_construction=32, ef_search=64, threads=1)
    rng = np.random.default_rng(7)
    vecs = unit(rng, 4000)
    staged = 0
    stop = threading.Event()
    misses: list[str] = []

    def writer() -> None:
        nonlocal staged
        for i in range(len(vecs)):
            if stop.is_set():
                return
            idx.stage(np.array([i], dtype=np.int64), vecs[i : i + 1])
            staged = i + 1
            if i % 3 == 2:
                idx.fold()
        stop.set()

    t = threading.Thread(target=writer)
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # threads switch every few bytecodes: the window is that wide
    t.start()
    try:
        while not stop.is_set():
            n = staged
            if n < 2:
                continue
            q = vecs[n - 1]
            labels, _ = idx.search(q, 1)
            if labels.tolist() != [n - 1] and float(vecs[labels[0]] @ q) < 0.9999:
                misses.append(f"vector {n - 1} of {n} staged: got {labels.tolist()}")
                stop.set()
    finally:
        stop.set()
        t.join()
        sys.setswitchinterval(interval)
    assert not misses, misses


def test_a_fold_that_fails_leaves_its_labels_to_the_next_fold() -> None:
    """A fold that raises (hnswlib, a full resize, a checkpoint's capture folding what is
    staged) must not strand its batch: the labels stay staged (searches score them exactly)
    and the next fold takes them into the graph. Before: they sat in ``folding`` for good,
    never folded, counted as lag for ever (and so, past the bound, refusing writes)."""
    from jade.indexes.hnsw import HnswIndex

    idx = HnswIndex(DIM, "cosine", m=8, ef_construction=32, ef_search=32, threads=1)
    vecs = unit(np.random.default_rng(8), 50)
    idx.stage(np.arange(50, dtype=np.int64), vecs, lsn=7)
    faults.arm("index.fold")
    try:
        with pytest.raises(faults.FaultInjected):
            idx.settle()
    finally:
        faults.disarm()
    assert idx.lag()[0] == 50
    assert idx.search(vecs[3], 1)[0].tolist() == [3]  # still answered, exactly
    assert idx.settle() == 50
    assert idx.lag() == (0, None)
    assert sorted(int(x) for x in idx.index.get_ids_list()) == list(range(50))


def test_hold_returns_only_once_a_fold_already_taken_is_done() -> None:
    """``hold`` is how a test makes the graph lag: it must not return while the follower is
    inside a fold it took before the hold, or what is staged next folds with that batch (the
    clean-clone CI run: the held graph lagged by 3 vectors instead of 40+)."""
    import threading
    from types import SimpleNamespace

    from jade.indexes.follow import Follower
    from jade.indexes.hnsw import HnswIndex

    entered, go = threading.Event(), threading.Event()

    class SlowFold(HnswIndex):
        def fold(self) -> int:
            entered.set()
            go.wait(10)
            return super().fold()

    idx = SlowFold(DIM, "cosine", m=8, ef_construction=32, ef_search=32, threads=1)
    live: Any = SimpleNamespace(index=idx)
    follower = Follower(lambda _live, exc: None)
    vecs = unit(np.random.default_rng(9), 20)
    try:
        idx.stage(np.arange(10, dtype=np.int64), vecs[:10])
        follower.kick([live])
        assert entered.wait(10)
        holder = threading.Thread(target=follower.hold)
        holder.start()
        holder.join(0.3)
        assert holder.is_alive(), "hold returned while a fold was under way"
        go.set()
        holder.join(10)
        assert not holder.is_alive()
        # held: what is staged now stays staged, whatever is kicked
        idx.stage(np.arange(10, 20, dtype=np.int64), vecs[10:])
        follower.kick([live])
        time.sleep(0.2)
        assert idx.lag()[0] == 10
        follower.release()
        deadline = time.monotonic() + 10
        while idx.lag()[0] and time.monotonic() < deadline:
            time.sleep(0.01)
        assert idx.lag()[0] == 0
    finally:
        go.set()
        follower.stop()
