"""``jade serve``: run the server with the effective settings."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
from typing import Any

from aiohttp import web

from jade import logs
from jade import settings as settings_mod
from jade.http.app import build_app
from jade.http.keys import SHUTDOWN

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
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, host, port, reuse_address=True)
    await site.start()
    log.info("JadeVectorDB listening on http://%s:%d", host, port)
    print(f"JadeVectorDB listening on http://{host}:{port}", flush=True)
    stop = app[SHUTDOWN]  # set by SIGTERM/SIGINT or POST /v1/admin/shutdown
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("shutting down: no new connections, draining in-flight requests, checkpointing")
    await runner.cleanup()  # stops listening, waits for handlers, then the engine closes
    log.info("stopped cleanly")
