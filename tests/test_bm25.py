"""The BM25 index as a projection of the log (jade/text/projection.py, jade/http/text.py): the
/bm25-index routes and their error rows over HTTP, and the index equal (same top-k, same scores)
after a replay from empty, after a checkpoint + tail, after kill -9, on a replica and after a
point-in-time restore; an upsert that changes the text changes the ranking, a delete removes
the document, a build of thousands of vectors shows its progress. The documents given directly
are kept by the data store too (rebuilt after the log is trimmed, carried by snapshots), and
a build of 50k vectors runs in bounded steps while single writes go on."""

from __future__ import annotations

import asyncio
import os
import random
import shutil
import time
from typing import Any

import aiohttp
import pytest

from jade.backup.restore import restore, target_settings
from jade.backup.verify import verify_dir
from jade.engine import Engine, text_dir
from jade.http.keys import BACKUPS, ENGINE
from jade.settings import Settings
from tests.conftest import Api, Server, make_settings, running_server
from tests.test_replication import Node, bootstrap_auth, client, wait_converged

DIM = 4
WORDS = ("apple banana cherry delta echo falcon garden harbor island jungle kettle lemon "
         "mountain needle ocean pepper quartz river silver tiger umbrella violet walnut "
         "yellow zebra running runner runs engine engines database databases").split()
QUERIES = ["apple river", "running engines", "zebra", "database tiger ocean", "silver needle",
           "runs", "garden harbor island", "walnut yellow violet"]


def text(rng: random.Random, n: int = 8) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n))


def vectors(rng: random.Random, n: int, prefix: str, field: str = "text") -> list[dict[str, Any]]:
    return [{"id": f"{prefix}{i}", "values": [rng.random() for _ in range(DIM)],
             "metadata": {field: text(rng, rng.randint(3, 12)), "cat": rng.choice("abc")}}
            for i in range(n)]


async def put(api: Api, db: str, vs: list[dict[str, Any]]) -> None:
    st, body = await api.post(f"/v1/databases/{db}/vectors/batch", {"vectors": vs})
    assert st == 201, body


async def answers(api: Api, db: str) -> list[list[tuple[str, float]]]:
    """BM25's top 10 of every query (ids and exact scores)."""
    out = []
    for q in QUERIES:
        st, body = await api.post(f"/v1/databases/{db}/search/hybrid",
                                  {"queryText": q, "topK": 10})
        assert st == 200, body
        out.append([(r["vectorId"], r["bm25Score"]) for r in body["results"]])
    assert any(out), "the queries found nothing: the comparison would prove nothing"
    return out


async def phase(api: Api, db: str, seed: int) -> None:
    """A mix of writes: new vectors, text rewritten, text removed, deletes, documents."""
    rng = random.Random(seed)
    await put(api, db, vectors(rng, 60, f"p{seed}-"))
    await put(api, db, vectors(rng, 20, "p0-"))  # rewrites the text of earlier vectors
    await put(api, db, [{"id": f"p0-{i}", "values": [1.0] * DIM, "metadata": {"cat": "a"}}
                        for i in range(20, 25)])  # their text removed
    for i in range(30, 36):
        st, body = await api.delete(f"/v1/databases/{db}/vectors/p{seed}-{i}")
        assert st == 200, body
    st, body = await api.post(f"/v1/databases/{db}/bm25-index/documents", {"documents": [
        {"doc_id": f"doc{seed}-{i}", "text": text(rng)} for i in range(10)]})
    assert st == 200, body


# -- routes ----------------------------------------------------------------------------------


async def test_routes_and_error_rows(server: Server) -> None:
    api = server.user
    db = await api.create_db(DIM)
    base = f"/v1/databases/{db}/bm25-index"
    st, body = await api.get(base + "/status")
    assert st == 404 and body["error"] == "bm25_index_not_found", body
    st, body = await api.get("/v1/databases/nope/bm25-index/status")
    assert st == 404 and body["error"] == "not_found", body
    st, body = await api.post("/v1/databases/nope/bm25-index/build", {})
    assert st == 404, body
    await put(api, db, vectors(random.Random(1), 50, "v"))
    await put(api, db, [{"id": "notext", "values": [1.0] * DIM, "metadata": {"cat": "a"}}])

    # build: 200 (the reference client refuses 202), the default field "text"
    st, body = await api.post(base + "/build", {"textField": "text", "incremental": False})
    assert st == 200 and body["status"] == "success" and body["documentCount"] == 50, body
    assert body["textField"] == "text" and "durationMs" in body
    st, body = await api.get(base + "/status")
    assert st == 200, body
    assert body["status"] == "ready" and body["totalDocuments"] == 50, body
    assert body["processedDocuments"] == 50 and body["progressPercentage"] == 100.0
    assert body["indexedTerms"] > 10 and body["indexStats"]["textField"] == "text"
    assert "durationMs" in body
    # incremental over the same field: nothing to append, the index follows writes already
    st, lsn_before = await api.get("/status")
    st, body = await api.post(base + "/build", {"incremental": True})
    assert st == 200 and body["documentCount"] == 50, body
    st, after = await api.get("/status")
    assert after["log"]["last_lsn"] == lsn_before["log"]["last_lsn"]
    # rebuild keeps the index's field by default; over another field
    st, body = await api.post(base + "/rebuild", {})
    assert st == 200 and body["textField"] == "text" and body["documentCount"] == 50, body
    st, body = await api.post(base + "/rebuild", {"textField": "cat"})
    assert st == 200 and body["documentCount"] == 51, body
    st, body = await api.post(base + "/rebuild", {"textField": "text"})
    assert st == 200 and body["documentCount"] == 50, body

    # bad bodies: 400, nothing written
    for bad in ({"textField": 3}, {"textField": ""}, {"incremental": "yes"}):
        st, body = await api.post(base + "/build", bad)
        assert st == 400, (bad, body)
    st, body = await api.post(base + "/build", raw=b"{not json")
    assert st == 400 and body["error"] == "invalid_json", body
    for bad in ({}, {"documents": []}, {"documents": "x"}, {"documents": [3]},
                {"documents": [{"text": "no id"}]}, {"documents": [{"doc_id": "a"}]},
                {"documents": [{"doc_id": "a", "text": 5}]},
                {"documents": [{"doc_id": "", "text": "x"}]}):
        st, body = await api.post(base + "/documents", bad)
        assert st == 400, (bad, body)

    # documents: 200, in the index, searchable
    st, body = await api.post(base + "/documents", {"documents": [
        {"doc_id": "d1", "text": "zebra zebra quartz"}, {"doc_id": "d2", "text": "quartz"}]})
    assert st == 200 and body["addedCount"] == 2 and body["totalDocuments"] == 52, body
    assert body["totalTerms"] > 0
    st, body = await api.post(f"/v1/databases/{db}/search/hybrid",
                              {"queryText": "zebra quartz", "topK": 3})
    assert st == 200 and body["results"][0]["vectorId"] == "d1", body

    # documents on a database without an index: the index is made (over "text") first
    db2 = await api.create_db(DIM)
    await put(api, db2, vectors(random.Random(2), 5, "w"))
    st, body = await api.post(f"/v1/databases/{db2}/bm25-index/documents",
                              {"documents": [{"doc_id": "x", "text": "lemon"}]})
    assert st == 200 and body["totalDocuments"] == 6, body

    # another user may not build on this database; readonly mode refuses the write routes
    st, body = await server.anon.post(base + "/build", {})
    assert st == 401, body
    st, body = await server.admin.post("/v1/admin/readonly")
    assert st == 200, body
    for path, b in (("/build", {}), ("/rebuild", {}),
                    ("/documents", {"documents": [{"doc_id": "x", "text": "y"}]})):
        st, body = await api.post(base + path, b)
        assert st == 503 and body["error"] == "read_only", (path, body)
    st, body = await api.get(base + "/status")
    assert st == 200, body
    st, body = await server.admin.post("/v1/admin/readwrite")
    assert st == 200, body

    # the database's deletion takes its index with it
    st, body = await api.delete(f"/v1/databases/{db}")
    assert st == 200, body
    engine = server.app[ENGINE]
    assert engine.text.index_of(db) is None and engine.text.defs.get(db) is None


async def test_upsert_changes_the_ranking_and_delete_removes(server: Server) -> None:
    api = server.user
    db = await api.create_db(DIM)
    one = [1.0] * DIM
    await put(api, db, [
        {"id": "a", "values": one, "metadata": {"text": "ocean ocean ocean waves"}},
        {"id": "b", "values": one, "metadata": {"text": "ocean mountain"}},
        {"id": "c", "values": one, "metadata": {"text": "mountain river forest"}},
        {"id": "d", "values": one, "metadata": {"text": "desert sand dunes"}},
        {"id": "e", "values": one, "metadata": {"text": "city lights at night"}},
    ])
    st, body = await api.post(f"/v1/databases/{db}/bm25-index/build", {})
    assert st == 200, body

    async def top(q: str) -> list[str]:
        st, body = await api.post(f"/v1/databases/{db}/search/hybrid",
                                  {"queryText": q, "topK": 5})
        assert st == 200, body
        return [r["vectorId"] for r in body["results"]]

    assert await top("ocean") == ["a", "b"]
    # the text of "b" changes: it ranks first for ocean, and "c" no longer has "mountain"
    st, body = await api.put(f"/v1/databases/{db}/vectors/b", {
        "values": one, "metadata": {"text": "ocean ocean ocean ocean ocean"}})
    assert st == 200, body
    assert await top("ocean") == ["b", "a"]
    assert await top("mountain") == ["c"]
    st, body = await api.delete(f"/v1/databases/{db}/vectors/b")
    assert st == 200, body
    assert await top("ocean") == ["a"]
    st, body = await api.get(f"/v1/databases/{db}/bm25-index/status")
    assert body["totalDocuments"] == 4, body
    # a vector written later with the text is indexed without another build
    await put(api, db, [{"id": "f", "values": one, "metadata": {"text": "ocean"}}])
    assert sorted(await top("ocean")) == ["a", "f"]


async def test_a_build_of_thousands_shows_progress(server: Server) -> None:
    api = server.user
    db = await api.create_db(DIM)
    rng = random.Random(7)
    n = 20_000
    for i in range(0, n, 1000):
        await put(api, db, [{"id": f"v{j}", "values": [1.0] * DIM,
                             "metadata": {"text": text(rng, 30)}} for j in range(i, i + 1000)])
    seen: list[dict[str, Any]] = []
    build = asyncio.create_task(api.post(f"/v1/databases/{db}/bm25-index/build", {}))
    while not build.done():
        st, body = await api.get(f"/v1/databases/{db}/bm25-index/status")
        if st == 200:
            seen.append(body)
        await asyncio.sleep(0.002)
    st, body = await build
    assert st == 200 and body["documentCount"] == n, body
    building = [s for s in seen if s["status"] == "building"]
    assert building, f"no status during the build showed it building: {seen[:3]}"
    assert any(0 < s["processedDocuments"] < n and s["totalDocuments"] == n
               and 0 < s["progressPercentage"] < 100 for s in building), building
    assert all(s["processedDocuments"] <= s["totalDocuments"] for s in seen)
    st, body = await api.get(f"/v1/databases/{db}/bm25-index/status")
    assert body["status"] == "ready" and body["processedDocuments"] == n, body
    assert body["progressPercentage"] == 100.0 and body["durationMs"] > 0


# -- the projection: replay, checkpoint + tail, crash, replica, restore ----------------------


async def test_equal_after_replay_from_empty_checkpoint_tail_and_kill(tmp_path: Any) -> None:
    node = Node(str(tmp_path), "p").start()
    tdir = os.path.join(node.data_dir, "text")
    try:
        creds = bootstrap_auth(node.base)
        async with aiohttp.ClientSession() as s:
            api = client(s, node.base, creds.user_token)
            db = await api.create_db(DIM)
            await put(api, db, vectors(random.Random(0), 200, "p0-"))
            st, body = await api.post(f"/v1/databases/{db}/bm25-index/build", {})
            assert st == 200 and body["documentCount"] == 200, body
            await phase(api, db, 1)
            a1 = await answers(api, db)
            node.stop()
            assert os.path.exists(os.path.join(tdir, "bm25.sqlite"))
            shutil.copytree(tdir, str(tmp_path / "ckpt"))  # the index as of a1

            await node.astart()
            assert await answers(api, db) == a1  # a restart from the file as it is
            await phase(api, db, 2)
            st, body = await api.post(f"/v1/databases/{db}/bm25-index/rebuild", {})
            assert st == 200, body
            await phase(api, db, 3)
            a2 = await answers(api, db)
            assert a2 != a1
            node.stop()

            shutil.rmtree(tdir)  # replay from empty: the whole log
            await node.astart()
            assert await answers(api, db) == a2
            node.stop()

            shutil.rmtree(tdir)  # checkpoint + tail: the copy taken at a1, then the log
            shutil.copytree(str(tmp_path / "ckpt"), tdir)
            await node.astart()
            assert await answers(api, db) == a2

            await phase(api, db, 4)
            a3 = await answers(api, db)
            node.kill()  # kill -9: every acknowledged write is in the index after the start
            await node.astart()
            assert await answers(api, db) == a3
    finally:
        node.stop()


async def test_equal_on_a_replica(tmp_path: Any) -> None:
    primary = Node(str(tmp_path), "primary").start()
    nodes = [primary]
    try:
        creds = bootstrap_auth(primary.base)
        async with aiohttp.ClientSession() as s:
            api = client(s, primary.base, creds.user_token)
            db = await api.create_db(DIM)
            await put(api, db, vectors(random.Random(0), 200, "p0-"))
            st, body = await api.post(f"/v1/databases/{db}/bm25-index/build", {})
            assert st == 200, body
            await phase(api, db, 1)
            # a replica that starts now, and writes that go on while it follows
            nodes.append(await Node(str(tmp_path), "r1", follow=primary.base,
                                    key=creds.repl_key).astart())
            rapi = client(s, nodes[1].base, creds.user_token)
            await phase(api, db, 2)
            st, body = await api.post(f"/v1/databases/{db}/bm25-index/rebuild", {})
            assert st == 200, body
            await phase(api, db, 3)
            await wait_converged(api, [rapi])
            assert await answers(rapi, db) == await answers(api, db)
            st, body = await rapi.get(f"/v1/databases/{db}/bm25-index/status")
            assert st == 200 and body["status"] == "ready", body
            # the replica refuses the write routes, naming the primary
            st, body = await rapi.post(f"/v1/databases/{db}/bm25-index/build", {})
            assert st == 503 and body["error"] == "not_primary", body
    finally:
        for n in nodes:
            n.stop()


def _answers_of(engine: Engine, db: str, queries: list[str] = QUERIES
                ) -> list[list[tuple[str, float]]]:
    assert engine.text is not None
    return [[(h.id, h.score) for h in engine.text.search(db, q, 10)] for q in queries]


async def test_equal_after_point_in_time_restore(server: Server, settings: Settings,
                                                 tmp_path: Any) -> None:
    api = server.user
    engine = server.app[ENGINE]
    db = await api.create_db(DIM)
    await put(api, db, vectors(random.Random(0), 200, "p0-"))
    st, body = await api.post(f"/v1/databases/{db}/bm25-index/build", {})
    assert st == 200, body
    await phase(api, db, 1)
    await asyncio.to_thread(server.app[BACKUPS].snapshot)  # the base of the restore
    await phase(api, db, 2)
    marker = engine.log.last_lsn
    want = _answers_of(engine, db)
    assert any(want)
    await phase(api, db, 3)  # after the point restored to
    assert _answers_of(engine, db) != want

    target = str(tmp_path / "restored")
    res = await asyncio.to_thread(restore, settings, target, lsn=marker,
                                  source_log=engine.log)
    assert res["target_lsn"] == marker, res
    ts = target_settings(settings, target)
    restored = Engine(ts)
    await asyncio.to_thread(restored.open)
    try:
        assert _answers_of(restored, db) == want
    finally:
        await asyncio.to_thread(restored.close)


@pytest.mark.parametrize("what", ["missing", "damaged"])
async def test_a_missing_or_damaged_file_is_rebuilt_from_the_log(tmp_path: Any, what: str
                                                                 ) -> None:
    s = make_settings(tmp_path)
    async with running_server(s) as srv:
        db = await srv.user.create_db(DIM)
        await put(srv.user, db, vectors(random.Random(3), 100, "v"))
        st, body = await srv.user.post(f"/v1/databases/{db}/bm25-index/build", {})
        assert st == 200, body
        await phase(srv.user, db, 1)
        want = _answers_of(srv.app[ENGINE], db)
    path = os.path.join(text_dir(s), "bm25.sqlite")
    if what == "missing":
        shutil.rmtree(text_dir(s))
    else:
        for suffix in ("-wal", "-shm"):
            if os.path.exists(path + suffix):
                os.remove(path + suffix)
        with open(path, "r+b") as fh:
            fh.write(b"garbage" * 20)
    e = Engine(s)
    await asyncio.to_thread(e.open)
    try:
        assert _answers_of(e, db) == want
        assert e.report.text["replayed_records"] > 0
    finally:
        await asyncio.to_thread(e.close)


# -- documents given directly live in the data store too -------------------------------------

DOC_QUERIES = QUERIES + ["xylophone", "quasar nebula", "orchid", "lantern"]


async def _docs_and_writes(api: Api, db: str) -> None:
    """Documents given directly, with the cases where a vector write of the same id decides."""
    one = [1.0] * DIM
    base = f"/v1/databases/{db}/bm25-index/documents"
    st, body = await api.post(base, {"documents": [
        {"doc_id": "d1", "text": "xylophone quasar"},
        {"doc_id": "d2", "text": "xylophone xylophone orchid"},
        {"doc_id": "d3", "text": "quasar lantern"},  # a vector of this id comes later: it wins
        {"doc_id": "p0-50", "text": "quasar nebula nebula"},  # over a vector's text: it wins
        {"doc_id": "d4", "text": "lantern orchid"},  # deleted (as a vector id) later
    ]})
    assert st == 200, body
    await put(api, db, [{"id": "d3", "values": one, "metadata": {"text": "orchid garden"}}])
    st, body = await api.delete(f"/v1/databases/{db}/vectors/d4")
    assert st in (200, 404), body
    st, body = await api.post(base, {"documents": [{"doc_id": "d1", "text": "xylophone nebula"}]})
    assert st == 200, body


async def test_documents_survive_a_trimmed_log_and_a_snapshot_restore(tmp_path: Any) -> None:
    s = make_settings(tmp_path)
    async with running_server(s) as srv:
        api, engine, bk = srv.user, srv.app[ENGINE], srv.app[BACKUPS]
        db = await api.create_db(DIM)
        await put(api, db, vectors(random.Random(5), 100, "p0-"))
        st, body = await api.post(f"/v1/databases/{db}/bm25-index/build", {})
        assert st == 200, body
        await _docs_and_writes(api, db)
        docs_lsn = engine.log.last_lsn
        await phase(api, db, 1)
        # a database of its own with documents, deleted: its documents go with it
        other = await api.create_db(DIM)
        st, body = await api.post(f"/v1/databases/{other}/bm25-index/documents",
                                  {"documents": [{"doc_id": "z", "text": "xylophone"}]})
        assert st == 200, body
        assert engine.store.text_docs(other) == [("z", "xylophone")]
        st, body = await api.delete(f"/v1/databases/{other}")
        assert st == 200, body
        assert engine.store.text_docs(other) == []
        await put(api, db, vectors(random.Random(6), 10, "late-"))
        want = _answers_of(engine, db, DOC_QUERIES)
        assert sorted(h[0] for h in want[-4]) == ["d1", "d2"], want[-4]  # xylophone
        assert want[-3][0][0] == "p0-50" and "d3" not in [h[0] for h in want[-1]], want
        assert engine.store.text_docs(db)[:2] == [("d1", "xylophone nebula"),
                                                   ("d2", "xylophone xylophone orchid")]

        # the log trimmed past the documents (an hour later, every holder past them)
        bk.now_ns = lambda: time.time_ns() + 2 * 3600 * 1_000_000_000
        await asyncio.to_thread(engine.indexes.checkpoint)
        await asyncio.to_thread(bk.archive_and_truncate if bk.archiving else bk.truncate)
        assert engine.log.first_lsn > docs_lsn, (engine.log.first_lsn, docs_lsn)
        snap = await asyncio.to_thread(bk.snapshot)  # its data file's log starts after them
    rep = await asyncio.to_thread(verify_dir, s)
    assert rep.ok, rep.lines

    shutil.rmtree(text_dir(s))  # the projection's file gone: rebuilt from the store
    e = Engine(s)
    await asyncio.to_thread(e.open)
    try:
        assert e.report.text["rebuilt"] is True, e.report.text
        assert _answers_of(e, db, DOC_QUERIES) == want
    finally:
        await asyncio.to_thread(e.close)

    target = str(tmp_path / "restored")  # a restore of the snapshot (no text file in it)
    res = await asyncio.to_thread(restore, s, target, lsn=snap.lsn)
    assert res["reached_lsn"] == snap.lsn, res
    ts = target_settings(s, target)
    assert not os.path.exists(os.path.join(snap.path, "text"))  # the restore rebuilt it
    restored = Engine(ts)
    await asyncio.to_thread(restored.open)
    try:
        assert _answers_of(restored, db, DOC_QUERIES) == want
    finally:
        await asyncio.to_thread(restored.close)
    rep = await asyncio.to_thread(verify_dir, ts)
    assert rep.ok, rep.lines


# -- a large build does not hold the writes --------------------------------------------------


async def test_a_large_build_runs_in_steps_while_writes_go_on(tmp_path: Any) -> None:
    s = make_settings(tmp_path)
    n = 50_000
    rng = random.Random(11)
    queries = DOC_QUERIES + ["ocean river", "tiger"]
    async with running_server(s) as srv:
        api, engine = srv.user, srv.app[ENGINE]
        db = await api.create_db(DIM)
        for i in range(0, n, 2500):
            await put(api, db, [{"id": f"v{j:06d}", "values": [rng.random() for _ in range(DIM)],
                                 "metadata": {"text": text(rng, 24)}}
                                for j in range(i, i + 2500)])
        while engine.indexes.lag_vectors():  # the graphs take the vectors (writes wait else)
            await asyncio.sleep(0.05)
        build = asyncio.create_task(api.post(f"/v1/databases/{db}/bm25-index/build", {}))
        while engine.text.defs.get(db) is None:  # the build has begun
            await asyncio.sleep(0.001)
        latencies: list[float] = []
        during: list[dict[str, Any]] = []
        hybrid_building = 0
        k = 0
        while not build.done() or k < 20:
            k += 1
            t0 = time.perf_counter()
            r = k % 5
            if r == 0:  # text rewritten, ahead of the cursor or behind it
                vid = f"v{rng.randrange(n):06d}"
                st, body = await api.put(f"/v1/databases/{db}/vectors/{vid}", {
                    "values": [1.0] * DIM, "metadata": {"text": "xylophone " + text(rng, 4)}})
            elif r == 1:
                st, body = await api.delete(f"/v1/databases/{db}/vectors/v{rng.randrange(n):06d}")
                st = 200 if st == 404 else st  # deleted twice
            elif r == 2:
                st, body = await api.post(f"/v1/databases/{db}/bm25-index/documents", {
                    "documents": [{"doc_id": f"v{rng.randrange(n):06d}" if k % 2 else f"doc{k}",
                                   "text": "lantern " + text(rng, 5)}]})
            else:
                st, body = await api.post(f"/v1/databases/{db}/vectors", {
                    "id": f"new{k}", "values": [1.0] * DIM,
                    "metadata": {"text": "orchid " + text(rng, 6)}})
                st = 200 if st == 201 else st
            latencies.append(time.perf_counter() - t0)
            assert st == 200, body
            if not build.done():
                st, body = await api.get(f"/v1/databases/{db}/bm25-index/status")
                assert st == 200, body
                during.append(body)
                st, body = await api.post(f"/v1/databases/{db}/search/hybrid",
                                          {"queryText": "xylophone river", "topK": 5})
                assert st == 200, body
                hybrid_building += bool(body.get("bm25Building"))
        st, body = await build
        assert st == 200 and body["status"] == "success", body
        assert max(latencies) < 0.5, sorted(latencies)[-5:]  # no write waited for the build
        building = [b for b in during if b["status"] == "building"]
        assert len(building) > 5, during[:3]  # the writes went on during the build
        assert any(0 < b["processedDocuments"] < b["totalDocuments"] for b in building), building
        assert hybrid_building > 0  # searches answered from what was built, and said so
        live = _answers_of(engine, db, queries)
        st, status_live = await api.get(f"/v1/databases/{db}/bm25-index/status")
        assert status_live["status"] == "ready", status_live
        assert status_live["totalDocuments"] > n - len(latencies), status_live
    assert any(live)
    shutil.rmtree(text_dir(s))  # a fresh rebuild: the log replayed into an empty file
    e = Engine(s)
    await asyncio.to_thread(e.open)
    try:
        assert e.text is not None and e.report.text["builds_finished"] == 1, e.report.text
        assert _answers_of(e, db, queries) == live
        fresh = e.text.status(db)
        assert fresh is not None and fresh["totalDocuments"] == status_live["totalDocuments"]
    finally:
        await asyncio.to_thread(e.close)


def test_a_build_stopped_halfway_goes_on_from_its_cursor(tmp_path: Any) -> None:
    """The cursor is in the file with the documents: a stop in the middle of a build (no
    checkpoint, as a kill) resumes there at the next start, and the index reached equals a
    fresh rebuild's."""
    from jade.core.decide import Command
    from jade.text.bm25 import TOKENIZER
    from tests.test_index_checkpoint import create_cmd, upsert_cmd

    s = make_settings(tmp_path)
    rng = random.Random(4)
    e = Engine(s)
    e.open()
    try:
        e.submit_sync(create_cmd("d", "flat", dim=DIM))
        for i in range(0, 30_000, 5000):
            e.submit_sync(upsert_cmd("d", [(f"v{j}", [1.0] * DIM, {"text": text(rng, 12)})
                                           for j in range(i, i + 5000)]))
        e.submit_sync(Command("text.index.set", {"db": "d", "field": "text",
                                                 "tokenizer": TOKENIZER}))
        # writes during the build (ahead of its cursor and behind it), in a group or two:
        # the writer runs a bounded step after each, so the build is far from its end
        assert e.writer is not None
        futures = [e.writer.submit(upsert_cmd("d", [(f"v{rng.randrange(30_000)}", [1.0] * DIM,
                                                     {"text": f"xylophone {text(rng, 3)}"})]))
                   for _ in range(20)]
        for fut in futures:
            fut.result()
        assert e.text is not None and e.text.building("d")
        e.close(checkpoint=False)  # the writer stops between steps: the build is unfinished
    finally:
        if e.env is not None:
            e.close(checkpoint=False)
    from jade.text.bm25 import Bm25File
    f = Bm25File(os.path.join(text_dir(s), "bm25.sqlite"))
    cursor, processed = f.cursors()["d"]
    f.close()
    assert cursor and 0 < processed < 30_000, (cursor, processed)

    e = Engine(s)
    e.open()
    try:
        assert e.report.text["builds_finished"] == 1 and e.report.text["replayed_records"] == 0
        resumed = _answers_of(e, "d", QUERIES + ["xylophone"])
        st = e.text.status("d") if e.text is not None else None
        assert st is not None and st["status"] == "ready" and st["totalDocuments"] == 30_000
    finally:
        e.close()
    assert any(resumed)
    shutil.rmtree(text_dir(s))
    e = Engine(s)
    e.open()
    try:
        assert _answers_of(e, "d", QUERIES + ["xylophone"]) == resumed
    finally:
        e.close()


def test_a_damaged_stored_document_is_refused_and_reported(tmp_path: Any) -> None:
    """The documents given directly are sealed in the data store like the vectors: a flipped
    byte is refused on read (never indexed) and ``jade verify`` names it."""
    from jade.core.decide import Command
    from jade.errors import StorageDamaged
    from jade.stores.data import DataStore
    from jade.text.bm25 import TOKENIZER
    from tests.test_index_checkpoint import create_cmd
    from wal.lmdbenv import Env

    s = make_settings(tmp_path)
    e = Engine(s)
    e.open()
    try:
        e.submit_sync(create_cmd("d", "flat", dim=DIM))
        e.submit_sync(Command("text.docs", {"db": "d", "ids": ["a", "b"],
                                            "texts": ["lantern orchid", "quasar"],
                                            "default_field": "text", "tokenizer": TOKENIZER}))
        assert e.store.text_docs("d") == [("a", "lantern orchid"), ("b", "quasar")]
        assert e.store.database("d")["text_docs"] == 2  # type: ignore[index]
    finally:
        e.close()
    assert verify_dir(s).ok
    env = Env(s.db_path)
    try:
        store = DataStore(env)

        def flip(txn: Any) -> None:
            raw = bytearray(txn.get(b"d\x00a", db=store.txt))
            raw[2] ^= 0x20
            txn.put(b"d\x00a", bytes(raw), db=store.txt)

        env.write(flip)
        with pytest.raises(StorageDamaged):
            store.text_docs("d")
    finally:
        env.close()
    rep = verify_dir(s)
    assert not rep.ok and any("do not match their checksum: txt" in line
                              for line in rep.lines), rep.lines


async def test_a_group_the_text_index_cannot_apply_is_reported_and_repaired_while_idle(
        tmp_path: Any) -> None:
    """A committed group the text projection fails to apply: the write stays acknowledged,
    /health/db says the text index is behind, and the writer catches it up from the log
    without waiting for another write (before: nothing reported it, and only the next group
    caught it up)."""
    from jade import faults

    async with running_server(make_settings(tmp_path)) as srv:
        api = srv.user
        db = await api.create_db(DIM)
        st, body = await api.post(f"/v1/databases/{db}/bm25-index/build", {})
        assert st == 200, body
        faults.arm("text.apply")
        try:
            await put(api, db, [{"id": "late", "values": [1.0] * DIM,
                                 "metadata": {"text": "a zebra crossing"}}])
        finally:
            faults.disarm()
        engine: Engine = srv.app[ENGINE]
        assert engine.projection_failures()["text"] == 1
        deadline, reported = time.monotonic() + 10, False
        while time.monotonic() < deadline:
            st, health = await srv.anon.get("/health/db")
            if st == 200:
                break
            assert "text" in health["checks"]["vector_db"]["status"], health
            reported = True
            await asyncio.sleep(0.05)
        assert reported, "/health/db never said the text index was behind"
        assert st == 200, health
        st, body = await api.post(f"/v1/databases/{db}/search/hybrid",
                                  {"queryText": "zebra", "topK": 3})
        assert st == 200 and [r["vectorId"] for r in body["results"]] == ["late"], body
