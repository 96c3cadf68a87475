"""Crash safety: SIGKILL a real server while concurrent clients write, restart, check the model.

A real ``python -m tools serve`` subprocess; writer tasks store vectors (single POST /vectors
and batches of 10), and now and then delete one that is known to be stored. Each id is sent at
most once, with its own values, so after every restart the test knows exactly what may be
there:

- every acknowledged write (2xx received) is present with exactly the values sent;
- every acknowledged delete stays deleted;
- nothing appears that was never sent;
- a batch is all or nothing (one log record);
- a write sent but not acknowledged may be present or absent, but once a restart has shown
  which, that answer holds in every later cycle;
- the vector count, the index size and the store agree, and a search for a stored vector with
  its own values finds it (so the index recovered too).

The state accumulates across cycles. Some cycles also stream 1,000-vector batches and kill the
server while one is in flight (between parsing and the durable commit, if the timing hits).
Every sixth cycle ends with a clean stop instead, so later kills recover from an index
checkpoint plus the log tail, not only by rebuilding from the store.
Set ``JADE_CRASH_SEED`` to replay a failing run (the seed is in every assertion message).
"""

from __future__ import annotations

import asyncio
import io
import os
import random
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import numpy as np
import orjson
import pytest

from tests.conftest import Api, ServerProcess, login

pytestmark = pytest.mark.crash

DIM = 16
WRITERS = 8
PASSWORD = "Crash_Secure123@"
BIG_BATCH = 1000
CLEAN_EVERY = 6  # every 6th cycle ends with SIGTERM instead of SIGKILL
PAGE = 10000
# what a request that dies with the server raises
DEAD = (aiohttp.ClientError, asyncio.TimeoutError, ConnectionError)

PRESENT, ABSENT, UNCERTAIN = "present", "absent", "uncertain"


@dataclass
class Model:
    """What the clients did, and what that allows the server to hold."""

    seed: int
    values: dict[str, np.ndarray] = field(default_factory=dict)  # every id ever sent
    state: dict[str, str] = field(default_factory=dict)  # id -> PRESENT / ABSENT / UNCERTAIN
    batches: list[list[str]] = field(default_factory=list)  # every batch ever sent
    delete_pool: list[str] = field(default_factory=list)  # known present, never deleted
    delete_sent: set[str] = field(default_factory=set)
    errors: list[str] = field(default_factory=list)  # unexpected answers from a live server
    acked_writes: int = 0
    acked_deletes: int = 0
    unacked: int = 0
    big_batches_unacked: int = 0

    def where(self, cycle: int) -> str:
        return f"(seed {self.seed}, cycle {cycle})"


async def post_json(api: Api, path: str, body: Any) -> int:
    """POST and return the status; the body is streamed (aiohttp warns on big raw bytes)."""
    data = io.BytesIO(orjson.dumps(body))
    h = {"Content-Type": "application/json", **api.headers}
    async with api.session.post(api.base + path, data=data, headers=h) as r:
        await r.read()
        return r.status


async def writer(
    api: Api, db: str, model: Model, cycle: int, w: int, rng: random.Random, stop: asyncio.Event
) -> None:
    nrng = np.random.default_rng(rng.randrange(2**32))
    seq = 0
    while not stop.is_set():
        r = rng.random()
        if r < 0.08 and model.delete_pool:
            vid = model.delete_pool.pop(rng.randrange(len(model.delete_pool)))
            model.delete_sent.add(vid)
            model.state[vid] = UNCERTAIN
            try:
                status, body = await api.delete(f"/v1/databases/{db}/vectors/{vid}")
            except DEAD:
                model.unacked += 1
                return
            if status == 200:
                model.state[vid] = ABSENT
                model.acked_deletes += 1
            else:
                model.errors.append(f"DELETE {vid} -> {status} {body}")
            continue
        n = 10 if r < 0.35 else 1
        ids = [f"c{cycle:03d}w{w}n{seq + i:05d}" for i in range(n)]
        seq += n
        vals = nrng.standard_normal((n, DIM)).astype(np.float32)
        for vid, v in zip(ids, vals, strict=True):
            model.values[vid] = v
            model.state[vid] = UNCERTAIN
        items = [
            {"id": vid, "values": v.tolist(), "metadata": {"cycle": cycle, "w": w}}
            for vid, v in zip(ids, vals, strict=True)
        ]
        try:
            if n == 1:
                status, body = await api.post(f"/v1/databases/{db}/vectors", items[0])
            else:
                model.batches.append(ids)
                status, body = await api.post(
                    f"/v1/databases/{db}/vectors/batch", {"vectors": items}
                )
        except DEAD:
            model.unacked += n
            return
        if status == 201:
            for vid in ids:
                model.state[vid] = PRESENT
                model.delete_pool.append(vid)
            model.acked_writes += n
        else:
            model.errors.append(f"store {ids[0]}.. -> {status} {body}")


async def big_writer(
    api: Api,
    db: str,
    model: Model,
    cycle: int,
    rng: random.Random,
    stop: asyncio.Event,
    in_flight: asyncio.Event,
) -> None:
    """Back-to-back 1,000-vector batches; ``in_flight`` is set while the second and later
    ones are sent and answered (cleared in between, while the next body is built)."""
    nrng = np.random.default_rng(rng.randrange(2**32))
    b = 0
    while not stop.is_set():
        ids = [f"c{cycle:03d}big{b:02d}n{i:04d}" for i in range(BIG_BATCH)]
        vals = nrng.standard_normal((BIG_BATCH, DIM)).astype(np.float32)
        for vid, v in zip(ids, vals, strict=True):
            model.values[vid] = v
            model.state[vid] = UNCERTAIN
        model.batches.append(ids)
        body = {
            "vectors": [{"id": vid, "values": v.tolist()} for vid, v in zip(ids, vals, strict=True)]
        }
        if b >= 1:
            in_flight.set()
        b += 1
        try:
            status = await post_json(api, f"/v1/databases/{db}/vectors/batch", body)
            in_flight.clear()  # (no await between the answer and this: the kill waits)
        except DEAD:
            model.unacked += BIG_BATCH
            model.big_batches_unacked += 1
            return
        if status == 201:
            for vid in ids:
                model.state[vid] = PRESENT
                model.delete_pool.append(vid)
            model.acked_writes += BIG_BATCH
        else:
            model.errors.append(f"big batch {ids[0]}.. -> {status}")


async def observe(api: Api, db: str) -> dict[str, np.ndarray]:
    """Every stored vector of ``db`` (paged listing, values included)."""
    out: dict[str, np.ndarray] = {}
    offset = 0
    while True:
        status, body = await api.get(f"/v1/databases/{db}/vectors?limit={PAGE}&offset={offset}")
        assert status == 200, body
        for v in body["vectors"]:
            assert v["id"] not in out, f"vector {v['id']} listed twice"
            out[v["id"]] = np.asarray(v["values"], dtype=np.float32)
        if len(body["vectors"]) < PAGE:
            assert body["total"] == len(out), (body["total"], len(out))
            return out
        offset += PAGE


async def verify(api: Api, db: str, model: Model, cycle: int, rng: random.Random) -> int:
    """Check the restarted server against the model; settle what was uncertain."""
    where = model.where(cycle)
    seen = await observe(api, db)
    never_sent = [vid for vid in seen if vid not in model.values]
    assert not never_sent, f"{where} vectors that were never sent: {never_sent[:5]}"
    wrong = [vid for vid, v in seen.items() if not np.array_equal(v, model.values[vid])]
    assert not wrong, f"{where} vectors with other values than sent: {wrong[:5]}"
    lost = [vid for vid, st in model.state.items() if st == PRESENT and vid not in seen]
    assert not lost, f"{where} acknowledged (or already seen) vectors lost: {lost[:5]}"
    revived = [vid for vid, st in model.state.items() if st == ABSENT and vid in seen]
    assert not revived, f"{where} deleted (or never committed) vectors back: {revived[:5]}"
    for vid, st in model.state.items():
        if st == UNCERTAIN:  # from now on the answer must hold
            model.state[vid] = PRESENT if vid in seen else ABSENT
            if vid in seen and vid not in model.delete_sent:
                model.delete_pool.append(vid)
    for ids in model.batches:
        flags = {vid in seen for vid in ids if vid not in model.delete_sent}
        assert len(flags) <= 1, f"{where} batch {ids[0]}.. is partly stored"

    # the catalog count and the index agree with the store
    status, info = await api.get(f"/v1/databases/{db}")
    assert status == 200, info
    assert info["stats"]["vectorCount"] == len(seen), (where, info["stats"], len(seen))
    assert info["stats"]["indexedVectors"] == len(seen), (where, info["stats"], len(seen))

    # point reads: a stored vector by id; an absent one is exactly 404; batch-get agrees
    present = sorted(seen)
    absent = sorted(vid for vid, st in model.state.items() if st == ABSENT)
    for vid in rng.sample(present, min(3, len(present))):
        status, body = await api.get(f"/v1/databases/{db}/vectors/{vid}")
        assert status == 200 and body["id"] == vid, (where, status, body)
        assert np.array_equal(np.asarray(body["values"], dtype=np.float32), model.values[vid])
    for vid in rng.sample(absent, min(3, len(absent))):
        status, body = await api.get(f"/v1/databases/{db}/vectors/{vid}")
        assert status == 404, (where, vid, status, body)
    if present:
        ask = rng.sample(present, min(50, len(present))) + rng.sample(absent, min(50, len(absent)))
        status, body = await api.post(f"/v1/databases/{db}/vectors/batch-get", {"ids": ask})
        assert status == 200, body
        got = {v["id"] for v in body["vectors"]}
        assert got == {vid for vid in ask if vid in seen}, where

    # the recovered index finds stored vectors by their own values, and only stored ones
    for vid in rng.sample(present, min(4, len(present))):
        k = rng.randint(1, 5)
        status, body = await api.post(
            f"/v1/databases/{db}/search",
            {"queryVector": model.values[vid].tolist(), "topK": k, "efSearch": 200},
        )
        assert status == 200, body
        found = [r["vectorId"] for r in body["results"]]
        assert vid in found, f"{where} search for {vid} (topK {k}) returned {found}"
        stale = [x for x in found if x not in seen]
        assert not stale, f"{where} search returned vectors not in the store: {stale}"
    return len(seen)


async def authenticate(anon: Api, first: bool) -> Api:
    if first:
        status, body = await anon.post(
            "/v1/auth/register", {"username": "crasher", "password": PASSWORD}
        )
        assert status == 201, body
    token = await login(anon, "crasher", PASSWORD)
    return Api(anon.base, anon.session, {"Authorization": f"Bearer {token}"})


async def run_cycles(tmp_path: Any, cycles: int, seed: int, big_every: int) -> Model:
    rng = random.Random(seed)
    model = Model(seed)
    sp = ServerProcess(str(tmp_path / "data"))
    db = ""
    token_headers: dict[str, str] = {}
    timeout = aiohttp.ClientTimeout(total=60)
    try:
        for cycle in range(cycles + 1):
            sp.start()
            async with aiohttp.ClientSession(timeout=timeout) as session:
                anon = Api(sp.base, session)
                if cycle == 0:
                    api = await authenticate(anon, first=True)
                    token_headers = api.headers
                    # before the first kill; a light graph: rebuilds after each kill stay quick
                    db = await api.create_db(DIM, indexParameters={"M": 8, "efConstruction": 40})
                else:
                    api = Api(sp.base, session, token_headers)  # tokens survive restarts
                    await verify(api, db, model, cycle, rng)
                assert not model.errors, f"{model.where(cycle)} {model.errors[:5]}"
                if cycle == cycles:
                    break
                stop = asyncio.Event()
                tasks = [
                    asyncio.create_task(
                        writer(api, db, model, cycle, w, random.Random(rng.random()), stop)
                    )
                    for w in range(WRITERS)
                ]
                if big_every and cycle % big_every == big_every // 2:
                    in_flight = asyncio.Event()
                    tasks.append(
                        asyncio.create_task(
                            big_writer(
                                api, db, model, cycle, random.Random(rng.random()), stop, in_flight
                            )
                        )
                    )
                    await asyncio.wait_for(in_flight.wait(), 30)
                    await asyncio.sleep(rng.uniform(0.0, 0.15))
                    # kill while a batch is sent or answered, not while the client builds the
                    # next body (a 1,000-vector batch is acknowledged in tens of ms: the kill
                    # used to miss every batch about one run in three)
                    await asyncio.wait_for(in_flight.wait(), 30)
                else:
                    await asyncio.sleep(rng.uniform(0.05, 0.6))
                if cycle % CLEAN_EVERY == CLEAN_EVERY - 1:
                    # now and then a clean stop: the index checkpoint it writes is what the
                    # following kills recover from (checkpoint + log tail, not a rebuild)
                    stop.set()
                    await asyncio.gather(*tasks)
                    sp.stop()
                    checkpoint = tmp_path / "data" / "indexes" / db / "index.json"
                    assert checkpoint.exists(), "a clean stop wrote no index checkpoint"
                    continue
                sp.kill()
                stop.set()
                await asyncio.gather(*tasks)
        sp.stop()
    finally:
        if sp.proc is not None and sp.proc.poll() is None:
            sp.kill()
    return model


def _seed(default: int) -> int:
    return int(os.environ.get("JADE_CRASH_SEED", default))


async def test_sigkill_under_concurrent_writes_loses_no_acknowledged_write(tmp_path: Any) -> None:
    model = await run_cycles(tmp_path, cycles=20, seed=_seed(20240611), big_every=20)
    # the run must have exercised what it claims to
    assert model.acked_writes > 500, model.acked_writes
    assert model.acked_deletes > 5, model.acked_deletes
    assert model.unacked > 0, "no write was ever cut off by a kill"
    assert model.big_batches_unacked >= 1, "no 1,000-vector batch was in flight at a kill"


@pytest.mark.slow
@pytest.mark.timeout(1800)
async def test_sigkill_hundred_cycles(tmp_path: Any) -> None:
    model = await run_cycles(tmp_path, cycles=100, seed=_seed(7), big_every=10)
    assert model.acked_writes > 2000, model.acked_writes
    assert model.unacked > 0
    assert model.big_batches_unacked >= 5
