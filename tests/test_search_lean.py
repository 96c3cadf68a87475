"""The lean search path (issue 16): the one-pass decode of a search request against the
reference checks, where a search runs (``run_search`` and the in-flight count), and the
server's event loop (uvloop, with asyncio's as the fallback) through the port hand-over."""

from __future__ import annotations

import asyncio
import json
import socket
import sys
import threading
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
import orjson
import pytest
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jade.errors import InvalidArgument
from jade.http.keys import INFLIGHT
from jade.http.search import SearchQuery, _checked, _decode, run_search
from jade.indexes.live import LiveDb
from jade.settings import Settings
from tests.conftest import Server

DIM = 3
SETTINGS = Settings(max_results_per_request=500)
WIDE = Settings(max_results_per_request=100_000)  # topK's own bound (10,000) comes first


# -- the one-pass decode accepts only what the reference checks accept, with the same values --
def _same(a: SearchQuery, b: SearchQuery) -> None:
    assert a.q.dtype == b.q.dtype == np.float32
    assert np.array_equal(a.q, b.q)
    assert (a.k, a.threshold, a.include_meta, a.include_values, a.ef, a.f) == (
        b.k, b.threshold, b.include_meta, b.include_values, b.ef, b.f)


def _both(raw: bytes, settings: Settings = SETTINGS) -> None:
    """``_decode`` returns the reference's query, declines (None), or raises the reference's
    own error (a bad filter: the last check on both paths)."""
    try:
        ref: SearchQuery | InvalidArgument | None = _checked(orjson.loads(raw), DIM, settings)
    except InvalidArgument as exc:
        ref = exc
    except orjson.JSONDecodeError:
        ref = None
    try:
        fast = _decode(raw, DIM, settings)
    except InvalidArgument as exc:
        assert isinstance(ref, InvalidArgument), (raw, ref)
        assert (exc.code, str(exc)) == (ref.code, str(ref))
        return
    if fast is not None:
        assert isinstance(ref, SearchQuery), (raw, ref)
        _same(fast, ref)


numbers = st.one_of(
    st.integers(-3, 3), st.integers(-(2**70), 2**70), st.floats(allow_nan=False),
    st.sampled_from([0.5, -1.0, 1.0, 10.0, 1e39, -3.4028234663852886e38, 3.4028235e38]),
)
values = st.one_of(st.none(), st.booleans(), numbers, st.text(max_size=3),
                   st.lists(numbers, max_size=4))


def field(good: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Mostly a value of the field's type and range (``good``), else anything."""
    return st.one_of(good, good, good, values)


small = st.one_of(st.integers(-5, 5), st.floats(-10, 10))
vectors = st.one_of(st.lists(small, min_size=DIM, max_size=DIM),
                    st.lists(st.one_of(small, numbers, st.booleans(), st.none()),
                             max_size=DIM + 1))
filters: st.SearchStrategy[Any] = st.one_of(
    st.none(), st.just({}), values,
    st.dictionaries(st.sampled_from(["m", "$and", "x"]), values, max_size=2),
)
flags = field(st.one_of(st.booleans(), st.none()))
bodies = st.fixed_dictionaries({"queryVector": field(vectors)}, optional={
    "topK": field(st.one_of(st.integers(-1, 600), st.floats(0, 20))),
    "threshold": field(st.one_of(st.floats(-1.5, 1.5), st.integers(-2, 2))),
    "efSearch": field(st.integers(-1, 10_001)), "includeMetadata": flags,
    "includeValues": flags, "includeVectorData": flags, "filters": filters, "other": values,
})


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(bodies)
def test_decode_never_differs_from_the_reference(body: dict[str, Any]) -> None:
    _both(json.dumps(body).encode())  # stdlib json: integers beyond 64 bits, 1e+39


BOUNDS: list[Any] = [
    None, True, False, "1", "\ud800", [], {}, [1], {"m": 1}, {"$bad": 1}, 0, 1, -1, 2, 0.5, 1.0,
    -1.0,
    1.0000001, -1.0000001, 1.5, -1.5, 10, 10.0, 499, 500, 501, 9999, 10_000, 10_001, 10_000.0,
    3.4e38, 3.4028234663852886e38, 3.4028235e38, 3.5e38, -3.5e38, 6e38, 1e39, 1e300,
    2**63, 2**64, 2**70, -(2**70),
]


@pytest.mark.parametrize("key", ["topK", "threshold", "efSearch", "includeMetadata",
                                 "includeValues", "includeVectorData", "filters", "other"])
def test_each_field_has_the_reference_bounds(key: str) -> None:
    for value in BOUNDS:
        for settings_ in (SETTINGS, WIDE):
            _both(json.dumps({"queryVector": [0.5, -1, 2], key: value}).encode(), settings_)


def test_the_query_vector_has_the_reference_bounds() -> None:
    for value in BOUNDS:
        for at in range(DIM):
            vector = [0.5, -1, 2]
            vector[at] = value
            _both(json.dumps({"queryVector": vector}).encode())
        _both(json.dumps({"queryVector": value}).encode())


@pytest.mark.parametrize("raw", [
    b'{"queryVector": [1, 2, 3]}',
    b'{"queryVector": [1, 2.5, -3e-5], "topK": 7, "threshold": -0.5, "efSearch": 64,'
    b' "includeMetadata": true, "includeVectorData": true}',
    b'{"queryVector": [1, 2, 3], "includeValues": false, "topK": null, "efSearch": null}',
    b'{"queryVector": [1, 2, 3], "filters": {"m": 1}}',
    b'{"queryVector": [1, 2, 3], "filters": null}',
    b'{"queryVector": [1, 2, 3], "filters": {}}',
    b'{"queryVector": [1, 2, 3], "topK": 1, "topK": 2}',
])
def test_well_formed_requests_take_the_one_pass_decode(raw: bytes) -> None:
    fast = _decode(raw, DIM, SETTINGS)
    assert fast is not None
    _same(fast, _checked(orjson.loads(raw), DIM, SETTINGS))


@pytest.mark.parametrize("raw", [
    b"", b" ", b"[]", b'"x"', b"{", b'\xef\xbb\xbf{"queryVector": [1, 2, 3]}',
    b'{"queryVector": [1, 2]}', b'{"queryVector": [1, 2, true]}', b'{"queryVector": "abc"}',
    b'{"queryVector": [1, 2, 1e39]}', b'{"queryVector": [1, 2, 1e400]}',
    b'{"queryVector": [1, 2, 3.5e38]}', b'{"queryVector": [-3.5e38, 2, 3]}',
    b'{"queryVector": [1, 2, 3], "topK": 10.0}', b'{"queryVector": [1, 2, 3], "topK": 0}',
    b'{"queryVector": [1, 2, 3], "topK": 501}', b'{"queryVector": [1, 2, 3], "topK": true}',
    b'{"queryVector": [1, 2, 3], "threshold": 1.5}', b'{"queryVector": [1, 2, 3], "efSearch": 0}',
    b'{"queryVector": [1, 2, 3], "includeMetadata": 1}',
    b'{"queryVector": [1, 2, 3], "unknown": 1}',
    b'{"queryVector": [1, 2, 3], "filters": {"m": "\\ud800"}}',
    b'{"queryVector": [1, 2, 3], "filters": ' + b"[" * 5000 + b"]" * 5000 + b"}",
])
def test_anything_else_is_left_to_the_reference_checks(raw: bytes) -> None:
    assert _decode(raw, DIM, SETTINGS) is None
    _both(raw)


def test_a_bad_filter_is_the_same_error_on_both_paths() -> None:
    raw = b'{"queryVector": [1, 2, 3], "filters": {"$nope": 1}}'
    with pytest.raises(InvalidArgument) as fast:
        _decode(raw, DIM, SETTINGS)
    with pytest.raises(InvalidArgument) as ref:
        _checked(orjson.loads(raw), DIM, SETTINGS)
    assert fast.value.code == ref.value.code == "invalid_filter"
    assert str(fast.value) == str(ref.value)


# -- over HTTP: the same answers on both paths, the reference's errors -----------------------
@pytest.fixture
async def db(server: Server) -> AsyncIterator[str]:
    db = await server.user.create_db(DIM)
    vecs = [{"id": f"v{i}", "values": [1.0, i / 10, -i / 20], "metadata": {"m": i % 2}}
            for i in range(30)]
    st_, body = await server.user.post(f"/v1/databases/{db}/vectors/batch", {"vectors": vecs})
    assert st_ == 201, body
    # answers are compared below: the graph holds every vector (while it lags they are
    # scored exactly, which differs from the graph's scores in the last bits)
    await server.user.indexed()
    yield db


async def test_both_paths_answer_the_same(server: Server, db: str) -> None:
    path = f"/v1/databases/{db}/search"
    for extra in ({}, {"filters": {"m": 1}}, {"includeMetadata": True, "threshold": -1}):
        body = {"queryVector": [1, 0.5, -0.2], "topK": 5, **extra}
        st_, fast = await server.user.post(path, body)
        assert st_ == 200, fast
        assert fast["count"] == 5
        # topK 5.0 and an unknown field: the reference path, the same answer
        st_, ref = await server.user.post(path, {**body, "topK": 5.0, "comment": "x"})
        assert (st_, ref) == (200, fast)


async def test_a_body_of_unknown_length_is_searched(server: Server, db: str) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"queryVector": [1, 0.5, '
        yield b'-0.2], "topK": 3}'

    api = server.user
    async with api.session.post(f"{api.base}/v1/databases/{db}/search", data=chunks(),
                                headers={**api.headers, "Content-Type": "application/json"}
                                ) as r:
        assert r.status == 200
        assert (await r.json())["count"] == 3


async def test_a_json_type_with_parameters_is_searched(server: Server, db: str) -> None:
    raw = b'{"queryVector": [1, 0.5, -0.2], "topK": 4}'
    for ctype in ("application/json; charset=utf-8", "application/vnd.api+json"):
        st_, body = await server.user.post(f"/v1/databases/{db}/search", raw=raw,
                                           headers={"Content-Type": ctype})
        assert (st_, body["count"]) == (200, 4), body


@pytest.mark.parametrize("raw, ctype, status, code", [
    (b'{"queryVector": [1, 2, 3], "x": 1e400}', "application/json",
     400, "invalid_json"),
    (b'{"queryVector": [1, 2, 3]}', "text/plain", 415, "unsupported_media_type"),
    (b'{"queryVector": [1, 2, 3], "topK": 0}', "application/json", 400, "invalid_argument"),
    (b'{"queryVector": [1, 2]}', "application/json", 400, "dimension_mismatch"),
    (b"", "application/json", 400, "invalid_json"),
])
async def test_errors_come_from_the_reference_checks(server: Server, db: str, raw: bytes,
                                                     ctype: str, status: int, code: str) -> None:
    st_, body = await server.user.post(f"/v1/databases/{db}/search", raw=raw,
                                       headers={"Content-Type": ctype})
    assert (st_, body["error"]) == (status, code), body


# -- where a search runs ------------------------------------------------------------------------
@pytest.mark.parametrize("offload, alone, inline", [
    ("auto", True, True), ("auto", False, False),
    ("never", True, True), ("never", False, True),
    ("always", True, False), ("always", False, False),
])
async def test_run_search_place(offload: str, alone: bool, inline: bool) -> None:
    here = threading.get_ident()
    ran = await run_search(threading.get_ident, bounded=True, offload=offload, alone=alone)
    assert (ran == here) is inline
    # a filtered (unbounded) search always leaves the loop
    ran = await run_search(threading.get_ident, bounded=False, offload=offload, alone=alone)
    assert ran != here


async def test_a_search_beside_another_request_goes_to_the_pool(
        server: Server, db: str, monkeypatch: pytest.MonkeyPatch) -> None:
    threads: list[int] = []
    search = LiveDb.search

    def recording(self: LiveDb, *args: Any, **kwargs: Any) -> Any:
        threads.append(threading.get_ident())
        return search(self, *args, **kwargs)

    monkeypatch.setattr(LiveDb, "search", recording)
    path = f"/v1/databases/{db}/search"
    body = {"queryVector": [1, 0.5, -0.2]}
    assert (await server.user.post(path, body))[0] == 200
    inflight = server.app[INFLIGHT]
    inflight.enter()  # another request being handled (a write waiting for its commit...)
    try:
        assert (await server.user.post(path, body))[0] == 200
    finally:
        inflight.leave()
    here = threading.get_ident()
    assert threads[0] == here and threads[1] != here


# -- the event loop -----------------------------------------------------------------------------
def test_the_server_runs_on_uvloop_where_it_is_installed(monkeypatch: pytest.MonkeyPatch
                                                         ) -> None:
    import uvloop

    from tools.serve import loop_factory

    assert loop_factory() is uvloop.new_event_loop
    monkeypatch.setitem(sys.modules, "uvloop", None)  # import fails: asyncio's loop
    assert loop_factory() is None


@pytest.mark.parametrize("waiting", [True, False])
def test_the_hand_over_on_uvloop(waiting: bool) -> None:
    """``tools.serve``'s stand-in → real app hand-over on uvloop, which accepts through libuv,
    not the loop's readers: a connection ``waiting`` as it starts is answered by either app;
    once it is done the stand-in accepts no more, only the real app answers."""
    import uvloop

    from tools.serve import STARTING, _hand_over, _retire, listen, starting_app

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        socks = listen("127.0.0.1", 0)
        port = socks[0].getsockname()[1]
        stand_in_socks = [sock.dup() for sock in socks]
        starting = web.AppRunner(starting_app(), access_log=None, handle_signals=False)
        await starting.setup()
        for sock in stand_in_socks:
            await web.SockSite(starting, sock).start()

        async def health(request: web.Request) -> web.Response:
            return web.json_response({"status": "healthy"})

        real = web.Application()
        real.router.add_get("/health", health)
        runner = web.AppRunner(real, access_log=None, handle_signals=False)
        await runner.setup()

        async def ask() -> bytes:
            client = socket.create_connection(("127.0.0.1", port))
            try:
                client.setblocking(False)
                await loop.sock_sendall(client, b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
                answer, need = b"", -1
                while need < 0 or len(answer) < need:  # the head, then the whole body
                    chunk = await asyncio.wait_for(loop.sock_recv(client, 4096), 10)
                    assert chunk, f"closed unanswered after {answer!r}"
                    answer += chunk
                    head, sep, _ = answer.partition(b"\r\n\r\n")
                    if sep and need < 0:
                        size = head.lower().split(b"content-length:", 1)[1].split(b"\r\n")[0]
                        need = len(head) + 4 + int(size)
                return answer
            finally:
                client.close()

        try:
            before = asyncio.create_task(ask()) if waiting else None
            await asyncio.sleep(0)
            await _hand_over(stand_in_socks, runner, socks, starting)
            for _ in range(5):  # the stand-in accepts no more: only the real app answers
                after = await ask()
                assert after.startswith(b"HTTP/1.1 200 ") and STARTING.encode() not in after
            retired = asyncio.create_task(_retire(starting, timeout=10))
            if before is not None:
                assert (await before).startswith(b"HTTP/1.1 "), "answered by either app"
            await asyncio.wait_for(retired, 15)
        finally:
            await starting.cleanup()
            await runner.cleanup()

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as r:
        r.run(scenario())
