"""The data directory lock (``jade.datadir``): one process owns a data directory. ``hold`` is
re-entrant inside a process (the server and its engine both hold it), refused from another
process with a message naming the holder, and released when the last handle lets go (or the
process dies: the kernel drops a flock with its last file descriptor)."""

from __future__ import annotations

import http.client
import json
import os
import subprocess
import sys
import time
from typing import Any

import orjson
import pytest

from jade.datadir import LOCK_FILE, DataDirBusy, hold, holder
from tests.conftest import ServerProcess, free_port
from tools.serve import serving

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = {**os.environ, "PYTHONPATH": ROOT}

# a process that holds the directory until its standard input closes
HOLD = ("import sys; from jade.datadir import hold; h = hold(sys.argv[1], 'test helper'); "
        "print('held', flush=True); sys.stdin.read()")
# exits 0 if it could take the directory, 3 if it was refused
TRY = ("import sys; from jade.datadir import DataDirBusy, hold\n"
       "try:\n    hold(sys.argv[1], 'probe').release()\n"
       "except DataDirBusy:\n    sys.exit(3)\n")


def _other_process_can_take(data_dir: str) -> bool:
    rc = subprocess.run([sys.executable, "-c", TRY, data_dir], env=ENV, cwd=ROOT,
                        timeout=60).returncode
    assert rc in (0, 3), rc
    return rc == 0


def _holding_process(data_dir: str) -> subprocess.Popen[bytes]:
    p = subprocess.Popen([sys.executable, "-c", HOLD, data_dir], env=ENV, cwd=ROOT,
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert p.stdout is not None
    assert p.stdout.readline() == b"held\n"
    return p


def test_hold_creates_the_directory_and_records_the_holder(tmp_path: Any) -> None:
    d = str(tmp_path / "not" / "yet" / "data")
    with hold(d, "jade test") as lock:
        assert os.path.isdir(d)
        assert lock.path == os.path.join(os.path.realpath(d), LOCK_FILE)
        with open(lock.path) as fh:
            info = json.load(fh)
        assert info["pid"] == os.getpid() and info["purpose"] == "jade test", info
        assert info["since"], info
        assert not _other_process_can_take(d)
    assert _other_process_can_take(d)  # released on leaving the block


def test_hold_is_reentrant_in_one_process(tmp_path: Any) -> None:
    d = str(tmp_path / "data")
    first = hold(d, "jade serve")
    second = hold(os.path.join(d, "."), "engine")  # another spelling of the same directory
    try:
        assert holder(d) is None  # this process holds it: not "some other process"
        first.release()
        first.release()  # idempotent per handle: must not drop the second handle's hold
        assert second.held and not first.held
        assert not _other_process_can_take(d)
    finally:
        second.release()
    assert not second.held
    assert _other_process_can_take(d)
    with hold(d, "again"):  # and this process can take it afresh
        assert not _other_process_can_take(d)


def test_hold_is_refused_while_another_process_holds_it(tmp_path: Any) -> None:
    d = str(tmp_path / "data")
    p = _holding_process(d)
    try:
        with pytest.raises(DataDirBusy) as refused:
            hold(d, "second")
        msg = str(refused.value)
        assert f"pid {p.pid}" in msg and "test helper" in msg and d in msg, msg
        assert refused.value.data_dir == d and refused.value.info["pid"] == p.pid
        seen = holder(d)  # the refused attempt left the holder's record alone
        assert seen is not None and seen["pid"] == p.pid and seen["purpose"] == "test helper"
    finally:
        with p:  # closes its pipes (its standard input first: the helper exits) and waits
            pass
    assert holder(d) is None  # the holder exited: the kernel released its lock
    with hold(d, "after") as lock:
        assert lock.info["pid"] == os.getpid()


# -- the lock in the command line: real ``jade`` processes -----------------------------------

PASSWORD = "Lock_Secure123@"


def _call(port: int, method: str, path: str, body: Any = None,
          token: str = "") -> tuple[int, Any]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    try:
        conn.request(method, path, body=orjson.dumps(body) if body is not None else None,
                     headers=headers)
        r = conn.getresponse()
        return r.status, orjson.loads(r.read() or b"null")
    finally:
        conn.close()


def _user(port: int, username: str) -> str:
    """Register ``username`` and return a token (a write, then a login)."""
    st, body = _call(port, "POST", "/v1/auth/register",
                     {"username": username, "password": PASSWORD})
    assert st == 201, body
    st, body = _call(port, "POST", "/v1/auth/login", {"username": username, "password": PASSWORD})
    assert st == 200, body
    return str(body["token"])


def _still_serves(sp: ServerProcess, token: str, name: str) -> None:
    """The server still takes writes and logins and says its databases are healthy."""
    st, db = _call(sp.port, "POST", "/v1/databases", {"name": name, "vectorDimension": 2}, token)
    assert st == 201, db
    st, body = _call(sp.port, "POST", f"/v1/databases/{db['databaseId']}/vectors",
                     {"id": "v1", "values": [0.1, 0.2]}, token)
    assert st in (200, 201), body
    _user(sp.port, f"{name}-user")
    st, body = _call(sp.port, "GET", "/health/db")
    assert st == 200 and body["healthy"] is True, body


def _one_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    return lines[0]


def _second_server(sp: ServerProcess, tmp_path: Any) -> tuple[int, str, bool]:
    """Start another ``jade serve`` on ``sp``'s data directory (another port). Returns its exit
    code, its standard error, and whether it started serving (it is then stopped)."""
    port = free_port()
    err_path = tmp_path / f"second-{port}.err"
    with open(err_path, "wb") as err, open(os.devnull, "wb") as out:
        p = subprocess.Popen([sys.executable, "-m", "tools", "serve"], cwd=ROOT, stdout=out,
                             stderr=err, env={**sp.env, "JADEVECTORDB_PORT": str(port)})
        started = False
        deadline = time.monotonic() + 60
        while p.poll() is None and time.monotonic() < deadline:
            if serving("127.0.0.1", port, timeout=0.5):
                started = True
                p.terminate()
            time.sleep(0.05)
        if p.poll() is None:
            p.kill()
        p.wait(timeout=30)
    return p.returncode, err_path.read_text(), started


def _user_create(sp: ServerProcess, username: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tools", "user", "create", username,
                           "--password-stdin"], cwd=ROOT, env=sp.env, input=PASSWORD + "\n",
                          capture_output=True, text=True, timeout=120)


def test_a_second_server_on_the_same_directory_refuses_to_start(
        server_process: ServerProcess, tmp_path: Any) -> None:
    sp = server_process
    sp.start()
    assert sp.proc is not None
    token = _user(sp.port, "first")
    rc, stderr, started = _second_server(sp, tmp_path)
    assert not started, f"a second server started on the same data directory: {stderr}"
    assert rc == 1, (rc, stderr)
    line = _one_line(stderr)
    assert line.startswith("jade: ") and f"pid {sp.proc.pid}" in line, line
    assert "in use by jade serve" in line and sp.data_dir in line, line
    _still_serves(sp, token, "after-second-server")


def test_an_offline_user_create_is_refused_beside_a_server(
        server_process: ServerProcess, tmp_path: Any) -> None:
    sp = server_process
    sp.start()
    assert sp.proc is not None
    token = _user(sp.port, "first")
    r = _user_create(sp, "offline-1")
    assert r.returncode != 0, r.stdout
    assert f"pid {sp.proc.pid}" in _one_line(r.stderr), r.stderr
    # a second server tried (and stopped) on the directory must not lift the refusal
    _second_server(sp, tmp_path)
    r = _user_create(sp, "offline-2")
    assert r.returncode != 0, f"created beside a live server: {r.stdout}"
    assert f"pid {sp.proc.pid}" in _one_line(r.stderr), r.stderr
    st, _ = _call(sp.port, "POST", "/v1/auth/login", {"username": "first", "password": PASSWORD})
    assert st == 200
    _still_serves(sp, token, "after-offline-tool")


def test_the_lock_is_free_once_the_server_is_killed(server_process: ServerProcess) -> None:
    sp = server_process
    sp.start()
    assert sp.proc is not None
    seen = holder(sp.data_dir)
    assert seen is not None and seen["pid"] == sp.proc.pid and seen["purpose"] == "jade serve"
    sp.kill()  # SIGKILL: no clean-up ran
    assert holder(sp.data_dir) is None
    sp.start()  # a new server takes the directory
    _still_serves(sp, _user(sp.port, "after-kill"), "after-kill")
    sp.stop()
    r = _user_create(sp, "offline")  # and an offline tool may, once it stopped
    assert r.returncode == 0, r.stderr


def test_restore_force_never_deletes_a_directory_in_use(tmp_path: Any) -> None:
    """``jade restore --force`` replaces a non-empty target: never one a live process owns."""
    from jade.backup.restore import RestoreError, restore
    from jade.engine import Engine
    from tests.conftest import make_settings

    src = make_settings(tmp_path / "src")
    from jade.backup import snapshot

    e = Engine(src)
    e.open()
    assert e.env is not None and e.auth_env is not None
    snapshot.create(e.env, e.auth_env, src.index_dir, src.backup_dir)
    e.close()
    target = tmp_path / "target"
    target.mkdir()
    (target / "keep.txt").write_text("a live directory's file")
    p = _holding_process(str(target))
    try:
        with pytest.raises(RestoreError, match="in use by"):
            restore(src, str(target), latest=True, force=True)
        assert (target / "keep.txt").exists()
    finally:
        p.communicate(b"\n", timeout=10)
