"""``jade serve``: run the server with the effective settings."""

from __future__ import annotations

import argparse
import asyncio
import atexit
import http.client
import logging
import signal
import socket
import time
from collections.abc import Callable
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler

from jade import __version__, datadir, logs
from jade import settings as settings_mod
from jade.engine import refuse_unfinished_restore
from jade.errors import RestoreIncomplete
from jade.http.app import build_app
from jade.http.keys import ENGINE, INFLIGHT, SHUTDOWN
from jade.http.middleware import json_response

log = logging.getLogger("jade.serve")


def register(sub: Any) -> None:
    p = sub.add_parser("serve", help="run the server")
    p.add_argument("--host", help="override JADEVECTORDB_HOST")
    p.add_argument("--port", type=int, help="override JADEVECTORDB_PORT")
    p.add_argument("--data-dir", metavar="DIR",
                   help="override JADEVECTORDB_DATA_DIR (created if missing)")
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
    # one process owns a data directory: before the port, the logs or the stores are opened,
    # and for the life of the process (the engine holds it again while open; re-entrant)
    # (a busy directory, an unfinished restore: one line and exit 1, by tools.cli.explain)
    lock = datadir.hold(s.data_dir, "jade serve" + (" --follow" if s.primary_url else ""))
    try:  # before the logs or the app write anything into it (the engine checks again)
        refuse_unfinished_restore(s.data_dir)
    except RestoreIncomplete:
        lock.release()
        raise
    atexit.register(lock.release)  # after the interpreter joined its threads (or at death)
    logs.setup(s)
    app = build_app(s)
    if s.coordinator:  # the coordinator's lease names the primary (replica.cluster)
        from replica.cluster import attach_cluster

        if s.primary_url:
            raise settings_mod.ConfigError(
                "cluster.coordinator and replication.primary_url are exclusive: with a "
                "coordinator the leader lease names the primary")
        try:
            attach_cluster(app, s)
        except ValueError as exc:
            raise settings_mod.ConfigError(str(exc)) from None
    elif s.primary_url:
        from replica.follower import attach

        try:
            attach(app, s)
        except ValueError as exc:
            raise settings_mod.ConfigError(str(exc)) from None
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        runner.run(_serve(app, s.host, s.port))
    return 0


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's event loop where it can be imported (40-65 µs less per request than asyncio's
    on a search, bench/README.md), else None: asyncio's own. Nothing in the server depends on
    which: no private loop attribute is read (``run_search`` counts requests itself)."""
    try:
        import uvloop
    except ImportError:
        log.info("uvloop is not installed: serving on asyncio's event loop")
        return None
    return uvloop.new_event_loop


async def _serve(app: web.Application, host: str, port: int) -> None:
    stop = app[SHUTDOWN]  # set by SIGTERM/SIGINT or POST /v1/admin/shutdown
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):  # before start-up: a stop during it is graceful
        loop.add_signal_handler(sig, stop.set)
    runner = web.AppRunner(app, access_log=None, handle_signals=False,
                           shutdown_timeout=FINAL_SECONDS)
    # while the engine opens (log replay, index load, or a rebuild: minutes at 1M vectors) the
    # port answers: probes see the process alive and not ready (see starting_app). The
    # listening sockets are bound once and handed from the stand-in to the real app, so the
    # port never stops listening: a connection made during the hand-over waits in the backlog.
    socks = listen(host, port)
    stand_in_socks = [sock.dup() for sock in socks]  # closing the stand-in closes only these
    starting = web.AppRunner(starting_app(), access_log=None, handle_signals=False)
    try:
        await starting.setup()
        for sock in stand_in_socks:
            await web.SockSite(starting, sock).start()
        log.info("opening the data directory; http://%s:%d answers 503 \"starting\" meanwhile",
                 host, port)
        await runner.setup()  # opens the engine (replaying what the last run left)
    except BaseException:
        await starting.cleanup()
        for sock in socks + stand_in_socks:
            sock.close()
        raise
    _report_unclean_start(app)
    await _hand_over(stand_in_socks, runner, socks, starting)
    log.info("JadeVectorDB listening on http://%s:%d (event loop: %s)", host, port,
             type(loop).__module__.partition(".")[0])
    print(f"JadeVectorDB listening on http://{host}:{port}", flush=True)
    await _retire(starting)
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
HANDOVER_SECONDS = 5.0  # the stand-in's requests in flight get this long to be answered


def listen(host: str, port: int, backlog: int = 128) -> list[socket.socket]:
    """Bound, listening sockets for ``host:port``, as ``loop.create_server`` would make them
    (every address ``host`` resolves to, IPv6 sockets IPv6-only, SO_REUSEADDR)."""
    infos = socket.getaddrinfo(host or None, port, socket.AF_UNSPEC, socket.SOCK_STREAM, 0,
                               socket.AI_PASSIVE)
    socks: list[socket.socket] = []
    try:
        for family, kind, proto, _, addr in dict.fromkeys(infos):
            sock = socket.socket(family, kind, proto)
            socks.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6 and hasattr(socket, "IPPROTO_IPV6"):
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                sock.bind(addr)
            except OSError as exc:
                raise OSError(exc.errno, f"error while attempting to bind on address {addr!r}: "
                              f"{exc.strerror}") from None
            sock.listen(backlog)
            sock.setblocking(False)
    except BaseException:
        for sock in socks:
            sock.close()
        raise
    return socks


async def _hand_over(stand_in_socks: list[socket.socket], runner: web.AppRunner,
                     socks: list[socket.socket], starting: web.AppRunner | None = None) -> None:
    """Give the port to the real app: the stand-in stops accepting, the real app accepts on
    the listening sockets (the port listens throughout; a connection made meanwhile waits in
    the backlog). The stand-in's server is left open for ``_retire`` to close.

    On asyncio's loop the stand-in stops accepting by taking its sockets out of the loop, not
    by closing its server (``BaseSite.stop``): asyncio makes the transport of an accepted
    connection in a task that runs a loop turn after the accept, and if ``Server.close()``
    runs in between, that task fails silently (CPython gh-109564): the connection, already
    accepted, is never read and never closed, and its client waits until it times out. Closed
    turns later by ``_retire``, the server has a transport for every connection it accepted.
    uvloop accepts through libuv, not the loop's readers (``remove_reader`` would not stop
    it), and makes the transport within the accept: closing the stand-in's listening servers
    there (their sockets are duplicates: the port stays open) loses no connection: that
    needs the stand-in's runner, ``starting``."""
    loop = asyncio.get_running_loop()
    if isinstance(loop, asyncio.SelectorEventLoop):
        for sock in stand_in_socks:
            loop.remove_reader(sock.fileno())  # no accept from now on; the server stays open
    else:
        if starting is None:
            raise ValueError("the stand-in's runner is needed to stop it on this event loop")
        for site in list(starting.sites):
            await site.stop()  # its listening server only; its connections stay open
    for sock in socks:
        await web.SockSite(runner, sock).start()


async def _retire(starting: web.AppRunner, timeout: float = HANDOVER_SECONDS) -> None:
    """Close the stand-in once it stopped accepting (``_hand_over``): its connections end by
    themselves (each answer says ``Connection: close``), so wait for those still on a request,
    then clean up (which closes its server and its sockets).
    aiohttp's cleanup closes idle keep-alive connections, and a client may be sending on one
    at that moment: with no keep-alive on the stand-in there is none to close."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    await asyncio.sleep(0.05)  # a connection accepted just before the stop registers a few
    server = starting.server   # loop turns later
    while server is not None and server.connections and loop.time() < deadline:
        await asyncio.sleep(0.01)
    await starting.cleanup()


def starting_app() -> web.Application:
    """What the port answers while the engine opens: ``/health`` 200 with status "starting"
    (the process is alive: a liveness or startup probe passes, so a long index rebuild is not
    killed and restarted from scratch), ``/health/db`` 503 (not ready: no traffic yet), and
    every other request 503 ``starting`` with Retry-After. Every answer closes its
    connection: the stand-in is replaced without dropping a request (see ``_retire``), and a
    client's next request goes to a fresh connection, to whichever app then has the port."""

    @web.middleware
    async def close_after(request: web.Request, handler: Handler) -> web.StreamResponse:
        response = await handler(request)
        response.force_close()  # "Connection: close", and aiohttp closes after sending it
        return response

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

    app = web.Application(middlewares=[close_after])
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
