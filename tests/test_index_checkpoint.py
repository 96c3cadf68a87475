"""Index checkpoints carry the metadata side (``jade/indexes/metadata_file.py``): a restart from a
checkpoint rebuilds ``meta`` and ``terms`` from the checkpoint's own metadata file, never from a
scan of the vector store; a missing, damaged or older checkpoint is rebuilt; the log tail after
a checkpoint is replayed once, into the databases it belongs to.

Checkpoints are saved while writes go on (only an in-memory capture holds up the writer
thread), and a database deleted or rebuilt during a save loses that save; start-up removes the
checkpoint directories of databases no longer in the store.

Real LMDB in temp dirs, a real ``Engine``; no mocks beyond making ``DataStore.scan`` refuse to
run where a test proves it is not needed, and slowing down or pausing the fsyncs of a save (a
slow disk, or a save caught in the middle).
"""

from __future__ import annotations

import gc
import json
import logging
import os
import threading
import time
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import pytest

from jade.core.decide import Command
from jade.core.filters import parse_filter
from jade.engine import Engine
from jade.http.databases import new_index
from jade.indexes import checkpoints as manager_mod
from jade.indexes import metadata_file as ckpt
from jade.indexes.checkpoints import FORMAT as CHECKPOINT_FORMAT
from jade.indexes.checkpoints import MD_SUFFIX
from jade.indexes.flat import FlatIndex
from jade.indexes.hnsw import HnswIndex
from jade.indexes.live import IndexSpec, LiveDb
from jade.settings import Settings
from jade.stores.data import DataStore
from tests.conftest import make_settings
from tests.test_apply import upsert as upsert_command
from wal.lmdbenv import Env
from wal.log import Log

DIM = 8
COLORS = ["red", "blue", "green"]


# -- helpers --------------------------------------------------------------------------------------


def metadata_of(i: int) -> Any:
    """A mix of shapes: None, flat, lists, nested dicts, numbers, booleans, a unique field."""
    if i % 11 == 0:
        return None
    md: dict[str, Any] = {
        "color": COLORS[i % 3],
        "n": i % 5,
        "tags": ["a", "b"] if i % 2 else ["c"],
        "nested": {"k": i % 4, "deep": {"flag": i % 2 == 0}},
        "uid": f"u{i}",
        "score": i / 7,
    }
    if i % 13 == 0:
        md["ünïcode"] = "ζ"
    return md


def create_cmd(db_id: str, kind: str, dim: int = DIM) -> Command:
    return Command(
        "db.create",
        {
            "db": db_id,
            "name": db_id,
            "description": "",
            "dimension": dim,
            "metric": "cosine",
            "index_type": kind.upper(),
            "index": new_index(kind.upper(), kind, {}),
            "extra": {},
        },
    )


def create_db(engine: Engine, db_id: str, kind: str) -> None:
    engine.submit_sync(create_cmd(db_id, kind))


def upsert_cmd(db_id: str, items: list[tuple[str, list[float], Any]]) -> Command:
    return upsert_command(db_id, items, actor="test")


def upsert(engine: Engine, db_id: str, items: list[tuple[str, list[float], Any]]) -> None:
    engine.submit_sync(upsert_cmd(db_id, items))


def submit_within(engine: Engine, cmd: Command, timeout: float = 5.0) -> float:
    """Submit ``cmd`` and wait for it at most ``timeout`` seconds; returns how long it took."""
    assert engine.writer is not None
    t = time.perf_counter()
    engine.writer.submit(cmd, cmd.size).result(timeout=timeout)
    return time.perf_counter() - t


def delete(engine: Engine, db_id: str, ids: list[str]) -> None:
    engine.submit_sync(Command("vec.delete", {"db": db_id, "ids": ids}))


def fill(engine: Engine, db_id: str, n: int, seed: int = 1) -> None:
    rng = np.random.default_rng(seed)
    items = [(f"v{i}", rng.normal(size=DIM).tolist(), metadata_of(i)) for i in range(n)]
    upsert(engine, db_id, items)


def from_store(store: DataStore, db_id: str) -> LiveDb:
    """The metadata side as ``load_metadata`` builds it from the vector store (the reference)."""
    ref = LiveDb(db_id, DIM, "cosine", IndexSpec("", "flat", 0, 0, 0))
    for chunk in store.scan(db_id):
        ref.load_metadata([v.label for v in chunk], [v.metadata for v in chunk])
    return ref


def live_of(engine: Engine, db_id: str) -> LiveDb:
    live = engine.indexes.get(db_id)
    assert live is not None
    return live


FILTERS: list[dict[str, Any]] = [
    {"color": "red"},
    {"tags": "a", "n": 2},
    {"nested.k": 3},
    {"nested.deep.flag": True},
    {"uid": "u7"},
    {"n": {"$gte": 3}},
    {"color": {"$in": ["blue", "green"]}, "tags": "c"},
]


def searches(live: LiveDb, seed: int = 5) -> list[Any]:
    """Unfiltered and filtered answers (both strategies) for a few fixed queries."""
    rng = np.random.default_rng(seed)
    out: list[Any] = []
    for _ in range(5):
        q = rng.normal(size=DIM).astype(np.float32)
        lab, sc, _ = live.search(q, 10, None, exact_scan_max=0, cache_size=0)
        out.append((lab.tolist(), np.round(sc, 5).tolist()))
        for f in FILTERS:
            flt = parse_filter(f)
            for scan_max in (0, 10**6):
                lab, _, st = live.search(q, 10, flt, exact_scan_max=scan_max, cache_size=0)
                out.append((str(f), scan_max, st.matched, sorted(lab.tolist())))
    return out


def matched(live: LiveDb, f: dict[str, Any]) -> list[int]:
    """The labels ``f`` matches, sorted (``matching`` answers an array or a ``Match``)."""
    m: Any = live.matching(parse_filter(f), 0)[0]
    return sorted(np.asarray(getattr(m, "labels", m)).tolist())


def filter_answers(live: LiveDb) -> dict[str, list[int]]:
    return {str(f): matched(live, f) for f in FILTERS}


@contextmanager
def no_store_scan() -> Iterator[None]:
    """``DataStore.scan`` raises inside: proves a start-up never reads every vector."""
    real = DataStore.scan

    def refuse(self: DataStore, db_id: str, chunk: int = 4096) -> Any:
        raise AssertionError(f"store scan of {db_id} during a checkpoint load")

    DataStore.scan = refuse  # type: ignore[method-assign]
    try:
        yield
    finally:
        DataStore.scan = real  # type: ignore[method-assign]


def ckpt_dir(s: Settings, db_id: str) -> str:
    return os.path.join(s.index_dir, db_id)


def index_json(s: Settings, db_id: str) -> dict[str, Any]:
    with open(os.path.join(ckpt_dir(s, db_id), "index.json")) as fh:
        doc: dict[str, Any] = json.load(fh)
    return doc


def write_index_json(s: Settings, db_id: str, doc: dict[str, Any]) -> None:
    with open(os.path.join(ckpt_dir(s, db_id), "index.json"), "w") as fh:
        json.dump(doc, fh)


def md_path(s: Settings, db_id: str) -> str:
    doc = index_json(s, db_id)
    return os.path.join(ckpt_dir(s, db_id), doc["metadata"]["file"])


@pytest.fixture
def s(tmp_path: Path) -> Settings:
    return make_settings(tmp_path)


@pytest.fixture
def two_dbs(s: Settings) -> dict[str, Any]:
    """An hnsw and a flat database with 300 vectors each (some deleted, some overwritten with
    other metadata), checkpointed by a clean close. Returns what the state was before."""
    engine = Engine(s)
    engine.open()
    try:
        before: dict[str, Any] = {}
        for db_id, kind in (("h", "hnsw"), ("f", "flat")):
            create_db(engine, db_id, kind)
            fill(engine, db_id, 300)
            delete(engine, db_id, ["v3", "v4", "v200"])
            rng = np.random.default_rng(9)
            upsert(engine, db_id, [("v5", rng.normal(size=DIM).tolist(), {"color": "violet"})])
            live = live_of(engine, db_id)
            before[db_id] = {
                "meta": dict(live.meta),
                "terms": {k: set(v) for k, v in live.terms.items()},
                "search": searches(live),
                "filters": filter_answers(live),
                "lsn": engine.log.last_lsn,
            }
    finally:
        engine.close(checkpoint=True)
    return before


# -- the metadata file ----------------------------------------------------------------------------


def test_metadata_file_rebuilds_exactly_what_load_metadata_builds(tmp_path: Path) -> None:
    spec = IndexSpec("", "flat", 0, 0, 0)
    live = LiveDb("x", DIM, "cosine", spec)
    rng = np.random.default_rng(3)
    labels = np.arange(500, dtype=np.int64)
    live.upsert(
        labels, rng.normal(size=(500, DIM)).astype(np.float32), [metadata_of(i) for i in range(500)]
    )
    # overwrites and deletes leave terms behind only if _unterm is wrong; the file must agree
    live.upsert(
        np.array([1, 2]),
        rng.normal(size=(2, DIM)).astype(np.float32),
        [{"color": "violet", "big": 2**62}, None],
    )
    live.delete([7, 8, 9])
    ref = LiveDb("x", DIM, "cosine", spec)
    ref.load_metadata(list(live.meta), list(live.meta.values()))
    assert ref.terms == live.terms  # the reference itself is consistent

    path = str(tmp_path / "m")
    assert ckpt.write_metadata(path, live.meta, live.terms) == len(live.meta) == 497
    meta, terms = ckpt.read_metadata(path, 497)
    assert meta == ref.meta
    assert terms == ref.terms
    assert {type(k) for k in meta} == {int}
    assert all(type(x) is int for v in terms.values() for x in v)
    assert meta[2] is None and meta[1] == {"color": "violet", "big": 2**62}
    assert not os.path.exists(path + ".tmp")


def test_empty_metadata_file(tmp_path: Path) -> None:
    path = str(tmp_path / "m")
    assert ckpt.write_metadata(path, {}, {}) == 0
    assert ckpt.read_metadata(path, 0) == ({}, {})


def test_metadata_io_leaves_the_garbage_collector_as_it_found_it(tmp_path: Path) -> None:
    path = str(tmp_path / "m")
    assert gc.isenabled()
    ckpt.write_metadata(path, {1: {"a": [1, 2]}}, {("a", "n:1"): {1}})
    ckpt.read_metadata(path, 1)
    assert gc.isenabled()
    gc.disable()
    try:
        ckpt.write_metadata(path, {1: None}, {})
        ckpt.read_metadata(path, 1)
        assert not gc.isenabled()
    finally:
        gc.enable()


def _damage(path: str, how: str) -> None:
    with open(path, "rb") as fh:
        raw = bytearray(fh.read())
    if how == "missing":
        os.remove(path)
        return
    if how == "truncated":
        raw = raw[: len(raw) - 7]
    elif how == "flipped":
        raw[len(raw) // 2] ^= 0x10
    elif how == "magic":
        raw[0] ^= 0xFF
    elif how == "empty":
        raw = bytearray()
    with open(path, "wb") as fh:
        fh.write(raw)


@pytest.mark.parametrize("how", ["missing", "truncated", "flipped", "magic", "empty"])
def test_read_metadata_refuses_a_damaged_file(tmp_path: Path, how: str) -> None:
    path = str(tmp_path / "m")
    meta = {i: metadata_of(i) for i in range(200)}
    ckpt.write_metadata(path, meta, {("color", "s:red"): {3, 6}})
    ckpt.read_metadata(path, 200)  # intact: fine
    _damage(path, how)
    with pytest.raises(ckpt.CheckpointError):
        ckpt.read_metadata(path, 200)


def test_read_metadata_refuses_another_count(tmp_path: Path) -> None:
    path = str(tmp_path / "m")
    ckpt.write_metadata(path, {1: None, 2: {"a": 1}}, {})
    with pytest.raises(ckpt.CheckpointError):
        ckpt.read_metadata(path, 3)


def test_write_metadata_refuses_terms_of_unknown_labels(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        ckpt.write_metadata(str(tmp_path / "m"), {1: {"a": 1}}, {("a", "n:1"): {1, 99}})
    assert not os.path.exists(tmp_path / "m")


def _sealed(path: str, doc: dict[str, Any]) -> None:
    """A metadata file with a valid header and checksum around ``doc``."""
    payload = msgpack.packb(doc, use_bin_type=True)
    with open(path, "wb") as fh:
        fh.write(ckpt.MAGIC + len(payload).to_bytes(8, "little"))
        fh.write(zlib.crc32(payload).to_bytes(4, "little") + payload)


@pytest.mark.parametrize(
    ("offsets", "rows"),
    [
        ([0, 2], [0, 2]),  # a row past the end
        ([0, 1], [-1]),  # a negative row (numpy would wrap it)
        ([0, 3], [0, 1]),  # offsets past the rows
        ([0, 2, 1, 2], [0, 1]),  # offsets going back
    ],
)
def test_read_metadata_refuses_terms_outside_its_rows(
    tmp_path: Path, offsets: list[int], rows: list[int]
) -> None:
    path = str(tmp_path / "m")

    def doc(offsets: list[int], rows: list[int]) -> dict[str, Any]:
        values = [f"n:{j}" for j in range(len(offsets) - 1)]
        return {
            "format": 1,  # the older layout, read still
            "count": 2,
            "labels": np.array([5, 6], dtype="<i8").tobytes(),
            "meta": [None, {"a": 1}],
            "fields": [
                ["a", values, np.array(offsets, "<i8").tobytes(), np.array(rows, "<i8").tobytes()]
            ],
        }

    _sealed(path, doc([0, 1], [1]))
    assert ckpt.read_metadata(path, 2) == ({5: None, 6: {"a": 1}}, {("a", "n:0"): {6}})
    _sealed(path, doc(offsets, rows))
    with pytest.raises(ckpt.CheckpointError):
        ckpt.read_metadata(path, 2)


def test_loaded_terms_are_held_compactly(tmp_path: Path) -> None:
    """A term of many labels loads as an array (8 bytes a label), not a set of int objects;
    one of few as a set; both read back as the written sets."""
    path = str(tmp_path / "m")
    meta = {10**6 + i: {"a": i % 3, "b": "x"} for i in range(100)}
    terms: dict[tuple[str, str], set[int]] = {}
    for label, md in meta.items():
        for t in (("a", f"n:{md['a']}"), ("b", "s:x")):
            terms.setdefault(t, set()).add(label)
    terms[("c", "s:rare")] = {10**6 + 5}
    meta[10**6 + 5] = {"a": 2, "b": "x", "c": "rare"}
    ckpt.write_metadata(path, meta, terms)
    got_meta, got_terms = ckpt.read_metadata(path, 100)
    assert got_terms == terms and got_meta == meta
    assert type(got_terms._d[("b", "s:x")]).__name__ == "_Big"
    assert isinstance(got_terms._d[("c", "s:rare")], set)


# -- restart from a checkpoint --------------------------------------------------------------------


def test_restart_loads_meta_terms_and_search_from_the_checkpoint(
    s: Settings, two_dbs: dict[str, Any]
) -> None:
    for db_id in ("h", "f"):
        doc = index_json(s, db_id)
        assert doc["format"] == CHECKPOINT_FORMAT == 4
        assert doc["metadata"] == {"file": doc["file"] + MD_SUFFIX, "count": 297}
        assert doc["count"] == 297
        assert os.path.exists(md_path(s, db_id))
    engine = Engine(s)
    with no_store_scan():
        report = engine.open()
    try:
        assert report.index == {"loaded": 2, "rebuilt": 0, "replayed_records": 0}
        for db_id in ("h", "f"):
            live = live_of(engine, db_id)
            want = two_dbs[db_id]
            assert live.meta == want["meta"]
            assert live.terms == want["terms"]
            assert filter_answers(live) == want["filters"]
            assert searches(live) == want["search"]
            ref = from_store(engine.store, db_id)
            assert live.meta == ref.meta and live.terms == ref.terms
            assert live.meta[live_label(engine, db_id, "v5")] == {"color": "violet"}
            assert not live.dirty
        secs = engine.indexes.open_seconds
        assert secs["metadata"] > 0 and secs["rebuild"] == 0
    finally:
        engine.close()


def live_label(engine: Engine, db_id: str, vec_id: str) -> int:
    v = engine.store.vector(db_id, vec_id)
    assert v is not None
    return v.label


@pytest.mark.parametrize(
    "damage", ["missing", "truncated", "flipped", "count", "no-metadata-key", "index-count"]
)
def test_missing_or_damaged_metadata_file_rebuilds(
    s: Settings, two_dbs: dict[str, Any], damage: str
) -> None:
    if damage == "count":  # index.json and the file disagree
        doc = index_json(s, "h")
        doc["metadata"]["count"] += 1
        write_index_json(s, "h", doc)
    elif damage == "index-count":  # a whole metadata file, one vector short of the index file
        doc = index_json(s, "h")
        meta, terms = ckpt.read_metadata(md_path(s, "h"), doc["count"])
        meta.discard(next(iter(meta)))
        ckpt.write_metadata(md_path(s, "h"), meta, terms)
        doc["metadata"]["count"] = doc["count"] = doc["count"] - 1
        write_index_json(s, "h", doc)
    elif damage == "no-metadata-key":
        doc = index_json(s, "h")
        del doc["metadata"]
        write_index_json(s, "h", doc)
    else:
        _damage(md_path(s, "h"), damage)
    engine = Engine(s)
    report = engine.open()
    try:
        assert report.index == {"loaded": 1, "rebuilt": 1, "replayed_records": 0}
        live = live_of(engine, "h")
        assert live.dirty  # the rebuilt index gets a new checkpoint
        assert live.meta == two_dbs["h"]["meta"]
        assert live.terms == two_dbs["h"]["terms"]
        assert filter_answers(live) == two_dbs["h"]["filters"]
    finally:
        engine.close()
    # the clean close wrote a whole new checkpoint: the next start loads it
    engine = Engine(s)
    report = engine.open()
    try:
        assert report.index == {"loaded": 2, "rebuilt": 0, "replayed_records": 0}
    finally:
        engine.close()


@pytest.mark.parametrize("old", ["format-1", "format-1-with-metadata"])
def test_old_format_checkpoint_rebuilds(s: Settings, two_dbs: dict[str, Any], old: str) -> None:
    for db_id in ("h", "f"):
        doc = index_json(s, db_id)
        doc["format"] = 1
        if old == "format-1":  # what a format-1 checkpoint looked like: no metadata file
            os.remove(md_path(s, db_id))
            del doc["metadata"]
        write_index_json(s, db_id, doc)
    engine = Engine(s)
    report = engine.open()
    try:
        assert report.index == {"loaded": 0, "rebuilt": 2, "replayed_records": 0}
        for db_id in ("h", "f"):
            assert live_of(engine, db_id).meta == two_dbs[db_id]["meta"]
            assert live_of(engine, db_id).terms == two_dbs[db_id]["terms"]
    finally:
        engine.close()
    assert index_json(s, "h")["format"] == CHECKPOINT_FORMAT


# -- the log tail ---------------------------------------------------------------------------------


def test_tail_after_the_checkpoint_is_replayed(s: Settings, two_dbs: dict[str, Any]) -> None:
    engine = Engine(s)
    engine.open()
    try:
        rng = np.random.default_rng(11)
        new = [
            (f"n{i}", rng.normal(size=DIM).tolist(), {"color": "teal", "i": i}) for i in range(20)
        ]
        upsert(engine, "h", new)  # 1: new vectors with a new term
        upsert(engine, "h", [("v10", rng.normal(size=DIM).tolist(), {"color": "teal"})])  # 2
        upsert(engine, "h", [("v12", rng.normal(size=DIM).tolist(), None)])  # 3: md removed
        delete(engine, "h", ["v1", "v2", "n0"])  # 4
        want_meta = dict(live_of(engine, "h").meta)
        want_terms = {k: set(v) for k, v in live_of(engine, "h").terms.items()}
        want_search = searches(live_of(engine, "h"))
        last = engine.log.last_lsn
    finally:
        engine.close(checkpoint=False)  # as after a kill: the checkpoint is older than the log

    engine = Engine(s)
    with no_store_scan():
        report = engine.open()
    try:
        assert report.last_lsn == last
        assert report.index == {"loaded": 2, "rebuilt": 0, "replayed_records": 4}
        live = live_of(engine, "h")
        assert live.meta == want_meta
        assert live.terms == want_terms
        ref = from_store(engine.store, "h")
        assert live.meta == ref.meta and live.terms == ref.terms
        assert searches(live) == want_search
        teal = matched(live, {"color": "teal"})
        labels = {v: live_label(engine, "h", v) for v in [f"n{i}" for i in range(1, 20)] + ["v10"]}
        assert sorted(teal) == sorted(labels.values())
        assert live_label(engine, "h", "v12") not in matched(live, {"n": {"$gte": 0}})
        assert engine.store.vector("h", "v1") is None
        assert len(live) == len(live.index) == 297 + 20 - 3
        assert live.dirty and not live_of(engine, "f").dirty
    finally:
        engine.close()


def test_replay_counts_each_record_once_and_dirties_only_its_database(s: Settings) -> None:
    engine = Engine(s)
    engine.open()
    try:
        for db_id in ("a", "b", "c"):
            create_db(engine, db_id, "hnsw")
            fill(engine, db_id, 50)
    finally:
        engine.close(checkpoint=True)
    engine = Engine(s)
    engine.open()
    try:
        rng = np.random.default_rng(2)
        for i in range(3):
            upsert(engine, "a", [(f"x{i}", rng.normal(size=DIM).tolist(), {"i": i})])
    finally:
        engine.close(checkpoint=False)
    b_before = index_json(s, "b")

    engine = Engine(s)
    report = engine.open()
    try:
        # three records, all of "a": not 3 per database that read the same tail
        assert report.index == {"loaded": 3, "rebuilt": 0, "replayed_records": 3}
        assert engine.indexes.replayed_on_start == 3
        assert live_of(engine, "a").dirty
        assert not live_of(engine, "b").dirty and not live_of(engine, "c").dirty
        assert engine.indexes.checkpoint() == 1  # only "a" is written again
        b_after = index_json(s, "b")
        # "b" keeps its files; its index.json moves forward to the LSN it reflects
        assert b_after["file"] == b_before["file"]
        assert b_after["metadata"] == b_before["metadata"]
        assert b_after["lsn"] == engine.log.last_lsn > b_before["lsn"]
    finally:
        engine.close()


def test_a_clean_checkpoint_survives_log_truncation(s: Settings) -> None:
    """An idle database's checkpoint follows the log forward, so truncating the log past its
    last write does not force a rebuild."""
    engine = Engine(s)
    engine.open()
    try:
        create_db(engine, "idle", "hnsw")
        fill(engine, "idle", 40)
        engine.indexes.checkpoint()
        create_db(engine, "busy", "flat")
        for i in range(10):
            fill(engine, "busy", 5, seed=i)
        engine.indexes.checkpoint()
        last = engine.log.last_lsn
    finally:
        engine.close(checkpoint=True)
    env = Env(s.db_path, map_size=s.initial_map_bytes)
    try:
        Log(env).truncate_before(last)
    finally:
        env.close()
    engine = Engine(s)
    with no_store_scan():
        report = engine.open()
    try:
        assert engine.log.first_lsn == last
        assert report.index == {"loaded": 2, "rebuilt": 0, "replayed_records": 0}
        assert len(live_of(engine, "idle")) == 40
    finally:
        engine.close()


# -- writing a checkpoint -------------------------------------------------------------------------


def test_a_save_never_touches_the_checkpoint_index_json_names(
    s: Settings, two_dbs: dict[str, Any]
) -> None:
    engine = Engine(s)
    engine.open()
    try:
        old = index_json(s, "h")
        stale = os.path.join(ckpt_dir(s, "h"), old["file"] + ".tmp.stale")
        with open(stale, "w") as fh:
            fh.write("left by a crashed save")
        assert engine.indexes.checkpoint(force=True) == 2  # same LSN as the last checkpoint
        new = index_json(s, "h")
        assert new["lsn"] == old["lsn"] and new["file"] != old["file"]
        files = sorted(os.listdir(ckpt_dir(s, "h")))
        assert all(f.startswith(new["file"]) or f == "index.json" for f in files), files
        assert new["file"] in files and new["metadata"]["file"] in files
    finally:
        engine.close()
    engine = Engine(s)
    report = engine.open()
    try:
        assert report.index["loaded"] == 2
        assert live_of(engine, "h").terms == two_dbs["h"]["terms"]
    finally:
        engine.close()


def test_a_save_that_fails_midway_leaves_the_previous_checkpoint_usable(
    s: Settings, two_dbs: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = Engine(s)
    engine.open()
    try:
        old = index_json(s, "h")
        upsert(engine, "h", [("late", [1.0] * DIM, {"color": "late"})])

        def boom(path: str, meta: Any, terms: Any) -> int:
            raise OSError("disk full")

        monkeypatch.setattr(ckpt, "write_metadata", boom)
        with pytest.raises(OSError):
            engine.indexes.checkpoint()
        assert index_json(s, "h") == old  # still names the previous, whole checkpoint
        monkeypatch.undo()
    finally:
        engine.close(checkpoint=False)
    engine = Engine(s)
    report = engine.open()
    try:
        assert report.index == {"loaded": 2, "rebuilt": 0, "replayed_records": 1}
        live = live_of(engine, "h")
        assert matched(live, {"color": "late"}) == [live_label(engine, "h", "late")]
        assert live.meta == from_store(engine.store, "h").meta
    finally:
        engine.close()


# -- saving while writes go on --------------------------------------------------------------------


def test_hnsw_capture_writes_what_save_index_writes(tmp_path: Path) -> None:
    """A checkpoint writes hnswlib's file itself, from a capture: byte for byte what hnswlib's
    ``save_index`` writes at the moment of the capture, whatever happens to the index after."""
    rng = np.random.default_rng(4)
    for n in (0, 1, 700):
        idx = HnswIndex(DIM, "cosine", m=8, ef_construction=40, capacity=64, threads=1)
        if n:
            idx.add(np.arange(n, dtype=np.int64), rng.normal(size=(n, DIM)).astype(np.float32))
            idx.delete([0, n // 2])
        cap = idx.capture()
        want = str(tmp_path / f"want-{n}")
        idx.index.save_index(want)
        idx.add(np.array([n + 5]), rng.normal(size=(1, DIM)).astype(np.float32))
        idx.delete([1])
        got = str(tmp_path / f"got-{n}")
        cap.write(got)
        assert Path(got).read_bytes() == Path(want).read_bytes()
        with open(got + ".deleted.json") as fh:
            assert json.load(fh) == sorted({0, n // 2} if n else set())
        back = HnswIndex.load(got, DIM, "cosine", m=8, ef_construction=40, ef_search=20)
        assert len(back) == len({*range(n)} - {0, n // 2})


def test_a_metadata_capture_is_not_changed_by_later_writes() -> None:
    live = LiveDb("x", DIM, "cosine", IndexSpec("", "flat", 0, 0, 0))
    rng = np.random.default_rng(6)

    def vecs(n: int) -> Any:
        return rng.normal(size=(n, DIM)).astype(np.float32)

    live.upsert(np.arange(100, dtype=np.int64), vecs(100), [metadata_of(i) for i in range(100)])
    want_meta = dict(live.meta)
    want_terms = {k: set(v) for k, v in live.terms.items()}
    meta, terms = live.capture_metadata()
    # terms move (overwrites), shrink and vanish (deletes, the unique "uid"), grow (new labels)
    live.upsert(np.array([1, 2, 200]), vecs(3), [{"color": "violet"}, metadata_of(5), None])
    live.upsert(np.array([201]), vecs(1), [metadata_of(4)])
    live.delete([3, 4, 7])
    assert meta == want_meta
    assert terms == want_terms
    ref = LiveDb("x", DIM, "cosine", IndexSpec("", "flat", 0, 0, 0))
    ref.load_metadata(list(live.meta), list(live.meta.values()))
    assert live.terms == ref.terms  # and the live side is right
    live.release_capture()
    red = live.terms._d[("color", "s:red")]
    live.upsert(np.array([300]), vecs(1), [{"color": "red"}])
    assert live.terms._d[("color", "s:red")] is red  # no capture: changed in place again
    assert 300 in live.terms[("color", "s:red")]


class Background(threading.Thread):
    """``checkpoint()`` in a thread; ``result`` joins it and returns its answer or raises."""

    def __init__(self, engine: Engine) -> None:
        super().__init__(daemon=True)
        self.engine = engine
        self.out: int | None = None
        self.exc: BaseException | None = None
        self.seconds = 0.0

    def run(self) -> None:
        t = time.perf_counter()
        try:
            self.out = self.engine.indexes.checkpoint()
        except BaseException as exc:  # handed to the test thread by result()
            self.exc = exc
        self.seconds = time.perf_counter() - t

    def result(self, timeout: float = 60) -> int | None:
        self.join(timeout)
        assert not self.is_alive(), "checkpoint still running"
        if self.exc is not None:
            raise self.exc
        return self.out


@contextmanager
def paused_save(
    monkeypatch: pytest.MonkeyPatch, at: str = "write"
) -> Iterator[tuple[threading.Event, threading.Event]]:
    """A checkpoint's save sets ``entered`` and waits for ``go``: before its first fsync
    (``at="write"``: its files are being written), or after the fsync of the directory
    (``at="switch"``: every file is written, ``index.json`` is next)."""
    real = manager_mod.fsync_path
    entered, go = threading.Event(), threading.Event()

    def paused(path: str) -> None:
        if at == "switch":
            real(path)
        if not entered.is_set() and (at == "write" or os.path.isdir(path)):
            entered.set()
            go.wait(10)
        if at == "write":
            real(path)

    monkeypatch.setattr(manager_mod, "fsync_path", paused)
    try:
        yield entered, go
    finally:
        go.set()
        monkeypatch.setattr(manager_mod, "fsync_path", real)


def test_writes_are_not_held_up_while_a_checkpoint_is_saved(
    s: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only the in-memory capture holds up the writer thread: on a slow disk, records applied
    during the save each wait a small part of it, not until it ends."""
    engine = Engine(s)
    engine.open()
    try:
        create_db(engine, "h", "hnsw")
        fill(engine, "h", 5000)
        before = engine.log.last_lsn
        real = manager_mod.fsync_path
        saving = threading.Event()

        def slow_fsync(path: str) -> None:  # a slow disk: the save takes about a second
            saving.set()
            time.sleep(0.3)
            real(path)

        monkeypatch.setattr(manager_mod, "fsync_path", slow_fsync)
        bg = Background(engine)
        bg.start()
        assert saving.wait(10)
        rng = np.random.default_rng(8)
        waits = [
            submit_within(
                engine, upsert_cmd("h", [(f"w{i}", rng.normal(size=DIM).tolist(), {"i": i})]), 30
            )
            for i in range(5)
        ]
        during = bg.is_alive()
        assert bg.result() == 1
        monkeypatch.setattr(manager_mod, "fsync_path", real)
        assert during, (waits, bg.seconds)  # all five applied before the save ended
        assert max(waits) < bg.seconds / 4, (waits, bg.seconds)
        assert index_json(s, "h")["lsn"] == before  # the state at the capture
        assert index_json(s, "h")["count"] == 5000
        assert live_of(engine, "h").dirty  # the five wait for the next checkpoint
    finally:
        engine.close()


@pytest.mark.parametrize("kind", ["hnsw", "flat"])
def test_a_checkpoint_holds_the_state_at_its_lsn_while_writes_go_on(
    s: Settings, monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    """Writes applied between the capture and the end of the save reach neither the index
    file nor the metadata file; a restart from the checkpoint replays them."""
    engine = Engine(s)
    engine.open()
    try:
        create_db(engine, "d", kind)
        fill(engine, "d", 400)
        engine.indexes.checkpoint()
        rng = np.random.default_rng(21)
        upsert(
            engine,
            "d",
            [
                (f"v{i}", rng.normal(size=DIM).tolist(), {"color": "violet"})
                for i in range(0, 40, 3)
            ],
        )
        delete(engine, "d", ["v7", "v8"])
        live = live_of(engine, "d")
        with paused_save(monkeypatch) as (entered, go):
            bg = Background(engine)
            bg.start()
            assert entered.wait(10)
            # captured: what the checkpoint must hold
            lsn = engine.log.last_lsn
            want_meta = dict(live.meta)
            want_terms = {k: set(v) for k, v in live.terms.items()}
            want_search = searches(live)
            labels = np.array(sorted(want_meta), dtype=np.int64)
            want_vecs = live.index.get(labels)  # hnswlib's own memory for hnsw
            # meanwhile: new vectors and a new term, terms moved and dropped, deletes
            new = [(f"n{i}", rng.normal(size=DIM).tolist(), {"color": "teal"}) for i in range(20)]
            cmds = [
                upsert_cmd("d", new),
                upsert_cmd("d", [("v1", [1.0] * DIM, {"color": "red"}), ("v2", [2.0] * DIM, None)]),
                Command("vec.delete", {"db": "d", "ids": ["v10", "v11", "v12", "n3"]}),
                upsert_cmd("d", [("v13", rng.normal(size=DIM).tolist(), metadata_of(14))]),
            ]
            for cmd in cmds:
                submit_within(engine, cmd)
            go.set()
            assert bg.result() == 1
        doc = index_json(s, "d")
        assert doc["lsn"] == lsn and doc["count"] == len(want_meta)
        meta, terms = ckpt.read_metadata(md_path(s, "d"), doc["count"])
        assert meta == want_meta
        assert terms == want_terms
        path = os.path.join(ckpt_dir(s, "d"), doc["file"])
        index: Any
        if kind == "hnsw":
            sp = live.spec
            index = HnswIndex.load(
                path,
                DIM,
                "cosine",
                m=sp.m,
                ef_construction=sp.ef_construction,
                ef_search=sp.ef_search,
            )
        else:
            index = FlatIndex.load(path, DIM, "cosine")
        assert len(index) == len(want_meta)
        assert np.array_equal(index.get(labels), want_vecs)
        saved = LiveDb("d", DIM, "cosine", live.spec, index=index)
        saved.meta, saved.terms = meta, terms
        assert searches(saved) == want_search
        # restart from it: the log tail brings it to the live state
        after = {
            "meta": dict(live.meta),
            "terms": {k: set(v) for k, v in live.terms.items()},
            "search": searches(live),
        }
        assert live.dirty
    finally:
        engine.close(checkpoint=False)
    engine = Engine(s)
    with no_store_scan():
        report = engine.open()
    try:
        assert report.index == {"loaded": 1, "rebuilt": 0, "replayed_records": len(cmds)}
        live = live_of(engine, "d")
        assert live.meta == after["meta"]
        assert live.terms == after["terms"]
        assert searches(live) == after["search"]
    finally:
        engine.close()


@pytest.mark.parametrize("at", ["write", "switch"])
@pytest.mark.parametrize("change", ["delete", "recreate", "rebuild"])
def test_a_database_deleted_or_rebuilt_during_its_save_loses_that_save(
    s: Settings, monkeypatch: pytest.MonkeyPatch, change: str, at: str
) -> None:
    """The save finishes after the change: it neither brings back a deleted database's
    directory nor switches ``index.json`` to an index that is no longer served."""
    engine = Engine(s)
    engine.open()
    try:
        create_db(engine, "d", "hnsw")  # first in line: its save is the one paused
        create_db(engine, "k", "flat")
        fill(engine, "d", 200)
        fill(engine, "k", 50)
        engine.indexes.checkpoint()
        old = index_json(s, "d")
        for db_id in ("d", "k"):
            upsert(engine, db_id, [("late", [1.0] * DIM, {"color": "late"})])
        with paused_save(monkeypatch, at) as (entered, go):
            bg = Background(engine)
            bg.start()
            assert entered.wait(10)
            if change in ("delete", "recreate"):
                submit_within(engine, Command("db.delete", {"db": "d"}))
                assert not os.path.exists(ckpt_dir(s, "d"))
            if change == "recreate":
                submit_within(engine, create_cmd("d", "hnsw"))
                submit_within(engine, upsert_cmd("d", [("new", [0.5] * DIM, {"color": "new"})]))
            if change == "rebuild":  # another M: a new index, built from the store
                db = engine.store.database("d")
                assert db is not None
                index_id = db["indexes"][-1]["id"]
                submit_within(
                    engine,
                    Command(
                        "index.update", {"db": "d", "index_id": index_id, "parameters": {"M": 8}}
                    ),
                )
            go.set()
            assert bg.result() == 1  # "k" only
        k_lsn = index_json(s, "k")["lsn"]
        if change == "rebuild":  # the previous checkpoint stays, alone
            assert index_json(s, "d") == old
            files = os.listdir(ckpt_dir(s, "d"))
            assert all(f == "index.json" or f.startswith(old["file"]) for f in files), files
            assert engine.indexes.oldest_checkpoint_lsn() == old["lsn"] < k_lsn
        else:  # nothing of the old database's checkpoint, and it holds no log back
            d = ckpt_dir(s, "d")
            assert not os.path.exists(d) or os.listdir(d) == []
            assert engine.indexes.oldest_checkpoint_lsn() == k_lsn
        assert engine.indexes.checkpoint() == (0 if change == "delete" else 1)
    finally:
        engine.close(checkpoint=False)
    engine = Engine(s)
    report = engine.open()
    try:
        dbs = 1 if change == "delete" else 2
        assert report.index == {"loaded": dbs, "rebuilt": 0, "replayed_records": 0}
        if change == "recreate":
            assert sorted(live_of(engine, "d").meta.values(), key=str) == [{"color": "new"}]
        if change == "rebuild":
            assert live_of(engine, "d").spec.m == 8 and len(live_of(engine, "d")) == 201
    finally:
        engine.close()


# -- start-up -------------------------------------------------------------------------------------


def test_open_removes_checkpoint_directories_of_databases_not_in_the_store(
    s: Settings,
    two_dbs: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    engine = Engine(s)
    engine.open()
    try:  # a crash between the db.delete commit and the removal of the directory
        monkeypatch.setattr(
            manager_mod.CheckpointStore, "remove", lambda self, db_id: None
        )
        engine.submit_sync(Command("db.delete", {"db": "f"}))
    finally:
        engine.close(checkpoint=False)
    monkeypatch.undo()
    assert os.path.exists(os.path.join(ckpt_dir(s, "f"), "index.json"))
    os.makedirs(ckpt_dir(s, "empty"))  # a first save that crashed right after creating it
    os.makedirs(ckpt_dir(s, "notes"))  # not ours
    Path(ckpt_dir(s, "notes"), "readme.txt").write_text("an operator's notes")
    Path(s.index_dir, "stray.txt").write_text("not a directory")
    from jade.backup.verify import verify_dir

    verify_dir(s)  # a check changes nothing: the orphans are still there after it
    assert sorted(os.listdir(s.index_dir)) == ["empty", "f", "h", "notes", "stray.txt"]
    engine = Engine(s)
    with caplog.at_level(logging.INFO, logger="jade.indexes.checkpoints"):
        report = engine.open()
    try:
        assert report.index == {"loaded": 1, "rebuilt": 0, "replayed_records": 0}
        assert sorted(os.listdir(s.index_dir)) == ["h", "notes", "stray.txt"]
        removed = [r.getMessage() for r in caplog.records if "removed" in r.getMessage()]
        assert len(removed) == 2, removed
        assert any(ckpt_dir(s, "f") in m for m in removed)
        assert any(ckpt_dir(s, "empty") in m for m in removed)
        kept = [r for r in caplog.records if ckpt_dir(s, "notes") in r.getMessage()]
        assert [r.levelno for r in kept] == [logging.WARNING]
        assert live_of(engine, "h").meta == two_dbs["h"]["meta"]
    finally:
        engine.close()
