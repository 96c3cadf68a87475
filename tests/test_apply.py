"""decide + apply for every data record type, through the real Engine (log, store, indexes)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from jade.core.decide import MISSING, Command
from jade.engine import Engine
from jade.errors import Conflict, InvalidArgument, NotFound, ReadOnly
from jade.http.databases import new_index
from jade.settings import Settings
from jade.stores.data import lkey, ms, prefix, serving_index
from wal.codec import Record
from wal.seal import seal

# -- command builders (the shapes jade/http/databases.py, vectors.py, indexes.py send) ----------


def db_create(db_id: str, dim: int = 3, metric: str = "cosine", kind: str = "hnsw",
              params: dict[str, int] | None = None, actor: str = "alice") -> Command:
    requested = kind.upper()
    return Command(
        "db.create",
        {
            "db": db_id,
            "name": f"name-{db_id}",
            "description": "a test database",
            "dimension": dim,
            "metric": metric,
            "index_type": requested,
            "index": new_index(requested, kind, dict(params or {})),
            "extra": {"sharding": {"strategy": "none"}},
        },
        actor,
    )


def upsert(db_id: str, items: list[tuple[str, list[float], Any]], *, must_exist: bool = False,
           actor: str = "alice") -> Command:
    values = np.array([v for _, v, _ in items], dtype="<f4").tobytes()
    return Command(
        "vec.upsert",
        {
            "db": db_id,
            "ids": [i for i, _, _ in items],
            "values": values,
            "metadata": [m for _, _, m in items],
            "must_exist": must_exist,
        },
        actor,
        size=len(values),
    )


def vec_delete(db_id: str, ids: list[str], must_exist: bool = True) -> Command:
    return Command("vec.delete", {"db": db_id, "ids": ids, "must_exist": must_exist}, "alice")


def f32(values: list[float]) -> bytes:
    return np.array(values, dtype="<f4").tobytes()


@pytest.fixture
def engine(settings: Settings) -> Iterator[Engine]:
    e = Engine(settings)
    e.open()
    yield e
    e.close()


def run(engine: Engine, cmd: Command) -> list[Record]:
    recs = engine.submit_sync(cmd)
    assert engine.store.applied_lsn() == recs[-1].lsn == engine.log.last_lsn
    return recs


def raw_keys(engine: Engine, sub: Any, db_id: str) -> list[bytes]:
    with engine.env.read() as txn:  # type: ignore[union-attr]
        return [k for k, _ in txn.cursor(db=sub) if k.startswith(prefix(db_id))]


def refused(engine: Engine, cmd: Command, exc: type[Exception], **match: Any) -> Exception:
    last = engine.log.last_lsn
    with pytest.raises(exc) as info:
        engine.submit_sync(cmd)
    assert engine.log.last_lsn == last  # a refusal writes nothing
    assert engine.store.applied_lsn() == last
    for k, v in match.items():
        assert getattr(info.value, k) == v
    return info.value


# -- databases ----------------------------------------------------------------------------------


def test_db_create(engine: Engine) -> None:
    (rec,) = run(engine, db_create("d1", dim=3, metric="euclidean", params={"M": 8}))
    assert rec.type == "db.create" and rec.actor == "alice"
    db = engine.store.database("d1")
    assert db is not None
    now = ms(rec.ts)
    assert {k: db[k] for k in ("id", "name", "description", "dimension", "metric", "index_type",
                                "count", "next_label", "owner", "created_at", "updated_at")} == {
        "id": "d1", "name": "name-d1", "description": "a test database", "dimension": 3,
        "metric": "euclidean", "index_type": "HNSW", "count": 0, "next_label": 0,
        "owner": "alice", "created_at": now, "updated_at": now,
    }
    assert db["extra"] == {"sharding": {"strategy": "none"}}
    assert len(db["indexes"]) == 1
    idx = db["indexes"][0]
    # the parameters the client left out are decided before the append (the defaults)
    assert idx["kind"] == "hnsw"
    assert idx["parameters"] == {"M": 8, "efConstruction": 200, "efSearch": 64}
    assert idx["created_at"] == idx["updated_at"] == now
    live = engine.indexes.get("d1")
    assert live is not None
    assert (live.dim, live.metric, live.spec.kind, live.spec.m) == (3, "euclidean", "hnsw", 8)
    assert len(live) == 0
    assert [d["id"] for d in engine.store.databases()] == ["d1"]
    # an existing id is refused: apply would overwrite the catalog and orphan its vectors
    run(engine, upsert("d1", [("a", [1, 2, 3], None)]))
    refused(engine, db_create("d1", dim=2), Conflict)
    assert engine.store.database("d1")["count"] == 1  # type: ignore[index]


def test_db_update(engine: Engine) -> None:
    run(engine, db_create("d1", dim=3))
    (rec,) = run(engine, Command("db.update", {"db": "d1", "changes": {
        "name": "renamed", "description": "new words"}}, "bob"))
    db = engine.store.database("d1")
    assert db is not None
    assert (db["name"], db["description"]) == ("renamed", "new words")
    assert db["updated_at"] == ms(rec.ts) and db["created_at"] < db["updated_at"] + 1
    assert db["owner"] == "alice"
    # the dimension of an empty database may change; its index follows
    run(engine, Command("db.update", {"db": "d1", "changes": {"dimension": 5}}))
    assert engine.store.database("d1")["dimension"] == 5  # type: ignore[index]
    assert engine.indexes.get("d1").dim == 5  # type: ignore[union-attr]
    run(engine, upsert("d1", [("a", [1, 2, 3, 4, 5], None)]))
    refused(engine, Command("db.update", {"db": "d1", "changes": {"dimension": 4}}),
            InvalidArgument, code="dimension_locked")
    # the same dimension again is not a change
    run(engine, Command("db.update", {"db": "d1", "changes": {"dimension": 5, "name": "x"}}))
    refused(engine, Command("db.update", {"db": "nope", "changes": {"name": "x"}}), NotFound)


def test_db_update_with_a_new_index_replaces_the_indexes(engine: Engine) -> None:
    run(engine, db_create("d1", dim=2))
    run(engine, upsert("d1", [("a", [1, 0], {"k": 1}), ("b", [0, 1], None)]))
    old = engine.store.database("d1")["indexes"][0]["id"]  # type: ignore[index]
    idx = new_index("FLAT", "flat", {})
    for key in ("created_at", "updated_at"):  # a record that carries no index times
        idx.pop(key, None)
    cmd = Command("db.update", {"db": "d1", "changes": {"index_type": "FLAT", "new_index": idx}})
    (rec,) = run(engine, cmd)
    # the record carries the index as decided: every field, times 0 (none given)
    assert rec.body["changes"]["indexes"] == [{**idx, "created_at": 0, "updated_at": 0}]
    db = engine.store.database("d1")
    assert db is not None
    assert db["index_type"] == "FLAT"
    assert [i["id"] for i in db["indexes"]] == [idx["id"]] != [old]
    assert db["indexes"][0]["created_at"] == ms(rec.ts)
    live = engine.indexes.get("d1")
    assert live is not None and live.spec.kind == "flat" and live.index.kind == "flat"
    assert sorted(live.meta) == [0, 1]  # rebuilt from the store
    assert live.meta[0] == {"k": 1}


def test_db_delete_removes_everything_of_that_database_only(engine: Engine) -> None:
    run(engine, db_create("db1", dim=2))
    run(engine, db_create("db10", dim=2))  # "db1" is a prefix of this id
    run(engine, upsert("db1", [("a", [1, 0], None), ("b", [0, 1], None)]))
    run(engine, upsert("db10", [("a", [1, 1], {"x": 1})]))
    (rec,) = run(engine, Command("db.delete", {"db": "db1"}))
    assert rec.body == {"db": "db1", "v": 2}
    assert engine.store.database("db1") is None
    assert engine.store.vector("db1", "a") is None
    assert raw_keys(engine, engine.store.vec, "db1") == []
    assert raw_keys(engine, engine.store.lbl, "db1") == []
    assert engine.indexes.get("db1") is None
    # the neighbour is untouched
    assert engine.store.database("db10")["count"] == 1  # type: ignore[index]
    assert engine.store.vector("db10", "a").metadata == {"x": 1}  # type: ignore[union-attr]
    assert len(raw_keys(engine, engine.store.lbl, "db10")) == 1
    assert len(engine.indexes.get("db10")) == 1  # type: ignore[arg-type]
    refused(engine, Command("db.delete", {"db": "db1"}), NotFound)
    # the id can be used again, from scratch
    run(engine, db_create("db1", dim=4))
    assert engine.store.database("db1")["count"] == 0  # type: ignore[index]
    run(engine, upsert("db1", [("a", [1, 2, 3, 4], None)]))
    assert engine.store.vector("db1", "a").label == 0  # type: ignore[union-attr]


# -- vectors ------------------------------------------------------------------------------------


def test_vec_upsert_new_vectors(engine: Engine) -> None:
    run(engine, db_create("d", dim=3))
    (rec,) = run(engine, upsert("d", [("a", [1, 2, 3], {"c": "red"}), ("b", [4, 5, 6], None)]))
    assert rec.body["labels"] == [0, 1]
    assert rec.body["next_label"] == 2
    assert "must_exist" not in rec.body  # decided away: apply never has to guess
    a = engine.store.vector("d", "a")
    b = engine.store.vector("d", "b")
    assert a is not None and b is not None
    assert (a.label, a.values, a.metadata) == (0, f32([1, 2, 3]), {"c": "red"})
    assert (b.label, b.values, b.metadata) == (1, f32([4, 5, 6]), None)
    assert engine.store.ids_for_labels("d", [0, 1, 2]) == ["a", "b", None]
    db = engine.store.database("d")
    assert db is not None and (db["count"], db["next_label"]) == (2, 2)
    assert db["updated_at"] == ms(rec.ts)
    live = engine.indexes.get("d")
    assert live is not None
    assert live.meta == {0: {"c": "red"}, 1: None}
    unit = np.array([4, 5, 6]) / np.linalg.norm([4, 5, 6])  # cosine stores normalised vectors
    assert np.allclose(live.index.get(np.array([1])), unit)


def test_vec_upsert_again_keeps_the_label(engine: Engine) -> None:
    run(engine, db_create("d", dim=2, kind="flat"))
    run(engine, upsert("d", [("a", [1, 0], {"v": 1}), ("b", [0, 1], {"v": 2})]))
    (rec,) = run(engine, upsert("d", [("b", [0.5, 0.5], {"v": 3}), ("c", [1, 1], None)]))
    assert rec.body["labels"] == [1, 2]
    b = engine.store.vector("d", "b")
    assert b is not None and (b.label, b.values, b.metadata) == (1, f32([0.5, 0.5]), {"v": 3})
    db = engine.store.database("d")
    assert db is not None and (db["count"], db["next_label"]) == (3, 3)
    assert engine.store.ids_for_labels("d", [0, 1, 2]) == ["a", "b", "c"]
    live = engine.indexes.get("d")
    assert live is not None and len(live) == 3 and live.meta[1] == {"v": 3}
    labels, _, _ = live.search(np.array([0.5, 0.5], dtype=np.float32), 1, None,
                               exact_scan_max=0, cache_size=0)
    assert labels[0] in (1, 2)  # b and c point the same way
    # the update path: must exist, and without metadata the stored one is kept
    run(engine, upsert("d", [("a", [2, 0], MISSING)], must_exist=True))
    a = engine.store.vector("d", "a")
    assert a is not None and (a.label, a.values, a.metadata) == (0, f32([2, 0]), {"v": 1})
    assert live.meta[0] == {"v": 1}
    # explicit metadata replaces it; explicit None clears it
    run(engine, upsert("d", [("a", [2, 0], {"w": 1})], must_exist=True))
    assert engine.store.vector("d", "a").metadata == {"w": 1}  # type: ignore[union-attr]
    run(engine, upsert("d", [("a", [2, 0], None)], must_exist=True))
    assert engine.store.vector("d", "a").metadata is None  # type: ignore[union-attr]
    assert engine.store.database("d")["count"] == 3  # type: ignore[index]


def test_vec_upsert_same_id_twice_in_one_batch(engine: Engine) -> None:
    run(engine, db_create("d", dim=2))
    run(engine, upsert("d", [("old", [1, 1], {"keep": True})]))
    (rec,) = run(engine, upsert("d", [
        ("x", [1, 0], {"n": 1}), ("x", [0, 1], {"n": 2}),
        ("old", [3, 3], MISSING), ("old", [4, 4], MISSING),
        ("y", [1, 2], {"n": 3}), ("y", [2, 1], MISSING),
    ]))
    assert rec.body["labels"] == [1, 1, 0, 0, 2, 2]
    assert rec.body["metadata"] == [{"n": 1}, {"n": 2}, {"keep": True}, {"keep": True},
                                    {"n": 3}, {"n": 3}]
    x = engine.store.vector("d", "x")
    assert x is not None and (x.values, x.metadata) == (f32([0, 1]), {"n": 2})
    old = engine.store.vector("d", "old")
    assert old is not None and (old.values, old.metadata) == (f32([4, 4]), {"keep": True})
    y = engine.store.vector("d", "y")
    assert y is not None and y.metadata == {"n": 3}
    assert engine.store.database("d")["count"] == 3  # type: ignore[index]
    live = engine.indexes.get("d")
    assert live is not None and len(live) == 3


def test_vec_upsert_refusals(engine: Engine) -> None:
    run(engine, db_create("d", dim=2))
    run(engine, upsert("d", [("a", [1, 0], None)]))
    refused(engine, upsert("nope", [("a", [1, 0], None)]), NotFound)
    err = refused(engine, upsert("d", [("a", [1, 0], None), ("zz", [0, 1], None)],
                                 must_exist=True), NotFound)
    assert err.extra == {"vector_id": "zz"}  # type: ignore[attr-defined]
    assert engine.store.vector("d", "zz") is None
    assert engine.store.vector("d", "a").values == f32([1, 0])  # type: ignore[union-attr]
    bad = Command("vec.upsert", {"db": "d", "ids": ["b"], "values": f32([1, 2, 3]),
                                 "metadata": [None]})
    refused(engine, bad, InvalidArgument, code="dimension_mismatch")
    assert engine.store.database("d")["count"] == 1  # type: ignore[index]


def test_vec_delete(engine: Engine) -> None:
    run(engine, db_create("d", dim=2))
    run(engine, upsert("d", [("a", [1, 0], {"t": "x"}), ("b", [0, 1], {"t": "y"}),
                             ("c", [1, 1], None)]))
    (rec,) = run(engine, vec_delete("d", ["b", "a", "b"]))
    assert rec.body == {"db": "d", "ids": ["b", "a"], "labels": [1, 0], "v": 2}
    assert engine.store.vector("d", "a") is None and engine.store.vector("d", "b") is None
    assert engine.store.ids_for_labels("d", [0, 1, 2]) == [None, None, "c"]
    db = engine.store.database("d")
    assert db is not None and (db["count"], db["next_label"]) == (1, 3)
    live = engine.indexes.get("d")
    assert live is not None and live.meta == {2: None} and len(live.index) == 1
    assert ("t", "x") not in live.terms and ("t", "y") not in live.terms
    refused(engine, vec_delete("d", ["a"]), NotFound)
    refused(engine, vec_delete("d", ["c", "a"]), NotFound)  # all or nothing
    assert engine.store.vector("d", "c") is not None
    refused(engine, vec_delete("nope", ["c"]), NotFound)
    # without must_exist unknown ids are skipped
    (rec,) = run(engine, vec_delete("d", ["a", "c"], must_exist=False))
    assert rec.body["ids"] == ["c"] and rec.body["labels"] == [2]
    assert engine.store.database("d")["count"] == 0  # type: ignore[index]
    # an id that comes back gets a fresh label
    (rec,) = run(engine, upsert("d", [("a", [1, 0], None)]))
    assert rec.body["labels"] == [3]
    assert engine.store.vector("d", "a").label == 3  # type: ignore[union-attr]
    with engine.env.read() as txn:  # type: ignore[union-attr]
        assert txn.get(lkey("d", 0), db=engine.store.lbl) is None
        assert txn.get(lkey("d", 3), db=engine.store.lbl) == seal(lkey("d", 3), b"a")


# -- indexes ------------------------------------------------------------------------------------


def test_index_create_update_delete(engine: Engine) -> None:
    run(engine, db_create("d", dim=2, kind="flat"))
    run(engine, upsert("d", [("a", [1, 0], None), ("b", [0, 1], {"m": 1})]))
    first = engine.store.database("d")["indexes"][0]["id"]  # type: ignore[index]
    idx = new_index("HNSW", "hnsw", {"M": 12, "efSearch": 20}, "second")
    (rec,) = run(engine, Command("index.create", {"db": "d", "index": idx}))
    db = engine.store.database("d")
    assert db is not None
    assert [i["id"] for i in db["indexes"]] == [first, idx["id"]]
    assert serving_index(db)["id"] == idx["id"]  # type: ignore[index]
    assert db["indexes"][1]["created_at"] == ms(rec.ts)
    live = engine.indexes.get("d")
    assert live is not None and live.index.kind == "hnsw" and live.spec.m == 12
    assert sorted(live.meta) == [0, 1] and len(live.index) == 2
    index_before = live.index

    # efSearch applies in place; the index is not rebuilt
    run(engine, Command("index.update", {"db": "d", "index_id": idx["id"],
                                         "parameters": {"efSearch": 99}}))
    db = engine.store.database("d")
    assert db is not None and db["indexes"][1]["parameters"] == {
        "M": 12, "efConstruction": 200, "efSearch": 99}  # decided at create
    live = engine.indexes.get("d")
    assert live is not None and live.index is index_before
    assert live.spec.ef_search == 99 and live.index.ef_search == 99  # type: ignore[attr-defined]
    # M rebuilds
    run(engine, Command("index.update", {"db": "d", "index_id": idx["id"],
                                         "parameters": {"M": 6}}))
    live = engine.indexes.get("d")
    assert live is not None and live.index is not index_before and live.spec.m == 6
    assert len(live.index) == 2
    refused(engine, Command("index.update", {"db": "d", "index_id": "index_nope",
                                             "parameters": {"M": 6}}), NotFound)
    refused(engine, Command("index.create", {"db": "nope", "index": idx}), NotFound)

    # deleting the serving index falls back to the previous one, then to an exact scan
    run(engine, Command("index.delete", {"db": "d", "index_id": idx["id"]}))
    db = engine.store.database("d")
    assert db is not None and [i["id"] for i in db["indexes"]] == [first]
    live = engine.indexes.get("d")
    assert live is not None and live.index.kind == "flat" and len(live.index) == 2
    run(engine, Command("index.delete", {"db": "d", "index_id": first}))
    db = engine.store.database("d")
    assert db is not None and db["indexes"] == [] and serving_index(db) is None
    live = engine.indexes.get("d")
    assert live is not None and live.index.kind == "flat" and len(live.index) == 2
    refused(engine, Command("index.delete", {"db": "d", "index_id": first}), NotFound)


# -- system mode --------------------------------------------------------------------------------


async def test_system_mode_readonly(engine: Engine) -> None:
    run(engine, db_create("d", dim=2))
    assert engine.mode() == "readwrite"
    (rec,) = run(engine, Command("system.mode", {"mode": "readonly"}, "admin"))
    assert rec.body == {"mode": "readonly", "v": 2}
    assert engine.mode() == "readonly"
    for cmd in (upsert("d", [("a", [1, 0], None)]), db_create("e"), vec_delete("d", ["a"]),
                Command("db.delete", {"db": "d"})):
        refused(engine, cmd, ReadOnly)  # decided on the writer thread
        with pytest.raises(ReadOnly):
            await engine.submit(cmd)  # and refused before reaching it
    assert engine.store.database("e") is None
    refused(engine, Command("system.mode", {"mode": "sideways"}), Conflict)
    run(engine, Command("system.mode", {"mode": "readonly"}))  # idempotent
    run(engine, Command("system.mode", {"mode": "readwrite"}))
    assert engine.mode() == "readwrite"
    (rec,) = await engine.submit(upsert("d", [("a", [1, 0], None)]))
    assert rec.type == "vec.upsert"
    assert engine.store.vector("d", "a") is not None


def test_unknown_command_is_refused(engine: Engine) -> None:
    refused(engine, Command("vec.teleport", {}), InvalidArgument)


def test_apply_is_a_fold_over_the_log(engine: Engine, tmp_path: Path) -> None:
    """Records of every type, then the store rebuilt from the log alone matches."""
    from tests.test_engine_property import replay_digest, state_digest

    run(engine, db_create("d", dim=2))
    run(engine, db_create("e", dim=3, kind="flat"))
    run(engine, upsert("d", [("a", [1, 0], {"x": [1, 2]}), ("b", [0, 1], None)]))
    run(engine, upsert("d", [("a", [0.5, 0.5], MISSING)], must_exist=True))
    run(engine, upsert("e", [("z", [1, 2, 3], "plain")]))
    run(engine, vec_delete("d", ["b"]))
    idx = new_index("HNSW", "hnsw", {"efSearch": 10})
    run(engine, Command("index.create", {"db": "e", "index": idx}))
    run(engine, Command("index.update", {"db": "e", "index_id": idx["id"],
                                         "parameters": {"efSearch": 30}}))
    run(engine, Command("db.update", {"db": "d", "changes": {"name": "dd"}}))
    run(engine, Command("system.mode", {"mode": "readonly"}))
    run(engine, Command("system.mode", {"mode": "readwrite"}))
    run(engine, Command("db.delete", {"db": "d"}))
    assert replay_digest(engine, tmp_path) == state_digest(engine.store)
