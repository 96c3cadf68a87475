"""The CLI walk (issue 18, item 2): every ``jade`` command's ``--help``, ``--version``, and each
way a command meets a bad world (a port in use, a broken pipe, a missing or unusable data
directory, a bad configuration, a server that does not answer, Ctrl-C, a refused credential, a
bad row) ends with one line on stderr and its exit code, never a traceback. Real subprocesses,
run from a directory that is not the repository's (the data directory comes from
``--data-dir`` or the environment, never from the current directory), and real servers."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import orjson
import pytest
from aiohttp import web

import jade
from jade.core.decide import Command
from jade.engine import Engine
from tests.conftest import ROOT, Server, free_port, make_settings, running_server
from tools import errors
from tools.cli import build_parser

PASSWORD = "A-strong-passw0rd!"


def base_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """An operator's environment: none of the caller's JADEVECTORDB_* / JADE_* variables, no
    configuration files, the data directory only if given."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JADEVECTORDB_", "JADE_"))}
    env.update({"PYTHONPATH": ROOT, "JADEVECTORDB_CONFIG_DIR": str(tmp_path / "no-config")})
    env.update(extra)
    return env


def run(env: dict[str, str], *args: str, cwd: str | Path | None = None, input: str | None = None,
        timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """``jade ARGS`` as a real subprocess; never a traceback, whatever happens."""
    r = subprocess.run([sys.executable, "-m", "tools", *args], env=env, cwd=cwd or ROOT,
                       capture_output=True, text=True, timeout=timeout,
                       input=input if input is not None else "")
    assert "Traceback" not in r.stdout + r.stderr, (args, r.stdout, r.stderr)
    return r


def one_line(r: subprocess.CompletedProcess[str], code: int, *wanted: str) -> str:
    """Exit ``code`` and one line on stderr, ``jade: ...``, naming every ``wanted`` piece."""
    lines = r.stderr.strip().splitlines()
    assert r.returncode == code, (r.returncode, r.stdout, r.stderr)
    assert len(lines) == 1 and lines[0].startswith("jade: "), r.stderr
    for w in wanted:
        assert w in lines[0], (w, lines[0])
    return lines[0]


def command_paths() -> list[list[str]]:
    """Every command and subcommand of ``jade`` (walked in the parser, so a new one is in)."""
    out: list[list[str]] = []

    def walk(p: argparse.ArgumentParser, path: list[str]) -> None:
        subs = [a for a in p._actions if isinstance(a, argparse._SubParsersAction)]
        if path:
            out.append(path)
        for action in subs:
            for word, child in action.choices.items():
                walk(child, [*path, word])

    walk(build_parser(), [])
    return out


# --- help and version ----------------------------------------------------------------------


def test_every_command_answers_help(tmp_path: Path) -> None:
    paths = command_paths()
    assert {"serve", "import", "export", "verify"} <= {p[0] for p in paths}
    assert ["snapshot", "create"] in paths and ["wal", "inspect"] in paths
    env = base_env(tmp_path)
    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(lambda p: (p, run(env, *p, "--help", cwd=tmp_path)),
                                [[], *paths]))
    for path, r in results:
        assert r.returncode == 0 and r.stderr == "", (path, r.stderr)
        assert r.stdout.startswith(f"usage: jade {' '.join(path)}".rstrip()), (path, r.stdout)


def test_help_documents_the_environment_and_the_exit_codes(tmp_path: Path) -> None:
    env = base_env(tmp_path)
    top = run(env, "--help").stdout
    for word in ("JADEVECTORDB_URL", "JADEVECTORDB_API_KEY", "JADEVECTORDB_PORT",
                 "JADEVECTORDB_DATA_DIR", "--data-dir", "exit codes"):
        assert word in top, word
    for code in (errors.USAGE, errors.NO_SERVER, errors.INTERRUPTED, errors.BROKEN_PIPE):
        assert f"\n  {code} " in top, code
    for cmd in ("import", "export"):
        h = run(env, cmd, "--help").stdout
        assert "JADEVECTORDB_URL" in h and "JADEVECTORDB_API_KEY" in h and "name" in h, h
    for path in (["snapshot", "create"], ["snapshot", "list"], ["snapshot", "verify"],
                 ["snapshot", "delete"], ["restore"], ["verify"], ["wal", "inspect"],
                 ["user", "create"], ["serve"]):
        assert "--data-dir" in run(env, *path, "--help").stdout, path


def test_version(tmp_path: Path) -> None:
    r = run(base_env(tmp_path), "--version")
    assert r.returncode == 0 and r.stdout == f"jade {jade.__version__}\n", r
    entry = os.path.join(ROOT, ".venv", "bin", "jade")
    if os.path.exists(entry):  # the installed entry point says the same
        e = subprocess.run([entry, "--version"], capture_output=True, text=True, timeout=60,
                           env=base_env(tmp_path))
        assert e.returncode == 0 and e.stdout == r.stdout, e


def test_a_usage_error_is_argparse_s_own_code(tmp_path: Path) -> None:
    r = run(base_env(tmp_path), "snapshot", "frobnicate")
    assert r.returncode == errors.USAGE and "invalid choice" in r.stderr


# --- offline commands: --data-dir ---------------------------------------------------------


@pytest.fixture
def data_dir(tmp_path: Path) -> str:
    """A data directory with a database and a few records, away from any current directory."""
    s = make_settings(tmp_path / "elsewhere")
    e = Engine(s)
    e.open()
    try:
        e.submit_sync(Command("auth.user.create", {
            "user_id": "u1", "username": "walker", "password_hash": "x", "roles": ["user"]}))
    finally:
        e.close()
    return s.data_dir


def test_offline_commands_take_data_dir(tmp_path: Path, data_dir: str) -> None:
    env = base_env(tmp_path)  # no JADEVECTORDB_DATA_DIR
    cwd = tmp_path / "somewhere"
    cwd.mkdir()
    r = run(env, "snapshot", "create", "--json", "--data-dir", data_dir, cwd=cwd)
    assert r.returncode == 0, r.stderr
    name = json.loads(r.stdout)["name"]
    r = run(env, "snapshot", "list", "--data-dir", data_dir, cwd=cwd)
    assert r.returncode == 0 and name in r.stdout, r
    r = run(env, "snapshot", "verify", "--data-dir", data_dir, cwd=cwd)
    assert r.returncode == 0 and f"ok  {name}" in r.stdout, r
    r = run(env, "wal", "inspect", "--data-dir", data_dir, cwd=cwd)
    assert r.returncode == 0 and "auth.user.create" in r.stdout, r
    r = run(env, "verify", "--data-dir", data_dir, cwd=cwd)
    assert r.returncode == 0 and r.stdout.rstrip().endswith(f"OK: {data_dir}"), r
    r = run(env, "user", "create", "alice", "--password-stdin", "--data-dir", data_dir,
            cwd=cwd, input=PASSWORD + "\n")
    assert r.returncode == 0 and "created user alice" in r.stdout, r
    target = str(tmp_path / "restored")
    r = run(env, "restore", "--latest", "--target", target, "--data-dir", data_dir, cwd=cwd)
    assert r.returncode == 0 and os.path.isdir(target), r
    r = run(env, "snapshot", "delete", name, "--data-dir", data_dir, cwd=cwd)
    assert r.returncode == 0, r
    assert os.listdir(cwd) == [], "a command wrote into the current directory"
    # the environment names it as well; --data-dir wins over it
    env2 = base_env(tmp_path, JADEVECTORDB_DATA_DIR=str(tmp_path / "not-there"))
    assert run(env2, "wal", "inspect", "--data-dir", data_dir, cwd=cwd).returncode == 0
    env3 = base_env(tmp_path, JADEVECTORDB_DATA_DIR=data_dir)
    assert run(env3, "wal", "inspect", cwd=cwd).returncode == 0


def test_a_configured_backup_dir_stays_with_data_dir(tmp_path: Path, data_dir: str) -> None:
    """--data-dir moves the data files, not a backup directory the operator configured (a
    restore of a lost directory reads its backups from JADEVECTORDB_BACKUP_DIR)."""
    offsite = tmp_path / "offsite"
    env = base_env(tmp_path, JADEVECTORDB_BACKUP_DIR=str(offsite))
    r = run(env, "snapshot", "create", "--json", "--data-dir", data_dir)
    assert r.returncode == 0, r
    name = json.loads(r.stdout)["name"]
    assert (offsite / "snapshots" / name).is_dir()
    assert not os.path.exists(os.path.join(data_dir, "backups", "snapshots", name))
    r = run(env, "snapshot", "list", "--data-dir", str(tmp_path / "lost"))
    assert r.returncode == 0 and name in r.stdout, r


OFFLINE = (
    ("snapshot", "create"), ("snapshot", "list"), ("snapshot", "verify"),
    ("snapshot", "delete", "snap-x"), ("wal", "inspect"), ("verify",),
    ("user", "create", "bob", "--password-stdin"),
)


def test_a_missing_data_dir_is_one_line(tmp_path: Path) -> None:
    env = base_env(tmp_path)
    cwd = tmp_path / "somewhere"
    cwd.mkdir()
    missing = str(tmp_path / "nope")
    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(
            lambda a: run(env, *a, "--data-dir", missing, cwd=cwd, input=PASSWORD + "\n"),
            OFFLINE))
        # the default (./data of the current directory) is named as such, absolute
        defaults = list(pool.map(lambda a: run(env, *a, cwd=cwd, input=PASSWORD + "\n"),
                                 OFFLINE))
    for r in results:
        one_line(r, errors.FAILED, "no data directory at", missing)
    for r in defaults:
        one_line(r, errors.FAILED, "no data directory at ./data", str(cwd / "data"),
                 "--data-dir")
    assert not os.path.exists(missing) and os.listdir(cwd) == []
    r = run(env, "restore", "--latest", "--target", str(tmp_path / "t"), "--data-dir", missing)
    one_line(r, errors.FAILED, "restore failed")
    # a new system: the first admin before the first start, when asked for
    r = run(env, "user", "create", "root", "--admin", "--password-stdin", "--data-dir",
            missing, "--create-data-dir", input=PASSWORD + "\n")
    assert r.returncode == 0 and os.path.isdir(missing), r


def test_an_unusable_data_dir_is_one_line(tmp_path: Path, data_dir: str) -> None:
    env = base_env(tmp_path)
    a_file = tmp_path / "a-file"
    a_file.write_text("not a directory\n")
    for args in OFFLINE:
        r = run(env, *args, "--data-dir", str(a_file), input=PASSWORD + "\n")
        one_line(r, errors.FAILED, "is not a directory", str(a_file))
    r = run(env, "serve", "--data-dir", str(a_file / "data"))
    one_line(r, errors.FAILED, str(a_file))
    # a directory that is not a data directory, and a data file that is not LMDB
    empty = tmp_path / "empty"
    empty.mkdir()
    one_line(run(env, "wal", "inspect", "--data-dir", str(empty)), errors.FAILED,
             "no data file", "jadevectordb.db")
    one_line(run(env, "snapshot", "create", "--data-dir", str(empty)), errors.FAILED,
             "no data file")
    with open(os.path.join(data_dir, "jadevectordb.db"), "wb") as fh:
        fh.write(b"not an LMDB file\n" * 512)
    one_line(run(env, "wal", "inspect", "--data-dir", data_dir), errors.FAILED, "damaged",
             "jadevectordb.db")
    one_line(run(env, "user", "create", "x", "--password-stdin", "--data-dir", data_dir,
                 input=PASSWORD + "\n"), errors.FAILED, "jadevectordb.db")


def test_two_data_dirs_for_verify_is_a_usage_error(tmp_path: Path, data_dir: str) -> None:
    r = run(base_env(tmp_path), "verify", data_dir, "--data-dir", str(tmp_path))
    one_line(r, errors.USAGE, "two data directories")


def test_user_create_without_a_terminal_asks_for_password_stdin(tmp_path: Path,
                                                                data_dir: str) -> None:
    r = run(base_env(tmp_path), "user", "create", "carol", "--data-dir", data_dir)
    one_line(r, errors.USAGE, "--password-stdin")


# --- configuration --------------------------------------------------------------------------


def test_a_bad_configuration_is_one_line(tmp_path: Path, data_dir: str) -> None:
    one_line(run(base_env(tmp_path, JADEVECTORDB_PORT="eighty"), "config", "show"),
             errors.USAGE, "configuration error", "JADEVECTORDB_PORT")
    one_line(run(base_env(tmp_path, JADEVECTORDB_NO_SUCH="1"), "wal", "inspect",
                 "--data-dir", data_dir), errors.USAGE, "JADEVECTORDB_NO_SUCH")
    cfg = tmp_path / "cfg"
    cfg.mkdir()
    (cfg / "development.json").write_text("{ not json")
    env = base_env(tmp_path, JADEVECTORDB_CONFIG_DIR=str(cfg))
    for args in (("snapshot", "list", "--data-dir", data_dir), ("serve",),
                 ("verify", data_dir)):
        one_line(run(env, *args), errors.USAGE, "configuration error", "development.json")
    # a client command: the port its default URL follows
    one_line(run(base_env(tmp_path, JADEVECTORDB_PORT="eighty"), "export", "--db", "x",
                 "--file", str(tmp_path / "x.jsonl")), errors.USAGE, "JADEVECTORDB_PORT")
    assert not (tmp_path / "x.jsonl").exists()


def test_the_client_variables_do_not_upset_the_server_side(tmp_path: Path) -> None:
    env = base_env(tmp_path, JADEVECTORDB_URL="http://127.0.0.1:1",
                   JADEVECTORDB_API_KEY="k")
    r = run(env, "config", "show")
    assert r.returncode == 0 and json.loads(r.stdout)["server.port"] == 8080, r


# --- the port, the pipe, the interrupt ---------------------------------------------------


@pytest.fixture
def silent() -> Iterator[socket.socket]:
    """A listening socket that never answers (connections wait in the kernel's backlog)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(16)
        yield s


@pytest.fixture
def silent_port(silent: socket.socket) -> int:
    return int(silent.getsockname()[1])


def test_a_port_in_use_is_one_line(tmp_path: Path, silent_port: int) -> None:
    r = run(base_env(tmp_path), "serve", "--port", str(silent_port), "--data-dir",
            str(tmp_path / "data"), timeout=60)
    one_line(r, errors.FAILED, "port is in use", str(silent_port), "--port")
    r = run(base_env(tmp_path, JADEVECTORDB_PORT=str(silent_port),
                     JADEVECTORDB_DATA_DIR=str(tmp_path / "data")), "serve", timeout=60)
    one_line(r, errors.FAILED, "port is in use", "JADEVECTORDB_PORT")


def closed_pipe(env: dict[str, str], *args: str) -> tuple[int, str]:
    """``jade ARGS`` whose stdout reader has gone before it writes: (exit code, stderr)."""
    p = subprocess.Popen([sys.executable, "-m", "tools", *args], env=env, cwd=ROOT,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert p.stdout is not None and p.stderr is not None
    p.stdout.close()
    with p.stderr:
        err = p.stderr.read()
    return p.wait(timeout=120), err


def test_a_broken_pipe_is_one_line(tmp_path: Path, data_dir: str) -> None:
    env = base_env(tmp_path)
    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(lambda a: closed_pipe(env, *a), (
            ("config", "docs"), ("openapi",), ("wal", "inspect", "--data-dir", data_dir),
            ("snapshot", "list", "--data-dir", data_dir))))
    for code, err in results:
        assert code == errors.BROKEN_PIPE, (code, err)
        assert err.count("\n") == 1 and err.startswith("jade: ") and "broken pipe" in err, err
        assert "Traceback" not in err and "Exception ignored" not in err, err
    # as a shell runs it: head reads one line and goes
    sh = subprocess.run(["bash", "-o", "pipefail", "-c",
                         f"{sys.executable} -m tools openapi | head -1"], env=env, cwd=ROOT,
                        capture_output=True, text=True, timeout=120)
    assert sh.stdout == "{\n" and "Traceback" not in sh.stderr, sh
    assert sh.returncode in (0, errors.BROKEN_PIPE), sh  # whether the pipe filled first


def test_ctrl_c_is_one_line(tmp_path: Path, silent: socket.socket, silent_port: int) -> None:
    target = tmp_path / "out.jsonl"
    p = subprocess.Popen([sys.executable, "-m", "tools", "export", "--db", "x", "--file",
                          str(target), "--url", f"http://127.0.0.1:{silent_port}"],
                         env=base_env(tmp_path), cwd=ROOT, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    silent.settimeout(60)
    conn, _ = silent.accept()  # it connected: it waits for the answer
    conn.recv(1024)
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=60)
    assert p.returncode == errors.INTERRUPTED, (p.returncode, err)
    assert err == "jade: interrupted\n" and out == "", err
    assert list(tmp_path.glob("*out.jsonl*")) == []
    conn.close()


# --- a server that does not answer --------------------------------------------------------


def test_a_server_that_does_not_answer(tmp_path: Path, silent_port: int) -> None:
    rows = tmp_path / "rows.jsonl"
    rows.write_text('{"id": "a", "values": [1, 2]}\n')
    closed = free_port()
    env = base_env(tmp_path)
    for cmd in ("import", "export"):
        f = str(rows) if cmd == "import" else str(tmp_path / "out.jsonl")
        r = run(env, cmd, "--db", "x", "--file", f, "--url", f"http://127.0.0.1:{closed}")
        one_line(r, errors.NO_SERVER, f"127.0.0.1:{closed}", "connection refused",
                 "JADEVECTORDB_URL")
        # the default URL follows JADEVECTORDB_PORT
        r = run(base_env(tmp_path, JADEVECTORDB_PORT=str(closed)), cmd, "--db", "x", "--file", f)
        one_line(r, errors.NO_SERVER, f"127.0.0.1:{closed}")
        t = time.monotonic()
        r = run(env, cmd, "--db", "x", "--file", f, "--url", f"http://127.0.0.1:{silent_port}",
                "--timeout", "1")
        one_line(r, errors.NO_SERVER, "did not answer in time")
        assert time.monotonic() - t < 30
    assert not (tmp_path / "out.jsonl").exists()
    one_line(run(env, "import", "--db", "x", "--file", str(rows), "--url", "ftp://x"),
             errors.USAGE, "ftp://x")


# --- import and export against a real server ---------------------------------------------


def client_env(tmp_path: Path, srv: Server, **extra: str) -> dict[str, str]:
    token = srv.user.headers["Authorization"].split()[1]
    return base_env(tmp_path, **{"JADEVECTORDB_URL": srv.base, "JADEVECTORDB_API_KEY": token,
                                 **extra})


async def ajade(env: dict[str, str], *args: str, cwd: str | Path | None = None
                ) -> subprocess.CompletedProcess[str]:
    """``run`` off the event loop (the test's server answers on it meanwhile)."""
    return await asyncio.to_thread(run, env, *args, cwd=cwd)


async def test_import_and_export_by_name_and_id(tmp_path: Path) -> None:
    async with running_server(make_settings(tmp_path)) as srv:
        st, body = await srv.user.post("/v1/databases", {"name": "walk-db", "vectorDimension": 3})
        assert st == 201, body
        db_id = body["databaseId"]
        rows = tmp_path / "rows.jsonl"
        rows.write_bytes(b"".join(
            orjson.dumps({"id": f"v{i}", "values": [i, 1.0, 2.0], "metadata": {"i": i}}) + b"\n"
            for i in range(5)))
        env = client_env(tmp_path, srv)
        r = await ajade(env, "import", "--db", "walk-db", "--file", str(rows))
        assert r.returncode == 0 and "imported 5 of 5 rows" in r.stdout and db_id in r.stdout, r
        st, body = await srv.user.get(f"/v1/databases/{db_id}")
        assert body["stats"]["vectorCount"] == 5
        out = tmp_path / "out.jsonl"
        r = await ajade(env, "export", "--db", "walk-db", "--file", str(out), "--json")
        assert r.returncode == 0 and json.loads(r.stdout)["exported"] == 5, r
        got = sorted(orjson.loads(x)["id"] for x in out.read_bytes().splitlines())
        assert got == [f"v{i}" for i in range(5)]
        r = await ajade(env, "export", "--db", db_id, "--file", str(tmp_path / "out.npy"))
        assert r.returncode == 0, r
        assert np.load(tmp_path / "out.npy").shape == (5, 3)
        assert len(json.loads((tmp_path / "out.npy.ids.json").read_text())) == 5
        r = await ajade(env, "export", "--db", db_id, "--file", str(tmp_path / "out.json"))
        assert r.returncode == 0 and len(json.loads((tmp_path / "out.json").read_text())) == 5
        r = await ajade(env, "export", "--db", "walk-db", "--file", "-")
        assert r.returncode == 0 and len(r.stdout.splitlines()) == 5 and r.stderr == "", r
        # no URL: the one a server on JADEVECTORDB_PORT of this environment answers on
        port = srv.base.rsplit(":", 1)[1]
        env2 = {k: v for k, v in env.items() if k != "JADEVECTORDB_URL"}
        r = await ajade({**env2, "JADEVECTORDB_PORT": port}, "export", "--db", "walk-db",
                        "--file", "-")
        assert r.returncode == 0 and len(r.stdout.splitlines()) == 5, r
        # the variables of an earlier version are named, not silently ignored
        r = await ajade({**env2, "JADEVECTORDB_PORT": port, "JADE_URL": srv.base}, "export",
                        "--db", "walk-db", "--file", "-")
        assert r.returncode == 0 and "JADE_URL is not read any more" in r.stderr, r


async def test_import_names_bad_rows_and_fails(tmp_path: Path) -> None:
    async with running_server(make_settings(tmp_path)) as srv:
        db_id = await srv.user.create_db(dim=2)
        env = client_env(tmp_path, srv)
        rows = tmp_path / "rows.jsonl"
        rows.write_text("\n".join([
            '{"id": "a", "values": [1, 2]}',
            '{"id": "b", "values": [1, 2]}',
            '{"id": "c", "values": [1, 2',           # line 3: malformed
            "",
            '{"id": "e", "values": [1, 2, 3]}',      # line 5: dimension
            '{"values": [1, 2]}',                    # line 6: no id
            '{"id": "g", "values": [1, "x"]}',       # line 7: not a number
            '{"id": "h", "values": [3, 4]}',
        ]) + "\n")
        r = await ajade(env, "import", "--db", db_id, "--file", str(rows))
        assert r.returncode == errors.FAILED, r
        assert "imported 3 of 7 rows" in r.stdout, r.stdout
        err = r.stderr.splitlines()
        assert err[-1] == "jade: 4 of 7 rows failed", r.stderr
        for n, what in ((3, "malformed JSON"), (5, "dimension mismatch"), (6, "'id'"),
                        (7, "only numbers")):
            assert any(e.strip().startswith(f"line {n}: ") and what in e for e in err), (n, err)
        st, body = await srv.user.get(f"/v1/databases/{db_id}")
        assert body["stats"]["vectorCount"] == 3
        # a JSON list names items, an array names rows
        items = tmp_path / "rows.json"
        items.write_text('[{"id": "x", "values": [1, 2]}, {"id": "y", "values": [1]}]')
        r = await ajade(env, "import", "--db", db_id, "--file", str(items), "--json")
        res = json.loads(r.stdout)
        assert r.returncode == 1 and res["failed"] == 1 and res["imported"] == 1, r
        assert res["errors"][0].startswith("item [1]: dimension mismatch"), res
        arr = np.ones((4, 2), dtype=np.float32)
        arr[2, 1] = np.nan
        np.save(tmp_path / "rows.npy", arr)
        r = await ajade(env, "import", "--db", db_id, "--file", str(tmp_path / "rows.npy"),
                        "--id-prefix", "n")
        assert r.returncode == 1 and "row 2: not finite" in r.stderr, r
        np.save(tmp_path / "wide.npy", np.ones((2, 5), dtype=np.float32))
        one_line(await ajade(env, "import", "--db", db_id, "--file",
                             str(tmp_path / "wide.npy")), errors.FAILED, "5 values", "expects 2")
        one_line(await ajade(env, "import", "--db", db_id, "--file", str(tmp_path / "none.jsonl")),
                 errors.FAILED, "no such file")


async def test_import_and_export_check_before_streaming(tmp_path: Path) -> None:
    async with running_server(make_settings(tmp_path)) as srv:
        db_id = await srv.user.create_db(dim=2)
        rows = tmp_path / "rows.jsonl"
        rows.write_text('{"id": "a", "values": [1, 2]}\n')
        out = tmp_path / "out.jsonl"
        env = client_env(tmp_path, srv)
        no_key = {k: v for k, v in env.items() if k != "JADEVECTORDB_API_KEY"}
        bad_key = {**env, "JADEVECTORDB_API_KEY": "not-a-key"}
        for cmd, f in (("import", rows), ("export", out)):
            for e in (no_key, bad_key):
                one_line(await ajade(e, cmd, "--db", db_id, "--file", str(f)), errors.FAILED,
                         "refused the credentials", "JADEVECTORDB_API_KEY")
            one_line(await ajade(env, cmd, "--db", "no-such-db", "--file", str(f)),
                     errors.FAILED, "no database with the id or name 'no-such-db'")
        st, body = await srv.user.get(f"/v1/databases/{db_id}")
        assert body["stats"]["vectorCount"] == 0
        assert not out.exists() and list(tmp_path.glob(".out.jsonl*")) == []
        one_line(await ajade(env, "export", "--db", db_id, "--file",
                             str(tmp_path / "no-dir" / "out.jsonl")), errors.FAILED, "no-dir")
        # another user's database is not found by its name
        admin_db = await srv.admin.create_db(dim=2)
        st, _ = await srv.admin.put(f"/v1/databases/{admin_db}", {"name": "admins"})
        assert st == 200
        one_line(await ajade(env, "export", "--db", "admins", "--file", str(out)),
                 errors.FAILED, "no database")


async def test_an_ambiguous_name_asks_for_an_id(tmp_path: Path) -> None:
    async with running_server(make_settings(tmp_path)) as srv:
        a = await srv.user.create_db(dim=2)  # both named "t"
        b = await srv.admin.create_db(dim=2)
        admin_token = srv.admin.headers["Authorization"].split()[1]
        env = client_env(tmp_path, srv, JADEVECTORDB_API_KEY=admin_token)
        out = tmp_path / "out.jsonl"
        line = one_line(await ajade(env, "export", "--db", "t", "--file", str(out)),
                        errors.FAILED, "2 databases are named 't'", a, b)
        assert "give one of their ids" in line and not out.exists()
        r = await ajade(env, "export", "--db", b, "--file", str(out))
        assert r.returncode == 0, r


async def test_an_export_cut_short_leaves_no_file(tmp_path: Path) -> None:
    """A stream the server cuts (it logs why; the status line was sent): exit 1, no file.
    The server is a small fake at the network edge: ours cuts only on a failing store."""

    async def db(request: web.Request) -> web.Response:
        return web.json_response({"databaseId": "d", "name": "d", "vectorDimension": 2})

    async def export(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        await resp.prepare(request)
        await resp.write(b'{"id": "a", "values": [1, 2]}\n{"id": "b", "val')
        await asyncio.sleep(0.1)
        assert request.transport is not None
        request.transport.close()
        return resp

    app = web.Application()
    app.router.add_get("/v1/databases/d", db)
    app.router.add_get("/v1/databases/d/vectors/export", export)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        for name in ("out.jsonl", "out.npy", "out.json"):
            r = await ajade(base_env(tmp_path, JADEVECTORDB_URL=f"http://127.0.0.1:{port}"),
                            "export", "--db", "d", "--file", str(tmp_path / name))
            one_line(r, errors.FAILED, "cut short", "nothing was written")
        assert os.listdir(tmp_path) == ["no-config"] or os.listdir(tmp_path) == [], \
            os.listdir(tmp_path)
    finally:
        await runner.cleanup()


def test_internal_errors_are_one_line_and_debug_shows_them() -> None:
    from tools.cli import explain

    msg, code = explain(ZeroDivisionError("division by zero"))
    assert code == errors.FAILED and msg.startswith("internal error: ZeroDivisionError")
    assert explain(KeyboardInterrupt()) == ("interrupted", errors.INTERRUPTED)
    assert explain(BrokenPipeError())[1] == errors.BROKEN_PIPE
