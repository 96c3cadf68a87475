"""The lean batch ingest path (issue 16, item 3): ``POST /vectors/batch`` decodes a plainly
well-formed body in one typed pass, and everything else goes through the reference path.

The promise tested here: whatever the lean path accepts, the reference path accepts too, into
the same command (so the same record and the same stored bytes); whatever it declines is
answered by the reference path, error for error. The store's and the codec's faster loops
write the bytes their definitions say.
"""

from __future__ import annotations

import base64
import binascii
import gzip
import hashlib
import random
from collections.abc import AsyncIterator, Callable
from typing import Any

import msgpack
import numpy as np
import orjson
import pytest

from jade.core.decide import Command
from jade.errors import InvalidArgument
from jade.http.validate import F32_MAX, MAX_METADATA_DEPTH, parse_json
from jade.http.vectors import _batch_command, _lean_batch, _lean_one, _upsert_command
from tests.conftest import Api, make_settings, running_server
from tests.test_http_errors import Strict
from wal.codec import GENESIS, chain

DIM = 4
DB = {"id": "db_t", "dimension": DIM}


def reference(raw: bytes) -> Command | str:
    """What the reference path makes of a body: its command, or its error."""
    try:
        return _batch_command(parse_json(raw), DB, "t")
    except InvalidArgument as exc:
        return f"{exc.code}: {exc.message}"


def lean_agrees(raw: bytes) -> bool:
    """Whether the lean path took the body (asserting it made the reference's command)."""
    lean = _lean_batch(raw, DB, "t")
    if lean is None:
        return False
    ref = reference(raw)
    assert isinstance(ref, Command), (raw[:200], ref)
    assert lean == ref and lean.size == ref.size
    return True


def b64(row: Any) -> str:
    return base64.b64encode(np.asarray(row, dtype="<f4").tobytes()).decode()


def body(*items: Any, **top: Any) -> bytes:
    return orjson.dumps({"vectors": list(items), **top})


ROW = [0.5, -1.25, 3e-7, 7]


def test_plain_bodies_take_the_lean_path_into_the_reference_command() -> None:
    rng = np.random.default_rng(3)
    rows = rng.standard_normal((50, DIM)).astype(np.float32)
    json_items = [{"id": f"v{i}", "values": r.tolist()} for i, r in enumerate(rows)]
    b64_items = [{"id": f"b{i}", "valuesB64": b64(r)} for i, r in enumerate(rows)]
    with_md = [{**item, "metadata": {"i": i, "tags": ["a", "b"], "x": {"y": None}}}
               for i, item in enumerate(json_items)]
    for raw in (body(*json_items), body(*b64_items), body(*with_md),
                body(*(x for pair in zip(json_items, b64_items, strict=True) for x in pair)),
                body({"id": "a", "values": ROW, "metadata": None}),
                body({"id": "a", "values": [1, 2, 3, 4]}, {"id": "a", "values": ROW}),
                b' {"vectors": [{"id": "\\u00e9\\ud83d\\ude00", "values": [1e-3, 2E5, -0, 0.0]}]}'
                b"\n",
                body({"id": "a", "values": [F32_MAX, -F32_MAX, 1e-45, 5e-324]}),
                body({"id": "a", "values": ROW}, upsert=True),  # the spec's flag
                body({"id": "a", "values": ROW}, upsert={"any": ["json"]}),
                # ints beyond 64 bits are floats to both parsers
                b'{"vectors": [{"id": "a", "values": [1' + b"0" * 30 + b', 18446744073709551615,'
                b' -9223372036854775809, 1]}]}'):
        assert lean_agrees(raw), raw[:200]


def test_numbers_in_any_spelling_parse_to_the_same_float32() -> None:
    """msgspec and orjson turn every JSON number spelling into the same value (shortest repr,
    long mantissas, exponents, integers past 64 bits, float32 subnormals): 40,000 of them."""
    rng = np.random.default_rng(11)
    spell: list[Callable[[float], str]] = [
        repr, lambda x: f"{x:.9g}", lambda x: f"{x:.25e}", lambda x: f"{x:.3E}",
        lambda x: repr(float(np.float32(x)))]
    tokens: list[str] = []
    while len(tokens) < 40_000:
        x = float(rng.standard_normal() * 10.0 ** int(rng.integers(-50, 39)))
        kind = int(rng.integers(0, 8))
        if kind < len(spell):
            tokens.append(spell[kind](x))
        elif kind == 5:
            tokens.append(str(int(rng.integers(-(2**62), 2**62))))
        elif kind == 6:
            tokens.append("".join(map(str, rng.integers(1, 10, 30))))  # an integer past 64 bits
        else:
            tokens.append("0." + "".join(map(str, rng.integers(0, 10, 40))))
    tokens = [t for t in tokens if t not in ("inf", "-inf", "nan") and "inf" not in t]
    tokens = tokens[: len(tokens) // DIM * DIM]
    items = b",".join(
        b'{"id": "v%d", "values": [%s]}' % (i, ",".join(tokens[i * DIM:(i + 1) * DIM]).encode())
        for i in range(len(tokens) // DIM))
    assert lean_agrees(b'{"vectors": [' + items + b"]}")


def test_duplicate_keys_mean_the_same_to_both_paths() -> None:
    raw = (b'{"vectors": [{"id": "x", "values": [9, 9, 9, 9]}],'
           b' "vectors": [{"id": "a", "values": [1, 2, 3, 4], "id": "b",'
           b' "metadata": {"k": 1}, "metadata": {"k": 2}}]}')
    assert lean_agrees(raw)
    cmd = _lean_batch(raw, DB, "t")
    assert cmd is not None and cmd.body["ids"] == ["b"] and cmd.body["metadata"] == [{"k": 2}]


def _deep(levels: int) -> dict[str, Any]:
    md: dict[str, Any] = {}
    for _ in range(levels - 1):
        md = {"a": md}
    return md


# deeper than orjson's 1024 levels counted from the body, fine counted from the metadata
PAST_ORJSON_LIMIT = (b'{"vectors": [{"id": "a", "values": [1, 2, 3, 4], "metadata": '
                     + b'{"a":' * 1021 + b"1" + b"}" * 1021 + b"}]}")

REFUSED: list[bytes] = [
    body({"id": "a", "values": ROW[:3]}),
    body({"id": "a", "values": [*ROW, 1]}),
    body({"id": "a", "values": [1, True, 0, 0]}),
    body({"id": "a", "values": [1, "2", 0, 0]}),
    body({"id": "a", "values": [1, None, 0, 0]}),
    body({"id": "a", "values": [1, [2], 0, 0]}),
    body({"id": "a", "values": [3.5e38, 0, 0, 0]}),
    body({"id": "a", "values": [-3.4028235e38, 0, 0, 0]}),  # float32 max once cast: refused
    b'{"vectors": [{"id": "a", "values": [1e400, 0, 0, 0]}]}',
    b'{"vectors": [{"id": "a", "values": [NaN, 0, 0, 0]}]}',
    body({"id": "a", "values": None}),
    body({"id": "a", "values": "1,2,3,4"}),
    body({"id": "a", "valuesB64": b64(ROW[:3])}),
    body({"id": "a", "valuesB64": b64(ROW * 2)}),
    body({"id": "a", "valuesB64": b64([np.nan, 0, 0, 0])}),
    body({"id": "a", "valuesB64": b64([np.inf, 0, 0, 0])}),
    body({"id": "a", "valuesB64": b64(ROW)[:-2]}),
    body({"id": "a", "valuesB64": b64(ROW) + "="}),
    body({"id": "a", "valuesB64": b64(ROW)[:4] + "\n" + b64(ROW)[4:]}),
    body({"id": "a", "valuesB64": "%%%"}),
    body({"id": "a", "valuesB64": 17}),
    body({"id": "a", "valuesB64": None}),
    body({"id": "a"}),
    body({"values": ROW}),
    body({"id": "", "values": ROW}),
    body({"id": 7, "values": ROW}),
    body({"id": "a/b", "values": ROW}),
    body({"id": "a\x01", "values": ROW}),
    body({"id": "a\x7f", "values": ROW}),
    body({"id": ".", "values": ROW}),
    body({"id": "x" * 257, "values": ROW}),
    b'{"vectors": [{"id": "\\ud800", "values": [1, 2, 3, 4]}]}',
    body({"id": "a", "values": ROW, "metadata": [1]}),
    body({"id": "a", "values": ROW, "metadata": "x"}),
    body({"id": "a", "values": ROW, "metadata": 5}),
    body({"id": "a", "values": ROW, "metadata": _deep(MAX_METADATA_DEPTH + 1)}),
    PAST_ORJSON_LIMIT,
    b'{"vectors": [{"id": "a", "values": [1, 2, 3, 4], "metadata": {"x": 1e400}}]}',
    b'{"vectors": [{"id": "a", "values": [1, 2, 3, 4], "metadata": {"x": "\\ud800"}}]}',
    b'{"vectors": [{"id": "a", "values": [1, 2, 3, 4], "metadata": {"x": "\xff"}}]}',
    b'{"vectors": [{"id": "a", "values": [1, 2, 3, 4], "metadata": {"x": 1,}}]}',
    body(None),
    body("x"),
    body([1, 2, 3, 4]),
    orjson.dumps({"vectors": []}),
    orjson.dumps({"vectors": {"id": "a", "values": ROW}}),
    orjson.dumps({"vectors": "x"}),
    orjson.dumps({}),
    orjson.dumps([{"id": "a", "values": ROW}]),
    b"{",
    b'{"vectors": [{"id": "a", "values": [1, 2, 3, 4]}]} x',
    b'\xef\xbb\xbf{"vectors": [{"id": "a", "values": [1, 2, 3, 4]}]}',
    b'{"vectors": [{"id": "a", "values": [01, 2, 3, 4]}]}',
    b'{"vectors": [{"id": "a", "values": [1., 2, 3, 4]}]}',
    b'{"vectors": [{"id": "a", "values": [+1, 2, 3, 4]}]}',
    b'{"vectors": [{"id": "a", "values": [1, 2, 3, 4],}]}',
    # a key the lean path does not type is never skipped unchecked (msgspec would skip these)
    b'{"vectors": [{"id": "a", "values": [1, 2, 3, 4], "x": "\xff"}]}',
    b'{"vectors": [{"id": "a", "values": [1, 2, 3, 4], "x": "\xed\xa0\x80"}]}',
    b'{"vectors": [{"id": "a", "values": [1, 2, 3, 4], "x": 1e400}]}',
    b'{"vectors": [{"id": "a", "values": [1, 2, 3, 4]}], "x": 1e400}',
    b'{"vectors": [{"id": "a", "values": [1, 2, 3, 4]}], "upsert": 1e400}',
    b'{"vectors": [{"id": "a", "values": [1, 2, 3, 4]}], "upsert": "\xff"}',
]


@pytest.mark.parametrize("raw", REFUSED, ids=range(len(REFUSED)))
def test_what_the_reference_path_refuses_the_lean_path_declines(raw: bytes) -> None:
    assert isinstance(reference(raw), str)
    assert _lean_batch(raw, DB, "t") is None


def test_a_key_the_lean_path_does_not_type_goes_to_the_reference_path() -> None:
    for raw in (body({"id": "a", "values": ROW, "extra": 1}),
                body({"id": "a", "values": ROW}, note="x")):
        assert _lean_batch(raw, DB, "t") is None
        assert isinstance(reference(raw), Command)


def test_random_bodies_never_make_a_command_the_reference_path_would_not() -> None:
    """Bodies built from good and bad parts at random: the lean path either declines or makes
    exactly the reference's command, and it takes every body that has no bad part."""
    rnd = random.Random(16)
    good_values: list[Any] = [ROW, [1, 2, 3, 4], [0.1, -0.2, 1e-30, -0.0], [F32_MAX, 0, 0, -1]]
    bad_values: list[Any] = [ROW[:3], [1, True, 0, 0], [1e39, 0, 0, 0], None, "x", [1, "2", 3, 4]]
    good_md: list[Any] = [{"k": 1}, None, {"a": [1, {"b": "é"}]}, {}]
    bad_md: list[Any] = [[1], "s", 3, _deep(MAX_METADATA_DEPTH + 1)]
    taken = 0

    def pick(good: list[Any], bad_ones: list[Any]) -> tuple[Any, bool]:
        if rnd.random() < 0.96:
            return rnd.choice(good), False
        return rnd.choice(bad_ones), True

    for _ in range(600):
        items: list[Any] = []
        bad = False
        for i in range(rnd.randint(1, 6)):
            vid, wrong = pick([f"v{i}", "dup", "é"], ["a/b", "", 5])
            item: dict[str, Any] = {"id": vid}
            roll = rnd.random()
            if roll < 0.48:
                item["values"], w = pick(good_values, bad_values)
            elif roll < 0.96:
                item["valuesB64"], w = pick([b64(v) for v in good_values],
                                            [b64(ROW[:3]), "%%", b64([np.nan] * 4), 5])
            else:
                w = True  # no values at all
            wrong |= w
            if rnd.random() < 0.5:
                item["metadata"], w = pick(good_md, bad_md)
                wrong |= w
            if rnd.random() < 0.02:
                item["other"] = 1
                wrong = True  # a key the lean path does not type: declined, however good
            bad |= wrong
            items.append(item)
        raw = body(*items)
        took = lean_agrees(raw)
        taken += took
        if not bad:
            assert took, raw
    assert taken > 300


def test_a_single_write_takes_the_lean_path_into_the_reference_command() -> None:
    """``POST .../vectors`` (one vector): the lean decode makes exactly the command of the
    reference path (``_upsert_command``) or declines, over good and bad single bodies."""
    rnd = random.Random(17)
    goods = [{"id": "a", "values": ROW}, {"id": "é", "valuesB64": b64(ROW)},
             {"id": "m", "values": [1, 2, 3, 4], "metadata": {"k": [1, {"b": "x"}]}},
             {"id": "n", "values": ROW, "metadata": None},
             {"id": "both", "values": ROW, "valuesB64": b64([9, 9, 9, 9])}]
    bads = [{"id": "a/b", "values": ROW}, {"id": "a", "values": ROW[:3]},
            {"id": "a", "values": [1e39, 0, 0, 0]}, {"id": "a"}, {"values": ROW},
            {"id": "a", "values": ROW, "metadata": [1]}, {"id": "a", "values": ROW, "x": 1},
            {"id": "a", "valuesB64": b64([np.nan] * 4)}, [ROW]]
    taken = 0
    for _ in range(200):
        item = rnd.choice(goods + bads)
        raw = orjson.dumps(item)
        lean = _lean_one(raw, DB, "t")
        try:
            ref: Command | str = _upsert_command(DB, [parse_json(raw)], "t")
        except InvalidArgument as exc:
            ref = exc.code
        if lean is None:
            assert item not in goods, item
            continue
        taken += 1
        assert isinstance(ref, Command) and lean == ref and lean.size == ref.size, item
    assert taken > 50


def test_base64_strict_mode_takes_a_subset_of_validate_with_the_same_bytes() -> None:
    """The lean path decodes ``valuesB64`` with binascii's strict mode; the reference path with
    ``b64decode(validate=True)``."""
    rnd = random.Random(5)
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    accepted = 0
    for _ in range(50_000):
        s = "".join(rnd.choice(alphabet if rnd.random() < 0.85 else "= \n-_.é\x00")
                    for _ in range(rnd.randint(0, 13)))
        try:
            strict = binascii.a2b_base64(s, strict_mode=True)
        except (binascii.Error, ValueError):
            continue
        accepted += 1
        assert base64.b64decode(s, validate=True) == strict, s
    assert accepted > 1000


# -- the writer's side: the same bytes, written faster ------------------------------------------


def test_the_record_checksum_is_blake2b_of_the_previous_and_the_payload() -> None:
    payload = bytes(range(256)) * 5000
    prev = hashlib.blake2b(b"x", digest_size=16).digest()
    assert chain(prev, payload) == hashlib.blake2b(prev + payload, digest_size=16).digest()
    assert chain(GENESIS, b"") == hashlib.blake2b(GENESIS, digest_size=16).digest()


def test_stored_vectors_are_sealed_msgpack_of_label_values_metadata(tmp_path: Any) -> None:
    from jade import events as ev
    from jade.stores.data import DataStore, lkey, vkey
    from wal.codec import Record
    from wal.lmdbenv import Env
    from wal.seal import seal

    store = DataStore(Env(str(tmp_path / "db"), map_size=64 << 20))
    rows = np.arange(3 * DIM, dtype="<f4").reshape(3, DIM)
    create = ev.DbCreate(db="d", name="d", dimension=DIM, metric="cosine", index_type="FLAT",
                         index=ev.IndexDef(id="i", kind="flat"))
    upsert = ev.VecUpsert(db="d", ids=["a", "b", "a"], labels=[0, 1, 0], values=rows.tobytes(),
                          metadata=[{"k": 1}, None, {"k": 3}], next_label=2)

    def write(txn: Any) -> None:
        store.apply(txn, Record(1, 1, 0, create.type, "t", create.body()), create)
        store.apply(txn, Record(2, 2, 0, upsert.type, "t", upsert.body()), upsert)

    store.env.write(write)
    with store.env.read() as txn:
        for vid, label, row, md in (("a", 0, rows[2], {"k": 3}), ("b", 1, rows[1], None)):
            key = vkey("d", vid)
            packed = msgpack.packb([label, row.tobytes(), md], use_bin_type=True)
            assert txn.get(key, db=store.vec) == seal(key, packed)
            assert txn.get(lkey("d", label), db=store.lbl) == seal(lkey("d", label), vid.encode())
    assert store.database("d")["count"] == 2  # type: ignore[index]
    assert [v.id for v in store.page("d", 0, 10)] == ["a", "b"]


# -- over HTTP ----------------------------------------------------------------------------------


@pytest.fixture
def strict(api: Api) -> Strict:
    return Strict(api)


async def test_a_mixed_batch_stores_what_each_vector_said(strict: Strict) -> None:
    db = await strict.create_db(DIM)
    p = f"/v1/databases/{db}"
    rows = np.array([[0.1, -2.5, 3e-5, 1], [1.0, 0.0, 7.25, -1]], dtype="<f4")
    st, res = await strict.post(p + "/vectors/batch", {"vectors": [
        {"id": "j", "values": rows[0].tolist(), "metadata": {"k": [1, "x"]}},
        {"id": "b", "valuesB64": b64(rows[1])}]})
    assert st == 201 and res == {"status": "success", "count": 2}, res
    for vid, row, md in (("j", rows[0], {"k": [1, "x"]}), ("b", rows[1], {})):
        st, got = await strict.get(f"{p}/vectors/{vid}")
        assert np.array_equal(np.asarray(got["values"], dtype="<f4"), row)
        assert got["metadata"] == md


async def test_a_declined_body_is_answered_by_the_reference_path(strict: Strict) -> None:
    db = await strict.create_db(DIM)
    p = f"/v1/databases/{db}/vectors/batch"
    st, res = await strict.post(p, {"vectors": [{"id": "a", "values": ROW, "note": "kept"}]})
    assert st == 201 and res["count"] == 1  # an unknown key is ignored, as it always was
    for raw, code, words in (
        (b'{"vectors": [{"id": "a", "values": [1, 2, 3, 4], "x": "\xff"}]}', "invalid_json",
         "malformed JSON"),
        (body({"id": "a", "values": [1, True, 0, 0]}), "invalid_argument", "only numbers"),
        (body({"id": "a", "values": ROW[:3]}), "dimension_mismatch", "has 3 values"),
        (body({"id": "a", "valuesB64": b64(ROW * 2)}), "dimension_mismatch", "holds 8 floats"),
        (body({"id": "a", "values": [3.5e38, 0, 0, 0]}), "invalid_argument", "float32 range"),
        (orjson.dumps({"vectors": []}), "invalid_argument", "must not be empty"),
    ):
        st, res = await strict.post(p, raw=raw)
        assert st == 400 and res["error"] == code and words in res["message"], (raw, res)
    assert await strict.count(db) == 1


async def test_an_import_checks_each_line_once_and_stores_what_it_said(strict: Strict) -> None:
    """Import lines in both spellings, good and bad: the bad ones are counted and named (the
    same words as a single write's), the good ones stored exactly."""
    db = await strict.create_db(DIM)
    p = f"/v1/databases/{db}"
    rows = np.array([[0.1, -2.5, 3e-5, 1], [1.0, 0.0, 7.25, -1]], dtype="<f4")
    lines: list[Any] = [
        {"id": "j", "values": rows[0].tolist(), "metadata": {"k": 1}},
        {"id": "b", "valuesB64": b64(rows[1]), "metadata": {"k": 2}},
        {"id": "short", "values": ROW[:3]},
        {"id": "twice", "valuesB64": b64(ROW * 2)},
        {"id": "nan", "valuesB64": b64([np.nan, 0, 0, 0])},
        {"id": "a/b", "values": ROW},
        {"id": "md", "values": ROW, "metadata": [1]},
        {"id": "none"},
        [1, 2],
    ]
    raw = b"\n".join(orjson.dumps(x) for x in lines) + b"\n{oops\n"
    st, res = await strict.post(p + "/vectors/import?chunk=3", raw=raw)
    assert st == 201 and res["status"] == "partial", res
    assert res["imported"] == 2 and res["failed"] == 8, res
    malformed = [e for e in res["errors"] if e.startswith("line 10: malformed JSON")]
    assert len(malformed) == 1, res["errors"]
    assert sorted(set(res["errors"]) - set(malformed)) == sorted([
        "'valuesB64' must contain only finite numbers",
        "id 'short': dimension mismatch: 'values' has 3 values, the database expects 4",
        "id 'a/b': 'id' must not contain '/' or control characters",
        "id 'md': 'metadata' must be a JSON object",
        "id 'none': vector: missing required field 'values' (or 'valuesB64')",
        "line 4: dimension mismatch: 'valuesB64' holds 8 floats, the database expects 4",
        "line 9: expected an object with id and values",
    ]), res["errors"]
    for vid, row, md in (("j", rows[0], {"k": 1}), ("b", rows[1], {"k": 2})):
        st, got = await strict.get(f"{p}/vectors/{vid}")
        assert np.array_equal(np.asarray(got["values"], dtype="<f4"), row)
        assert got["metadata"] == md
    assert await strict.count(db) == 2


# -- the body read ------------------------------------------------------------------------------


@pytest.fixture
async def small(tmp_path: Any) -> AsyncIterator[Strict]:
    async with running_server(make_settings(tmp_path, max_body_bytes=1000)) as srv:
        yield Strict(srv.user)


async def test_a_compressed_body_is_read_inflated_and_refused_past_the_limit(small: Strict
                                                                            ) -> None:
    """A body sent with Content-Encoding is inflated as it is read; one that inflates past the
    ``max_body_bytes`` setting is refused 413 as aiohttp refused it (its Content-Length was
    under the limit), and nothing is written."""
    db = await small.create_db(DIM)
    api = small.api
    url = f"{api.base}/v1/databases/{db}/vectors/batch"
    headers = {**api.headers, "Content-Type": "application/json", "Content-Encoding": "gzip"}
    fits = body({"id": "ok", "values": ROW})
    bomb = body(*({"id": f"v{i}", "values": ROW} for i in range(200)))
    assert len(gzip.compress(bomb)) < 1000 < len(bomb)
    async with api.session.post(url, data=gzip.compress(fits), headers=headers) as r:
        assert r.status == 201, await r.text()
    async with api.session.post(url, data=gzip.compress(bomb), headers=headers) as r:
        assert r.status == 413
        assert await r.json() == {"error": "payload_too_large",
                                  "message": "Request Entity Too Large"}
    assert await small.count(db) == 1
