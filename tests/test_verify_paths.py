"""``jade verify`` checks the auth store where it is configured, and never says OK for an auth
store it could not check (issue 14, item 6: it ignored JADEVECTORDB_AUTH_DB_PATH and reported OK
without checking auth)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from jade.core.decide import Command
from jade.engine import Engine
from tests.conftest import ROOT, make_settings


def _engine_with_users(tmp_path: Path, env: dict[str, str]) -> None:
    s = make_settings(tmp_path, auth_db_path=env.get("JADEVECTORDB_AUTH_DB_PATH", ""))
    e = Engine(s)
    e.open()
    try:
        for i in range(3):
            e.submit_sync(Command("auth.user.create", {
                "user_id": f"u{i}", "username": f"user{i}", "password_hash": "x",
                "roles": ["user"]}))
    finally:
        e.close()


def _verify(tmp_path: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    full = {**os.environ, "JADEVECTORDB_DATA_DIR": str(tmp_path / "data"),
            "JADEVECTORDB_CONFIG_DIR": str(tmp_path / "no-config"), "PYTHONPATH": ROOT, **env}
    return subprocess.run([sys.executable, "-m", "tools", "verify", *args], env=full, cwd=ROOT,
                          capture_output=True, text=True, timeout=120)


def test_verify_checks_a_configured_auth_path(tmp_path: Path) -> None:
    elsewhere = tmp_path / "secrets" / "auth.db"
    elsewhere.parent.mkdir()
    env = {"JADEVECTORDB_AUTH_DB_PATH": str(elsewhere)}
    _engine_with_users(tmp_path, env)
    assert elsewhere.exists() and not (tmp_path / "data" / "jadevectordb_auth.db").exists()
    for args in ((), (str(tmp_path / "data"),)):  # the configured directory, named or not
        r = _verify(tmp_path, env, *args)
        assert r.returncode == 0, r.stdout + r.stderr
        assert "auth store equals the replay" in r.stdout, r.stdout


def test_verify_fails_when_it_cannot_check_auth(tmp_path: Path) -> None:
    _engine_with_users(tmp_path, {})
    os.remove(tmp_path / "data" / "jadevectordb_auth.db")
    r = _verify(tmp_path, {}, str(tmp_path / "data"))
    assert r.returncode == 1, r.stdout
    assert "jadevectordb_auth.db is missing, and the log holds 3 auth records" in r.stdout
    assert r.stdout.strip().splitlines()[-1].startswith("DAMAGED")


def test_verify_auth_db_option(tmp_path: Path) -> None:
    elsewhere = tmp_path / "auth-copy.db"
    env = {"JADEVECTORDB_AUTH_DB_PATH": str(elsewhere)}
    _engine_with_users(tmp_path, env)
    other = tmp_path / "other"
    (tmp_path / "data").rename(other)  # not the configured directory any more
    r = _verify(tmp_path, {}, str(other), "--auth-db", str(elsewhere))
    assert r.returncode == 0 and "auth store equals the replay" in r.stdout, r.stdout
