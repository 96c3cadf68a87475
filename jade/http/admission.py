"""Admission: the authentication, throttling and authorization check every request passes
through the route table before its handler runs (``admit``, called by the middleware), and
read-your-writes (``X-Min-LSN``)."""

from __future__ import annotations

import ipaddress
from collections.abc import Awaitable

from aiohttp import web

from jade.auth.principal import LOOPBACK_ADMIN
from jade.engine import Engine
from jade.engine.commit import refuse_writes
from jade.errors import (
    Forbidden,
    Unauthorized,
    Unavailable,
)
from jade.http.keys import ACCESS, ACTOR, AUTH, CLIENT_IP, ENGINE, PRINCIPAL, SETTINGS
from jade.http.routes import Route
from jade.http.validate import parse_lsn

PROBES = frozenset({"/health", "/health/db", "/metrics", "/openapi.json", "/docs", "/ui",
                    "/ui/", "/ui/{name}", "/health/cluster", "/docs/{name}"})
FORWARDING_HEADERS = ("X-Forwarded-For", "X-Real-IP", "Forwarded")


def _loopback_host(host: str) -> bool:
    """Whether a ``Host`` header names this machine's loopback (with or without a port)."""
    name = host.strip().lower()
    if name.startswith("["):  # [::1]:8080
        name = name[1:].split("]", 1)[0]
    elif name.count(":") == 1:
        name = name.split(":", 1)[0]
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def from_a_web_page(request: web.Request) -> str:
    """Why a token-less request may have been sent by a web page rather than a person at a
    terminal ('' if nothing says so). A page the developer opens can send requests to
    127.0.0.1 (a form, ``fetch`` with a "simple" content type, an image), and with DNS
    rebinding read the answers; curl sends no ``Origin`` and a loopback ``Host``. Refused: a
    ``Host`` that is not a loopback name (rebinding: the page's own name resolving to
    127.0.0.1), an ``Origin`` other than this server's own (``null`` included), a
    ``Sec-Fetch-Site`` other than ``same-origin`` or ``none`` (typed in the address bar)."""
    host = request.headers.get("Host", "")
    if not _loopback_host(host):
        return f"Host {host!r} is not a loopback name: a DNS-rebinding page"
    origin = request.headers.get("Origin")
    if origin is not None and origin != f"{request.scheme}://{host}":
        return f"cross-site Origin {origin!r}"
    site = request.headers.get("Sec-Fetch-Site")
    if site is not None and site not in ("same-origin", "none"):
        return f"Sec-Fetch-Site: {site}"
    return ""


def admit(request: web.Request) -> Awaitable[None] | None:
    """Authenticate, throttle and authorize every request through the route table: raises to
    refuse; returns what to wait for before the handler runs (a read's ``X-Min-LSN``)."""
    app = request.app  # a property that walks the match info: read once
    resource = request.match_info.route.resource
    route: Route | None = app[ACCESS].get((request.method, resource.canonical if resource else ""))
    if route is None:  # 404/405: let aiohttp answer
        return None
    svc = app[AUTH]
    engine = app[ENGINE]
    if engine.env is None and route.path not in PROBES:
        raise Unavailable("the data directory is being re-opened (replica re-seed); retry")
    ip = svc.client_ip(request.remote, request.headers)
    request[CLIENT_IP] = ip
    if route.mutates or route.records:  # a replica: before anything else
        refuse_writes(engine.role, "readwrite", True,
                      engine.leader_url or app[SETTINGS].primary_url)
    if route.access == "public":
        if route.path not in PROBES:
            svc.check_blocked(ip)
            try:  # register honours an admin caller; a bad credential is simply ignored
                principal = svc.authenticate(request.headers)
            except Unauthorized:
                principal = None
            # an enrol-only token (admin without TOTP) carries no admin powers anywhere, nor
            # does the token of a temporary password
            if (principal is not None and not principal.enroll_only
                    and not principal.must_change_password):
                request[PRINCIPAL] = principal
                request[ACTOR] = principal.user_id
            # refused before the handler runs, so the answer cannot depend on the input (a
            # forgot-password for an unknown name must not differ from one for a known name)
            if route.mutates:
                refuse_writes(engine.role, engine.mode(), False, None)
                engine.disk.check(request.content_length or 0)
        return None
    svc.check_blocked(ip)
    principal = svc.authenticate(request.headers)
    if principal is None:
        settings = app[SETTINGS]
        if (  # a local caller, not a local reverse proxy relaying someone else
            route.access == "admin"
            and settings.loopback_admin
            and svc.is_loopback(request.remote or "")
            and not any(h in request.headers for h in FORWARDING_HEADERS)
        ):
            why = from_a_web_page(request)
            if why:
                raise Unauthorized(
                    f"token-less admin from loopback is for a person at a terminal, not a "
                    f"browser page ({why}): send Authorization: Bearer <token or API key>",
                    code="missing_credentials",
                )
            principal = LOOPBACK_ADMIN
        else:
            raise Unauthorized(
                "authentication required: send Authorization: Bearer <token or API key>",
                code="missing_credentials",
            )
    if principal.enroll_only and not route.enroll_ok:
        raise Forbidden(
            "admin accounts must enrol in two-factor authentication first "
            "(POST /v1/auth/2fa/enroll)",
            code="totp_enrollment_required",
        )
    if principal.must_change_password and not principal.enroll_only and not (
        route.must_change_ok and request.match_info.get("uid", principal.user_id)
        == principal.user_id
    ):  # an admin without TOTP enrols first, then changes the password with a full login
        raise Forbidden(
            "the password is temporary (set by an admin or at installation): change it first "
            f"with PUT /v1/users/{principal.user_id}/password; this token may do nothing else "
            "but log out",
            code="password_change_required",
        )
    if principal.is_replicator_only and route.access != "replicate":
        raise Forbidden("the replicator role may only stream the log", code="permission_denied")
    if route.keys != "any" and principal.via == "key":  # the route table's key rule
        svc.permissions.check_key(principal, route.keys, request.match_info.get("uid"))
    svc.limit(svc.api_limit, principal.key_id or principal.user_id, "api")
    request[PRINCIPAL] = principal
    request[ACTOR] = principal.user_id
    access = route.access
    if access in ("read", "write"):
        svc.authorize(principal, access, request.match_info.get("db"))
    elif access in ("create", "list", "admin", "replicate"):
        svc.authorize(principal, access)
    if route.mutates:
        refuse_writes(engine.role, engine.mode(), False, None)
        engine.disk.check(request.content_length or 0)  # before the body is read
        return None
    raw = request.headers.get("X-Min-LSN") or (request.query_string and
                                               request.query.get("min_lsn"))
    return _wait_min_lsn(request, engine, raw) if raw else None


async def _wait_min_lsn(request: web.Request, engine: Engine, raw: str) -> None:
    """Read-your-writes: a read carrying ``X-Min-LSN`` (or ``?min_lsn=``) waits until this node
    has applied that LSN, up to ``read_wait_seconds``; else 503 with the node's LSN."""
    want = parse_lsn(raw, "X-Min-LSN / min_lsn")
    if not await engine.log.wait_for(want, request.app[SETTINGS].read_wait_seconds):
        raise Unavailable(
            f"this node has applied LSN {engine.log.last_lsn}, not yet {want}",
            code="lsn_not_reached", lsn=engine.log.last_lsn, wanted=want)
