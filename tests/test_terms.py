"""``Terms`` (issue 16, item 4): the inverted index held as arrays plus changes must answer as
the dict of sets it replaces, through growth past ``SMALL``, merges, shrinking back and
captures that later writes must not change."""

from __future__ import annotations

import random

import numpy as np

from jade.indexes.terms import SMALL, Terms


def test_answers_as_a_dict_of_sets_through_merges_and_captures() -> None:
    rng = random.Random(11)
    terms = Terms()
    model: dict[tuple[str, str], set[int]] = {}
    held: dict[int, set[tuple[str, str]]] = {}  # label -> its terms (the LiveDb invariant)
    keys = [("f", f"v{i}") for i in range(6)]
    captures: list[tuple[Terms, dict[tuple[str, str], set[int]]]] = []
    kinds: set[str] = set()
    for step in range(30_000):
        label = rng.randrange(3000)
        old = held.pop(label, set())
        for t in old:  # a vector's old terms go before its new ones come
            terms.discard(t, label)
            model[t].discard(label)
            if not model[t]:
                del model[t]
        if rng.random() < 0.7:
            # skewed: one big term, a few mid ones, a rare one
            new = {keys[0]} if rng.random() < 0.8 else set()
            new |= {rng.choice(keys[1:4])} if rng.random() < 0.5 else set()
            new |= {keys[5]} if rng.random() < 0.01 else set()
            for t in new:
                terms.add(t, label)
                model.setdefault(t, set()).add(label)
            held[label] = new
        if step % 997 == 0:
            terms.release()
            captures.append((terms.capture(), {t: set(v) for t, v in model.items()}))
        kinds |= {type(e).__name__ for e in terms._d.values()}
        if step % 1500 == 0:
            assert terms == model
            for t in keys:
                assert sorted(terms.members(t).tolist()) == sorted(model.get(t, ()))
                assert terms.count(t) == len(model.get(t, ()))
    assert terms == model
    assert {"set", "_Big"} <= kinds
    for cap, want in captures[-3:]:  # the last captures: later writes copied, not changed
        assert cap == want
    flat = {t: a for t, a in terms.flat()}
    assert {t: set(a.tolist()) for t, a in flat.items()} == model
    back = Terms.from_arrays(flat.items())
    assert back == model
    assert all(len(a) < SMALL or isinstance(back._d[t], type(terms._d[keys[0]]))
               for t, a in flat.items())
    assert np.array_equal(Terms().members(("x", "y")), np.zeros(0, dtype=np.int64))
