"""``jade serve``: run the server with the effective settings."""

from __future__ import annotations

import argparse
import asyncio
import http.client
import logging
import os
import signal
import time
from typing import Any

from aiohttp import web

from jade import __version__, logs
from jade import settings as settings_mod
from jade.http.app import build_app
from jade.http.keys import ENGINE, INFLIGHT, SHUTDOWN
from jade.http.middleware import json_response

log = logging.getLogger("jade.serve")


def register(sub: Any) -> None:
    p = sub.add_parser("serve", help="run the server")
    p.add_argument("--host", help="override JADEVECTORDB_HOST")
    p.add_argument("--port", type=int, help="override JADEVECTORDB_PORT")
    p.add_argument("--data-dir", help="override JADEVECTORDB_DATA_DIR")
    p.add_argument("--follow", metavar="URL",
                   help="run as a read replica of this primary (JADEVECTORDB_PRIMARY_URL)")
    p.set_defaults(run=run)


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if args.host:
        out["host"] = args.host
    if args.port is not None:
        out["port"] = args.port
    if args.data_dir:
        out["data_dir"] = args.data_dir
    if args.follow:
        out["primary_url"] = args.follow
    return out


def run(args: argparse.Namespace) -> int:
    s = settings_mod.load(**_overrides(args))
    os.makedirs(s.data_dir, exist_ok=True)
    logs.setup(s)
    app = build_app(s)
    if s.primary_url:
        from replica.follower import attach

        try:
            attach(app, s)
        except ValueError as exc:
            raise settings_mod.ConfigError(str(exc)) from None
    asyncio.run(_serve(app, s.host, s.port))
    return 0


async def _serve(app: web.Application, host: str, port: int) -> None:
    stop = app[SHUTDOWN]  # set by SIGTERM/SIGINT or POST /v1/admin/shutdown
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):  # before start-up: a stop during it is graceful
        loop.add_signal_handler(sig, stop.set)
    runner = web.AppRunner(app, access_log=None, handle_signals=False,
                           shutdown_timeout=FINAL_SECONDS)
    # while the engine opens (log replay, index load, or a rebuild: minutes at 1M vectors) the
    # port answers: probes see the process alive and not ready (see starting_app)
    starting = web.AppRunner(starting_app(), access_log=None, handle_signals=False)
    await starting.setup()
    await web.TCPSite(starting, host, port, reuse_address=True).start()
    log.info("opening the data directory; http://%s:%d answers 503 \"starting\" meanwhile",
             host, port)
    try:
        await runner.setup()  # opens the engine (replaying what the last run left)
    finally:
        await starting.cleanup()
    _report_unclean_start(app)
    site = web.TCPSite(runner, host, port, reuse_address=True)
    await site.start()
    log.info("JadeVectorDB listening on http://%s:%d", host, port)
    print(f"JadeVectorDB listening on http://{host}:{port}", flush=True)
    await stop.wait()
    log.info("shutting down: no new connections, draining in-flight requests, checkpointing")
    # aiohttp's own shutdown marks every connection closing at once, which drops the rest of a
    # request body still in transit: that request's handler would then wait for it until the
    # shutdown timeout and be cancelled. So: stop listening, let the requests in flight finish
    # (bounded), and only then close the connections and the engine.
    for s in list(runner.sites):
        await s.stop()
    await asyncio.sleep(0)  # requests whose headers were already read enter the middleware
    inflight = app[INFLIGHT]
    if not await inflight.drained(DRAIN_SECONDS):
        log.warning("%d request(s) still running after %ds; cancelling them",
                    inflight.count, DRAIN_SECONDS)
    await runner.cleanup()  # closes connections, cancels leftovers, then the engine closes
    log.info("stopped cleanly")


STARTING = "starting"  # the /health status while the data directory opens


def starting_app() -> web.Application:
    """What the port answers while the engine opens: ``/health`` 200 with status "starting"
    (the process is alive: a liveness or startup probe passes, so a long index rebuild is not
    killed and restarted from scratch), ``/health/db`` 503 (not ready: no traffic yet), and
    every other request 503 ``starting`` with Retry-After."""

    async def answer(request: web.Request) -> web.Response:
        now = int(time.time() * 1000)
        if request.path == "/health":
            return json_response({"status": STARTING, "timestamp": now, "version": __version__,
                                  "checks": {"database": "opening", "storage": "ok",
                                             "network": "ok"}})
        if request.path == "/health/db":
            return json_response({"status": STARTING, "healthy": False, "timestamp": now,
                                  "checks": {"authentication_db": {"status": "opening",
                                                                   "healthy": False},
                                             "vector_db": {"status": "opening",
                                                           "healthy": False}}}, status=503)
        return json_response({"error": STARTING, "message": "the server is opening its data "
                              "directory (log replay, index load or rebuild); retry"},
                             status=503, headers={"Retry-After": "5"})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", answer)
    return app


def serving(host: str, port: int, timeout: float = 1.0) -> bool:
    """Whether a server on ``host:port`` has opened its data directory: ``/health`` answers,
    and not with status "starting" (for scripts and tests that start ``jade serve``)."""
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request("GET", "/health")
        r = conn.getresponse()
        return b'"status":"%s"' % STARTING.encode() not in r.read()
    except (OSError, http.client.HTTPException):
        return False
    finally:
        conn.close()


DRAIN_SECONDS = 25  # in-flight requests get this long to finish after SIGTERM
FINAL_SECONDS = 5.0  # then what is left (long-lived replication streams...) gets this long


def _report_unclean_start(app: web.Application) -> None:
    """Say so when the previous run was killed (no clean close): what recovery replayed."""
    report = app[ENGINE].report
    if not report.unclean:
        return
    index = report.index or {}
    log.warning(
        "the previous run did not stop cleanly: replayed %d log records into the indexes "
        "(%d loaded from checkpoints, %d rebuilt from the store), %d into the data store and "
        "%d into the auth store; now at LSN %d",
        index.get("replayed_records", 0),
        index.get("loaded", 0),
        index.get("rebuilt", 0),
        report.store_replayed,
        report.auth_replayed,
        report.last_lsn,
    )
