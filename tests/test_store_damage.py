"""Damage to the LMDB files is noticed (issue 14, item 3): the corruption sweep.

One data directory (a database with vectors and metadata, an admin and a user, stopped
cleanly) is built once by a real server; each test copies it, plants one damage in the log +
data store file (``jadevectordb.db``) or the auth store file (``jadevectordb_auth.db``), and
asserts that the damage is detected at start-up, on read or by ``jade verify``, by a message
naming the file; that nothing is served wrong; and that no process dies of a signal (SIGBUS on a
truncated file, SIGSEGV). Servers and ``jade verify`` run as subprocesses for that reason.

Planted: a flipped byte in a stored vector, in a stored metadata value, in a record of the log
(a B-tree page of the log), in the admin's roles in the auth store; the data file's header
rolled back to its older meta page (the last write group lost); each file truncated. (Index
checkpoints, snapshots, the archive and the restore marker have their own sweeps.)
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.conftest import ADMIN_PASSWORD, ROOT, free_port
from tools.serve import serving

DIM = 8
N = 40
DATA = "jadevectordb.db"
AUTH = "jadevectordb_auth.db"
NEEDLE = "needle-metadata-value"
PSIZE = 4096  # LMDB's page size here (checked in ``_metas``)


# -- servers and the CLI as subprocesses ----------------------------------------------------------


class Proc:
    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.port = free_port()
        self.env = {**os.environ, "JADEVECTORDB_DATA_DIR": str(data_dir),
                    "JADEVECTORDB_PORT": str(self.port), "JADEVECTORDB_HOST": "127.0.0.1",
                    "JADEVECTORDB_CONFIG_DIR": str(data_dir.parent / "no-config"),
                    "PYTHONPATH": ROOT}
        self.proc: subprocess.Popen[bytes] | None = None
        self.token = ""

    def start(self) -> subprocess.CompletedProcess[bytes] | None:
        """Start ``jade serve``: None once it serves, or the finished process if it exited."""
        self.log = self.data_dir.parent / f"server-{self.port}.log"
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen([sys.executable, "-m", "tools", "serve"], env=self.env,
                                         stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                text = self.log.read_bytes()
                return subprocess.CompletedProcess(self.proc.args, self.proc.returncode, text)
            if serving("127.0.0.1", self.port, timeout=0.5):
                return None
            time.sleep(0.05)
        raise TimeoutError("server did not start")

    def stop(self) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=30)
        return self.proc.returncode

    def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        headers = {"Content-Type": "application/json"}
        if self.token:
            headers["Authorization"] = "Bearer " + self.token
        try:
            conn.request(method, path, json.dumps(body) if body is not None else None, headers)
            r = conn.getresponse()
            text = r.read()
        finally:
            conn.close()
        try:
            return r.status, json.loads(text) if text else None
        except ValueError:
            return r.status, text.decode(errors="replace")

    def login(self, username: str = "admin", password: str = ADMIN_PASSWORD) -> tuple[int, Any]:
        st, body = self.call("POST", "/v1/auth/login", {"username": username,
                                                        "password": password})
        if st == 200:
            self.token = body["token"]
        return st, body


def verify(data_dir: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "JADEVECTORDB_DATA_DIR": str(data_dir),
           "JADEVECTORDB_CONFIG_DIR": str(data_dir.parent / "no-config"), "PYTHONPATH": ROOT}
    return subprocess.run([sys.executable, "-m", "tools", "verify", str(data_dir)], env=env,
                          cwd=ROOT, capture_output=True, text=True, timeout=120)


def vector(i: int) -> list[float]:
    return [float(i) + 0.25 * j for j in range(DIM)]


# -- the data directory, built once ---------------------------------------------------------------


@pytest.fixture(scope="module")
def golden(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    data = tmp_path_factory.mktemp("golden") / "data"
    srv = Proc(data)
    assert srv.start() is None
    try:
        st, body = srv.call("POST", "/v1/auth/register", {
            "username": "admin", "password": ADMIN_PASSWORD, "is_admin": True})
        assert st == 201 and "admin" in body["roles"], body
        assert srv.login()[0] == 200
        st, body = srv.call("POST", "/v1/databases", {"name": "d", "vectorDimension": DIM})
        assert st == 201, body
        db = body["databaseId"]
        for i in range(N):
            md = {"tag": NEEDLE} if i == 7 else {"n": i}
            st, body = srv.call("POST", f"/v1/databases/{db}/vectors",
                                {"id": f"v{i}", "values": vector(i), "metadata": md})
            assert st == 201, body
    finally:
        assert srv.stop() == 0
    assert "OK" in verify(data).stdout
    return {"dir": data, "db": db}


@pytest.fixture
def case(golden: dict[str, Any], tmp_path: Path) -> dict[str, Any]:
    data = tmp_path / "data"
    shutil.copytree(golden["dir"], data, ignore=shutil.ignore_patterns("*-lock", "*.running"))
    return {"dir": data, "db": golden["db"], "data": data / DATA, "auth": data / AUTH}


# -- planting damage ------------------------------------------------------------------------------


def flip_after(path: Path, anchor: bytes, needle: bytes, within: int = 512) -> int:
    """Flip one byte of ``needle`` wherever it follows ``anchor`` within ``within`` bytes
    (every copy: LMDB keeps older copies of a page in its free pages). Returns how many."""
    raw = bytearray(path.read_bytes())
    n, at = 0, raw.find(anchor)
    while at >= 0:
        hit = raw.find(needle, at, at + len(anchor) + within)
        if hit >= 0:
            raw[hit + len(needle) // 2] ^= 0x01
            n += 1
        at = raw.find(anchor, at + 1)
    path.write_bytes(bytes(raw))
    return n


def _metas(path: Path) -> list[tuple[int, int]]:
    """(offset of mm_txnid, txnid) of the two meta pages (LMDB 0.9, 64-bit: page header 16
    bytes, then magic, version, address, mapsize, two MDB_db of 48 bytes, last_pg, txnid)."""
    raw = path.read_bytes()[: 2 * PSIZE]
    out = []
    for page in (0, 1):
        base = page * PSIZE + 16
        magic, _version = struct.unpack_from("<II", raw, base)
        assert magic == 0xBEEFC0DE
        off = base + 4 + 4 + 8 + 8 + 2 * 48 + 8
        out.append((off, struct.unpack_from("<Q", raw, off)[0]))
    return out


def roll_back_header(path: Path) -> None:
    """Make the older meta page the current one: the file as it was before its last write
    transaction (what a lost write of the header looks like)."""
    (off0, t0), (off1, t1) = _metas(path)
    older = off0 if t0 < t1 else off1
    with open(path, "r+b") as fh:
        fh.seek(older)
        fh.write(struct.pack("<Q", max(t0, t1) + 1))


def truncate(path: Path) -> None:
    os.truncate(path, path.stat().st_size // 2)


# -- assertions -----------------------------------------------------------------------------------


def refused_start(c: dict[str, Any], file: Path) -> str:
    srv = Proc(c["dir"])
    done = srv.start()
    if done is None:
        srv.stop()
        pytest.fail("the server started on a damaged data directory")
    text = done.stdout.decode(errors="replace")
    assert done.returncode == 1, text  # refused; not killed by a signal (negative)
    assert str(file) in text, text
    assert "Traceback" not in text, text
    return text


def verify_fails(c: dict[str, Any], file: Path) -> str:
    r = verify(c["dir"])
    assert r.returncode == 1, r.stdout + r.stderr  # not 0 (OK), not negative (SIGBUS)
    assert "DAMAGED" in r.stdout and str(file) in r.stdout, r.stdout + r.stderr
    assert "Traceback" not in r.stderr, r.stderr
    return r.stdout


def damaged_answer(st: int, body: Any, file: Path) -> None:
    assert st == 500, body
    assert body["error"] == "data_damaged", body
    assert str(file) in body["message"], body


def served(c: dict[str, Any]) -> Proc:
    srv = Proc(c["dir"])
    done = srv.start()
    assert done is None, done.stdout.decode(errors="replace") if done else ""
    return srv


# -- the sweep ------------------------------------------------------------------------------------


def test_undamaged_directory_serves_and_verifies(case: dict[str, Any]) -> None:
    srv = served(case)
    try:
        assert srv.login()[0] == 200
        st, body = srv.call("GET", f"/v1/databases/{case['db']}/vectors/v7")
        assert st == 200 and body["metadata"] == {"tag": NEEDLE}, body
    finally:
        assert srv.stop() == 0
    assert "OK" in verify(case["dir"]).stdout


def test_a_flipped_byte_in_a_stored_vector_is_refused_on_read(case: dict[str, Any]) -> None:
    key = case["db"].encode() + b"\x00v3"
    value = np.array(vector(3), dtype="<f4").tobytes()
    assert flip_after(case["data"], key + b"\x93", value[8:16]) >= 1
    srv = served(case)  # the index loads from its checkpoint: nothing reads the value
    try:
        assert srv.login()[0] == 200
        p = f"/v1/databases/{case['db']}"
        damaged_answer(*srv.call("GET", p + "/vectors/v3"), case["data"])
        # a search whose hit is the damaged vector refuses too (it would serve its values)
        damaged_answer(*srv.call("POST", p + "/search", {
            "queryVector": vector(3), "topK": 3, "includeValues": True}), case["data"])
        st, body = srv.call("GET", p + "/vectors/v4")  # the others are served
        assert st == 200 and body["values"] == vector(4), body
        st, body = srv.call("GET", p + "/vectors?limit=100")
        assert st == 500 and body["error"] == "data_damaged", body  # the page holding it
        st, text = srv.call("GET", "/metrics")
        assert "jadevectordb_store_value_damaged_total 1.0" in text
    finally:
        assert srv.stop() == 0
    out = verify_fails(case, case["data"])
    assert "'" + case["db"] + "\\x00v3'" in out or "v3" in out


def test_a_flipped_byte_in_stored_metadata_is_refused_on_read(case: dict[str, Any]) -> None:
    key = case["db"].encode() + b"\x00v7"
    assert flip_after(case["data"], key + b"\x93", NEEDLE.encode()) >= 1
    srv = served(case)
    try:
        assert srv.login()[0] == 200
        p = f"/v1/databases/{case['db']}"
        damaged_answer(*srv.call("GET", p + "/vectors/v7"), case["data"])
        damaged_answer(*srv.call("POST", p + "/search", {
            "queryVector": vector(7), "topK": 2, "includeMetadata": True}), case["data"])
    finally:
        assert srv.stop() == 0
    verify_fails(case, case["data"])


def test_a_flipped_byte_in_a_log_record_refuses_the_start(case: dict[str, Any]) -> None:
    # the admin's password hash is in the log (auth.user.create) and nowhere else in this file
    assert flip_after(case["data"], b"$argon2id$", b"$m=", within=64) >= 1
    text = refused_start(case, case["data"])
    assert "do not verify" in text
    verify_fails(case, case["data"])


def test_a_flipped_role_in_the_auth_store_is_refused(case: dict[str, Any]) -> None:
    # "admin" -> "admim": the admin without the role, were it served
    assert flip_after(case["auth"], b"\xa5roles\x91", b"\xa5admin", within=8) >= 1
    srv = served(case)
    try:
        st, body = srv.login()
        damaged_answer(st, body, case["auth"])
    finally:
        assert srv.stop() == 0
    verify_fails(case, case["auth"])


def test_a_rolled_back_header_refuses_the_start(case: dict[str, Any]) -> None:
    roll_back_header(case["data"])
    text = refused_start(case, case["data"])
    assert "applied LSN" in text and str(case["auth"]) in text
    out = verify_fails(case, case["data"])
    assert "log lost records" in out


def test_an_operator_may_accept_the_lost_records(case: dict[str, Any]) -> None:
    """storage.accept_lost_records: the start goes on from what the log holds; the auth store
    (ahead of the log) is emptied and folded again from the log, and serves."""
    roll_back_header(case["data"])
    srv = Proc(case["dir"])
    srv.env["JADEVECTORDB_ACCEPT_LOST_RECORDS"] = "true"
    done = srv.start()
    assert done is None, done.stdout.decode(errors="replace") if done else ""
    try:
        assert srv.login()[0] == 200
        st, body = srv.call("GET", "/v1/users")  # the admin's role came back from the log
        assert st == 200 and len(body["users"]) == 1, body
    finally:
        assert srv.stop() == 0
    assert "accepting lost records" in srv.log.read_text()


def test_a_rolled_back_auth_header_is_repaired_by_replay(case: dict[str, Any]) -> None:
    """No witness can tell this from a crash before the auth file's last commit: the auth
    store is behind, and the start-up's replay brings it level. Nothing is lost or wrong."""
    roll_back_header(case["auth"])
    srv = served(case)
    try:
        assert srv.login()[0] == 200
        st, body = srv.call("GET", "/v1/users")  # an admin's call
        assert st == 200 and len(body["users"]) == 1, body
    finally:
        assert srv.stop() == 0
    r = verify(case["dir"])
    assert r.returncode == 0 and "OK" in r.stdout, r.stdout


@pytest.mark.parametrize("which", ["data", "auth"])
def test_a_truncated_file_is_named_never_a_sigbus(case: dict[str, Any], which: str) -> None:
    truncate(case[which])
    text = refused_start(case, case[which])
    assert "truncated" in text
    out = verify_fails(case, case[which])
    assert "truncated" in out


# -- `jade verify` alone (a stopped server's directory) -------------------------------------------


def _plant(c: dict[str, Any], damage: str) -> Path:
    if damage == "vector":
        value = np.array(vector(3), dtype="<f4").tobytes()
        assert flip_after(c["data"], c["db"].encode() + b"\x00v3\x93", value[8:16]) >= 1
    elif damage == "metadata":
        assert flip_after(c["data"], c["db"].encode() + b"\x00v7\x93", NEEDLE.encode()) >= 1
    elif damage == "role":
        assert flip_after(c["auth"], b"\xa5roles\x91", b"\xa5admin", within=8) >= 1
        return Path(c["auth"])
    elif damage == "header":
        roll_back_header(c["data"])
    return Path(c["data"])


@pytest.mark.parametrize("damage", ["vector", "metadata", "role", "header"])
def test_verify_names_each_damage(case: dict[str, Any], damage: str) -> None:
    """Before: ``jade verify`` said OK on a rolled-back header (it compared the projections
    with a replay of what the log still held), and named neither the file nor the value of a
    damaged one ("catalog + vectors differ from the replay of the log")."""
    file = _plant(case, damage)
    verify_fails(case, file)


def test_a_store_of_the_previous_schema_is_sealed_on_open(tmp_path: Path) -> None:
    """A schema-2 store (values without their checksum) and an auth store without seals open,
    are upgraded in place, serve the same values and verify."""
    from jade.auth.store import SUBS
    from jade.backup.verify import verify_dir
    from jade.core.decide import Command
    from jade.engine import Engine
    from jade.stores.data import SEALED
    from tests.conftest import make_settings
    from tests.test_apply import upsert
    from wal.lmdbenv import Env

    s = make_settings(tmp_path)
    e = Engine(s)
    e.open()
    e.submit_sync(Command("db.create", {
        "db": "d", "name": "d", "description": "", "dimension": 2, "metric": "cosine",
        "index_type": "FLAT", "index": {"id": "i", "name": "i", "requested": "FLAT",
                                        "kind": "flat", "parameters": {}}, "extra": {}}))
    e.submit_sync(upsert("d", [("a", [1, 0], {"k": 1}), ("b", [0, 1], None)]))
    e.submit_sync(Command("auth.user.create", {
        "user_id": "u1", "username": "ann", "email": "a@example.com", "password_hash": "h",
        "roles": ["admin"], "must_change_password": False}))
    before = e.store.vectors("d", ["a", "b"])
    e.close()
    for path, subs, schema in ((s.db_path, SEALED, (b"meta", b"2")),
                               (s.auth_db_path, tuple(x for x in SUBS if x != b"sys"), None)):
        env = Env(path)
        dbs = [env.db(sub) for sub in subs]  # handles outside the write transaction
        meta = env.db(schema[0] if schema else b"sys")

        def strip(txn: Any, dbs: list[Any] = dbs, meta: Any = meta, schema: Any = schema
                  ) -> None:
            for db in dbs:
                for k, v in list(txn.cursor(db=db)):
                    txn.put(k, v[:-4], db=db)
            if schema:
                txn.put(b"schema", schema[1], db=meta)
            else:
                txn.delete(b"schema", db=meta)

        env.write(strip)
        env.close()
    e = Engine(s)
    e.open()
    try:
        assert e.store.schema() == 3 and e.store.sealed and e.auth.sealed
        assert e.store.vectors("d", ["a", "b"]) == before
        assert e.auth.user("u1")["roles"] == ["admin"]  # type: ignore[index]
    finally:
        e.close()
    report = verify_dir(s)
    assert report.ok, report.lines
