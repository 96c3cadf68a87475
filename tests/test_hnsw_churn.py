"""Delete/re-insert churn does not grow the hnswlib graph: a new label takes the slot of a
deleted element (hnswlib's ``allow_replace_deleted``), and searches, the numpy copy of the
vectors, ``len`` and checkpoints stay right (issue 14, item 5)."""

from __future__ import annotations

import json
from pathlib import Path

import hnswlib
import numpy as np

from jade.indexes.hnsw import HnswIndex

DIM = 16
START, CHURN, ROUNDS, K = 2000, 500, 20, 10


def _index(**over: int) -> HnswIndex:
    args = {"m": 16, "ef_construction": 100, "ef_search": 200, "capacity": 1024, "threads": 2}
    args.update(over)
    return HnswIndex(DIM, "euclidean", **args)


def _check(idx: HnswIndex, ref: dict[int, np.ndarray], gone: set[int],
           rng: np.random.Generator) -> None:
    """Recall@10 against exact scores, no deleted label returned, the numpy copy right."""
    assert len(idx) == len(ref)
    labels = np.fromiter(ref, dtype=np.int64, count=len(ref))
    mat = np.stack([ref[x] for x in labels.tolist()])
    qs = rng.normal(size=(40, DIM)).astype(np.float32)
    got, _ = idx.search_batch(qs, K)
    hits = 0
    for q, row in zip(qs, got, strict=True):
        want = labels[np.argsort(((mat - q) ** 2).sum(axis=1))[:K]]
        hits += len(set(row.tolist()) & set(want.tolist()))
        assert not set(row.tolist()) & gone
        one, _ = idx.search(q, K)
        assert not set(one.tolist()) & gone
    assert hits / (len(qs) * K) >= 0.9
    keep, rows = idx.get_present(np.arange(max(max(ref), max(gone, default=0)) + 1))
    assert keep.tolist() == sorted(ref)
    np.testing.assert_array_equal(rows, mat[np.argsort(labels)])


def _round(idx: HnswIndex, ref: dict[int, np.ndarray], gone: set[int], next_id: int,
           rng: np.random.Generator) -> int:
    out = rng.choice(np.fromiter(ref, dtype=np.int64, count=len(ref)), CHURN, replace=False)
    idx.delete(out.tolist())
    for x in out.tolist():
        del ref[x]
        gone.add(x)
    new = np.arange(next_id, next_id + CHURN, dtype=np.int64)
    vecs = rng.normal(size=(CHURN, DIM)).astype(np.float32)
    idx.add(new, vecs)
    ref.update(zip(new.tolist(), vecs, strict=True))
    return next_id + CHURN


def test_churn_reuses_deleted_slots_and_survives_a_checkpoint(tmp_path: Path) -> None:
    rng = np.random.default_rng(14)
    idx = _index()
    vecs = rng.normal(size=(START, DIM)).astype(np.float32)
    idx.add(np.arange(START, dtype=np.int64), vecs)
    ref = dict(zip(range(START), vecs, strict=True))
    gone: set[int] = set()
    counts = [int(idx.index.get_current_count())]
    next_id = START
    for _ in range(ROUNDS):
        next_id = _round(idx, ref, gone, next_id, rng)
        counts.append(int(idx.index.get_current_count()))
        assert counts[-1] <= START + CHURN, counts
    _check(idx, ref, gone, rng)

    # updates of live labels stay in place; a deleted label re-added is revived, not doubled
    upd = np.array(sorted(ref)[:50], dtype=np.int64)
    uv = rng.normal(size=(50, DIM)).astype(np.float32)
    idx.delete([int(upd[0])])
    idx.add(upd, uv)
    ref.update(zip(upd.tolist(), uv, strict=True))
    assert int(idx.index.get_current_count()) == counts[-1]
    top, _ = idx.search_batch(uv, 1)
    assert top[:, 0].tolist() == upd.tolist()
    # a label whose slot went to another label can come back (it takes a free slot)
    back = sorted(gone)[:10]
    idx.delete(sorted(ref)[-10:])
    for x in sorted(ref)[-10:]:
        del ref[x]
        gone.add(x)
    bv = rng.normal(size=(10, DIM)).astype(np.float32)
    idx.add(np.array(back, dtype=np.int64), bv)
    ref.update(zip(back, bv, strict=True))
    gone -= set(back)
    assert int(idx.index.get_current_count()) == counts[-1]
    _check(idx, ref, gone, rng)

    # checkpoint and load: same count, same answers, replacement still on
    path = str(tmp_path / "hnsw")
    idx.capture().write(path)
    idx.index.save_index(str(tmp_path / "want"))
    assert Path(path).read_bytes() == (tmp_path / "want").read_bytes()
    with open(path + ".deleted.json") as fh:
        marked = json.load(fh)
    assert set(marked) <= gone and len(marked) == counts[-1] - len(ref)
    loaded = HnswIndex.load(path, DIM, "euclidean", m=16, ef_construction=100, ef_search=200,
                            threads=2)
    assert int(loaded.index.get_current_count()) == counts[-1] and len(loaded) == len(ref)
    qs = rng.normal(size=(30, DIM)).astype(np.float32)
    assert np.array_equal(loaded.search_batch(qs, K)[0], idx.search_batch(qs, K)[0])
    _check(loaded, ref, gone, rng)
    for _ in range(3):
        next_id = _round(loaded, ref, gone, next_id, rng)
        assert int(loaded.index.get_current_count()) == counts[-1]
    _check(loaded, ref, gone, rng)


def test_a_checkpoint_written_without_replacement_loads_and_reuses_slots(
    tmp_path: Path,
) -> None:
    """An index file saved by an hnswlib index made without ``allow_replace_deleted`` (older
    checkpoints): loads with its deletions, then new labels take the deleted slots."""
    rng = np.random.default_rng(5)
    raw = hnswlib.Index(space="l2", dim=DIM)
    raw.init_index(max_elements=300, M=16, ef_construction=100, random_seed=100)
    vecs = rng.normal(size=(300, DIM)).astype(np.float32)
    raw.add_items(vecs, np.arange(300))
    for x in range(0, 300, 3):
        raw.mark_deleted(x)
    path = str(tmp_path / "old")
    raw.save_index(path)
    with open(path + ".deleted.json", "w") as fh:
        json.dump(list(range(0, 300, 3)), fh)
    idx = HnswIndex.load(path, DIM, "euclidean", m=16, ef_construction=100, ef_search=200)
    ref = {x: vecs[x] for x in range(300) if x % 3}
    gone = set(range(0, 300, 3))
    assert len(idx) == 200 and idx.deleted == gone
    _check(idx, ref, gone, rng)
    nv = rng.normal(size=(100, DIM)).astype(np.float32)
    idx.add(np.arange(1000, 1100, dtype=np.int64), nv)
    ref.update(zip(range(1000, 1100), nv, strict=True))
    assert int(idx.index.get_current_count()) == 300 and len(idx) == 300
    _check(idx, ref, gone, rng)
    idx.add(np.array([5000]), nv[:1])  # no deleted slot left: the index grows
    assert int(idx.index.get_current_count()) == 301 and len(idx) == 301


def test_deleted_labels_are_pruned_when_their_slots_are_reused() -> None:
    """``deleted`` does not keep every label ever deleted."""
    rng = np.random.default_rng(9)
    idx = _index(threads=1)
    idx.add(np.arange(1000, dtype=np.int64), rng.normal(size=(1000, DIM)).astype(np.float32))
    for r in range(12):
        base = 1000 * (r + 1)
        idx.delete(list(range(base - 1000, base - 500)))
        idx.add(np.arange(base, base + 500, dtype=np.int64),
                rng.normal(size=(500, DIM)).astype(np.float32))
        idx.delete(list(range(base - 500, base)))
        idx.add(np.arange(base + 500, base + 1000, dtype=np.int64),
                rng.normal(size=(500, DIM)).astype(np.float32))
    assert int(idx.index.get_current_count()) <= 1500 and len(idx) == 1000
    assert len(idx.deleted) <= 4096 + 1000
