"""The engine against a plain-dict model (Hypothesis state machine), plus restart recovery.

After every step the live store and the in-memory indexes must equal the model; the index is
compared by a digest (dimension, metric, kind, build parameters, live labels, each label's
vector as the index holds it, metadata) with what the store says it must hold. Commands go one
by one and in whole writer groups (each command's refusal fails only that command), including
dimension changes over histories that once held vectors (3 -> 4 -> 3). A second engine plays
replica: the primary's log is applied to it through ``Replicated`` in groups of random size,
and its store and indexes must equal the primary's. Restarts (with and without checkpoints, and
SIGKILL-like) must give back the same indexes. At the end the whole log is replayed into a
fresh store and a fresh engine, record by record, and then rebuilt from that store: the state is
a fold over the log.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import copy
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
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

from jade import events
from jade.core.decide import MISSING, Command
from jade.engine import Engine
from jade.engine.commit import Replicated
from jade.errors import Conflict, InvalidArgument, NotFound
from jade.http.databases import new_index
from jade.indexes.base import exact_scores
from jade.settings import Settings
from jade.stores.data import DataStore, prefix, serving_index
from tests.conftest import make_settings
from wal.codec import Record, unpack
from wal.lmdbenv import Env
from wal.seal import unseal

# -- engine seams -------------------------------------------------------------------------------
# Every touch of engine internals (the writer, the log, the index manager, LiveDb and the index
# classes) is in the functions of this section, so a change of the engine's insides is adapted
# here, in one place.

Outcome = list[Record] | BaseException  # a command's records, or its refusal

# The command vocabulary: every command names its database ``db``, and decide completes an hnsw
# index's parameters from the deciding node's settings before the append (the catalog holds
# them complete).
DB_KEY = "db"


def complete_params(kind: str, params: dict[str, int], s: Settings) -> dict[str, int]:
    """An index's parameters as the catalog will hold them."""
    if kind != "hnsw":
        return dict(params)
    return {"M": s.hnsw_m, "efConstruction": s.hnsw_ef_construction,
            "efSearch": s.hnsw_ef_search, **params}


def create_cmd(db_id: str, dim: int, metric: str, kind: str, params: dict[str, int],
               index: dict[str, Any] | None = None) -> Command:
    index = index if index is not None else new_index(kind.upper(), kind, params)
    return Command("db.create", {DB_KEY: db_id, "name": db_id, "description": "",
                                 "dimension": dim, "metric": metric, "index_type": kind.upper(),
                                 "index": index, "extra": {}}, "prop")


def update_cmd(db_id: str, changes: dict[str, Any]) -> Command:
    return Command("db.update", {DB_KEY: db_id, "changes": changes}, "prop")


def drop_cmd(db_id: str) -> Command:
    return Command("db.delete", {DB_KEY: db_id}, "prop")


def open_engine(s: Settings) -> tuple[Engine, Any]:
    """A new engine on ``s``'s data directory, opened; nothing is left open if the open fails."""
    engine = Engine(s)
    try:
        report = engine.open()
    except BaseException:
        dispose(engine)
        raise
    return engine, report


def close_engine(engine: Engine, *, checkpoint: bool) -> None:
    engine.close(checkpoint=checkpoint)


def crash(engine: Engine) -> None:
    """What SIGKILL leaves: everything committed is durable, nothing else happens: no index
    checkpoint, no clean-close bookkeeping, the ``.running`` marker stays (the next open reports
    ``unclean``). The writer thread is idle (every future was waited for), so stopping it writes
    nothing."""
    if engine.writer is not None:
        engine.writer.close()
        engine.writer = None
    for name in ("auth_env", "env"):
        env = getattr(engine, name, None)
        if env is not None:
            env.close()
            setattr(engine, name, None)
    release = getattr(engine, "_release", None)  # the data directory lock dies with a process
    if release is not None:
        release()


def dispose(engine: Engine | None) -> None:
    """Close whatever of ``engine`` is open, quietly (teardown, a failed open)."""
    if engine is None:
        return
    try:
        engine.close(checkpoint=False)
    except Exception:
        try:
            crash(engine)
        except Exception:
            pass


def store_apply(store: DataStore, txn: lmdb.Transaction, rec: Record) -> None:
    """Fold one record into a data store inside ``txn`` (a replay into a fresh store)."""
    store.apply(txn, rec, events.of(rec))


def submit_one(engine: Engine, cmd: Command) -> list[Record]:
    return engine.submit_sync(cmd)


def submit_group(engine: Engine, commands: list[Command]) -> list[Outcome]:
    """Queue every command before the writer may take any (its condition's lock is reentrant
    and held while queueing), so they commit as ONE group; wait for all; return each command's
    own outcome."""
    w = engine.writer
    assert w is not None
    groups = w.stats.groups
    with w._cond:
        futures = [w.submit(cmd, cmd.size) for cmd in commands]
    out: list[Outcome] = []
    for f in futures:
        try:
            out.append(f.result(timeout=60))
        except concurrent.futures.TimeoutError:
            raise
        except Exception as exc:
            out.append(exc)
    assert w.stats.groups - groups <= 1, "the commands were split over several groups"
    return out


def apply_replicated(engine: Engine, records: list[Record]) -> None:
    """Append and apply records made elsewhere, as one group (the replica's and restore's way)."""
    assert engine.writer is not None
    engine.writer.submit(Replicated(list(records))).result(timeout=60)


def log_records(engine: Engine, after: int = 0) -> list[Record]:
    return list(engine.log.iterate(after, verify=True))


def last_lsn(engine: Engine) -> int:
    return int(engine.log.last_lsn)


def checkpoint(engine: Engine) -> None:
    """Save every dirty index checkpoint now (what the scheduler does)."""
    engine.indexes.checkpoint()


def projection_failures(engine: Engine) -> dict[str, int]:
    """Committed records a projection could not fold (and so had to be repaired from the
    store, which would hide the failure from the digests)."""
    return dict(engine.projection_failures())


def indexed_dbs(engine: Engine) -> set[str]:
    return set(engine.indexes.dbs)


def index_digest(engine: Engine, db_id: str) -> dict[str, Any] | None:
    """The in-memory index of ``db_id`` as data (None: the engine has none), read from the index
    itself: the vectors hnswlib holds (not the store's), the labels it holds alive, the build
    parameters of the graph. ``inconsistent`` lists disagreements inside the LiveDb (spec vs
    index, hnswlib vs its numpy copy, counts): empty when sound."""
    live = engine.indexes.get(db_id)
    if live is None:
        return None
    idx = live.index
    idx.settle()  # the graph as the index follower leaves it once it has caught up
    bad: list[str] = []
    if idx.dim != live.dim or idx.metric != live.metric:
        bad.append(f"index is {idx.dim}/{idx.metric}, LiveDb {live.dim}/{live.metric}")
    if idx.kind != live.spec.kind:
        bad.append(f"index kind {idx.kind}, spec {live.spec.kind}")
    params: tuple[int, int, int] | None = None
    vectors: dict[int, np.ndarray] = {}
    if idx.kind == "hnsw":
        raw = idx.index
        params = (int(idx.m), int(idx.ef_construction), int(idx.ef_search))
        if params != (live.spec.m, live.spec.ef_construction, live.spec.ef_search):
            bad.append(f"index built {params}, spec {live.spec}")
        # the graph itself (hnswlib raises efConstruction to at least M)
        if (int(raw.M), int(raw.ef_construction)) != (idx.m, max(idx.ef_construction, idx.m)):
            bad.append(f"hnswlib graph M={raw.M} efC={raw.ef_construction}, index says "
                       f"{idx.m}/{idx.ef_construction}")
        if int(raw.dim) != live.dim:
            bad.append(f"hnswlib dim {raw.dim}, LiveDb {live.dim}")
        ids = [int(x) for x in raw.get_ids_list()]
        labels = sorted(set(ids) - set(idx.deleted))
        for lab in labels:
            try:
                vectors[lab] = np.asarray(idx.get(np.array([lab], dtype=np.int64))[0],
                                          dtype=np.float32)
            except RuntimeError as exc:  # hnswlib thinks it deleted or unknown
                bad.append(f"label {lab}: hnswlib cannot read it ({exc})")
        # the numpy copy beside hnswlib (exact scans of filtered subsets read it)
        top = max(ids, default=-1) + 1
        keep, rows = idx.get_present(np.arange(top, dtype=np.int64))
        if keep.tolist() != labels:
            bad.append(f"numpy copy holds labels {keep.tolist()}, hnswlib {labels}")
        else:
            for lab, row in zip(labels, rows, strict=True):
                if lab in vectors and not np.allclose(row, vectors[lab], rtol=1e-5, atol=1e-6):
                    bad.append(f"label {lab}: numpy copy {row.tolist()}, hnswlib "
                               f"{vectors[lab].tolist()}")
    else:
        labels = sorted(int(x) for x in idx.pos)
        if labels:
            got = idx.get(np.array(labels, dtype=np.int64))
            vectors = {lab: np.asarray(v, dtype=np.float32) for lab, v in zip(labels, got,
                                                                               strict=True)}
    if len(idx) != len(labels):
        bad.append(f"len(index) {len(idx)}, live labels {len(labels)}")
    return {
        "dim": live.dim,
        "metric": live.metric,
        "index_id": live.spec.index_id,
        "kind": idx.kind,
        "params": params,
        "labels": labels,
        "meta": dict(live.meta),
        "vectors": vectors,
        "inconsistent": bad,
    }


# -- digests ------------------------------------------------------------------------------------


def state_digest(store: DataStore) -> dict[str, Any]:
    """Everything the data projection holds, decoded: catalogs, vectors, labels, system keys."""
    with store.env.read() as txn:
        return {
            "dbs": {k.decode(): unpack(unseal(k, v)) for k, v in txn.cursor(db=store.dbs)},
            "vec": {k: unpack(unseal(k, v)) for k, v in txn.cursor(db=store.vec)},
            "lbl": {k: unseal(k, v) for k, v in txn.cursor(db=store.lbl)},
            "sys": dict(txn.cursor(db=store.sys)),
        }


def replay_digest(engine: Engine, directory: str | Path) -> dict[str, Any]:
    """Apply the whole log (verified) to an empty store in a new LMDB file; return its digest.
    The new file starts tiny so its map has to grow while replaying."""
    path = os.path.join(str(directory), f"replay-{os.getpid()}-{id(engine)}.db")
    env = Env(path, map_size=64 * 1024)
    try:
        store = DataStore(env)
        recs = log_records(engine)
        assert [r.lsn for r in recs] == list(range(1, last_lsn(engine) + 1))
        for i in range(0, len(recs), 16):
            chunk = recs[i : i + 16]

            def body(txn: lmdb.Transaction, chunk: list[Any] = chunk) -> None:
                for rec in chunk:
                    store_apply(store, txn, rec)

            env.write(body)
        return state_digest(store)
    finally:
        env.close()
        for p in (path, path + "-lock"):
            if os.path.exists(p):
                os.remove(p)


def store_index_digest(engine: Engine, db_id: str, s: Settings) -> dict[str, Any] | None:
    """What ``index_digest`` must say, from the engine's store alone: the catalog's dimension,
    metric and serving index (flat when there is none; hnsw parameters default from settings),
    and the stored vectors by label (normalised for cosine, as both index kinds keep them)."""
    db = engine.store.database(db_id)
    if db is None:
        return None
    idx = serving_index(db)
    kind = idx["kind"] if idx else "flat"
    params = None
    if kind == "hnsw":
        p = idx["parameters"]  # type: ignore[index]
        params = (int(p.get("M", s.hnsw_m)), int(p.get("efConstruction", s.hnsw_ef_construction)),
                  int(p.get("efSearch", s.hnsw_ef_search)))
    stored = [v for chunk in engine.store.scan(db_id) for v in chunk]
    vectors = {}
    for v in stored:
        a = np.asarray(v.array(), dtype=np.float32)
        if db["metric"] == "cosine":
            a = a / np.linalg.norm(a)
        vectors[v.label] = a
    return {
        "dim": db["dimension"],
        "metric": db["metric"],
        "index_id": idx["id"] if idx else "",
        "kind": kind,
        "params": params,
        "labels": sorted(vectors),
        "meta": {v.label: v.metadata for v in stored},
        "vectors": vectors,
        "inconsistent": [],
    }


def assert_same_index(got: dict[str, Any] | None, want: dict[str, Any] | None, what: str
                      ) -> None:
    assert (got is None) == (want is None), f"{what}: index {got!r}, want {want!r}"
    if got is None or want is None:
        return
    g = {k: v for k, v in got.items() if k != "vectors"}
    w = {k: v for k, v in want.items() if k != "vectors"}
    assert g == w, what
    differ = {lab: (got["vectors"][lab].tolist(), want["vectors"][lab].tolist())
              for lab in want["vectors"]
              if not np.allclose(got["vectors"][lab], want["vectors"][lab], rtol=1e-5, atol=1e-6)}
    assert not differ, f"{what}: vectors differ (label: index, want): {differ}"


def all_index_digests(engine: Engine) -> dict[str, dict[str, Any] | None]:
    return {db_id: index_digest(engine, db_id) for db_id in sorted(indexed_dbs(engine))}


def assert_same_indexes(got: Engine, want: Engine, what: str) -> None:
    """Both engines hold the same databases' indexes, equal by ``index_digest``."""
    assert indexed_dbs(got) == indexed_dbs(want), what
    for db_id in sorted(indexed_dbs(want)):
        assert_same_index(index_digest(got, db_id), index_digest(want, db_id), f"{what}: {db_id}")


def assert_indexes_hold_store(engine: Engine, s: Settings, what: str) -> None:
    """Every database of the store has an index holding exactly its stored vectors, and no
    index exists without a database."""
    dbs = {d["id"] for d in engine.store.databases()}
    assert indexed_dbs(engine) == dbs, what
    for db_id in sorted(dbs):
        assert_same_index(index_digest(engine, db_id), store_index_digest(engine, db_id, s),
                          f"{what}: {db_id}")


# The state machine opens several engines per example, and every commit and checkpoint fsyncs:
# on tmpfs an fsync costs nothing, which keeps the run (and a failure's shrinking) short.
FAST_TMP = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None

# -- commands and the model ---------------------------------------------------------------------

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


def predict(model: dict[str, dict[str, Any]], cmd: Command, s: Settings
            ) -> type[Exception] | None:
    """Run ``cmd`` on the model as the engine must: returns the refusal expected (the model is
    unchanged then), or None after changing the model."""
    t, b = cmd.type, cmd.body

    def entry(i: dict[str, Any]) -> tuple[str, str, dict[str, int]]:
        return (i["id"], i["kind"], complete_params(i["kind"], i["parameters"], s))

    if t == "db.create":
        if b[DB_KEY] in model:
            return Conflict
        model[b[DB_KEY]] = {"dim": b["dimension"], "metric": b["metric"], "vectors": {},
                            "indexes": [entry(b["index"])]}
        return None
    db_id = b[DB_KEY] if t.startswith("db.") else b["db"]
    m = model.get(db_id)
    if m is None:
        return NotFound
    vecs = m["vectors"]
    if t == "db.delete":
        del model[db_id]
    elif t == "db.update":
        changes = b["changes"]
        if "dimension" in changes and changes["dimension"] != m["dim"] and vecs:
            return InvalidArgument  # the dimension is locked while the database holds vectors
        m["dim"] = changes.get("dimension", m["dim"])
        if "new_index" in changes:
            m["indexes"] = [entry(changes["new_index"])]
    elif t == "vec.upsert":
        ids, md = b["ids"], b["metadata"]
        row = m["dim"] * 4
        if len(b["values"]) != len(ids) * row:
            return InvalidArgument
        if b.get("must_exist") and any(i not in vecs for i in ids):
            return NotFound
        for k, (vid, meta) in enumerate(zip(ids, md, strict=True)):
            if isinstance(meta, str) and meta == MISSING:  # keep what is stored (or None)
                meta = vecs[vid][1] if vid in vecs else None
            vecs[vid] = (b["values"][k * row : (k + 1) * row], meta)
    elif t == "vec.delete":
        if b.get("must_exist", True) and any(i not in vecs for i in b["ids"]):
            return NotFound
        for i in b["ids"]:
            vecs.pop(i, None)
    elif t == "index.create":
        m["indexes"].append(entry(b["index"]))
    elif t in ("index.update", "index.delete"):
        iid = b["index_id"]
        if not any(i[0] == iid for i in m["indexes"]):
            return NotFound
        if t == "index.update":
            m["indexes"] = [(i, k, {**p, **b["parameters"]}) if i == iid else (i, k, p)
                            for i, k, p in m["indexes"]]
        else:
            m["indexes"] = [x for x in m["indexes"] if x[0] != iid]
    else:
        raise AssertionError(f"the model does not know {t}")
    return None


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
        # the projection's own list of indexes is the catalog's (after the serving one is
        # deleted, the one before it serves: a stale list shows only then)
        assert [(i.id, i.kind, dict(i.parameters)) for i in live.indexes] == [
            (i["id"], i["kind"], i["parameters"]) for i in db["indexes"]], db_id
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

GROUP_KINDS = ["upsert", "upsert", "update_vector", "delete", "delete_all", "dim_change",
               "dim_change", "rename", "new_index", "index_create", "index_update",
               "index_delete", "db_create", "db_delete"]


def next_dim(dim: int, data: st.DataObject) -> int:
    """Another dimension, biased to go back and forth between 3 and 4."""
    if dim in (3, 4) and data.draw(st.sampled_from([True, True, True, False]), label="3<->4"):
        return 7 - dim
    return data.draw(st.sampled_from([d for d in (2, 3, 4) if d != dim]), label="new dim")


class EngineMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.dir = tempfile.mkdtemp(prefix="jade-prop-", dir=FAST_TMP)
        self.settings = make_settings(Path(self.dir))
        self.engine: Engine | None = None
        self.engine, _ = open_engine(self.settings)
        self.replica_settings = make_settings(Path(self.dir) / "replica")
        self.replica: Engine | None = None
        self.replica, _ = open_engine(self.replica_settings)
        # db_id -> {"dim", "metric", "indexes": [(id, kind, params)], "vectors": {id: (bytes, md)}}
        self.model: dict[str, dict[str, Any]] = {}
        self.restarts = 0
        self.replica_restarts = 0
        self.checkpoints = 0

    def teardown(self) -> None:
        try:
            # a step failed: only clean up (an exception here would hide that failure)
            if sys.exc_info()[0] is None and self.engine is not None:
                self._final_checks()
        finally:
            dispose(self.engine)
            dispose(self.replica)
            shutil.rmtree(self.dir, ignore_errors=True)

    def _final_checks(self) -> None:
        assert self.engine is not None
        live = state_digest(self.engine.store)
        assert replay_digest(self.engine, self.dir) == live
        # the replica, level with the primary in one last group
        if self.replica is not None:
            pending = log_records(self.engine, after=last_lsn(self.replica))
            if pending:
                apply_replicated(self.replica, pending)
            self._check_replica("replica after catching up in one group")
        # a fresh engine fed the whole log, one record per group: the fold, record by record
        fresh_settings = make_settings(Path(self.dir) / "fresh")
        fresh, _ = open_engine(fresh_settings)
        try:
            for rec in log_records(self.engine):
                apply_replicated(fresh, [rec])
            assert state_digest(fresh.store) == live
            assert_same_indexes(fresh, self.engine, "fresh replay of the log vs the primary")
            close_engine(fresh, checkpoint=False)
            # no checkpoint: every index is rebuilt from the replayed store
            fresh, report = open_engine(fresh_settings)
            assert report.index["loaded"] == 0
            assert_same_indexes(fresh, self.engine, "index rebuilt from a replayed store vs the "
                                                    "primary")
        finally:
            dispose(fresh)

    # -- running commands --------------------------------------------------------------------
    def _submit(self, cmd: Command) -> None:
        assert self.engine is not None
        submit_one(self.engine, cmd)

    def _refused(self, cmd: Command, exc: type[Exception]) -> None:
        assert self.engine is not None
        last = last_lsn(self.engine)
        with pytest.raises(exc):
            submit_one(self.engine, cmd)
        assert last_lsn(self.engine) == last

    def _execute(self, cmds: list[Command], *, group: bool) -> None:
        """Run ``cmds`` (as one writer group, or one by one) against the model's predictions:
        each accepted command writes one record, each refused one fails with the refusal the
        model expects and writes nothing; the others of the group go on."""
        assert self.engine is not None
        model = copy.deepcopy(self.model)
        expected = [predict(model, cmd, self.settings) for cmd in cmds]
        first = last_lsn(self.engine) + 1
        if group:
            outcomes = submit_group(self.engine, cmds)
        else:
            outcomes = []
            for cmd in cmds:
                try:
                    outcomes.append(submit_one(self.engine, cmd))
                except Exception as exc:
                    outcomes.append(exc)
        lsns: list[int] = []
        for cmd, want, got in zip(cmds, expected, outcomes, strict=True):
            if want is None:
                assert not isinstance(got, BaseException), (cmd.type, cmd.body, got)
                assert len(got) == 1 and got[0].type == cmd.type, (cmd.type, got)
                lsns.append(got[0].lsn)
            else:
                assert isinstance(got, want), (cmd.type, cmd.body, want, got)
        assert lsns == list(range(first, first + len(lsns)))
        assert last_lsn(self.engine) == first + len(lsns) - 1
        self.model = model

    def _draw_db(self, data: st.DataObject, *, with_vectors: bool = False) -> str:
        dbs = sorted(d for d, m in self.model.items() if m["vectors"] or not with_vectors)
        return data.draw(st.sampled_from(dbs))

    # -- databases ---------------------------------------------------------------------------
    def _create(self, db: str, dim: int, metric: str, kind: str, ef: int | None) -> None:
        params = {"efSearch": ef} if ef is not None and kind == "hnsw" else {}
        idx = new_index(kind.upper(), kind, params)
        cmd = create_cmd(db, dim, metric, kind, params, idx)
        if db in self.model:
            self._refused(cmd, Conflict)
            return
        self._submit(cmd)
        self.model[db] = {"dim": dim, "metric": metric, "vectors": {},
                          "indexes": [(idx["id"], kind,
                                       complete_params(kind, params, self.settings))]}

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
        self._submit(drop_cmd(db))
        del self.model[db]

    @precondition(lambda self: self.model)
    @rule(data=st.data(), dim=st.integers(2, 4))
    def update_db(self, data: st.DataObject, dim: int) -> None:
        db = self._draw_db(data)
        m = self.model[db]
        changes: dict[str, Any] = {"name": f"{db}-{dim}"}
        if not m["vectors"]:  # an empty database may change its dimension
            changes["dimension"] = dim
        self._submit(update_cmd(db, changes))
        m["dim"] = changes.get("dimension", m["dim"])

    @precondition(lambda self: self.model)
    @rule(data=st.data(), one_group=st.booleans(), twice=st.booleans())
    def reshape_db(self, data: st.DataObject, one_group: bool, twice: bool) -> None:
        """Delete every vector, change the dimension (mostly 3 <-> 4), add vectors of the new
        dimension (and with ``twice`` all that again: 3 -> 4 -> 3 over vectors); as one group
        or one by one."""
        with_vectors = [d for d, m in self.model.items() if m["vectors"]]
        db = data.draw(st.sampled_from(sorted(with_vectors or self.model)), label="db")
        model = copy.deepcopy(self.model)
        cmds: list[Command] = []
        for _ in range(2 if twice else 1):
            m = model[db]
            dim = next_dim(m["dim"], data)
            step = []
            if m["vectors"]:
                step.append(Command("vec.delete", {"db": db, "ids": sorted(m["vectors"])},
                                    "prop"))
            step.append(update_cmd(db, {"dimension": dim}))
            n_new = data.draw(st.integers(0, 3), label="how many new vectors")
            if n_new:
                items = data.draw(st.lists(
                    st.tuples(st.sampled_from(VEC_IDS), vector(dim), metadata),
                    min_size=n_new, max_size=n_new), label="new vectors")
                step.append(upsert_cmd(db, items))
            for cmd in step:
                predict(model, cmd, self.settings)
            cmds += step
        self._execute(cmds, group=one_group)

    @precondition(lambda self: self.model)
    @rule(data=st.data(), n=st.integers(2, 6))
    def group(self, data: st.DataObject, n: int) -> None:
        """Several commands committed as one writer group, drawn against the model as it will
        be when each runs (so later commands see the earlier ones' effects), some refused."""
        model = copy.deepcopy(self.model)
        cmds = []
        for _ in range(n):
            cmd = self._draw_command(data, model)
            predict(model, cmd, self.settings)
            cmds.append(cmd)
        self._execute(cmds, group=True)

    def _draw_command(self, data: st.DataObject, model: dict[str, dict[str, Any]]) -> Command:
        kind = data.draw(st.sampled_from(GROUP_KINDS), label="command")
        existing = sorted(model)
        if kind == "db_create":
            db = data.draw(st.sampled_from(DB_IDS), label="db")
            k = data.draw(KINDS, label="kind")
            params = {"efSearch": data.draw(st.integers(1, 50))} if k == "hnsw" else {}
            return create_cmd(db, data.draw(DIMS, label="dim"),
                              data.draw(st.sampled_from(METRICS), label="metric"), k, params)
        if kind == "db_delete" and len(existing) < 2:
            kind = "rename"  # keep one database's history growing
        # an existing database mostly; now and then one that is not there (refused)
        if existing and data.draw(st.integers(0, 9), label="unknown db?") != 0:
            db = data.draw(st.sampled_from(existing), label="db")
        else:
            db = data.draw(st.sampled_from(DB_IDS), label="db")
        m = model.get(db, {"dim": 2, "vectors": {}, "indexes": []})
        vecs = m["vectors"]
        dim = m["dim"]
        if kind == "db_delete":
            return drop_cmd(db)
        if kind == "upsert":
            if data.draw(st.integers(0, 5), label="wrong dimension?") == 0:
                dim = data.draw(st.sampled_from([d for d in (1, 2, 3, 4, 5) if d != dim]))
            items = data.draw(st.lists(st.tuples(
                st.sampled_from(VEC_IDS), vector(dim), st.one_of(metadata, st.just(MISSING))),
                min_size=1, max_size=4), label="items")
            return upsert_cmd(db, items, must_exist=data.draw(st.booleans(), label="must_exist"))
        if kind == "update_vector":
            vid = data.draw(st.sampled_from(sorted(vecs) or VEC_IDS), label="id")
            md = data.draw(st.one_of(st.just(MISSING), metadata), label="metadata")
            return upsert_cmd(db, [(vid, data.draw(vector(dim)), md)], must_exist=True)
        if kind == "delete":
            must = data.draw(st.booleans(), label="must_exist")
            pool = sorted(vecs) if must and vecs else sorted(vecs) + VEC_IDS
            ids = data.draw(st.lists(st.sampled_from(pool), min_size=1, max_size=3), label="ids")
            return Command("vec.delete", {"db": db, "ids": ids, "must_exist": must}, "prop")
        if kind == "delete_all":
            return Command("vec.delete", {"db": db, "ids": sorted(vecs)}, "prop")
        if kind == "dim_change":
            new = next_dim(dim, data)
            return update_cmd(db, {"dimension": new})
        if kind == "rename":
            return update_cmd(db, {"name": f"{db}-x"})
        if kind == "new_index":
            k = data.draw(KINDS, label="kind")
            return update_cmd(db, {"new_index": new_index(k.upper(), k, {})})
        if kind == "index_create":
            k = data.draw(KINDS, label="kind")
            params = data.draw(st.fixed_dictionaries({}, optional={
                "M": st.integers(4, 12), "efSearch": st.integers(1, 50)}), label="params")
            return Command("index.create", {"db": db, "index": new_index(k.upper(), k, params)},
                           "prop")
        ids = [i for i, _, _ in m["indexes"]] + ["index_nope"]
        iid = data.draw(st.sampled_from(ids), label="index")
        if kind == "index_delete":
            return Command("index.delete", {"db": db, "index_id": iid}, "prop")
        params = data.draw(st.one_of(
            st.fixed_dictionaries({"efSearch": st.integers(1, 60)}),
            st.fixed_dictionaries({"M": st.integers(4, 12)}),
            st.fixed_dictionaries({"efConstruction": st.integers(8, 64)})), label="parameters")
        return Command("index.update", {"db": db, "index_id": iid, "parameters": params}, "prop")

    @precondition(lambda self: self.model)
    @rule(data=st.data())
    def refusals(self, data: st.DataObject) -> None:
        """Commands decide must refuse; each one leaves no trace (checked in ``_refused``)."""
        db = self._draw_db(data)
        m = self.model[db]
        dim = m["dim"]
        unknown = [d for d in DB_IDS if d not in self.model]
        cases: list[tuple[Command, type[Exception]]] = [
            (create_cmd(db, 2, "dot", "flat", {}), Conflict),
            (upsert_cmd(db, [("zz", [1.0] * dim, None)], must_exist=True), NotFound),
            (Command("vec.delete", {"db": db, "ids": [*m["vectors"], "zz"]}), NotFound),
            (Command("index.update", {"db": db, "index_id": "index_nope",
                                      "parameters": {"efSearch": 5}}), NotFound),
            (Command("index.delete", {"db": db, "index_id": "index_nope"}), NotFound),
            (upsert_cmd(db, [("a", [1.0] * (dim + 1), None)]), InvalidArgument),
        ]
        if m["vectors"]:
            cases.append((update_cmd(db, {"dimension": dim + 1}), InvalidArgument))
        for u in unknown:
            cases += [
                (drop_cmd(u), NotFound),
                (update_cmd(u, {"name": "x"}), NotFound),
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
        self.model[db]["indexes"].append(
            (idx["id"], kind, complete_params(kind, params, self.settings)))

    @precondition(lambda self: any(m["indexes"] for m in self.model.values()))
    @rule(data=st.data())
    def delete_index(self, data: st.DataObject) -> None:
        db = data.draw(st.sampled_from(sorted(d for d, m in self.model.items() if m["indexes"])))
        indexes = self.model[db]["indexes"]
        i = data.draw(st.integers(0, len(indexes) - 1))
        self._submit(Command("index.delete", {"db": db, "index_id": indexes[i][0]}, "prop"))
        del indexes[i]

    # -- checkpoints and restarts ------------------------------------------------------------
    @precondition(lambda self: self.checkpoints < 3)
    @rule()
    def checkpoint_indexes(self) -> None:
        assert self.engine is not None
        before = all_index_digests(self.engine)
        checkpoint(self.engine)
        self.checkpoints += 1
        after = all_index_digests(self.engine)
        for db_id in before:
            assert_same_index(after[db_id], before[db_id], f"{db_id} after a checkpoint")

    @precondition(lambda self: self.restarts < 4)
    @rule(checkpoint=st.booleans())
    def restart(self, checkpoint: bool) -> None:
        """Clean close (saving the index checkpoints, or not) and open: the indexes come back
        from the checkpoints plus the log after them, equal to what they were."""
        assert self.engine is not None
        before = all_index_digests(self.engine)
        close_engine(self.engine, checkpoint=checkpoint)
        self.engine = None
        self.engine, report = open_engine(self.settings)
        assert not report.unclean
        assert report.store_replayed == 0
        self.restarts += 1
        self._same_after_restart(before, f"restart(checkpoint={checkpoint})")

    @precondition(lambda self: self.restarts < 4)
    @rule()
    def kill_and_restart(self) -> None:
        """SIGKILL-like: no checkpoint, no clean close; the indexes come back from the last
        checkpoints (or the store) plus the log after them."""
        assert self.engine is not None
        before = all_index_digests(self.engine)
        crash(self.engine)
        self.engine = None
        self.engine, report = open_engine(self.settings)
        assert report.unclean
        assert report.store_replayed == 0  # the store shares the log's transactions
        self.restarts += 1
        self._same_after_restart(before, "kill -9 and restart")

    def _same_after_restart(self, before: dict[str, Any], what: str) -> None:
        assert self.engine is not None
        after = all_index_digests(self.engine)
        assert set(after) == set(before), what
        for db_id in before:
            assert_same_index(after[db_id], before[db_id], f"{db_id}: {what} vs before")

    # -- the replica -------------------------------------------------------------------------
    @rule(data=st.data())
    def replicate(self, data: st.DataObject) -> None:
        """Apply the primary's records the replica lacks, in groups of random size (often all of
        them at once), as a follower or a restore does."""
        assert self.engine is not None and self.replica is not None
        pending = log_records(self.engine, after=last_lsn(self.replica))
        while pending:
            n = data.draw(st.one_of(st.just(len(pending)), st.integers(1, len(pending))),
                          label="records in this group")
            apply_replicated(self.replica, pending[:n])
            pending = pending[n:]

    @precondition(lambda self: self.replica_restarts < 2)
    @rule(how=st.sampled_from(["checkpoint", "no checkpoint", "kill"]))
    def restart_replica(self, how: str) -> None:
        assert self.replica is not None
        before = all_index_digests(self.replica)
        if how == "kill":
            crash(self.replica)
        else:
            close_engine(self.replica, checkpoint=how == "checkpoint")
        self.replica = None
        self.replica, _ = open_engine(self.replica_settings)
        self.replica_restarts += 1
        after = all_index_digests(self.replica)
        assert set(after) == set(before)
        for db_id in before:
            assert_same_index(after[db_id], before[db_id], f"replica {db_id}: restart ({how})")

    def _check_replica(self, what: str) -> None:
        assert self.engine is not None and self.replica is not None
        assert last_lsn(self.replica) == last_lsn(self.engine)
        assert state_digest(self.replica.store) == state_digest(self.engine.store), what
        assert_same_indexes(self.replica, self.engine, what)

    # -- invariants --------------------------------------------------------------------------
    @invariant()
    def store_equals_model(self) -> None:
        assert self.engine is not None
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
        assert store.applied_lsn() == last_lsn(self.engine)

    @invariant()
    def indexes_equal_store(self) -> None:
        assert self.engine is not None
        check_indexes_match_store(self.engine, self.settings)
        assert_indexes_hold_store(self.engine, self.settings, "primary index vs its store")

    @invariant()
    def every_record_folded(self) -> None:
        """No projection of either engine met a record it could not fold."""
        for engine in (self.engine, self.replica):
            assert engine is not None
            assert not any(projection_failures(engine).values()), projection_failures(engine)

    @invariant()
    def replica_equals_primary(self) -> None:
        """A replica level with the primary has the same store and the same indexes."""
        assert self.engine is not None and self.replica is not None
        if last_lsn(self.replica) == last_lsn(self.engine):
            self._check_replica("replica level with the primary")


EngineMachine.TestCase.settings = settings(
    max_examples=300,
    stateful_step_count=30,
    deadline=None,
    database=None,
    # one failure, shrunk: several distinct ones would each be shrunk (minutes) and reported
    report_multiple_bugs=False,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much,
                           HealthCheck.data_too_large],
)
# Shrinking a failure of this machine replays it hundreds of times (~0.1 s each): Hypothesis
# allows itself 300 s for that, as long as pytest's timeout. A minute gives a short example.
SHRINK_SECONDS = 60


@contextlib.contextmanager
def shrink_budget(seconds: int) -> Iterator[None]:
    from hypothesis.internal.conjecture import engine as conjecture

    old = getattr(conjecture, "MAX_SHRINKING_SECONDS", None)
    if old is None:  # another Hypothesis version: its own limit
        yield
        return
    conjecture.MAX_SHRINKING_SECONDS = seconds
    try:
        yield
    finally:
        conjecture.MAX_SHRINKING_SECONDS = old


class TestEngineMachine(EngineMachine.TestCase):  # type: ignore[misc, valid-type]
    def runTest(self) -> None:
        with shrink_budget(SHRINK_SECONDS):
            super().runTest()


# -- restart ------------------------------------------------------------------------------------


def _db(engine: Engine, db_id: str, dim: int, kind: str) -> None:
    engine.submit_sync(create_cmd(db_id, dim, "euclidean", kind, {}))


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


def test_a_checkpoint_moved_forward_holds_the_index_list_of_its_lsn(tmp_path: Path) -> None:
    """Regression (the state machine once failed with 'hnsw' == 'flat'): an index that does
    not serve is deleted after a checkpoint, and nothing else of the database changes. The
    next checkpoint used to find the database clean and move its ``index.json`` to the new
    LSN with the list of the save before: a restart held the deleted index, and when the
    index after it was deleted, it served (hnsw) where the catalog has a flat index."""
    s = make_settings(tmp_path)
    engine, _ = open_engine(s)
    try:
        engine.submit_sync(create_cmd("d", 3, "euclidean", "flat", {}))
        engine.submit_sync(upsert_cmd("d", [("a", [1.0, 2.0, 3.0], None)]))
        flat = engine.store.database("d")["indexes"][0]  # type: ignore[index]
        hnsw, last = new_index("HNSW", "hnsw", {}), new_index("HNSW", "hnsw", {"M": 8})
        for idx in (hnsw, last):  # [flat, hnsw, last]: last serves
            engine.submit_sync(Command("index.create", {"db": "d", "index": idx}, "prop"))
        checkpoint(engine)
        engine.submit_sync(Command("index.delete", {"db": "d", "index_id": hnsw["id"]}, "prop"))
        checkpoint(engine)
        close_engine(engine, checkpoint=False)
        engine, report = open_engine(s)
        assert report.index["loaded"] == 1  # the checkpoint is used (nothing disagrees)
        check_indexes_match_store(engine, s)
        engine.submit_sync(Command("index.delete", {"db": "d", "index_id": last["id"]}, "prop"))
        assert engine.store.database("d")["indexes"] == [flat]  # type: ignore[index]
        check_indexes_match_store(engine, s)  # flat serves, as the catalog says
        assert_indexes_hold_store(engine, s, "after the serving index was deleted")
    finally:
        dispose(engine)


# -- dimension histories (regressions) ----------------------------------------------------------


def _dimension_history(engine: Engine, kind: str, *, checkpoint_at_3: bool) -> None:
    """A database of dimension 3 with vectors (its index checkpointed then, if asked), emptied,
    changed to 4, given 4-d vectors, emptied, changed back to 3, given 3-d vectors: one record
    per command."""
    submit_one(engine, create_cmd("r", 3, "euclidean", kind, {}))
    submit_one(engine, upsert_cmd("r", [("a", [1, 0, 0], {"v": 1}), ("b", [0, 1, 0], None)]))
    if checkpoint_at_3:
        checkpoint(engine)
    submit_one(engine, Command("vec.delete", {"db": "r", "ids": ["a", "b"]}))
    submit_one(engine, update_cmd("r", {"dimension": 4}))
    submit_one(engine, upsert_cmd("r", [("c", [1, 2, 3, 4], None), ("d", [4, 3, 2, 1], None)]))
    submit_one(engine, Command("vec.delete", {"db": "r", "ids": ["c", "d"]}))
    submit_one(engine, update_cmd("r", {"dimension": 3}))
    submit_one(engine, upsert_cmd("r", [("e", [0, 0, 1], {"v": 2}), ("f", [1, 1, 1], None)]))


@pytest.mark.parametrize("kind", ["hnsw", "flat"])
@pytest.mark.parametrize("stop", ["clean close", "close without checkpoint", "kill"])
def test_dimension_history_3_4_3_survives_restart_from_checkpoint(
    tmp_path: Path, kind: str, stop: str
) -> None:
    """A checkpoint taken at dimension 3, then 3 -> 4 -> 3 over vectors, then a restart: the
    engine opens (the log tail after the checkpoint holds 4-d vectors: each record must be
    folded with the dimension of its own time, not the catalog's current one) and its index
    holds exactly the stored vectors."""
    s = make_settings(tmp_path)
    engine, _ = open_engine(s)
    try:
        _dimension_history(engine, kind, checkpoint_at_3=True)
        before = index_digest(engine, "r")
        store = state_digest(engine.store)
        assert_indexes_hold_store(engine, s, "before the restart")
    except BaseException:
        dispose(engine)
        raise
    if stop == "kill":
        crash(engine)
    else:
        close_engine(engine, checkpoint=stop == "clean close")
    engine, report = open_engine(s)
    try:
        assert report.unclean == (stop == "kill")
        # from the checkpoint (and the log after it), not rebuilt from the store
        assert (report.index["loaded"], report.index["rebuilt"]) == (1, 0), report.index
        assert state_digest(engine.store) == store
        assert_indexes_hold_store(engine, s, f"after {stop} and restart")
        assert_same_index(index_digest(engine, "r"), before, f"after {stop}: index vs before")
        check_indexes_match_store(engine, s)
    finally:
        dispose(engine)


@pytest.mark.parametrize("kind", ["hnsw", "flat"])
def test_dimension_history_3_4_3_replicated_in_one_group(tmp_path: Path, kind: str) -> None:
    """The same history, made on a primary one command at a time, applied to a second engine in
    ONE ``Replicated`` group (a follower catching up, a restore): its index holds exactly the
    stored vectors, like the primary's."""
    s = make_settings(tmp_path / "primary")
    rs = make_settings(tmp_path / "replica")
    primary, _ = open_engine(s)
    replica = None
    try:
        _dimension_history(primary, kind, checkpoint_at_3=False)
        assert_indexes_hold_store(primary, s, "primary")
        replica, _ = open_engine(rs)
        apply_replicated(replica, log_records(primary))
        assert last_lsn(replica) == last_lsn(primary)
        assert not any(projection_failures(replica).values()), projection_failures(replica)
        assert state_digest(replica.store) == state_digest(primary.store)
        assert_indexes_hold_store(replica, rs, "replica after one group")
        assert_same_indexes(replica, primary, "replica vs primary")
        check_indexes_match_store(replica, rs)
    finally:
        dispose(replica)
        dispose(primary)


def test_an_empty_database_loads_from_its_checkpoint(tmp_path: Path) -> None:
    """An empty database's checkpoint is used at start (an empty LiveDb is falsy: the open
    took it for no checkpoint, rebuilt it and warned 'no checkpoint')."""
    s = make_settings(tmp_path)
    engine, _ = open_engine(s)
    try:
        engine.submit_sync(create_cmd("e", 3, "cosine", "hnsw", {}))
        checkpoint(engine)
        close_engine(engine, checkpoint=False)
        engine, report = open_engine(s)
        assert (report.index["loaded"], report.index["rebuilt"]) == (1, 0), report.index
        check_indexes_match_store(engine, s)
    finally:
        dispose(engine)
