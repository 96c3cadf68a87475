"""The backup command line as an operator runs it: real ``python -m tools`` subprocesses reading
the same environment as the server (JADEVECTORDB_DATA_DIR...)."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import aiohttp
import numpy as np
import pytest

from jade.backup import snapshot
from jade.backup.restore import RestoreError, target_settings
from jade.settings import Settings
from tests.conftest import (
    ROOT,
    USER_PASSWORD,
    Api,
    ServerProcess,
    cli_env,
    jade,
    login,
    make_settings,
    running_server,
)
from tests.test_backup_pitr import DIM, digest_dir, replay_digest, rfc3339, vectors
from tools.restore_cmd import parse_time
from wal.codec import Record
from wal.lmdbenv import Env
from wal.log import Log

NEEDLE = "needle-5e1f9c"


def jade_many(
    env: dict[str, str], *calls: tuple[str, ...]
) -> list[subprocess.CompletedProcess[str]]:
    """Independent invocations side by side (each pays the interpreter start-up)."""
    with ThreadPoolExecutor(len(calls)) as pool:
        return list(pool.map(lambda a: jade(env, *a), calls))


def read_log(s: Settings) -> list[Record]:
    env = Env(s.db_path, readonly=True)
    try:
        return Log(env).read(0, verify=True)
    finally:
        env.close()


@dataclass
class Data:
    settings: Settings
    env: dict[str, str]
    history: list[Record]
    snap_lsn: int
    mid_time: str  # between the snapshot and the last record


@pytest.fixture(scope="module")
def data(tmp_path_factory: Any) -> Data:
    """A stopped server's directory: vectors, one CLI snapshot taken early, more writes."""
    root = tmp_path_factory.mktemp("cli")
    s = make_settings(root, archive_interval_seconds=0, checkpoint_interval_seconds=0)
    env = cli_env(s)

    async def first() -> None:
        async with running_server(s) as srv:
            db_id = await srv.user.create_db(DIM)
            vecs = vectors(np.random.default_rng(4), 60, "a")
            vecs[3]["metadata"] = {"note": NEEDLE}
            st, body = await srv.user.post(
                f"/v1/databases/{db_id}/vectors/batch", {"vectors": vecs}
            )
            assert st == 201, body

    asyncio.run(first())
    r = jade(env, "snapshot", "create", "--json")
    assert r.returncode == 0, r.stderr
    snap_lsn = json.loads(r.stdout)["lsn"]
    asyncio.run(_more(s))
    history = read_log(s)
    mid = history[(snap_lsn + len(history)) // 2]
    return Data(s, env, history, snap_lsn, rfc3339(mid.ts + 1000))


async def _more(s: Settings) -> None:
    # a second run of the server on the same directory (users exist: log in, do not register)
    from aiohttp import web

    from jade.http.app import build_app
    from tests.conftest import free_port

    app = build_app(s)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        async with aiohttp.ClientSession() as session:
            base = f"http://127.0.0.1:{port}"
            anon = Api(base, session)
            user = Api(
                base,
                session,
                {"Authorization": "Bearer " + await login(anon, "tester", USER_PASSWORD)},
            )
            st, body = await user.get("/v1/databases")
            assert st == 200, body
            db_id = body["databases"][0]["databaseId"]
            for i in range(20):
                st, body = await user.post(
                    f"/v1/databases/{db_id}/vectors", {"id": f"b{i}", "values": [float(i)] * DIM}
                )
                assert st == 201, body
            st, body = await user.delete(f"/v1/databases/{db_id}/vectors/a1")
            assert st == 200, body
    finally:
        await runner.cleanup()


def test_snapshot_create_list_verify_delete(data: Data, tmp_path: Any) -> None:
    backup = str(tmp_path / "backups")
    env = {**data.env, "JADEVECTORDB_BACKUP_DIR": backup}
    r = jade(env, "snapshot", "create", "--json")
    assert r.returncode == 0, r.stderr
    made = json.loads(r.stdout)
    assert made["lsn"] == data.history[-1].lsn and made["signed"] is False
    listed, ok = jade_many(env, ("snapshot", "list", "--json"), ("snapshot", "verify"))
    assert listed.returncode == 0 and [x["name"] for x in json.loads(listed.stdout)] == [
        made["name"]
    ]
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert f"ok  {made['name']}" in ok.stdout and "ok  archive" in ok.stdout

    # damage the data file of the snapshot: verify exits 1 and names it
    path = os.path.join(snapshot.snapshots_dir(backup), made["name"], snapshot.DATA_FILE)
    with open(path, "r+b") as fh:
        fh.seek(os.path.getsize(path) // 2)
        b = fh.read(1)
        fh.seek(-1, 1)
        fh.write(bytes([b[0] ^ 0x40]))
    bad = jade(env, "snapshot", "verify", "--json")
    out = json.loads(bad.stdout)
    assert bad.returncode == 1 and out["ok"] is False
    assert out["results"][made["name"]] == [f"{snapshot.DATA_FILE}: checksum mismatch (damaged)"]
    assert out["results"]["archive"] == []
    gone = jade(env, "snapshot", "delete", made["name"])
    assert gone.returncode == 0 and snapshot.listing(backup) == []


def test_restore_and_verify_cli(data: Data, tmp_path: Any) -> None:
    env, h = data.env, data.history
    t = {k: str(tmp_path / k) for k in ("lsn", "time", "busy", "late", "bad")}
    os.makedirs(t["busy"])
    with open(os.path.join(t["busy"], "x"), "w") as fh:
        fh.write("x")
    by_lsn, by_time, busy, late, bad_time = jade_many(
        env,
        ("restore", "--to-lsn", str(data.snap_lsn + 3), "--target", t["lsn"], "--json"),
        ("restore", "--to-time", data.mid_time, "--target", t["time"]),
        ("restore", "--latest", "--target", t["busy"], "--json"),
        ("restore", "--to-lsn", str(h[-1].lsn + 1), "--target", t["late"]),
        ("restore", "--to-time", "yesterday", "--target", t["bad"]),
    )
    res = json.loads(by_lsn.stdout)
    assert by_lsn.returncode == 0 and res["ok"] is True and res["target_lsn"] == data.snap_lsn + 3
    assert res["replayed"] == 3 and res["target_dir"] == t["lsn"]
    assert digest_dir(target_settings(data.settings, t["lsn"])) == replay_digest(
        h, data.snap_lsn + 3
    )
    mid_lsn = (data.snap_lsn + len(h)) // 2 + 1
    assert by_time.returncode == 0 and f"restored to LSN {mid_lsn} " in by_time.stdout
    assert digest_dir(target_settings(data.settings, t["time"])) == replay_digest(h, mid_lsn)
    assert busy.returncode == 1 and "not empty" in busy.stderr
    assert json.loads(busy.stdout)["ok"] is False and os.listdir(t["busy"]) == ["x"]
    assert late.returncode == 1 and "past the end" in late.stderr
    assert bad_time.returncode == 1 and "not an RFC 3339 time" in bad_time.stderr
    assert not os.path.exists(t["late"]) and not os.path.exists(t["bad"])

    # verify DIR: a restored directory is intact; a copy with one record's bytes damaged is
    # not (its log chain breaks, though LMDB still opens the file)
    damaged = str(tmp_path / "damaged")
    shutil.copytree(t["lsn"], damaged, ignore=shutil.ignore_patterns("*-lock", "*.running"))
    path = os.path.join(damaged, snapshot.DATA_FILE)
    with open(path, "rb") as fh:
        raw = bytearray(fh.read())
    needle = NEEDLE.encode()
    at = raw.find(needle)
    assert at >= 0
    while at >= 0:
        raw[at + 3] ^= 0x01  # 'd' -> 'e' in every stored copy (log record and vector store)
        at = raw.find(needle, at + 1)
    with open(path, "wb") as fh:
        fh.write(raw)
    ok, bad = jade_many(env, ("verify", t["lsn"]), ("verify", damaged))
    assert ok.returncode == 0, ok.stdout
    assert "OK:" in ok.stdout and "checksum chain intact" in ok.stdout
    assert bad.returncode == 1, bad.stdout
    assert "FAIL  log:" in bad.stdout and "DAMAGED:" in bad.stdout


def test_verify_default_dir_and_wal_inspect(data: Data) -> None:
    env, h = data.env, data.history
    ok, lines, text = jade_many(
        env,
        ("verify", "--json"),
        ("wal", "inspect", "--json", "--from", "1", "--limit", "1000"),
        ("wal", "inspect", "--type", "vec.", "--limit", "3"),
    )
    rep = json.loads(ok.stdout)
    assert ok.returncode == 0 and rep["ok"] is True
    assert rep["facts"]["last_lsn"] == h[-1].lsn
    rows = [json.loads(x) for x in lines.stdout.splitlines()]
    assert [r["lsn"] for r in rows] == [r.lsn for r in h]
    assert [r["type"] for r in rows] == [r.type for r in h]
    assert all(
        r["checksum"] == rec.checksum.hex() and r["ts"] == rec.ts
        for r, rec in zip(rows, h, strict=True)
    )
    # without --from: the last records; --type filters them
    out = text.stdout.splitlines()
    assert text.returncode == 0 and len(out) <= 3
    vec_tail = [r for r in h[-3:] if r.type.startswith("vec.")]
    assert [int(x.split()[0]) for x in out] == [r.lsn for r in vec_tail] and vec_tail


async def test_snapshot_cli_beside_a_running_server(tmp_path: Any) -> None:
    """``jade snapshot create`` from another process while the server takes writes: the
    snapshot is exactly the state at its LSN."""
    sp = ServerProcess(str(tmp_path / "data"))
    sp.start()
    env = {**sp.env}
    s = target_settings(make_settings(tmp_path), sp.data_dir)  # the server's paths
    try:
        async with aiohttp.ClientSession() as session:
            anon = Api(sp.base, session)
            st, body = await anon.post(
                "/v1/auth/register",
                {"username": "tester", "password": USER_PASSWORD, "email": "t@example.com"},
            )
            assert st == 201, body
            user = Api(
                sp.base,
                session,
                {"Authorization": "Bearer " + await login(anon, "tester", USER_PASSWORD)},
            )
            db = await user.create_db(DIM)
            stop = asyncio.Event()
            count = [0]

            async def writer(w: int) -> None:
                i = 0
                while not stop.is_set():
                    st, body = await user.post(
                        f"/v1/databases/{db}/vectors",
                        {"id": f"{w}-{i}", "values": [float(i % 9 + w)] * DIM},
                    )
                    assert st == 201, body
                    i += 1
                    count[0] += 1

            tasks = [asyncio.create_task(writer(w)) for w in range(3)]
            try:
                await asyncio.sleep(0.3)
                proc = await asyncio.create_subprocess_exec(
                    sys.executable,
                    "-m",
                    "tools",
                    "snapshot",
                    "create",
                    "--json",
                    env=env,
                    cwd=ROOT,
                    stdout=asyncio.subprocess.PIPE,
                    stderr=asyncio.subprocess.PIPE,
                )
                out, err = await proc.communicate()
                assert proc.returncode == 0, err.decode()
                await asyncio.sleep(0.2)
            finally:
                stop.set()
                await asyncio.gather(*tasks)
    finally:
        sp.stop()
    made = json.loads(out)
    assert count[0] > 20
    history = read_log(s)
    assert 0 < made["lsn"] < history[-1].lsn
    target = str(tmp_path / "restored")
    r = jade(env, "restore", "--to-lsn", str(made["lsn"]), "--target", target, "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["replayed"] == 0
    assert digest_dir(target_settings(s, target)) == replay_digest(history, made["lsn"])


@pytest.mark.parametrize(
    ("text", "ns"),
    [
        ("2026-11-28T10:00:00Z", 1795860000 * 10**9),
        ("2026-11-28T10:00:00.123456Z", 1795860000 * 10**9 + 123456000),
        ("2026-11-28T10:00:00.123456789Z", 1795860000 * 10**9 + 123456789),
        ("2026-11-28t11:30:00.5+01:30", 1795860000 * 10**9 + 500000000),
        ("1969-12-31T23:59:59.5Z", -500000000),
    ],
)
def test_parse_time_is_exact(text: str, ns: int) -> None:
    assert parse_time(text) == ns


@pytest.mark.parametrize(
    "text", ["yesterday", "2026-11-28T10:00:00", "2026-11-28T10:00:00.1234567891Z"]
)
def test_parse_time_refuses(text: str) -> None:
    with pytest.raises(RestoreError):
        parse_time(text)
