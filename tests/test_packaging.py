"""Packaging: the distribution's name, version, license and changelog; what `make serve` and
`make test` install; and (slow) a wheel that builds and installs into a fresh venv, where
`jade` and the SDK's embedded mode work."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from importlib import metadata
from typing import Any

import pytest

import jade
from tests.conftest import ROOT


def pyproject() -> dict[str, Any]:
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as fh:
        return tomllib.load(fh)


def test_the_distribution_is_not_the_original_clients() -> None:
    project = pyproject()["project"]
    # "jadevectordb" is the original project's client: one name made each uninstall the other
    assert project["name"] == "jadevectordb-server"
    assert metadata.version("jadevectordb-server") == jade.__version__
    scripts = {e.name: e.value for e in metadata.entry_points(group="console_scripts")
               if e.dist is not None and e.dist.name == "jadevectordb-server"}
    assert scripts == {"jade": "tools.cli:main"}


def test_the_version_is_written_once() -> None:
    project = pyproject()
    assert "version" not in project["project"] and "version" in project["project"]["dynamic"]
    assert project["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "jade.__version__"}
    assert re.fullmatch(r"\d+\.\d+\.\d+", jade.__version__)
    with open(os.path.join(ROOT, "CHANGELOG.md"), encoding="utf-8") as fh:
        changelog = fh.read()
    assert f"## [{jade.__version__}]" in changelog, "CHANGELOG.md has no entry for the version"


def test_license_and_classifiers() -> None:
    project = pyproject()["project"]
    assert project["license"] == "Apache-2.0"
    for name in project["license-files"]:
        with open(os.path.join(ROOT, name), encoding="utf-8") as fh:
            assert "Apache License" in fh.read(200)
    classifiers = project["classifiers"]
    assert "Typing :: Typed" in classifiers
    assert any(c.startswith("Programming Language :: Python :: 3.11") for c in classifiers)
    assert os.path.exists(os.path.join(ROOT, "jadevectordb_server", "py.typed"))


def _make_dry_run(target: str) -> str:
    """What `make TARGET` would run with pyproject.toml changed (-W) and nothing executed."""
    done = subprocess.run(["make", "-n", "-W", "pyproject.toml", target], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_make_serve_installs_what_serving_needs_and_make_test_the_rest() -> None:
    serve = _make_dry_run("serve")
    installs = [line for line in serve.splitlines() if "pip install" in line and " -e " in line]
    assert installs and all("[test]" not in line for line in installs), serve
    assert "jade serve" in serve
    test = _make_dry_run("test")
    assert any("-e '.[test]'" in line for line in test.splitlines()), test


@pytest.mark.slow
def test_the_wheel_installs_into_a_fresh_venv(tmp_path: Any) -> None:
    dist, venv = tmp_path / "dist", tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "pip", "wheel", ".", "--no-deps", "-q", "-w",
                    str(dist)], cwd=ROOT, check=True, timeout=300)
    (wheel,) = os.listdir(dist)
    assert wheel == f"jadevectordb_server-{jade.__version__}-py3-none-any.whl"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    py, bin_ = str(venv / "bin" / "python"), venv / "bin"
    subprocess.run([py, "-m", "pip", "install", "-q", str(dist / wheel)], check=True,
                   timeout=1200)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    work = tmp_path / "work"  # not the repository: only the installed packages
    work.mkdir()

    def run(*argv: str) -> str:
        done = subprocess.run(argv, cwd=work, env=env, capture_output=True, text=True,
                              timeout=300)
        assert done.returncode == 0, done.stderr
        return done.stdout

    assert "serve" in run(str(bin_ / "jade"), "--help")
    assert jade.__version__ in run(str(bin_ / "jade"), "--version")
    script = ("import jadevectordb_server as s\nassert 'site-packages' in s.__file__\n"
              "with s.Client(path='data') as c:\n    db = c.create_database('d', 2)\n"
              "    c.upsert(db, 'a', [1, 0], {'text': 'hello'})\n"
              "    print(c.search(db, [1, 0], top_k=1)[0].id)\n")
    assert run(py, "-c", script) == "a\n"
    assert "No broken requirements" in run(py, "-m", "pip", "check")
