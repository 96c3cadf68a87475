"""Issue 15, class 1: one filter request must not stall the server.

MATCHES_REGEX compiled the caller's pattern with Python's ``re``, which backtracks while holding
the GIL: ``^(a+)+$`` over 26 characters, or ``^(\\w+\\s?)*$`` over an ordinary sentence, stopped
every other request (``/health`` included) for seconds. Now RE2 matches in linear time, patterns
it cannot run in linear time are refused (400 naming the pattern), and a search's work stops at
``query_timeout_seconds`` (503 ``query_timeout``).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import numpy as np
import pytest

from jade.core.filters import FilterError, parse_filter
from jade.indexes.live import LiveDb, spec_of
from tests.conftest import Api, make_settings, running_server

LONG = 100_000


def regex_filter(pattern: str) -> dict[str, Any]:
    return {"conditions": [{"field": "text", "op": "MATCHES_REGEX", "value": pattern}]}


async def store_texts(api: Api, db: str, texts: dict[str, str]) -> None:
    vectors = [{"id": vid, "values": [float(i % 7), 1.0, 0.5, float(i % 3)],
                "metadata": {"text": text}}
               for i, (vid, text) in enumerate(texts.items())]
    for i in range(0, len(vectors), 8):  # < 1 MB a request (aiohttp warns beyond)
        st, body = await api.post(f"/v1/databases/{db}/vectors/batch",
                                  {"vectors": vectors[i : i + 8]})
        assert st == 201, body


CASES = [
    # the textbook one: 26 characters took Python's re ~2.5 s (x4 per two more characters)
    pytest.param(r"^(a+)+$", "a" * 26 + "!", "a" * LONG, "b" * LONG, id="nested-plus"),
    # an ordinary pattern ("a sentence of words") over an ordinary sentence: ~4 s in re
    pytest.param(r"^(\w+\s?)*$", "The quick brown fox jumps over the dog.",
                 ("lorem ipsum dolor sit amet " * (LONG // 27)).strip(),
                 "!" + "x" * LONG, id="sentence-of-words"),
]


@pytest.mark.parametrize(("pattern", "evil", "long_match", "long_miss"), CASES)
async def test_evil_regex_does_not_stall_the_server(
        api: Api, pattern: str, evil: str, long_match: str, long_miss: str) -> None:
    db = await api.create_db(4)
    texts = {f"v{i}": f"item-{i}" for i in range(30)}
    texts |= {"evil": evil, "long-match": long_match, "long-miss": long_miss}
    await store_texts(api, db, texts)
    query = {"queryVector": [1.0, 1.0, 1.0, 1.0], "topK": 10, "filters": regex_filter(pattern)}

    t0 = time.monotonic()
    search = asyncio.ensure_future(api.post(f"/v1/databases/{db}/search", query))
    # the search is running (or, as it should, already done); client and server share this
    # process and its event loop, so a search holding the GIL delays the sleep's wake-up too:
    # the time is taken from before the sleep
    await asyncio.sleep(0.1)
    st, body = await api.get("/health")
    health_seconds = time.monotonic() - t0 - 0.1
    assert st == 200, body
    assert health_seconds < 0.5, f"/health took {health_seconds:.2f} s behind one regex search"

    st, body = await search
    search_seconds = time.monotonic() - t0
    assert st == 200, body  # linear time: done long before any timeout
    assert [r["vectorId"] for r in body["results"]] == ["long-match"]
    assert search_seconds < 5, f"the regex search took {search_seconds:.2f} s"


@pytest.mark.parametrize("pattern", [r"(a)\1", r"foo(?=bar)", r"(?<=a)b", r"(?P<x>a)(?P=x)",
                                     r"a++"])
async def test_a_pattern_re2_cannot_run_in_linear_time_is_400_naming_it(
        api: Api, pattern: str) -> None:
    db = await api.create_db(4)
    st, body = await api.post(f"/v1/databases/{db}/search",
                              {"queryVector": [1, 0, 0, 0], "filters": regex_filter(pattern)})
    assert st == 400, body
    assert body["error"] == "invalid_filter"
    assert repr(pattern) in body["message"] and "RE2" in body["message"], body["message"]


def test_regex_semantics_kept() -> None:
    def m(pattern: str, value: object) -> bool:
        return parse_filter(regex_filter(pattern)).matches({"text": value})

    assert m(r"\d", "room 42")  # a search, not an anchored match
    assert m(r"^4", 42)  # scalars through str()
    assert m(r"(?i)^CAFÉ", "café au lait")  # UTF-8, case folding beyond ASCII
    assert not m(r"^caf.$", "café!")
    assert m(r"^caf.$", "café")  # '.' is one character, not one byte
    assert not m(r"x", ["x"])  # lists never match a regex
    with pytest.raises(FilterError, match="invalid regex"):
        parse_filter(regex_filter("("))


def test_filter_size_is_bounded() -> None:
    from jade.core.filters import MAX_CONDITIONS

    conds = [{"field": "a", "op": "EQUALS", "value": i} for i in range(MAX_CONDITIONS)]
    parse_filter({"conditions": conds})
    with pytest.raises(FilterError, match=f"more than {MAX_CONDITIONS} conditions"):
        parse_filter({"conditions": [*conds, {"field": "b", "op": "EXISTS"}]})
    with pytest.raises(FilterError, match="more than 100000 values"):
        parse_filter({"$and": [{"a": {"$in": list(range(60_000))}},
                               {"b": {"$nin": list(range(60_000))}}]})


def test_the_scan_stops_at_its_deadline() -> None:
    from jade.indexes.live import QueryTimeout

    live = LiveDb("db", 4, "cosine", spec_of(None))
    n = 5000
    live.upsert(np.arange(n, dtype=np.int64), np.ones((n, 4), dtype=np.float32),
                [{"text": f"t{i}"} for i in range(n)])
    f = parse_filter(regex_filter(r"t\d*5$"))
    q = np.ones(4, dtype=np.float32)
    with pytest.raises(QueryTimeout):
        live.search(q, 5, f, exact_scan_max=20000, cache_size=8, deadline=time.monotonic() - 1)
    labels, _, stats = live.search(q, 5, f, exact_scan_max=20000, cache_size=8,
                                   deadline=time.monotonic() + 60)
    assert stats.filter_cache_hit is False  # the stopped scan left nothing in the cache
    assert stats.matched == n // 10 and len(labels) == 5


async def test_a_search_past_query_timeout_answers_503_and_stops(tmp_path: Any) -> None:
    """500 regexes over 30 texts of 100 KB: ~0.2 s per vector, ~6 s in all; the setting says 1."""
    letters = np.frombuffer(b"abcdefghijklmnopqrstuvwxyz ", dtype=np.uint8)
    rng = np.random.default_rng(7)
    texts = {f"doc{i}": letters[rng.integers(0, len(letters), LONG)].tobytes().decode()
             for i in range(30)}
    conds = [{"field": "text", "op": "MATCHES_REGEX", "value": f"[a-z]q{i:03d}[0-9]"}
             for i in range(500)]
    query = {"queryVector": [1.0, 1.0, 1.0, 1.0], "topK": 5,
             "filters": {"combination": "OR", "conditions": conds}}
    async with running_server(make_settings(tmp_path, query_timeout_seconds=1)) as srv:
        db = await srv.user.create_db(4)
        await store_texts(srv.user, db, texts)
        t0 = time.monotonic()
        st, body = await srv.user.post(f"/v1/databases/{db}/search", query)
        elapsed = time.monotonic() - t0
        assert st == 503, (st, str(body)[:300])
        assert body["error"] == "query_timeout" and "query_timeout_seconds" in body["message"]
        assert elapsed < 4, f"answered after {elapsed:.2f} s"
        # the work stopped with the answer: no thread of this process still scanning
        await asyncio.sleep(0.3)
        cpu0, wall0 = time.process_time(), time.monotonic()
        await asyncio.sleep(1.0)
        cpu = time.process_time() - cpu0
        assert cpu < 0.5 * (time.monotonic() - wall0), f"{cpu:.2f} s of CPU after the answer"
        st, body = await srv.anon.get("/health")
        assert st == 200
