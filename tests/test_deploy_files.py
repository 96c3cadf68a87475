"""The deployment files (compose/, k8s/) cross-checked against the code they deploy.

No container engine runs here, so the files are parsed and checked against the real settings
table, route table and metrics: every environment variable is a real setting and the resulting
environments load; probes and health checks hit real public routes (the health-check one-liners
are run against a real server); ports, image names and the runbook's object names agree; every
metric the Grafana dashboard queries is exported by a real server's ``/metrics`` with the type the
query assumes. When a compose client is installed, ``docker compose config`` validates the files.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from jade import settings as settings_mod
from jade.http.routes import ROUTES
from jade.settings import FIELDS, ConfigError
from tests.conftest import Server
from tools import serve as serve_cmd

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COMPOSE = os.path.join(ROOT, "compose")
K8S = os.path.join(ROOT, "k8s")
DOCKERFILE = os.path.join(COMPOSE, "Dockerfile")
SINGLE = os.path.join(COMPOSE, "docker-compose.yml")
REPLICAS = os.path.join(COMPOSE, "docker-compose.replicas.yml")
DASHBOARD = os.path.join(COMPOSE, "grafana", "dashboards", "jadevectordb.json")

YAML_FILES = [
    SINGLE,
    REPLICAS,
    os.path.join(COMPOSE, "prometheus.yml"),
    os.path.join(COMPOSE, "grafana", "provisioning", "datasources", "prometheus.yml"),
    os.path.join(COMPOSE, "grafana", "provisioning", "dashboards", "dashboards.yml"),
    *(
        os.path.join(K8S, n)
        for n in (
            "deployment.yaml",
            "pvc.yaml",
            "secret.yaml",
            "service.yaml",
            "service-lb.yaml",
            "replica-deployment.yaml",
            "primary-statefulset.yaml",
        )
    ),
]

PORT = 8080
SETTING_ENV = {s.env for s in FIELDS} | {"JADEVECTORDB_ENV", "JADEVECTORDB_CONFIG_DIR"}
PUBLIC_GET = {r.path for r in ROUTES if r.access == "public" and r.method == "GET"}
TEST_SECRET = "s" * 40  # long enough for production
COMPOSE_VARS = {
    "JWT_SECRET": TEST_SECRET,
    "JADEVECTORDB_REPLICATION_KEY": "jvdb_test_replication_key",
    "GRAFANA_ADMIN_PASSWORD": "grafana-test",
}


# -- loading and parsing ------------------------------------------------------------------------
@functools.cache
def load_docs(path: str) -> list[Any]:
    with open(path, encoding="utf-8") as fh:
        return [d for d in yaml.safe_load_all(fh) if d is not None]


def load_one(path: str) -> Any:
    docs = load_docs(path)
    assert len(docs) == 1, f"{path}: expected one YAML document, got {len(docs)}"
    return docs[0]


def pyproject() -> dict[str, Any]:
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as fh:
        return tomllib.load(fh)


def k8s_objects() -> list[tuple[str, dict[str, Any]]]:
    out = []
    for name in sorted(os.listdir(K8S)):
        if name.endswith((".yaml", ".yml")):
            out += [(name, d) for d in load_docs(os.path.join(K8S, name))]
    return out


def k8s_find(kind: str, name: str) -> tuple[str, dict[str, Any]]:
    hits = [(f, o) for f, o in k8s_objects() if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(hits) == 1, f"expected exactly one {kind} {name!r} in k8s/, found {len(hits)}"
    return hits[0]


def workloads() -> list[tuple[str, dict[str, Any]]]:
    return [(f, o) for f, o in k8s_objects() if o["kind"] in ("Deployment", "StatefulSet")]


def jade_container(obj: dict[str, Any]) -> dict[str, Any]:
    (c,) = [c for c in obj["spec"]["template"]["spec"]["containers"] if c["name"] == "jadevectordb"]
    return c


def parse_dockerfile(path: str = DOCKERFILE) -> list[list[tuple[str, str]]]:
    """Stages, each a list of (INSTRUCTION, arguments) with continuation lines joined."""
    lines: list[str] = []
    buf = ""
    with open(path, encoding="utf-8") as fh:
        for raw in fh:
            line = raw.rstrip("\n")
            if not buf and (not line.strip() or line.lstrip().startswith("#")):
                continue
            if line.lstrip().startswith("#"):  # comment inside a continued instruction
                continue
            if line.endswith("\\"):
                buf += line[:-1] + " "
                continue
            lines.append(buf + line)
            buf = ""
    assert not buf, "Dockerfile ends inside a continued line"
    stages: list[list[tuple[str, str]]] = []
    for line in lines:
        instr, _, args = line.strip().partition(" ")
        instr = instr.upper()
        if instr == "FROM":
            stages.append([])
        assert stages, "Dockerfile must start with FROM (after comments)"
        stages[-1].append((instr, args.strip()))
    return stages


def final_stage() -> list[tuple[str, str]]:
    return parse_dockerfile()[-1]


def docker_env(stage: list[tuple[str, str]]) -> dict[str, str]:
    env: dict[str, str] = {}
    for instr, args in stage:
        if instr == "ENV":
            for tok in shlex.split(args):
                k, sep, v = tok.partition("=")
                assert sep, f"use ENV KEY=value (got {tok!r})"
                env[k] = v
    return env


def exec_form(args: str) -> list[str]:
    value = json.loads(args)
    assert isinstance(value, list) and all(isinstance(x, str) for x in value), args
    return value


def healthcheck_cmd() -> list[str]:
    hc = [a for i, a in final_stage() if i == "HEALTHCHECK"]
    assert len(hc) == 1, "the runtime stage needs exactly one HEALTHCHECK"
    _, _, cmd = hc[0].partition("CMD")
    return exec_form(cmd.strip())


def compose_services(path: str) -> dict[str, dict[str, Any]]:
    doc = load_one(path)
    return dict(doc["services"])


def is_jade_service(svc: dict[str, Any]) -> bool:
    build = svc.get("build")
    return isinstance(build, dict) and build.get("dockerfile") == "compose/Dockerfile"


def jade_services() -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path in (SINGLE, REPLICAS):
        for name, svc in compose_services(path).items():
            if is_jade_service(svc):
                yield os.path.basename(path), name, svc


def compose_env(svc: dict[str, Any]) -> dict[str, str]:
    env = svc.get("environment") or {}
    if isinstance(env, list):
        env = dict(e.split("=", 1) if "=" in e else (e, "") for e in env)
    return {str(k): "" if v is None else str(v) for k, v in env.items()}


_VAR = re.compile(r"\$\{(\w+)(?::?([-?])([^}]*))?\}|\$(\w+)")


def interpolate(value: str, variables: dict[str, str]) -> str:
    """Compose's ${VAR}, ${VAR:-default}, ${VAR:?message} and $VAR."""

    def sub(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(4)
        op, arg = m.group(2), m.group(3)
        val = variables.get(name, "")
        if val:
            return val
        if op == "?":
            raise KeyError(f"{name}: {arg}")
        return arg if op == "-" else ""

    return _VAR.sub(sub, value)


def config_env() -> str:
    """Where the image's JADEVECTORDB_CONFIG_DIR content comes from in this checkout."""
    env = docker_env(final_stage())
    target = env["JADEVECTORDB_CONFIG_DIR"].rstrip("/")
    copies = [a.split() for i, a in final_stage() if i == "COPY"]
    src = [c[0] for c in copies if c[-1].rstrip("/") == target and not c[0].startswith("--")]
    assert src, f"the runtime stage must COPY the config directory to {target}"
    return os.path.join(ROOT, src[0].rstrip("/"))


def serve_overrides(command: list[str]) -> dict[str, Any]:
    """Parse a container command with the real ``jade serve`` argument parser."""
    assert command[:2] == ["jade", "serve"], command
    parser = argparse.ArgumentParser(prog="jade")
    sub = parser.add_subparsers(dest="command", required=True)
    serve_cmd.register(sub)
    return serve_cmd._overrides(parser.parse_args(command[1:]))


def effective_settings(env: dict[str, str], command: list[str]) -> settings_mod.Settings:
    full = {**docker_env(final_stage()), **env, "JADEVECTORDB_CONFIG_DIR": config_env()}
    return settings_mod.load(full, **serve_overrides(command))


def image_cmd() -> list[str]:
    cmds = [a for i, a in final_stage() if i == "CMD"]
    assert len(cmds) == 1
    return exec_form(cmds[0])


def k8s_env(container: dict[str, Any], secrets: dict[str, str]) -> dict[str, str]:
    out = {}
    for e in container.get("env", []):
        if "value" in e:
            out[e["name"]] = str(e["value"])
            continue
        ref = e["valueFrom"]
        if "secretKeyRef" in ref:
            key = ref["secretKeyRef"]["key"]
            if key in secrets:
                out[e["name"]] = secrets[key]
            else:
                assert ref["secretKeyRef"].get("optional"), f"{e['name']}: {key} not in the secret"
        elif "fieldRef" in ref:
            out[e["name"]] = "jadevectordb-replica-abc12"
        else:
            raise AssertionError(f"unexpected env source {ref}")
    return out


def secret_doc() -> dict[str, Any]:
    return k8s_find("Secret", "jadevectordb-secrets")[1]


def resolve_port(container: dict[str, Any], port: int | str) -> int:
    if isinstance(port, int):
        return port
    (p,) = [p["containerPort"] for p in container["ports"] if p.get("name") == port]
    return int(p)


def url_paths(text: str) -> set[str]:
    """Paths in a health-check command: in URLs, or quoted strings that start with '/'."""
    paths = {m.group(1) for m in re.finditer(r"https?://[\w.\-]+(?::\d+)?(/[\w/.\-]*)", text)}
    paths |= {m.group(1) for m in re.finditer(r"""['"](/[\w/.\-]*)['"]""", text)}
    return paths


# -- files exist and parse ---------------------------------------------------------------------
def test_every_deployment_file_exists_and_parses() -> None:
    for path in YAML_FILES:
        assert os.path.isfile(path), path
        docs = load_docs(path)
        assert docs and all(isinstance(d, dict) for d in docs), path
    with open(DASHBOARD, encoding="utf-8") as fh:
        dash = json.load(fh)
    assert dash["uid"] and dash["panels"]
    assert os.path.isfile(os.path.join(K8S, "README.md"))
    for _, obj in k8s_objects():
        assert {"apiVersion", "kind", "metadata"} <= obj.keys(), obj
        assert obj["metadata"]["labels"]["app"] == "jadevectordb", obj["metadata"]


# -- Dockerfile ------------------------------------------------------------------------------
def test_dockerfile_builds_slim_and_runs_as_non_root() -> None:
    stages = parse_dockerfile()
    assert len(stages) >= 2, "a builder stage keeps the compiler out of the runtime image"
    for stage in stages:
        assert stage[0][1].split()[0] == "python:3.11-slim", stage[0]
    builder_runs = " ".join(a for s in stages[:-1] for i, a in s if i == "RUN")
    assert "build-essential" in builder_runs
    final = stages[-1]
    final_runs = " ".join(a for i, a in final if i == "RUN")
    assert "build-essential" not in final_runs
    assert any(i == "COPY" and "--from=" in a for i, a in final), "runtime copies the built venv"

    users = [a for i, a in final if i == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0"), users
    assert users[-1] == "jadevectordb"
    assert re.search(r"useradd\b.*\bjadevectordb\b", final_runs)
    assert re.search(r"useradd\b[^&]*--uid \$\{JADE_UID\}", final_runs)
    uid = re.search(r"ARG JADE_UID=(\d+)", "\n".join(f"{i} {a}" for i, a in final))
    assert uid and int(uid.group(1)) != 0
    assert re.search(r"chown\b[^&]*jadevectordb[^&]*/data\b[^&]*/var/log/jadevectordb", final_runs)

    (volume,) = [a for i, a in final if i == "VOLUME"]
    assert "/data" in (json.loads(volume) if volume.startswith("[") else volume.split())
    assert [a for i, a in final if i == "EXPOSE"] == [str(PORT)]
    assert image_cmd() == ["jade", "serve"]
    scripts = pyproject()["project"]["scripts"]
    assert scripts["jade"] == "tools.cli:main", "CMD runs the jade console script"

    env = docker_env(final)
    assert env["JADEVECTORDB_ENV"] == "production"
    assert env["JADEVECTORDB_HOST"] == "0.0.0.0"
    assert env["JADEVECTORDB_PORT"] == str(PORT)
    assert env["JADEVECTORDB_DATA_DIR"] == "/data"
    assert env["JADEVECTORDB_DB_PATH"] == "/data/jadevectordb.db"
    assert env["JADEVECTORDB_AUTH_DB_PATH"] == "/data/jadevectordb_auth.db"
    assert env["JADEVECTORDB_CONFIG_DIR"] == "/app/config"


def test_dockerfile_copies_everything_the_package_build_needs() -> None:
    stages = parse_dockerfile()
    copied = set()
    for stage in stages:
        for instr, args in stage:
            if instr == "COPY" and "--from=" not in args:
                copied |= {s.rstrip("/") for s in args.split()[:-1]}
    project = pyproject()
    includes = project["tool"]["setuptools"]["packages"]["find"]["include"]
    packages = sorted(
        d
        for d in os.listdir(ROOT)
        if os.path.isfile(os.path.join(ROOT, d, "__init__.py"))
        and any(re.fullmatch(p.replace("*", ".*"), d) for p in includes)
    )
    assert packages, includes
    for pkg in packages:
        assert pkg in copied, f"package {pkg}/ is installed by pyproject but not COPYed"
    for name in ("pyproject.toml", "setup.cfg", project["project"]["readme"], "config",
                 *project["project"].get("license-files", [])):
        assert name in copied, f"{name} must be COPYed"
        assert os.path.exists(os.path.join(ROOT, name)), name


def test_image_environment_loads_with_a_secret_only() -> None:
    s = effective_settings({"JWT_SECRET": TEST_SECRET}, image_cmd())
    assert s.production and s.host == "0.0.0.0" and s.port == PORT
    assert (s.data_dir, s.db_path, s.auth_db_path) == (
        "/data",
        "/data/jadevectordb.db",
        "/data/jadevectordb_auth.db",
    )
    assert s.log_dir == "/var/log/jadevectordb"
    assert not s.primary_url
    with pytest.raises(ConfigError, match="JWT_SECRET"):
        effective_settings({}, image_cmd())


# -- names, images and ports agree ------------------------------------------------------------
def test_environment_variable_names_are_real_settings() -> None:
    names: dict[str, str] = {}
    for k in docker_env(final_stage()):
        names[k] = "Dockerfile"
    for path in (SINGLE, REPLICAS):
        for svc_name, svc in compose_services(path).items():
            for k, v in compose_env(svc).items():
                names[k] = f"{os.path.basename(path)}:{svc_name}"
                for m in _VAR.finditer(v):
                    names[m.group(1) or m.group(4)] = f"{os.path.basename(path)}:{svc_name} value"
    for f, obj in workloads():
        for c in obj["spec"]["template"]["spec"]["containers"]:
            for e in c.get("env", []):
                names[e["name"]] = f"k8s/{f}"
    for key in secret_doc().get("stringData", {}):
        names[key] = "k8s/secret.yaml"
    checked = {n: w for n, w in names.items() if n.startswith(("JADEVECTORDB_", "JWT_"))}
    assert len(checked) >= 10, checked
    allowed = SETTING_ENV | {"JWT_SECRET", "JWT_SECRET_PREVIOUS"}
    unknown = {n: w for n, w in checked.items() if n not in allowed}
    assert not unknown, f"not settings (jade/settings.py FIELDS): {unknown}"


def test_image_names_agree() -> None:
    images = {f"compose/{f}:{n}": svc["image"] for f, n, svc in jade_services()}
    for f, obj in workloads():
        images[f"k8s/{f}:{obj['metadata']['name']}"] = jade_container(obj)["image"]
    assert len(images) >= 7, images
    assert set(images.values()) == {"jadevectordb:latest"}, images  # the runbook's image


def test_ports_agree() -> None:
    assert settings_mod.Settings().port == PORT
    for f, name, svc in jade_services():
        for p in svc["ports"]:
            assert str(p).rsplit(":", 1)[-1] == str(PORT), (f, name, p)
        assert svc["build"]["context"] == ".."
        assert os.path.samefile(os.path.join(COMPOSE, "..", svc["build"]["dockerfile"]), DOCKERFILE)
    by_name = {}
    for f, obj in workloads():
        c = jade_container(obj)
        assert [p["containerPort"] for p in c["ports"]] == [PORT], f
        by_name[f] = c
    for _, obj in k8s_objects():
        if obj["kind"] != "Service":
            continue
        for sp in obj["spec"]["ports"]:
            target = sp.get("targetPort", sp["port"])
            for c in by_name.values():
                assert resolve_port(c, target) == PORT, (obj["metadata"]["name"], sp)
            assert sp["port"] == PORT


# -- health checks and probes -----------------------------------------------------------------
def test_probe_and_healthcheck_paths_are_public_routes() -> None:
    assert {"/health", "/health/db", "/metrics"} <= PUBLIC_GET
    found: list[tuple[str, str]] = []
    for p in url_paths(" ".join(healthcheck_cmd())):
        found.append(("Dockerfile", p))
    for f, name, svc in jade_services():
        assert svc["restart"] == "unless-stopped", (f, name)
        test = svc["healthcheck"]["test"]
        found += [(f"{f}:{name}", p) for p in url_paths(" ".join(test))]
        # compose gates dependants on it (service_healthy): ready, not just alive
        assert "/health/db" in url_paths(" ".join(test)), (f, name)
    for f, obj in workloads():
        c = jade_container(obj)
        assert c["livenessProbe"]["httpGet"]["path"] == "/health", f
        # a cluster member is ready while it serves the role the etcd lease gave it
        ready = "/health/cluster" if obj["metadata"]["labels"]["role"] == "member" \
            else "/health/db"
        assert c["readinessProbe"]["httpGet"]["path"] == ready, f
        for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
            if probe in c:
                get = c[probe]["httpGet"]
                found.append((f"k8s/{f}:{probe}", get["path"]))
                assert resolve_port(c, get["port"]) == PORT
    prom = load_one(os.path.join(COMPOSE, "prometheus.yml"))
    for job in prom["scrape_configs"]:
        found.append(("prometheus.yml", job.get("metrics_path", "/metrics")))
    assert len(found) >= 12, found
    bad = [(w, p) for w, p in found if p not in PUBLIC_GET]
    assert not bad, f"not public GET routes in jade.http.routes.ROUTES: {bad}"


async def _run(argv: list[str], env: dict[str, str]) -> int:
    proc = await asyncio.create_subprocess_exec(
        *argv, env=env, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL
    )
    return await asyncio.wait_for(proc.wait(), 30)


async def test_healthcheck_commands_pass_against_a_real_server(server: Server) -> None:
    """The one-liners the image and compose run, pointed at a real server (and at nothing)."""
    port = server.base.rsplit(":", 1)[1]
    dead = "1"  # nothing listens on port 1
    cmd = healthcheck_cmd()
    assert cmd[0] == "python"
    argv = [sys.executable, *cmd[1:]]
    env = {"PATH": os.environ.get("PATH", ""), "JADEVECTORDB_PORT": port}
    assert await _run(argv, env) == 0
    assert await _run(argv, {**env, "JADEVECTORDB_PORT": dead}) != 0
    tests = {tuple(svc["healthcheck"]["test"]) for _, _, svc in jade_services()}
    for test in tests:
        assert test[:2] == ("CMD", "python"), test
        fixed = [a.replace(f":{PORT}/", f":{port}/") for a in test[2:]]
        assert fixed != list(test[2:]), f"the compose health check should name port {PORT}"
        assert await _run([sys.executable, *fixed], env) == 0
        broken = [a.replace(f":{PORT}/", f":{dead}/") for a in test[2:]]
        assert await _run([sys.executable, *broken], env) != 0


# -- compose --------------------------------------------------------------------------------
def test_compose_environments_load_as_production_settings() -> None:
    seen = []
    for f, name, svc in jade_services():
        env = {k: interpolate(v, COMPOSE_VARS) for k, v in compose_env(svc).items()}
        assert "${JWT_SECRET:?" in compose_env(svc)["JWT_SECRET"], (f, name)
        command = svc.get("command", image_cmd())
        s = effective_settings(env, command)
        assert s.production and s.port == PORT and s.host == "0.0.0.0", (f, name)
        assert s.jwt_secret == TEST_SECRET
        mounts = {v.split(":")[1] for v in svc["volumes"]}
        assert s.data_dir in mounts and s.log_dir in mounts, (f, name, mounts)
        seen.append((f, name, s.primary_url))
        with pytest.raises(KeyError, match="JWT_SECRET"):
            {k: interpolate(v, {}) for k, v in compose_env(svc).items()}
    assert ("docker-compose.yml", "jadevectordb", "") in seen
    assert ("docker-compose.replicas.yml", "primary", "") in seen
    for r in ("replica1", "replica2"):
        assert ("docker-compose.replicas.yml", r, f"http://primary:{PORT}") in seen


def test_compose_single_node_matches_the_runbook() -> None:
    (svc,) = compose_services(SINGLE).values()
    assert svc["container_name"] == "jadevectordb"  # docker logs/restart/update jadevectordb
    assert f"{PORT}:{PORT}" in [str(p) for p in svc["ports"]]


def test_compose_replicas_topology_prometheus_and_grafana() -> None:
    services = compose_services(REPLICAS)
    assert {"primary", "replica1", "replica2", "prometheus", "grafana"} <= services.keys()
    jade = sorted(n for n, s in services.items() if is_jade_service(s))
    assert jade == ["primary", "replica1", "replica2"]
    host_ports = [str(p).split(":")[0] for n in jade for p in services[n]["ports"]]
    assert len(set(host_ports)) == len(host_ports), host_ports
    for r in ("replica1", "replica2"):
        env = compose_env(services[r])
        assert env["JADEVECTORDB_REPLICATION_KEY"].startswith("${JADEVECTORDB_REPLICATION_KEY")
        assert env["JWT_SECRET"] == compose_env(services["primary"])["JWT_SECRET"]
        assert "primary" in services[r]["depends_on"]
    data_volumes = [
        v.split(":")[0] for n in jade for v in services[n]["volumes"] if v.endswith(":/data")
    ]
    assert len(set(data_volumes)) == 3, "each node has its own data volume"

    prom = load_one(os.path.join(COMPOSE, "prometheus.yml"))
    targets = {
        t for job in prom["scrape_configs"] for sc in job["static_configs"] for t in sc["targets"]
    }
    assert targets == {f"{n}:{PORT}" for n in jade}
    prom_svc = services["prometheus"]
    mounts = dict(v.split(":")[:2] for v in prom_svc["volumes"])
    assert mounts["./prometheus.yml"] == "/etc/prometheus/prometheus.yml"
    assert "--config.file=/etc/prometheus/prometheus.yml" in prom_svc["command"]

    graf = services["grafana"]
    gm = dict(v.split(":")[:2] for v in graf["volumes"])
    for src in gm:
        if src.startswith("./"):
            assert os.path.isdir(os.path.join(COMPOSE, src)), src
    assert gm["./grafana/provisioning"] == "/etc/grafana/provisioning"
    ds = load_one(os.path.join(COMPOSE, "grafana/provisioning/datasources/prometheus.yml"))
    (source,) = ds["datasources"]
    assert source["type"] == "prometheus"
    url = re.fullmatch(r"http://([\w-]+):(\d+)", source["url"])
    assert url, source["url"]
    host, port = url.groups()
    assert host == "prometheus" and f"{port}:{port}" in prom_svc["ports"]
    dp = load_one(os.path.join(COMPOSE, "grafana/provisioning/dashboards/dashboards.yml"))
    (provider,) = dp["providers"]
    assert provider["options"]["path"] == gm["./grafana/dashboards"]
    assert graf["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"] == (
        gm["./grafana/dashboards"] + "/" + os.path.basename(DASHBOARD)
    )
    assert "${GRAFANA_ADMIN_PASSWORD:?" in graf["environment"]["GF_SECURITY_ADMIN_PASSWORD"]


def _compose_client() -> list[str] | None:
    docker = shutil.which("docker")
    if docker:
        r = subprocess.run([docker, "compose", "version"], capture_output=True, timeout=30)
        if r.returncode == 0:
            return [docker, "compose"]
    legacy = shutil.which("docker-compose")
    return [legacy] if legacy else None


@pytest.mark.parametrize("path", [SINGLE, REPLICAS], ids=os.path.basename)
def test_docker_compose_config_validates(path: str, tmp_path: Any) -> None:
    client = _compose_client()
    if client is None:
        pytest.skip("no docker compose plugin nor docker-compose on this machine")
    base = {"PATH": os.environ.get("PATH", ""), "HOME": str(tmp_path)}
    argv = [*client, "-f", path, "config", "-q"]
    r = subprocess.run(
        argv, env={**base, **COMPOSE_VARS}, capture_output=True, text=True, timeout=120, cwd=COMPOSE
    )
    if r.returncode != 0 and re.search(r"daemon|engine|docker\.sock", r.stderr, re.I):
        pytest.skip(f"the compose client needs an engine here: {r.stderr.strip()[:200]}")
    assert r.returncode == 0, r.stderr
    r = subprocess.run(argv, env=base, capture_output=True, text=True, timeout=120, cwd=COMPOSE)
    assert r.returncode != 0 and "JWT_SECRET" in r.stderr + r.stdout


# -- Kubernetes ------------------------------------------------------------------------------
def test_k8s_manifests_validate_against_the_kubernetes_schemas() -> None:
    """Strict schema validation (unknown fields rejected) when kubernetes-validate is installed;
    it ships the schemas, so no cluster is needed."""
    kv = pytest.importorskip("kubernetes_validate")
    objs = k8s_objects()
    assert len(objs) >= 8
    for version in ("1.25.0", kv.latest_version()):
        for f, obj in objs:
            try:
                kv.validate(obj, version, strict=True)
            except kv.ValidationError as exc:
                where = f"k8s/{f} {obj['kind']} (Kubernetes {version})"
                raise AssertionError(f"{where}: {exc}") from None


def test_k8s_runbook_objects() -> None:
    for name in ("deployment.yaml", "service.yaml", "service-lb.yaml"):
        assert os.path.isfile(os.path.join(K8S, name)), name
    f, primary = k8s_find("Deployment", "jadevectordb")
    assert f == "deployment.yaml"
    assert primary["spec"]["replicas"] == 1
    assert primary["spec"]["strategy"]["type"] == "Recreate"
    # the data's claim (the other one, /offsite, holds the second copy of the backups)
    claim = _volume_for(primary, "/data")["persistentVolumeClaim"]["claimName"]
    assert k8s_find("PersistentVolumeClaim", claim)[0] == "pvc.yaml"

    f, replica = k8s_find("Deployment", "jadevectordb-replica")
    assert f == "replica-deployment.yaml"
    data = _volume_for(replica, "/data")
    assert "emptyDir" in data or "ephemeral" in data, data

    f, sts = k8s_find("StatefulSet", "jadevectordb-primary")
    assert f == "primary-statefulset.yaml"
    templates = {t["metadata"]["name"] for t in sts["spec"]["volumeClaimTemplates"]}
    mounts = {m["mountPath"]: m["name"] for m in jade_container(sts)["volumeMounts"]}
    assert mounts["/data"] in templates
    assert k8s_find("Service", sts["spec"]["serviceName"])[1]["spec"]["clusterIP"] == "None"

    for _, obj in workloads():
        labels = obj["spec"]["template"]["metadata"]["labels"]
        assert labels["app"] == "jadevectordb"
        assert obj["spec"]["selector"]["matchLabels"].items() <= labels.items()

    _, svc = k8s_find("Service", "jadevectordb")
    assert svc["spec"].get("type", "ClusterIP") == "ClusterIP"
    assert _selects(svc, primary) and _selects(svc, sts) and not _selects(svc, replica)
    _, lb = k8s_find("Service", "jadevectordb-lb")
    assert lb["spec"]["type"] == "LoadBalancer"
    assert _selects(lb, primary) and _selects(lb, replica)


def _volume_for(obj: dict[str, Any], mount_path: str) -> dict[str, Any]:
    (name,) = [
        m["name"] for m in jade_container(obj)["volumeMounts"] if m["mountPath"] == mount_path
    ]
    (vol,) = [v for v in obj["spec"]["template"]["spec"].get("volumes", []) if v["name"] == name]
    return {k: v for k, v in vol.items() if k != "name"}


def _selects(service: dict[str, Any], workload: dict[str, Any]) -> bool:
    labels = workload["spec"]["template"]["metadata"]["labels"]
    return service["spec"]["selector"].items() <= labels.items()


def test_k8s_replicas_follow_the_primary_service() -> None:
    _, replica = k8s_find("Deployment", "jadevectordb-replica")
    _, svc = k8s_find("Service", "jadevectordb")
    env = {e["name"]: e for e in jade_container(replica)["env"]}
    url = env["JADEVECTORDB_PRIMARY_URL"]["value"]
    assert url == f"http://{svc['metadata']['name']}:{svc['spec']['ports'][0]['port']}"
    assert env["JADEVECTORDB_REPLICA_ID"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert "secretKeyRef" in env["JADEVECTORDB_REPLICATION_KEY"]["valueFrom"]


def test_k8s_environments_load_and_every_written_path_is_a_volume() -> None:
    secrets = {
        k: (TEST_SECRET if k == "JWT_SECRET" else "jvdb_test_key")
        for k in secret_doc()["stringData"]
    }
    for f, obj in workloads():
        c = jade_container(obj)
        s = effective_settings(k8s_env(c, secrets), c.get("command", image_cmd()))
        assert s.production and s.port == PORT and s.host == "0.0.0.0", f
        assert s.jwt_secret == TEST_SECRET
        assert bool(s.primary_url) == (obj["metadata"]["labels"]["role"] == "replica"), f
        assert c["securityContext"]["readOnlyRootFilesystem"] is True
        mounts = [m["mountPath"] for m in c["volumeMounts"]]
        for path in (
            s.data_dir,
            s.db_path,
            s.auth_db_path,
            s.index_dir,
            s.backup_dir,
            s.log_dir,
            "/tmp",
        ):
            assert any(path == m or path.startswith(m + "/") for m in mounts), (f, path)


def test_k8s_security_resources_and_secret_references() -> None:
    final = "\n".join(f"{i} {a}" for i, a in final_stage())
    uid = re.search(r"ARG JADE_UID=(\d+)", final)
    assert uid, "the runtime stage declares ARG JADE_UID"
    image_uid = int(uid.group(1))
    secret = secret_doc()
    for f, obj in workloads():
        pod = obj["spec"]["template"]["spec"]
        sc = pod["securityContext"]
        assert sc["runAsNonRoot"] is True and sc["runAsUser"] == image_uid != 0, f
        assert sc["fsGroup"] == sc["runAsGroup"], f
        c = jade_container(obj)
        assert c["securityContext"]["allowPrivilegeEscalation"] is False
        for kind in ("requests", "limits"):
            assert {"cpu", "memory"} <= c["resources"][kind].keys(), (f, kind)
        env = {e["name"]: e for e in c["env"]}
        ref = env["JWT_SECRET"]["valueFrom"]["secretKeyRef"]
        assert ref["name"] == secret["metadata"]["name"] and ref["key"] == "JWT_SECRET"
        assert not ref.get("optional")
        for e in c["env"]:
            r = e.get("valueFrom", {}).get("secretKeyRef")
            if r:
                assert r["name"] == secret["metadata"]["name"], (f, e)
                assert r.get("optional") or r["key"] in secret["stringData"], (f, e)
        assert env["JADEVECTORDB_ENV"]["value"] == "production"


def test_k8s_secret_holds_only_placeholders_that_cannot_start_production() -> None:
    secret = secret_doc()
    assert "data" not in secret, "no base64 values: placeholders in stringData only"
    values = secret["stringData"]
    assert {"JWT_SECRET", "JADEVECTORDB_REPLICATION_KEY"} <= values.keys()
    assert all("REPLACE_ME" in v for v in values.values()), values
    with pytest.raises(ConfigError, match="JWT_SECRET"):
        effective_settings({"JWT_SECRET": values["JWT_SECRET"]}, image_cmd())


def test_k8s_readme_describes_deploy_and_external_failover() -> None:
    with open(os.path.join(K8S, "README.md"), encoding="utf-8") as fh:
        text = fh.read()
    for needle in (
        "kubectl apply -f k8s/deployment.yaml",
        "kubectl get pods -l app=jadevectordb",
        "kubectl logs -f deployment/jadevectordb",
        "kubectl rollout undo deployment/jadevectordb",
        "kubectl scale deployment jadevectordb-replica --replicas=3",
        "kubectl apply -f k8s/service-lb.yaml",
        "POST /v1/admin/promote",
        "epoch",
        "Lease",
        "etcd",
    ):
        assert needle in text, needle
    routes = {(r.method, r.path) for r in ROUTES}
    cited = re.findall(r"`(GET|POST|PUT|DELETE) (/[^`]+)`", text)
    assert len(cited) >= 4, cited
    for method, path in cited:
        path = re.sub(r"<[^>]+>", "x", path).split()[0]
        assert any(
            m == method and re.fullmatch(re.sub(r"\{\w+\}", "[^/]+", p), path) for m, p in routes
        ), (method, path)


# -- the Grafana dashboard ------------------------------------------------------------------
_PROMQL_WORDS = {
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "and",
    "or",
    "unless",
    "offset",
    "bool",
    "inf",
    "nan",
}
_SUFFIXES = ("_bucket", "_sum", "_count")


def series_in(expr: str) -> set[str]:
    """The series names a PromQL expression selects (functions, labels, ranges dropped)."""
    e = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    e = re.sub(r"\{[^}]*\}", " ", e)
    e = re.sub(r"\[[^\]]*\]", " ", e)
    e = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", e)
    e = re.sub(r"\$\{?\w+\}?", " ", e)
    names = set()
    for m in re.finditer(r"[a-zA-Z_:][\w:]*", e):
        if m.start() and re.match(r"[\w.]", e[m.start() - 1]):
            continue  # part of a number such as 1e-9
        if e[m.end() :].lstrip().startswith("("):
            continue  # a function
        if m.group(0) not in _PROMQL_WORDS:
            names.add(m.group(0))
    return names


def base_name(series: str) -> str:
    for suffix in _SUFFIXES:
        if series.endswith(suffix):
            return series[: -len(suffix)]
    return series


def dashboard_exprs() -> list[str]:
    with open(DASHBOARD, encoding="utf-8") as fh:
        dash = json.load(fh)
    exprs = []
    for p in dash["panels"]:
        for t in p.get("targets", []):
            exprs.append(t["expr"])
    for var in dash.get("templating", {}).get("list", []):
        q = var.get("query")
        q = q.get("query", "") if isinstance(q, dict) else ""
        m = re.fullmatch(r"label_values\((\w+),\s*\w+\)", q or "")
        if var["type"] == "query":
            assert m, q
            exprs.append(m.group(1))
    return exprs


def test_series_parser() -> None:
    e = (
        'histogram_quantile(0.95, sum by (le, instance) (rate(a_seconds_bucket{instance=~"$x"}'
        "[$__rate_interval]))) / clamp_min(b_total offset 5m, 1e-9) + time() - c"
    )
    assert series_in(e) == {"a_seconds_bucket", "b_total", "c"}
    assert base_name("a_seconds_bucket") == "a_seconds"


def test_dashboard_panels_and_coverage() -> None:
    with open(DASHBOARD, encoding="utf-8") as fh:
        dash = json.load(fh)
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    for p in dash["panels"]:
        if p["type"] == "row":
            continue
        assert p["targets"] and p["datasource"]["type"] == "prometheus", p["title"]
        assert {"x", "y", "w", "h"} <= p["gridPos"].keys()
    boxes = [(p["title"], p["gridPos"]) for p in dash["panels"]]
    for i, (ta, a) in enumerate(boxes):
        assert a["x"] + a["w"] <= 24, ta
        for tb, b in boxes[i + 1 :]:
            apart = (
                a["x"] + a["w"] <= b["x"]
                or b["x"] + b["w"] <= a["x"]
                or a["y"] + a["h"] <= b["y"]
                or b["y"] + b["h"] <= a["y"]
            )
            assert apart, f"panels {ta!r} and {tb!r} overlap"
    used = {base_name(s) for e in dashboard_exprs() for s in series_in(e)}
    wanted = {
        "similarity_search_requests_total",
        "similarity_search_duration_seconds",
        "filtered_similarity_search_requests_total",
        "filtered_similarity_search_duration_seconds",
        "filter_cache_hits_total",
        "filter_cache_misses_total",
        "jadevectordb_wal_last_lsn",
        "jadevectordb_wal_append_duration_seconds",
        "jadevectordb_wal_group_commit_size",
        "jadevectordb_replication_lag_records",
        "jadevectordb_replication_lag_seconds",
        "jadevectordb_failed_logins_total",
        "jadevectordb_rate_limit_exceeded_total",
        "jadevectordb_ip_blocks_total",
        "jadevectordb_active_sessions",
        "jadevectordb_permission_check_duration_seconds",
        "jadevectordb_index_size_bytes",
        "jadevectordb_index_checkpoint_age_seconds",
        "jadevectordb_scheduler_job_runs_total",
    }
    assert wanted <= used, f"panels missing for {sorted(wanted - used)}"
    assert any(
        "histogram_quantile(0.95" in e and "permission_check_duration_seconds_bucket" in e
        for e in dashboard_exprs()
    )
    assert any(
        'outcome="success"' in e and "scheduler_job_runs_total" in e for e in dashboard_exprs()
    )


async def test_dashboard_queries_only_exported_metrics(server: Server) -> None:
    api = server.user
    db = await api.create_db(4)
    vectors = [
        {
            "id": f"v{i}",
            "values": [float(i), 1.0, 0.5, -1.0],
            "metadata": {"category": "even" if i % 2 == 0 else "odd"},
        }
        for i in range(8)
    ]
    st, body = await api.post(f"/v1/databases/{db}/vectors/batch", {"vectors": vectors})
    assert st == 201, body
    st, body = await api.post(
        f"/v1/databases/{db}/search", {"queryVector": [1.0, 1.0, 0.5, -1.0], "topK": 3}
    )
    assert st == 200 and body["count"] == 3, body
    for _ in range(2):  # the second one can hit the filter cache
        st, body = await api.post(
            f"/v1/databases/{db}/search",
            {"queryVector": [1.0, 1.0, 0.5, -1.0], "topK": 3, "filters": {"category": "even"}},
        )
        assert st == 200 and body["count"] == 3, body
    st, text = await server.anon.get("/metrics")
    assert st == 200 and isinstance(text, str)

    families = {f.name: f for f in text_string_to_metric_families(text)}
    samples = {s.name: s.value for f in families.values() for s in f.samples if not s.labels}
    assert samples["similarity_search_duration_seconds_count"] >= 3
    assert samples["filtered_similarity_search_duration_seconds_count"] >= 2
    assert (
        samples["filter_cache_hits_total"] + samples["filter_cache_misses_total"]
        == (samples["filtered_similarity_search_requests_total"])
    )

    def family_of(series: str) -> tuple[str, str] | None:
        name = base_name(series)
        if name in families and families[name].type in ("histogram", "gauge", "summary"):
            return name, families[name].type
        if name.endswith("_total") and families.get(name[:-6]) is not None:
            if families[name[:-6]].type == "counter":
                return name, "counter"
        return None

    missing, wrong = [], []
    for expr in dashboard_exprs():
        for series in series_in(expr):
            found = family_of(series)
            if found is None:
                missing.append(series)
                continue
            name, kind = found
            assert re.search(rf"(^|\n)(# (HELP|TYPE) )?{re.escape(name)}", text), name
            in_rate = re.search(rf"(rate|increase|irate)\(\s*{re.escape(series)}\b", expr)
            if series.endswith("_bucket"):
                if kind != "histogram" or "histogram_quantile(" not in expr or "le" not in expr:
                    wrong.append((series, kind, expr))
            elif kind == "counter" and not in_rate:
                wrong.append((series, "counter outside rate()/increase()", expr))
            elif kind == "gauge" and in_rate:
                wrong.append((series, "gauge inside rate()", expr))
            elif kind == "histogram" and series == name:
                wrong.append((series, "histogram without _bucket/_sum/_count", expr))
    assert not missing, f"the dashboard queries metrics /metrics does not export: {missing}"
    assert not wrong, wrong


def test_k8s_cluster_takes_roles_from_an_etcd_lease() -> None:
    """k8s/cluster-statefulset.yaml (issue 19): three pods, every one a member that follows the
    lease's holder; each advertises its stable name; the coordinator is k8s/etcd/etcd.yaml's
    Service; the jadevectordb Service (writes, role=primary) does not select them."""
    f, sts = k8s_find("StatefulSet", "jadevectordb-cluster")
    assert f == "cluster-statefulset.yaml" and sts["spec"]["replicas"] == 3
    assert sts["spec"]["template"]["metadata"]["labels"]["role"] == "member"
    headless = k8s_find("Service", sts["spec"]["serviceName"])[1]["spec"]
    assert headless["clusterIP"] == "None" and headless["publishNotReadyAddresses"] is True
    c = jade_container(sts)
    env = {e["name"]: e for e in c["env"]}
    assert env["JADEVECTORDB_NODE_ID"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert "JADEVECTORDB_PRIMARY_URL" not in env  # the lease names the primary
    assert "secretKeyRef" in env["JADEVECTORDB_REPLICATION_KEY"]["valueFrom"]
    advertise = env["JADEVECTORDB_ADVERTISE_URL"]["value"]
    assert advertise.startswith(f"http://$(JADEVECTORDB_NODE_ID).{sts['spec']['serviceName']}.")
    assert advertise.endswith(f":{PORT}")
    etcd_docs = load_docs(os.path.join(K8S, "etcd", "etcd.yaml"))
    (etcd_svc,) = [d for d in etcd_docs if d["kind"] == "Service"]
    (etcd_sts,) = [d for d in etcd_docs if d["kind"] == "StatefulSet"]
    port = etcd_svc["spec"]["ports"][0]["port"]
    assert env["JADEVECTORDB_COORDINATOR"]["value"] == \
        f"etcd://{etcd_svc['metadata']['name']}:{port}"
    assert etcd_svc["spec"]["selector"].items() <= \
        etcd_sts["spec"]["template"]["metadata"]["labels"].items()
    secrets = {k: (TEST_SECRET if k == "JWT_SECRET" else "jvdb_test_key")
               for k in secret_doc()["stringData"]}
    s = effective_settings(k8s_env(c, secrets), c.get("command", image_cmd()))
    assert s.coordinator and s.lease_ttl_seconds >= 2 and not s.primary_url
    _, svc = k8s_find("Service", "jadevectordb")
    _, lb = k8s_find("Service", "jadevectordb-lb")
    assert not _selects(svc, sts) and _selects(lb, sts)
    assert ("GET", "/health/cluster") in {(r.method, r.path) for r in ROUTES
                                          if r.access == "public"}
