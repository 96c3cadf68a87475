"""The one middleware every request goes through: request id, in-flight count, admission (the
caller's ``admit``: authentication, throttling, authorization), the handler, the wait of
a write's answer for its synchronous replicas (``jade.engine.sync``), metrics and the access
log; and the one place where errors become HTTP: every ``JadeError`` is answered with
its status and ``{"error": code, "message": text, ...}``; aiohttp's own HTTP exceptions
(unknown route 404, wrong method 405, 413 from the body limit) get the same JSON envelope;
anything else is a bug, logged with the request id and answered 500 without internals.

One middleware, not three stacked ones: each layer costs a coroutine and a call per request.
"""

from __future__ import annotations

import itertools
import logging
import secrets
import time
from collections.abc import Awaitable, Callable

import lmdb
import orjson
from aiohttp import web
from aiohttp.typedefs import Middleware  # a Protocol: what Application(middlewares=) takes

from jade import logs
from jade.engine import sync_lsn, written_lsn
from jade.errors import JadeError
from jade.http.inflight import InFlight
from jade.http.keys import ENGINE, METRICS, OBSERVE, REQUEST_ID
from jade.http.replication_state import confirm_replicated
from jade.logs import request_id_var

log = logging.getLogger("jade.http")
access_log = logging.getLogger("jade.access")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Admit = Callable[[web.Request], Awaitable[None] | None]


def json_response(
    data: object, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    return web.Response(
        body=orjson.dumps(data, option=orjson.OPT_SERIALIZE_NUMPY),
        status=status,
        content_type="application/json",
        headers=headers,
    )


def error_response(exc: JadeError) -> web.Response:
    return json_response(exc.body(), status=exc.status, headers=exc.headers or None)


_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    415: "unsupported_media_type",
}


_RID_PREFIX = secrets.token_hex(4)  # per process: ids stay unique across restarts
_rid_counter = itertools.count(1)


def _next_request_id() -> str:
    """16 hex characters: a random per-process prefix and a counter (uuid4 costs a system call
    per request)."""
    return f"{_RID_PREFIX}{next(_rid_counter) & 0xFFFFFFFF:08x}"


def request_middleware(admit: Admit, inflight: InFlight) -> Middleware:
    """The middleware, given the admission check: ``admit(request)`` raises to refuse, and
    returns None, or an awaitable to wait for first (read-your-writes)."""
    long_lived = inflight.long_lived

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        counted = request.path not in long_lived
        if counted:
            inflight.enter()
        rid = request.headers.get("X-Request-ID", "")[:64]
        if not rid or not (rid.isascii() and rid.isprintable()):  # it goes into the logs
            rid = _next_request_id()
        request[REQUEST_ID] = rid
        request_id_var.set(rid)
        written_lsn.set(0)
        sync_lsn.set(0)
        t0 = time.perf_counter()
        try:
            wait = admit(request)
            if wait is not None:
                await wait
            resp = await handler(request)
            lsn = sync_lsn.get()
            if lsn and resp.status < 400 and not resp.prepared:  # an acknowledged write
                # synchronous replication: answered once on N replicas (jade.engine.sync)
                await confirm_replicated(request.app[ENGINE], request.app[METRICS], lsn)
                fence = request.app[ENGINE].write_fence  # replica.cluster: the lease may
                if fence is not None:  # have run out while the replicas confirmed
                    fence()
        except Exception as exc:
            resp = _error(request, exc, rid)
        finally:
            if counted:
                inflight.leave()
        _finish(request, resp, rid, time.perf_counter() - t0)
        return resp

    return middleware


def _error(request: web.Request, exc: Exception, rid: str) -> web.StreamResponse:
    """The answer to an exception a handler (or the admission) raised."""
    if isinstance(exc, JadeError):
        return error_response(exc)
    if isinstance(exc, web.HTTPException):
        if exc.status < 400:
            raise exc
        code = _HTTP_CODES.get(exc.status, "http_error")
        message = exc.reason
        if exc.status == 404:
            message = f"no route for {request.method} {request.path}"
        elif exc.status == 405:
            message = f"method {request.method} not allowed on {request.path}"
        return json_response({"error": code, "message": message}, status=exc.status)
    if isinstance(exc, lmdb.Error):
        m = request.app.get(METRICS)
        if m is not None:
            m.db_connection_errors.inc()
    log.exception("unhandled error", exc_info=exc, extra={"request_id": rid})
    return json_response(
        {"error": "internal_error", "message": f"internal error (request {rid})"}, status=500
    )


def _finish(request: web.Request, resp: web.StreamResponse, rid: str, elapsed: float) -> None:
    """Response headers, metrics and the access log line."""
    status = resp.status
    resp.headers["X-Request-ID"] = rid
    if not resp.prepared:  # a stream sent its headers already (it sets its own)
        resp.headers["X-Content-Type-Options"] = "nosniff"
        lsn = written_lsn.get()
        if lsn:
            resp.headers["X-LSN"] = str(lsn)
    observe = request.app.get(OBSERVE)
    if observe is not None:
        observe(request, status, elapsed)
    if not logs.access(rid, request.remote, request.method, request.path_qs, request.path,
                       status, elapsed) and access_log.isEnabledFor(logging.INFO):
        access_log.info(
            '%s "%s %s" %d %.2fms', request.remote, request.method, request.path_qs, status,
            elapsed * 1000,
            extra={"status": status, "method": request.method, "path": request.path,
                   "remote": request.remote, "duration_ms": round(elapsed * 1000, 3)},
        )
