"""The Python SDK (jadevectordb_server): the async and the sync client, the embedded mode
(``Client(path=...)``), typed errors, and the data directory lock.

The same scenario (writes, then reads that cover databases, vectors, search with filters,
batch and hybrid search, and the refusals) runs against a real server and against the
embedded mode, and the answers must be equal; the directory the embedded mode wrote is then
served by a real ``jade serve`` subprocess, which must give the embedded mode's answers."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Awaitable
from typing import Any

import aiohttp
import numpy as np
import pytest

from jadevectordb_server import AsyncClient, Client, errors
from jadevectordb_server.embedded import PURPOSE
from jadevectordb_server.models import Database
from tests.conftest import (
    ADMIN_PASSWORD,
    ROOT,
    ServerProcess,
    free_port,
    make_settings,
    running_server,
)

WORDS = ["alpha", "beta", "gamma", "delta", "omega"]
DIM = 8


@pytest.fixture(autouse=True)
def _no_config(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    """The embedded mode reads settings as ``jade serve`` does: keep the repository's config/
    out, as make_settings and ServerProcess do."""
    monkeypatch.setenv("JADEVECTORDB_CONFIG_DIR", str(tmp_path / "no-config"))


def data() -> tuple[np.ndarray, list[str], list[dict[str, Any]]]:
    rng = np.random.default_rng(7)
    x = rng.standard_normal((300, DIM)).astype(np.float32)
    ids = [f"v{i}" for i in range(300)]
    metas = [{"cat": "abc"[i % 3], "n": i,
              "text": f"doc {WORDS[i % 5]} {WORDS[(i * 7) % 5]} number {i}"} for i in range(300)]
    return x, ids, metas


async def write(c: AsyncClient) -> None:
    """The scenario's writes."""
    x, ids, metas = data()
    docs = await c.create_database("docs", DIM, description="the docs")
    assert isinstance(docs, Database) and docs.dimension == DIM and docs.vector_count == 0
    flat = await c.create_database("flat", 4, metric="euclidean", index_type="flat")
    assert await c.upsert_batch("docs", ids, x, metas, batch_size=128) == 300  # by name
    await c.upsert(docs, "one", x[0].tolist(), {"cat": "z", "text": "the single one"})
    await c.upsert(docs.id, "id with space?&x#y%", [1.0] * DIM)  # ids are path-escaped
    await c.delete("docs", "v5")
    await c.upsert_batch(flat, ["p", "q", "r"], [[0, 0, 0, 0], [1, 0, 0, 0], [3, 4, 0, 0]])
    built = await c.build_text_index("docs", "text")
    assert built["status"] == "success", built


async def indexed(c: AsyncClient, timeout: float = 30.0) -> None:
    """Until the graphs hold every write: answers are compared float for float."""
    deadline = time.monotonic() + timeout
    while (await c.status()).details["indexes"]["lag"]["vectors"]:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.01)


def db_view(d: Database, ids: bool) -> dict[str, Any]:
    out = {"name": d.name, "description": d.description, "dimension": d.dimension,
           "index_type": d.index_type, "metric": d.metric, "count": d.vector_count}
    if ids:
        out["id"] = d.id
    return out


def hits(rows: list[Any]) -> list[tuple[Any, ...]]:
    return [(h.id, round(h.score, 5), h.metadata) for h in rows]


async def refusal(call: Awaitable[Any]) -> tuple[str, int, str, str]:
    with pytest.raises(errors.ApiError) as info:
        await call
    e = info.value
    return type(e).__name__, e.status, e.code, e.message


async def read(c: AsyncClient, ids: bool = False) -> dict[str, Any]:
    """The scenario's reads, as comparable values."""
    x, _, _ = data()
    await indexed(c)
    out: dict[str, Any] = {}
    out["databases"] = [db_view(d, ids) for d in await c.list_databases()]
    out["by_name"] = db_view(await c.get_database("docs"), ids)
    out["get"] = await c.get("docs", "v7")
    out["escaped"] = await c.get("docs", "id with space?&x#y%")
    out["many"] = await c.get_many("docs", ["v1", "v5", "missing", "one"])
    out["search"] = hits(await c.search("docs", x[1], top_k=10, include_metadata=True))
    out["values"] = [h.values for h in await c.search("docs", x[3], top_k=2,
                                                      include_values=True)]
    out["filtered"] = hits(await c.search("docs", x[1], top_k=5, filters={"cat": "b"},
                                          include_metadata=True))
    out["threshold"] = hits(await c.search("docs", x[1], top_k=50, threshold=0.5))
    out["batch"] = [hits(r) for r in await c.search_batch("docs", x[:3], top_k=4)]
    out["batch_lists"] = [hits(r) for r in await c.search_batch("docs", x[:2].tolist(),
                                                                top_k=3)]
    out["hybrid_vector"] = [(h.id, round(h.score, 5)) for h in
                            await c.hybrid_search("docs", vector=x[2], top_k=5)]
    out["hybrid"] = [(h.id, round(h.score, 5), h.vector_score is not None,
                      h.bm25_score is not None) for h in
                     await c.hybrid_search("docs", text="gamma omega", vector=x[2], top_k=8,
                                           filters={"cat": "a"})]
    out["flat"] = hits(await c.search("flat", [1, 0, 0, 0], top_k=3))
    out["refusals"] = [
        await refusal(c.get("docs", "v5")),  # deleted
        await refusal(c.get("docs", "missing")),
        await refusal(c.get_database("no such database")),
        await refusal(c.search("no such database", x[0])),
        await refusal(c.upsert("docs", "short", [1.0, 2.0])),
        await refusal(c.search("docs", [1.0] * (DIM + 1))),
        await refusal(c.search("docs", x[0], top_k=0)),
        await refusal(c.search("docs", x[0], filters={"n": {"$nope": 1}})),
        await refusal(c.hybrid_search("docs")),
    ]
    health = await c.health()
    status = await c.status()
    out["health"] = health.status
    out["status"] = (status.status, status.mode, status.role, status.version)
    return out


async def test_embedded_and_server_give_the_same_answers(tmp_path: Any) -> None:
    settings = make_settings(tmp_path / "server")
    async with running_server(settings) as srv:
        token = srv.admin.headers["Authorization"].split()[1]
        async with AsyncClient(srv.base, api_key=token) as remote:
            assert not remote.embedded
            await write(remote)
            from_server = await read(remote)
    async with AsyncClient(path=str(tmp_path / "embedded")) as local:
        assert local.embedded
        await write(local)
        from_embedded = await read(local)
    assert from_embedded == from_server
    # the answers say what they should (equal answers could be equally wrong)
    a = from_embedded
    assert [d["name"] for d in a["databases"]] == ["docs", "flat"]
    assert a["databases"][0]["count"] == 301 and a["databases"][1]["metric"] == "euclidean"
    assert a["get"].id == "v7" and a["get"].metadata["n"] == 7 and len(a["get"].values) == DIM
    assert a["escaped"].values == [1.0] * DIM
    assert sorted(v.id for v in a["many"]) == ["one", "v1"]
    assert a["search"][0][0] == "v1" and a["search"][0][1] == 1.0
    assert len(a["search"]) == 10 and a["search"][0][2]["cat"] == "b"
    assert all(h[2]["cat"] == "b" for h in a["filtered"]) and len(a["filtered"]) == 5
    assert a["threshold"] and all(h[1] >= 0.5 for h in a["threshold"])
    assert [r[0][0] for r in a["batch"]] == ["v0", "v1", "v2"]
    assert a["hybrid"] and any(h[3] for h in a["hybrid"])
    assert a["flat"][0][0] == "q"
    names = [r[0] for r in a["refusals"]]
    assert names[:5] == ["NotFound", "NotFound", "NotFound", "NotFound", "DimensionMismatch"]
    assert names[5] == "DimensionMismatch" and a["refusals"][5][2] == "dimension_mismatch"
    assert all(r[1] == 400 for r in a["refusals"][4:]), a["refusals"]
    assert a["health"] == "healthy" and a["status"][:3] == ("operational", "readwrite",
                                                            "primary")


async def register_admin(base: str) -> str:
    """The first user of a served directory (the embedded mode makes none) asks for admin."""
    async with aiohttp.ClientSession() as s:
        async with s.post(base + "/v1/auth/register", json={
                "username": "admin", "password": ADMIN_PASSWORD, "is_admin": True}) as r:
            assert r.status == 201, await r.text()
        async with s.post(base + "/v1/auth/login", json={
                "username": "admin", "password": ADMIN_PASSWORD}) as r:
            assert r.status == 200, await r.text()
            return str((await r.json())["token"])


async def test_a_directory_written_embedded_is_served_by_jade_serve(tmp_path: Any) -> None:
    path = str(tmp_path / "data")
    async with AsyncClient(path=path) as local:
        await write(local)
        embedded = await read(local, ids=True)
    server = ServerProcess(path)
    await asyncio.to_thread(server.start)
    try:
        token = await register_admin(server.base)
        async with AsyncClient(server.base) as remote:
            assert await remote.login("admin", ADMIN_PASSWORD) == remote._api_key
            served = await read(remote, ids=True)
            await remote.upsert("docs", "from-the-server", [0.5] * DIM, {"cat": "s"})
        assert token
        # while the server holds the directory, the embedded mode is refused, naming it
        with pytest.raises(errors.DataDirLocked) as info:
            async with AsyncClient(path=path) as refused:
                await refused.health()
        assert "jade serve" in str(info.value) and info.value.holder["pid"] == server.proc.pid
        assert "connect to that server instead" in str(info.value)
    finally:
        await asyncio.to_thread(server.stop)
    assert served == embedded
    # and back: what the server wrote is there when the embedded mode opens the directory
    async with AsyncClient(path=path) as local:
        v = await local.get("docs", "from-the-server")
        assert v.metadata == {"cat": "s"} and v.values == [0.5] * DIM
        assert (await local.get_database("docs")).vector_count == 302


def test_the_sync_client_embedded(tmp_path: Any) -> None:
    x, ids, metas = data()
    path = str(tmp_path / "data")
    with Client(path=path) as c:
        assert c.embedded and c.health().status == "healthy"
        db = c.create_database("notes", DIM)
        assert c.upsert_batch(db, ids[:50], x[:50], metas[:50], batch_size=20) == 50
        c.upsert("notes", "extra", x[60], {"cat": "x"})
        assert c.get("notes", "extra").metadata == {"cat": "x"}
        assert [v.id for v in c.get_many(db, ["v3", "nope"])] == ["v3"]
        assert c.search(db, x[3], top_k=1)[0].id == "v3"
        assert [h.metadata for h in c.search(db, x[3], top_k=3, filters={"cat": "x"},
                                              include_metadata=True)] == [{"cat": "x"}]
        assert [r[0].id for r in c.search_batch(db, x[:2], top_k=1)] == ["v0", "v1"]
        assert c.hybrid_search(db, vector=x[4], top_k=1)[0].id == "v4"
        c.delete(db, "extra")
        with pytest.raises(errors.NotFound) as nf:
            c.get(db, "extra")
        assert nf.value.code == "not_found" and nf.value.status == 404
        with pytest.raises(errors.DimensionMismatch):
            c.search(db, [0.0, 1.0])
        assert [d.name for d in c.list_databases()] == ["notes"]
        c.delete_database("notes")
        with pytest.raises(errors.NotFound):
            c.get_database("notes")
        assert c.list_databases() == []
    c.close()  # idempotent
    with pytest.raises(errors.JadeClientError):
        c.health()


def test_the_sync_client_of_a_server(tmp_path: Any) -> None:
    server = ServerProcess(str(tmp_path / "data"))
    server.start()
    try:
        token = asyncio.run(register_admin(server.base))
        with Client(server.base, api_key=token) as c:
            assert not c.embedded
            db = c.create_database("remote", 3)
            c.upsert(db, "a", [1, 0, 0], {"k": 1})
            assert c.search(db, [1, 0, 0], top_k=1, include_metadata=True)[0].metadata == {
                "k": 1}
            assert c.status().details["performance"]["database_count"] == 1
        with Client(server.base, api_key="not-a-key") as bad:
            with pytest.raises(errors.Unauthorized) as info:
                bad.list_databases()
            assert info.value.status == 401 and info.value.request_id
            assert bad.health().status == "healthy"  # public
        with Client(server.base) as anon:
            with pytest.raises(errors.Unauthorized):
                anon.status()
            token2 = anon.login("admin", ADMIN_PASSWORD)
            assert token2 and anon.get_database("remote").id == db.id
    finally:
        server.stop()


async def test_no_server_is_a_transport_error() -> None:
    async with AsyncClient(f"http://127.0.0.1:{free_port()}", timeout=5) as c:
        with pytest.raises(errors.TransportError):
            await c.health()


async def test_names_resolve_and_ambiguity_is_refused(tmp_path: Any) -> None:
    async with AsyncClient(path=str(tmp_path / "data")) as c:
        first = await c.create_database("twin", 2)
        await c.upsert("twin", "a", [1, 0])  # by name
        assert (await c.get_database("twin")).vector_count == 1
        try:
            await c.create_database("twin", 3)
        except errors.Conflict:  # names unique per owner: the server refuses the second
            assert [d.id for d in await c.list_databases()] == [first.id]
        else:
            with pytest.raises(errors.AmbiguousName) as info:
                await c.get_database("twin")
            assert first.id in info.value.body["ids"] and len(info.value.body["ids"]) == 2
            assert info.value.status == 409 and info.value.code == "ambiguous_name"
        assert (await c.get_database(first.id)).name == "twin"  # by id, always
        await c.delete_database(first)
        with pytest.raises(errors.NotFound):
            await c.get_database(first.id)


def test_error_mapping() -> None:
    e = errors.from_answer(400, {"error": "dimension_mismatch", "message": "m"}, "rid")
    assert type(e) is errors.DimensionMismatch and isinstance(e, errors.BadRequest)
    assert (e.status, e.code, e.message, e.request_id) == (400, "dimension_mismatch", "m", "rid")
    assert type(errors.from_answer(503, {"error": "read_only"})) is errors.ReadOnly
    assert type(errors.from_answer(503, {"error": "not_primary"})) is errors.NotPrimary
    # a code is trusted only with its own status
    assert type(errors.from_answer(500, {"error": "dimension_mismatch"})) is errors.ServerError
    r = errors.from_answer(429, {"error": "rate_limit_exceeded", "retry_after": 7})
    assert isinstance(r, errors.RateLimited) and r.retry_after == 7
    assert type(errors.from_answer(507, {"error": "insufficient_storage"})) is (
        errors.InsufficientStorage)
    html = errors.from_answer(502, "<html>bad gateway</html>")
    assert type(html) is errors.ServerError and html.code == "http_502"
    for status, cls in [(401, errors.Unauthorized), (403, errors.Forbidden),
                        (404, errors.NotFound), (409, errors.Conflict),
                        (413, errors.PayloadTooLarge)]:
        assert type(errors.from_answer(status, {"error": "x"})) is cls


async def test_a_second_process_is_refused_and_one_process_shares(tmp_path: Any) -> None:
    path = str(tmp_path / "data")
    async with AsyncClient(path=path) as one:
        db = await one.create_database("shared", 2)
        # another client in this process shares the embedded server (one engine per directory)
        async with AsyncClient(path=path) as two:
            await two.upsert(db, "a", [1, 0])
        assert (await one.get(db, "a")).values == [1.0, 0.0]  # the first is still open
        # another process: refused, naming this one
        script = ("import sys\nfrom jadevectordb_server import Client, DataDirLocked\n"
                  "try:\n    Client(path=sys.argv[1])\nexcept DataDirLocked as e:\n"
                  "    print(e.holder['pid'], e); sys.exit(3)\n")
        other = await asyncio.to_thread(
            subprocess.run, [sys.executable, "-c", script, path], capture_output=True,
            text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": ROOT}, timeout=120)
        assert other.returncode == 3, other.stderr
        assert other.stdout.startswith(f"{os.getpid()} ") and PURPOSE in other.stdout
        # and so is a server
        server = ServerProcess(path)
        with pytest.raises(RuntimeError, match="exited with 1"):
            await asyncio.to_thread(server.start)
        server.log.close()
        with open(os.path.join(os.path.dirname(path), f"server-{server.port}.log")) as fh:
            assert PURPOSE in fh.read()
    # closed: the directory is free for the next opener
    async with AsyncClient(path=path) as again:
        assert (await again.get("shared", "a")).id == "a"


def test_the_credential_is_never_written(tmp_path: Any) -> None:
    path = tmp_path / "data"
    with Client(path=str(path)) as c:
        db = c.create_database("d", 2)
        c.upsert(db, "a", [1, 0])
        credential = c._aio._embedded.credential.encode()
        socket_dir = os.path.dirname(c._aio._embedded.socket_path)
        assert (os.stat(socket_dir).st_mode & 0o777) == 0o700
    assert not os.path.exists(socket_dir)
    for root, _, files in os.walk(path):
        for name in files:
            with open(os.path.join(root, name), "rb") as fh:
                assert credential not in fh.read(), name


def test_an_unclosed_client_closes_at_exit(tmp_path: Any) -> None:
    """A notebook that never calls close(): the interpreter's exit closes the directory
    cleanly (index checkpoint), so the next open replays nothing."""
    path = str(tmp_path / "data")
    script = ("import sys\nfrom jadevectordb_server import Client\n"
              "c = Client(path=sys.argv[1])\ndb = c.create_database('d', 4)\n"
              "c.upsert_batch(db, [str(i) for i in range(100)], "
              "[[i, 1, 2, 3] for i in range(100)])\nprint('written')\n")
    done = subprocess.run([sys.executable, "-c", script, path], capture_output=True, text=True,
                          cwd=ROOT, env={**os.environ, "PYTHONPATH": ROOT}, timeout=120)
    assert done.returncode == 0 and done.stdout == "written\n", done.stderr
    assert not done.stderr, done.stderr
    # a clean close: no run marker left, the index checkpointed, the lock record cleared
    assert not os.path.exists(os.path.join(path, "jadevectordb.db.running"))
    assert os.listdir(os.path.join(path, "indexes"))
    with open(os.path.join(path, "jade.lock")) as fh:
        assert fh.read() == ""
    with Client(path=path) as c:
        assert c.get_database("d").vector_count == 100
        indexes = c.status().details["indexes"]
        assert indexes["replayed_on_start"] == 0, indexes


