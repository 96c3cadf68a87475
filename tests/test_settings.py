"""Configuration: precedence, refusal of unknown keys and bad values, production rules, the
shipped files, documentation of every setting, and ``jade config show``."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from jade import settings as S
from tests.conftest import ROOT


def write(d, name, obj):
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "w") as fh:
        json.dump(obj, fh)


def test_precedence_defaults_env_file_performance_environment(tmp_path):
    cfg = tmp_path / "cfg"
    env = {"JADEVECTORDB_CONFIG_DIR": str(cfg)}
    assert S.load(env).port == 8080
    write(cfg, "development.json",
          {"server": {"port": 9001}, "cache": {"permission_cache_size": 5}})
    assert S.load(env).port == 9001
    write(cfg, "performance.json", {"cache": {"permission_cache_size": 7}})
    s = S.load(env)
    assert (s.port, s.permission_cache_size) == (9001, 7)
    s = S.load({**env, "JADEVECTORDB_PORT": "9002", "JADEVECTORDB_PERMISSION_CACHE_SIZE": "9"})
    assert (s.port, s.permission_cache_size) == (9002, 9)
    # production reads production.json, not development.json
    write(cfg, "production.json", {"server": {"port": 9100}})
    s = S.load({**env, "JADEVECTORDB_ENV": "production", "JWT_SECRET": "x" * 32})
    assert s.port == 9100 and s.production


def test_environment_specific_builtin_defaults(tmp_path):
    env = {"JADEVECTORDB_CONFIG_DIR": str(tmp_path / "none")}
    dev = S.load(env)
    prod = S.load({**env, "JADEVECTORDB_ENV": "production", "JWT_SECRET": "y" * 40})
    assert dev.login_rate_per_minute > prod.login_rate_per_minute == 5
    assert (dev.user_admin_only, prod.user_admin_only) == (False, True)
    assert (dev.loopback_admin, prod.loopback_admin) == (True, False)
    assert (dev.log_format, prod.log_format) == ("text", "json")
    assert prod.log_dir == "/var/log/jadevectordb"
    assert dev.log_dir == os.path.join(dev.data_dir, "logs")


@pytest.mark.parametrize("obj, needle", [
    ({"server": {"prot": 1}}, "server.prot"),
    ({"nonsense": 1}, "nonsense"),
    ({"server": {"port": "eighty"}}, "server.port"),
    ({"server": {"port": 70000}}, "server.port"),
    ({"cache": {"enable_query_cache": "maybe"}}, "cache.enable_query_cache"),
    ({"logging": {"level": "loud"}}, "logging.level"),
])
def test_bad_files_refuse_naming_the_key(tmp_path, obj, needle):
    cfg = tmp_path / "cfg"
    write(cfg, "development.json", obj)
    with pytest.raises(S.ConfigError) as exc:
        S.load({"JADEVECTORDB_CONFIG_DIR": str(cfg)})
    assert needle in str(exc.value)


def test_bad_environment_refuses(tmp_path):
    env = {"JADEVECTORDB_CONFIG_DIR": str(tmp_path)}
    with pytest.raises(S.ConfigError, match="JADEVECTORDB_PORTT"):
        S.load({**env, "JADEVECTORDB_PORTT": "1"})
    with pytest.raises(S.ConfigError, match="JADEVECTORDB_PORT"):
        S.load({**env, "JADEVECTORDB_PORT": "-3"})
    with pytest.raises(S.ConfigError, match="JADEVECTORDB_ENV"):
        S.load({**env, "JADEVECTORDB_ENV": "staging"})
    (tmp_path / "development.json").write_text("{not json")
    with pytest.raises(S.ConfigError, match="not valid JSON"):
        S.load(env)


def test_production_needs_a_long_jwt_secret(tmp_path):
    env = {"JADEVECTORDB_CONFIG_DIR": str(tmp_path), "JADEVECTORDB_ENV": "production"}
    with pytest.raises(S.ConfigError, match="JWT_SECRET"):
        S.load(env)
    with pytest.raises(S.ConfigError, match="JWT_SECRET"):
        S.load({**env, "JWT_SECRET": "short"})
    assert S.load({**env, "JWT_SECRET": "z" * 32}).production


@pytest.mark.parametrize("env_name", ["development", "production"])
def test_shipped_config_files_load(env_name):
    env = {"JADEVECTORDB_CONFIG_DIR": os.path.join(ROOT, "config"),
           "JADEVECTORDB_ENV": env_name, "JWT_SECRET": "s" * 32}
    s = S.load(env)
    assert s.permission_cache_size == 100000 and s.permission_cache_ttl_seconds == 300


def test_settings_object_is_frozen():
    s = S.load({"JADEVECTORDB_CONFIG_DIR": "/nonexistent"})
    with pytest.raises(AttributeError):
        s.port = 1  # type: ignore[misc]


def test_config_docs_are_current():
    from tools.config_cmd import docs_markdown

    with open(os.path.join(ROOT, "docs", "CONFIG.md")) as fh:
        assert fh.read() == docs_markdown(), "run: jade config docs > docs/CONFIG.md"


def test_every_setting_is_documented():
    with open(os.path.join(ROOT, "docs", "CONFIG.md")) as fh:
        doc = fh.read()
    for spec in S.FIELDS:
        assert f"`{spec.path}`" in doc, spec.path
        assert f"`{spec.env}`" in doc, spec.env
    fields = set(S.settings_fields()) - {"env", "config_dir"}
    assert fields == {spec.attr for spec in S.FIELDS}


def test_config_show_redacts_secrets(tmp_path):
    env = {**os.environ, "JADEVECTORDB_CONFIG_DIR": str(tmp_path), "JWT_SECRET": "t" * 40,
           "JADEVECTORDB_ADMIN_PASSWORD": "hunter2hunter2", "PYTHONPATH": ROOT}
    out = subprocess.run([sys.executable, "-m", "tools", "config", "show"], env=env,
                         capture_output=True, text=True, check=True, cwd=str(tmp_path)).stdout
    shown = json.loads(out)
    assert shown["security.jwt_secret"] == "***"
    assert "t" * 40 not in out and "hunter2" not in out
    assert shown["server.port"] == 8080


def test_config_show_refuses_bad_config(tmp_path):
    env = {**os.environ, "JADEVECTORDB_CONFIG_DIR": str(tmp_path), "JADEVECTORDB_PORT": "x",
           "PYTHONPATH": ROOT}
    r = subprocess.run([sys.executable, "-m", "tools", "config", "show"], env=env,
                       capture_output=True, text=True, cwd=str(tmp_path))
    assert r.returncode == 2 and "JADEVECTORDB_PORT" in r.stderr
