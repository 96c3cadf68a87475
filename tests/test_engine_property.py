"""The engine against a plain-dict model (Hypothesis state machine), plus restart recovery.

After every step the live store and the in-memory indexes must equal the model; at the end the
store rebuilt from the log alone (a fresh DataStore in another LMDB file) must be identical to
the live one: the state is a fold over the log.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import lmdb
import numpy as np
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from jade.core.decide import MISSING, Command
from jade.engine import Engine
from jade.errors import Conflict, InvalidArgument, NotFound
from jade.http.databases import new_index
from jade.indexes.vector_index import exact_scores
from jade.settings import Settings
from jade.stores.data import DataStore, prefix, serving_index
from tests.conftest import make_settings
from wal.codec import unpack
from wal.lmdbenv import Env

# -- digests ------------------------------------------------------------------------------------


def state_digest(store: DataStore) -> dict[str, Any]:
    """Everything the data projection holds, decoded: catalogs, vectors, labels, system keys."""
    with store.env.read() as txn:
        return {
            "dbs": {k.decode(): unpack(v) for k, v in txn.cursor(db=store.dbs)},
            "vec": {k: unpack(v) for k, v in txn.cursor(db=store.vec)},
            "lbl": dict(txn.cursor(db=store.lbl)),
            "sys": dict(txn.cursor(db=store.sys)),
        }


def replay_digest(engine: Engine, directory: str | Path) -> dict[str, Any]:
    """Apply the whole log (verified) to an empty store in a new LMDB file; return its digest.
    The new file starts tiny so its map has to grow while replaying."""
    path = os.path.join(str(directory), f"replay-{os.getpid()}-{id(engine)}.db")
    env = Env(path, map_size=64 * 1024)
    try:
        store = DataStore(env)
        recs = list(engine.log.iterate(0, verify=True))
        assert [r.lsn for r in recs] == list(range(1, engine.log.last_lsn + 1))
        for i in range(0, len(recs), 16):
            chunk = recs[i : i + 16]

            def body(txn: lmdb.Transaction, chunk: list[Any] = chunk) -> None:
                for rec in chunk:
                    store.apply(txn, rec)

            env.write(body)
        return state_digest(store)
    finally:
        env.close()
        for p in (path, path + "-lock"):
            if os.path.exists(p):
                os.remove(p)


# -- helpers ------------------------------------------------------------------------------------

DB_IDS = ["d0", "d1", "d2"]
VEC_IDS = list("abcdef")
METRICS = ["cosine", "euclidean", "dot"]
DIMS = st.integers(2, 4)
KINDS = st.sampled_from(["hnsw", "flat"])
EFS = st.one_of(st.none(), st.integers(1, 50))

metadata = st.one_of(
    st.none(),
    st.dictionaries(
        st.sampled_from(["color", "n", "tag"]),
        st.one_of(st.integers(-3, 3), st.sampled_from(["red", "blue"]), st.booleans()),
        max_size=3,
    ),
)


def vector(dim: int) -> st.SearchStrategy[list[float]]:
    # small integers: exact float32 arithmetic, and never the zero vector (cosine of nothing)
    return st.lists(st.integers(-4, 4), min_size=dim, max_size=dim).map(
        lambda xs: [float(x) for x in xs] if any(xs) else [1.0] + [float(x) for x in xs[1:]]
    )


def upsert_cmd(db_id: str, items: list[tuple[str, list[float], Any]], must_exist: bool = False
               ) -> Command:
    values = np.array([v for _, v, _ in items], dtype="<f4").tobytes()
    return Command(
        "vec.upsert",
        {"db": db_id, "ids": [i for i, _, _ in items], "values": values,
         "metadata": [m for _, _, m in items], "must_exist": must_exist},
        "prop",
        size=len(values),
    )


def check_indexes_match_store(engine: Engine, settings_: Settings) -> None:
    """Every LiveDb holds exactly the stored vectors, and searches find them."""
    dbs = {d["id"]: d for d in engine.store.databases()}
    assert set(engine.indexes.dbs) == set(dbs)
    for db_id, db in dbs.items():
        live = engine.indexes.get(db_id)
        assert live is not None
        stored = [v for chunk in engine.store.scan(db_id) for v in chunk]
        labels = {v.label: v for v in stored}
        assert len(labels) == len(stored) == db["count"]
        assert set(live.meta) == set(labels), (db_id, live.meta, labels)
        assert {k: labels[k].metadata for k in labels} == live.meta
        assert len(live.index) == len(stored)
        assert live.dim == db["dimension"] and live.metric == db["metric"]
        idx = serving_index(db)
        assert live.index.kind == (idx["kind"] if idx else "flat")
        if idx is not None and idx["kind"] == "hnsw":
            want = idx["parameters"].get("efSearch", settings_.hnsw_ef_search)
            assert live.spec.ef_search == want
            assert live.index.ef_search == want  # type: ignore[attr-defined]
        if not stored:
            continue
        data = np.stack([v.array() for v in stored]).astype(np.float32)
        if db["metric"] == "cosine":
            data = data / np.linalg.norm(data, axis=1, keepdims=True)
        for v in stored:
            q = v.array()
            got, scores, _ = live.search(q, len(stored), None, exact_scan_max=0, cache_size=0)
            assert set(got.tolist()) == set(labels), (db_id, v.id, got, labels)
            if live.index.kind == "flat":
                # exact: the best score is the best exact score, and ours is among the top
                exact = exact_scores(db["metric"], data, q)
                assert np.isclose(scores[0], exact.max(), rtol=1e-5, atol=1e-5)
                mine = exact[[s.id for s in stored].index(v.id)]
                top = {lab for lab, s in zip(got.tolist(), scores, strict=True)
                       if np.isclose(s, mine, rtol=1e-5, atol=1e-5)}
                assert v.label in top or db["metric"] == "dot"


# -- the state machine --------------------------------------------------------------------------


class EngineMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.dir = tempfile.mkdtemp(prefix="jade-prop-")
        self.settings = make_settings(Path(self.dir))
        self.engine = Engine(self.settings)
        self.engine.open()
        # db_id -> {"dim", "metric", "indexes": [(id, kind, params)], "vectors": {id: (bytes, md)}}
        self.model: dict[str, dict[str, Any]] = {}
        self.restarts = 0

    def teardown(self) -> None:
        try:
            assert replay_digest(self.engine, self.dir) == state_digest(self.engine.store)
        finally:
            self.engine.close()
            shutil.rmtree(self.dir, ignore_errors=True)

    def _submit(self, cmd: Command) -> None:
        self.engine.submit_sync(cmd)

    def _refused(self, cmd: Command, exc: type[Exception]) -> None:
        last = self.engine.log.last_lsn
        with pytest.raises(exc):
            self.engine.submit_sync(cmd)
        assert self.engine.log.last_lsn == last

    def _draw_db(self, data: st.DataObject, *, with_vectors: bool = False) -> str:
        dbs = sorted(d for d, m in self.model.items() if m["vectors"] or not with_vectors)
        return data.draw(st.sampled_from(dbs))

    # -- databases ---------------------------------------------------------------------------
    def _create(self, db: str, dim: int, metric: str, kind: str, ef: int | None) -> None:
        params = {"efSearch": ef} if ef is not None and kind == "hnsw" else {}
        idx = new_index(kind.upper(), kind, params)
        cmd = Command("db.create", {"id": db, "name": db, "description": "", "dimension": dim,
                                    "metric": metric, "index_type": kind.upper(), "index": idx,
                                    "extra": {}}, "prop")
        if db in self.model:
            self._refused(cmd, Conflict)
            return
        self._submit(cmd)
        self.model[db] = {"dim": dim, "metric": metric, "vectors": {},
                          "indexes": [(idx["id"], kind, params)]}

    @initialize(dim=DIMS, metric=st.sampled_from(METRICS), kind=KINDS, ef=EFS)
    def first_db(self, dim: int, metric: str, kind: str, ef: int | None) -> None:
        self._create(DB_IDS[0], dim, metric, kind, ef)

    @precondition(lambda self: len(self.model) < len(DB_IDS))
    @rule(data=st.data(), dim=DIMS, metric=st.sampled_from(METRICS), kind=KINDS, ef=EFS)
    def create_db(self, data: st.DataObject, dim: int, metric: str, kind: str, ef: int | None
                  ) -> None:
        db = data.draw(st.sampled_from([d for d in DB_IDS if d not in self.model]))
        self._create(db, dim, metric, kind, ef)

    @precondition(lambda self: len(self.model) >= 2)  # keep one database's history growing
    @rule(data=st.data())
    def delete_db(self, data: st.DataObject) -> None:
        db = self._draw_db(data)
        self._submit(Command("db.delete", {"id": db}, "prop"))
        del self.model[db]

    @precondition(lambda self: self.model)
    @rule(data=st.data(), dim=st.integers(2, 4))
    def update_db(self, data: st.DataObject, dim: int) -> None:
        db = self._draw_db(data)
        m = self.model[db]
        changes: dict[str, Any] = {"name": f"{db}-{dim}"}
        if not m["vectors"]:  # an empty database may change its dimension
            changes["dimension"] = dim
        self._submit(Command("db.update", {"id": db, "changes": changes}, "prop"))
        m["dim"] = changes.get("dimension", m["dim"])

    @precondition(lambda self: self.model)
    @rule(data=st.data())
    def refusals(self, data: st.DataObject) -> None:
        """Commands decide must refuse; each one leaves no trace (checked in ``_refused``)."""
        db = self._draw_db(data)
        m = self.model[db]
        dim = m["dim"]
        unknown = [d for d in DB_IDS if d not in self.model]
        cases: list[tuple[Command, type[Exception]]] = [
            (Command("db.create", {"id": db, "name": db, "description": "", "dimension": 2,
                                   "metric": "dot", "index_type": "FLAT",
                                   "index": new_index("FLAT", "flat", {}), "extra": {}}),
             Conflict),
            (upsert_cmd(db, [("zz", [1.0] * dim, None)], must_exist=True), NotFound),
            (Command("vec.delete", {"db": db, "ids": [*m["vectors"], "zz"]}), NotFound),
            (Command("index.update", {"db": db, "index_id": "index_nope",
                                      "parameters": {"efSearch": 5}}), NotFound),
            (Command("index.delete", {"db": db, "index_id": "index_nope"}), NotFound),
            (upsert_cmd(db, [("a", [1.0] * (dim + 1), None)]), InvalidArgument),
        ]
        if m["vectors"]:
            cases.append((Command("db.update", {"id": db, "changes": {"dimension": dim + 1}}),
                          InvalidArgument))
        for u in unknown:
            cases += [
                (Command("db.delete", {"id": u}), NotFound),
                (Command("db.update", {"id": u, "changes": {"name": "x"}}), NotFound),
                (upsert_cmd(u, [("a", [1.0, 2.0], None)]), NotFound),
                (Command("vec.delete", {"db": u, "ids": ["a"], "must_exist": False}), NotFound),
                (Command("index.create", {"db": u, "index": new_index("FLAT", "flat", {})}),
                 NotFound),
            ]
        for cmd, exc in cases:  # all of them: each is cheap, and none may leave a trace
            self._refused(cmd, exc)

    # -- vectors -----------------------------------------------------------------------------
    @precondition(lambda self: self.model)
    @rule(data=st.data())
    def upsert_batch(self, data: st.DataObject) -> None:
        db = self._draw_db(data)
        dim = self.model[db]["dim"]
        items = data.draw(st.lists(
            st.tuples(st.sampled_from(VEC_IDS), vector(dim), metadata), min_size=1, max_size=6))
        self._submit(upsert_cmd(db, items))
        for vid, values, md in items:
            self.model[db]["vectors"][vid] = (np.array(values, dtype="<f4").tobytes(), md)

    @precondition(lambda self: any(m["vectors"] for m in self.model.values()))
    @rule(data=st.data(), keep=st.booleans())
    def update_vector(self, data: st.DataObject, keep: bool) -> None:
        db = self._draw_db(data, with_vectors=True)
        vecs = self.model[db]["vectors"]
        vid = data.draw(st.sampled_from(sorted(vecs)))
        values = data.draw(vector(self.model[db]["dim"]))
        md = MISSING if keep else data.draw(metadata)
        self._submit(upsert_cmd(db, [(vid, values, md)], must_exist=True))
        vecs[vid] = (np.array(values, dtype="<f4").tobytes(), vecs[vid][1] if keep else md)

    @precondition(lambda self: any(m["vectors"] for m in self.model.values()))
    @rule(data=st.data(), must_exist=st.booleans())
    def delete_vectors(self, data: st.DataObject, must_exist: bool) -> None:
        db = self._draw_db(data, with_vectors=True)
        vecs = self.model[db]["vectors"]
        pool = sorted(vecs) if must_exist else sorted(vecs) + VEC_IDS
        ids = data.draw(st.lists(st.sampled_from(pool), min_size=1, max_size=3))
        self._submit(Command("vec.delete", {"db": db, "ids": ids, "must_exist": must_exist},
                             "prop"))
        for i in ids:
            vecs.pop(i, None)

    # -- indexes -----------------------------------------------------------------------------
    @precondition(lambda self: self.model)
    @rule(data=st.data(), ef=st.integers(1, 60))
    def change_ef_search(self, data: st.DataObject, ef: int) -> None:
        db = data.draw(st.sampled_from(sorted(self.model)))
        indexes = self.model[db]["indexes"]
        if not indexes:
            self._refused(Command("index.update", {"db": db, "index_id": "index_none",
                                                   "parameters": {"efSearch": ef}}), NotFound)
            return
        i = data.draw(st.integers(0, len(indexes) - 1))
        iid, kind, params = indexes[i]
        self._submit(Command("index.update", {"db": db, "index_id": iid,
                                              "parameters": {"efSearch": ef}}, "prop"))
        indexes[i] = (iid, kind, {**params, "efSearch": ef})

    @precondition(lambda self: self.model)
    @rule(data=st.data(), kind=st.sampled_from(["hnsw", "flat"]),
          m=st.one_of(st.none(), st.integers(4, 12)))
    def create_index(self, data: st.DataObject, kind: str, m: int | None) -> None:
        db = data.draw(st.sampled_from(sorted(self.model)))
        params = {"M": m} if m is not None else {}
        idx = new_index(kind.upper(), kind, params)
        self._submit(Command("index.create", {"db": db, "index": idx}, "prop"))
        self.model[db]["indexes"].append((idx["id"], kind, params))

    @precondition(lambda self: any(m["indexes"] for m in self.model.values()))
    @rule(data=st.data())
    def delete_index(self, data: st.DataObject) -> None:
        db = data.draw(st.sampled_from(sorted(d for d, m in self.model.items() if m["indexes"])))
        indexes = self.model[db]["indexes"]
        i = data.draw(st.integers(0, len(indexes) - 1))
        self._submit(Command("index.delete", {"db": db, "index_id": indexes[i][0]}, "prop"))
        del indexes[i]

    # -- restarts ----------------------------------------------------------------------------
    @precondition(lambda self: self.restarts < 2)
    @rule(checkpoint=st.booleans())
    def restart(self, checkpoint: bool) -> None:
        self.engine.close(checkpoint=checkpoint)
        self.engine = Engine(self.settings)
        report = self.engine.open()
        assert not report.unclean
        assert report.store_replayed == 0
        self.restarts += 1

    # -- invariants --------------------------------------------------------------------------
    @invariant()
    def store_equals_model(self) -> None:
        store = self.engine.store
        dbs = {d["id"]: d for d in store.databases()}
        assert set(dbs) == set(self.model)
        for db_id, m in self.model.items():
            db = dbs[db_id]
            assert (db["dimension"], db["metric"]) == (m["dim"], m["metric"])
            assert db["count"] == len(m["vectors"])
            got = {v.id: (v.values, v.metadata) for chunk in store.scan(db_id) for v in chunk}
            assert got == m["vectors"]
            assert [(i["id"], i["kind"], i["parameters"]) for i in db["indexes"]] == m["indexes"]
            labels = [v.label for chunk in store.scan(db_id) for v in chunk]
            assert len(set(labels)) == len(labels)
            assert all(0 <= lab < db["next_label"] for lab in labels)
            ids = store.ids_for_labels(db_id, labels)
            assert ids == sorted(m["vectors"])  # scan is in id order, labels map back
            with store.env.read() as txn:  # and the label table holds nothing else
                pre = prefix(db_id)
                n_labels = sum(1 for k, _ in txn.cursor(db=store.lbl) if bytes(k).startswith(pre))
            assert n_labels == len(labels)
        assert store.applied_lsn() == self.engine.log.last_lsn

    @invariant()
    def indexes_equal_store(self) -> None:
        check_indexes_match_store(self.engine, self.settings)


EngineMachine.TestCase.settings = settings(
    max_examples=30,
    stateful_step_count=30,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
TestEngineMachine = EngineMachine.TestCase


# -- restart ------------------------------------------------------------------------------------


def _db(engine: Engine, db_id: str, dim: int, kind: str) -> None:
    engine.submit_sync(Command("db.create", {
        "id": db_id, "name": db_id, "description": "", "dimension": dim, "metric": "euclidean",
        "index_type": kind.upper(), "index": new_index(kind.upper(), kind, {}), "extra": {}}))


def _vectors(rng: np.random.Generator, prefix: str, n: int, dim: int) -> list[tuple[str, Any, Any]]:
    return [(f"{prefix}{i}", rng.normal(size=dim).tolist(), {"i": i}) for i in range(n)]


def test_restart_with_and_without_checkpoint(tmp_path: Path) -> None:
    s = make_settings(tmp_path)
    rng = np.random.default_rng(7)
    engine = Engine(s)
    engine.open()
    try:
        _db(engine, "h", 8, "hnsw")
        _db(engine, "f", 8, "flat")
        for db_id in ("h", "f"):
            engine.submit_sync(upsert_cmd(db_id, _vectors(rng, "v", 200, 8)))
            engine.submit_sync(Command("vec.delete", {"db": db_id, "ids": ["v3", "v4"]}))
        before = state_digest(engine.store)
    finally:
        engine.close(checkpoint=True)

    # a clean close with checkpoints: indexes load, nothing to replay
    engine = Engine(s)
    report = engine.open()
    try:
        assert not report.unclean
        assert report.index["loaded"] == 2 and report.index["rebuilt"] == 0
        assert report.index["replayed_records"] == 0
        assert report.store_replayed == 0
        assert state_digest(engine.store) == before
        check_indexes_match_store(engine, s)
        # more writes, then a close that skips the checkpoints
        extra = {db_id: _vectors(rng, "new", 30, 8) for db_id in ("h", "f")}
        for db_id, items in extra.items():
            engine.submit_sync(upsert_cmd(db_id, items))
            engine.submit_sync(Command("vec.delete", {"db": db_id, "ids": ["v5"]}))
            engine.submit_sync(upsert_cmd(db_id, [("v6", [9.0] * 8, None)], must_exist=True))
        after = state_digest(engine.store)
        last = engine.log.last_lsn
    finally:
        engine.close(checkpoint=False)

    engine = Engine(s)
    report = engine.open()
    try:
        assert report.index["loaded"] == 2
        assert report.index["replayed_records"] > 0  # the tail after the checkpoints
        assert report.last_lsn == last
        assert state_digest(engine.store) == after
        check_indexes_match_store(engine, s)
        for db_id, items in extra.items():
            live = engine.indexes.get(db_id)
            assert live is not None
            for vid, values, _ in items:
                label = engine.store.vector(db_id, vid).label  # type: ignore[union-attr]
                got, _, _ = live.search(np.array(values, dtype=np.float32), 1, None,
                                        exact_scan_max=0, cache_size=0)
                assert got[0] == label
            got, _, _ = live.search(np.array([9.0] * 8, dtype=np.float32), 1, None,
                                    exact_scan_max=0, cache_size=0)
            assert engine.store.ids_for_labels(db_id, got.tolist()) == ["v6"]
        assert replay_digest(engine, tmp_path) == state_digest(engine.store)
    finally:
        engine.close()


def test_restart_without_any_checkpoint_rebuilds(tmp_path: Path) -> None:
    s = make_settings(tmp_path)
    engine = Engine(s)
    engine.open()
    try:
        _db(engine, "h", 3, "hnsw")
        engine.submit_sync(upsert_cmd("h", [("a", [1, 0, 0], None), ("b", [0, 1, 0], {"k": 1})]))
        digest = state_digest(engine.store)
    finally:
        engine.close(checkpoint=False)
    engine = Engine(s)
    report = engine.open()
    try:
        assert report.index == {"loaded": 0, "rebuilt": 1, "replayed_records": 0}
        assert state_digest(engine.store) == digest
        check_indexes_match_store(engine, s)
    finally:
        engine.close()
