"""What Prometheus and Grafana make of ``/metrics`` (issue 18, item 6): no label Prometheus owns
(``job``, ``instance``: a scraped series carrying one has it renamed ``exported_job`` and the
dashboard's ``sum by (job)`` merges every scheduled job), the ``process_*`` series of a real
``jade serve`` process, and no gauge named like a counter (``_total``) but the documented
deprecated aliases, each with the value of the gauge that replaced it."""

from __future__ import annotations

import json
import os
import urllib.request
from typing import Any

from prometheus_client import Gauge
from prometheus_client.parser import text_string_to_metric_families

from jade.http.keys import SCHEDULER
from jade.metrics import DEPRECATED_GAUGE_ALIASES, RESERVED_LABELS, Metrics, _Family
from tests.conftest import ROOT, Server, ServerProcess
from tests.test_runbook import metrics_text

DASHBOARD = os.path.join(ROOT, "compose", "grafana", "dashboards", "jadevectordb.json")


def families(text: str) -> dict[str, Any]:
    return {f.name: f for f in text_string_to_metric_families(text)}


def label_names_declared(m: Metrics) -> dict[str, tuple[str, ...]]:
    """Every metric object of ``Metrics`` and the label names it declares (whether or not a
    series exists yet)."""
    out: dict[str, tuple[str, ...]] = {}
    for value in vars(m).values():
        if isinstance(value, _Family):
            out[value.name] = value.labelnames
        elif isinstance(value, Gauge):
            out[value._name] = tuple(value._labelnames)
    return out


def test_no_metric_declares_a_label_prometheus_owns() -> None:
    declared = label_names_declared(Metrics())
    assert len(declared) > 40  # the walk found the metrics
    bad = {name: labels for name, labels in declared.items() if set(labels) & RESERVED_LABELS}
    assert not bad, f"labels Prometheus renames to exported_*: {bad}"
    assert {"job", "instance"} <= RESERVED_LABELS


async def test_scraped_series_carry_no_job_or_instance_label(server: Server) -> None:
    sched = server.app[SCHEDULER]
    for name in ("index_checkpoint", "rate_limit_cleanup"):
        await sched.run(name)
    db = await server.user.create_db(4)
    st, _ = await server.user.post(f"/v1/databases/{db}/vectors",
                                   {"id": "a", "values": [1, 2, 3, 4]})
    assert st == 201
    text = await metrics_text(server.anon)
    bad = [(s.name, s.labels) for f in families(text).values() for s in f.samples
           if set(s.labels) & RESERVED_LABELS]
    assert not bad, bad
    runs = {(s.labels["task"], s.labels["outcome"]): s.value
            for s in families(text)["jadevectordb_scheduler_job_runs"].samples
            if s.name.endswith("_total")}
    assert runs[("index_checkpoint", "success")] == 1
    assert runs[("rate_limit_cleanup", "success")] == 1
    last = {s.labels["task"] for s in
            families(text)["jadevectordb_scheduler_job_last_success_timestamp_seconds"].samples}
    assert {"index_checkpoint", "rate_limit_cleanup"} <= last


def test_dashboard_groups_scheduled_jobs_by_task() -> None:
    with open(DASHBOARD) as fh:
        raw = fh.read()
    exprs: list[str] = []
    legends: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if isinstance(node.get("expr"), str):
                exprs.append(node["expr"])
                legends.append(str(node.get("legendFormat", "")))
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(json.loads(raw))
    sched = [(e, lf) for e, lf in zip(exprs, legends, strict=True) if "scheduler_job" in e]
    assert len(sched) >= 3
    for expr, legend in sched:
        assert "by (task)" in expr and "(job)" not in expr, expr
        assert legend == "{{task}}", legend
    # the dashboard queries the gauges' own names, never a deprecated alias
    for expr in exprs:
        for old in DEPRECATED_GAUGE_ALIASES:
            assert old not in expr, expr


def test_process_series_of_a_real_server(tmp_path: Any) -> None:
    sp = ServerProcess(str(tmp_path / "data"))
    sp.start()
    try:
        with urllib.request.urlopen(sp.base + "/metrics", timeout=10) as r:
            text = r.read().decode()
    finally:
        sp.stop()
    fams = families(text)
    for name, kind in (("process_resident_memory_bytes", "gauge"),
                       ("process_cpu_seconds", "counter"),
                       ("process_open_fds", "gauge"),
                       ("process_max_fds", "gauge"),
                       ("process_start_time_seconds", "gauge")):
        assert name in fams and fams[name].type == kind, (name, fams.get(name))
    value = {s.name: s.value for f in fams.values() for s in f.samples if not s.labels}
    assert value["process_resident_memory_bytes"] > 10 * 1024 * 1024  # a Python server
    assert value["process_cpu_seconds_total"] > 0
    assert value["process_open_fds"] >= 3
    assert "python_info" in fams


async def test_no_gauge_is_named_like_a_counter(server: Server) -> None:
    db = await server.user.create_db(4)
    st, _ = await server.user.post(f"/v1/databases/{db}/vectors/batch", {"vectors": [
        {"id": f"v{i}", "values": [float(i), 1, 2, 3]} for i in range(5)]})
    assert st == 201
    text = await metrics_text(server.anon)
    fams = families(text)
    gauges_total = sorted(n for n, f in fams.items() if f.type == "gauge" and n.endswith("_total"))
    assert gauges_total == sorted(DEPRECATED_GAUGE_ALIASES), gauges_total
    value = {s.name: s.value for f in fams.values() for s in f.samples if not s.labels}
    for old, new in DEPRECATED_GAUGE_ALIASES.items():
        assert not new.endswith("_total") and fams[new].type == "gauge", new
        assert fams[old].documentation.startswith(f"Deprecated alias of {new}"), old
        assert value[old] == value[new], (old, new)
    assert value["jadevectordb_vectors"] == 5
    assert value["jadevectordb_databases"] == 1
    assert value["jadevectordb_users"] == 2
    # declared in code: no gauge of Metrics ends in _total (the aliases are not Gauge objects)
    m = Metrics()
    named = [v._name for v in vars(m).values() if isinstance(v, Gauge)]
    assert named and not [n for n in named if n.endswith("_total")]


async def test_alert_rules_query_exported_series_by_task(tmp_path: Any) -> None:
    import re

    import yaml

    from tests.conftest import make_settings, running_server
    from tests.test_deploy_files import COMPOSE, base_name, compose_services, series_in

    with open(os.path.join(COMPOSE, "alerts.yml")) as fh:
        rules = [r for g in yaml.safe_load(fh)["groups"] for r in g["rules"]]
    assert {r["alert"] for r in rules} >= {"JadeVectorDBScheduledJobFailing",
                                          "JadeVectorDBOffsiteBackupStale"}
    # Prometheus loads the file: prometheus.yml names it where compose mounts it
    with open(os.path.join(COMPOSE, "prometheus.yml")) as fh:
        prom = yaml.safe_load(fh)
    mounts = dict(v.split(":")[:2] for v in
                  compose_services(os.path.join(COMPOSE, "docker-compose.replicas.yml"))
                  ["prometheus"]["volumes"])
    assert prom["rule_files"] == [mounts["./alerts.yml"]]

    s = make_settings(tmp_path, offsite_path=str(tmp_path / "offsite"),
                      snapshot_interval_seconds=86400)  # production's jobs
    async with running_server(s) as server:
        text = await metrics_text(server.anon)
        tasks = set(server.app[SCHEDULER].jobs)
    fams = families(text)
    for r in rules:
        expr = r["expr"]
        for series in series_in(expr):
            name = base_name(series)
            if name == "up":  # Prometheus's own, per scrape job: job="..." is right there
                continue
            found = name in fams or (name.endswith("_total") and name[:-6] in fams)
            assert found, (r["alert"], series)
        assert "by (job" not in expr and "job=" not in expr.replace('up{job="jadevectordb"}', "")
        for task in re.findall(r'task="(\w+)"', expr):
            assert task in tasks, (r["alert"], task)
