"""The observers that bind the server's events to its metrics (``jade.metrics``): one per
request, given to the middleware (``OBSERVE``), and one per group commit of the log, given to
the engine (``Engine.group_observers``)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from jade.http.keys import ACCESS, METRICS


@dataclass(slots=True)
class _Series:
    """The metric children one (method, status, route) observes."""

    requests: Any
    op: Any = None
    op_duration: Any = None


def request_observer(app: web.Application) -> Callable[[web.Request, int, float], None]:
    """``observe(request, status, seconds)``: the request counter and duration, and the
    runbook's database and user operation series, named by the route's handler."""
    # the labelled children per (method, status, route): ``labels()`` costs more than ``inc()``
    children: dict[tuple[str, int, str], _Series] = {}

    def series(method: str, status: int, path: str) -> _Series:
        m = app[METRICS]
        out = _Series(m.http_requests.labels(method, str(status)))
        route = app[ACCESS].get((method, path))
        if route is not None:
            # the runbook's database and user operation series, named by the handler
            name = f"{route.handler.__module__.rsplit('.', 1)[-1]}.{route.handler.__name__}"
            outcome = "success" if status < 400 else "error"
            if route.path.startswith("/v1/databases"):
                out.op = m.db_operations.labels(name, outcome)
                out.op_duration = m.db_operation_duration.labels(name)
            elif route.path.startswith(("/v1/users", "/v1/admin/users", "/v1/api-keys")):
                out.op = m.user_operations.labels(name)
        return out

    def observe(request: web.Request, status: int, seconds: float) -> None:
        resource = request.match_info.route.resource
        key = (request.method, status, resource.canonical if resource else "")
        s = children.get(key)
        if s is None:
            if len(children) > 4096:  # methods and statuses are few; this is only a bound
                children.clear()
            s = children[key] = series(*key)
        s.requests.inc()
        app[METRICS].http_duration.observe(seconds)
        if s.op is not None:
            s.op.inc()
        if s.op_duration is not None:
            s.op_duration.observe(seconds)

    return observe


def group_observer(app: web.Application) -> Callable[[int, int, float], None]:
    """``on_group(requests, records, seconds)``: one group commit of the WAL writer."""

    def on_group(requests: int, records: int, seconds: float) -> None:
        m = app[METRICS]
        m.wal_group_requests.observe(requests)
        m.wal_append_duration.observe(seconds)
        m.wal_records.inc(records)

    return on_group
