"""``PackedMeta`` (issue 16, item 4): a database's metadata packed into one arena must read back
exactly what was written through overwrites, deletes and compactions, go to a file and back,
refuse a file whose parts do not fit, and never show a reader a torn or foreign entry while the
writer thread goes on."""

from __future__ import annotations

import random
import sys
import threading
from typing import Any

import numpy as np
import pytest

from jade.indexes.packed_meta import PackedMeta


def _md(rng: random.Random, label: int, version: int) -> Any:
    kind = rng.random()
    if kind < 0.1:
        return None
    if kind < 0.2:
        return {}
    return {"label": label, "version": version, "pad": "x" * rng.randrange(0, 3000),
            "tags": ["a", "b"][: rng.randrange(3)], "f": 0.1 * version}


def test_reads_back_what_was_written_through_overwrites_deletes_and_compactions() -> None:
    rng = random.Random(5)
    meta, model = PackedMeta(), {}
    compactions, last_state = 0, meta._state
    for step in range(6000):
        label = rng.randrange(400)
        if rng.random() < 0.2:
            meta.discard(label)
            model.pop(label, None)
        else:
            md = _md(rng, label, step)
            meta.put(label, md)
            model[label] = md
        if meta._state[0] is not last_state[0]:
            compactions += 1
        last_state = meta._state
    assert compactions >= 2, "the arena must have been compacted on the way"
    assert len(meta) == len(model)
    assert sorted(meta) == sorted(model)
    assert dict(meta.items()) == model
    assert meta == model
    assert all(meta.get(x) is None for x in range(400, 410))
    assert 3 not in PackedMeta() and "3" not in meta
    # a compaction leaves no more garbage than live bytes
    assert meta._garbage <= max(1 << 20, meta._live)


def test_a_file_round_trip_and_files_whose_parts_do_not_fit() -> None:
    rng = random.Random(6)
    meta = PackedMeta()
    model = {}
    for label in rng.sample(range(10_000), 500):
        model[label] = _md(rng, label, 0)
        meta.put(label, model[label])
    for label in list(model)[:100]:
        meta.discard(label)
        del model[label]
    labels, offsets, blob = meta.to_file()
    assert labels.tolist() == sorted(model)
    back = PackedMeta.from_file(labels, offsets, blob)
    assert back == model and len(back) == len(model)
    back.put(123_456, {"new": True})  # a loaded one takes writes as any other
    assert back[123_456] == {"new": True}
    bad = [
        (labels[:-1], offsets, blob),  # lengths differ
        (labels, offsets + len(blob), blob),  # an offset outside
        (labels, offsets, blob[:-1]),  # the last entry cut short
        (np.concatenate([labels[:1], labels[:-1]]), offsets, blob),  # a duplicate label
        (labels - labels.max() - 1, offsets, blob),  # negative labels
    ]
    for lab, off, b in bad:
        with pytest.raises(ValueError):
            PackedMeta.from_file(lab, off, b)


def test_readers_never_see_a_torn_or_foreign_entry_while_the_writer_goes_on() -> None:
    """A scan and lookups on other threads while one writer overwrites, deletes and so
    compacts: every value read is one that was written for that label."""
    meta = PackedMeta()
    written: dict[int, set[int]] = {x: set() for x in range(200)}
    stop = threading.Event()
    problems: list[str] = []

    def check(label: int, md: Any) -> None:
        if md is None:
            return
        if md.get("label") != label or md.get("version") not in written[label]:
            problems.append(f"label {label} read {str(md)[:80]}")

    def writer() -> None:
        rng = random.Random(7)
        for version in range(20_000):
            label = rng.randrange(200)
            if rng.random() < 0.1:
                meta.discard(label)
            else:
                written[label].add(version)  # before the value can be read
                meta.put(label, {"label": label, "version": version,
                                 "pad": "y" * rng.randrange(0, 1500)})
        stop.set()

    def reader() -> None:
        rng = random.Random(8)
        while not stop.is_set():
            count, items = meta.snapshot_items()
            seen = 0
            for label, md in items:
                check(label, md)
                seen += 1
            if seen != count:
                problems.append(f"snapshot said {count}, gave {seen}")
            for label, md in meta.items_of(rng.sample(range(200), 20)):
                check(label, md)
            for label in rng.sample(range(200), 20):
                check(label, meta.get(label))

    threads = [threading.Thread(target=writer)] + [
        threading.Thread(target=reader) for _ in range(2)]
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # threads switch every few bytecodes: the window is that wide
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
    finally:
        sys.setswitchinterval(interval)
    assert not problems, problems[:5]
