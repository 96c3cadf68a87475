"""The SDK's errors: one class per refusal the server makes, chosen by the answer's ``error``
code first and its HTTP status second, so ``except NotFound`` and ``except DimensionMismatch``
read as the server meant them. Every error carries what the server said: ``status``, ``code``
(the stable ``error`` field of API.md's envelope), ``message`` and the whole ``body``.

The server's own hierarchy (``jade.errors``) is not imported: a remote client needs none of the
server's packages, and these classes describe answers, not the server's internals."""

from __future__ import annotations

from typing import Any


class JadeClientError(Exception):
    """Everything this SDK raises (an answer the server refused, an unreachable server, a data
    directory held by another process)."""


class TransportError(JadeClientError):
    """The server could not be reached, or its answer was cut off or not JSON."""


class DataDirLocked(JadeClientError):
    """The embedded mode's data directory is held by another process (``jade serve``, a tool,
    another program's ``Client(path=...)``). ``holder`` is that process's lock record (pid,
    purpose, since), empty when it could not be read."""

    def __init__(self, message: str, holder: dict[str, Any]) -> None:
        super().__init__(message)
        self.holder = holder


class ApiError(JadeClientError):
    """The server answered with an error. ``status`` is the HTTP status, ``code`` the ``error``
    field (``not_found``, ``dimension_mismatch``...), ``message`` its text, ``body`` the whole
    JSON object (extra fields such as ``database_id`` or ``retry_after`` are there), and
    ``request_id`` the server's ``X-Request-ID`` (its logs name it)."""

    status: int = 0

    def __init__(self, status: int, code: str, message: str, body: dict[str, Any] | None = None,
                 request_id: str = "") -> None:
        super().__init__(f"{status} {code}: {message}" if message else f"{status} {code}")
        self.status = status
        self.code = code
        self.message = message
        self.body: dict[str, Any] = body if body is not None else {}
        self.request_id = request_id


class BadRequest(ApiError):
    """400: the request is malformed or a value is out of range (``invalid_argument``,
    ``missing_field``, ``invalid_filter``...)."""

    status = 400


class DimensionMismatch(BadRequest):
    """400 ``dimension_mismatch``: a vector's length is not the database's dimension."""


class Unauthorized(ApiError):
    """401: no credential, or one the server does not accept (expired, revoked)."""

    status = 401


class Forbidden(ApiError):
    """403: the credential is valid but may not do this."""

    status = 403


class NotFound(ApiError):
    """404: no such database, vector, index or route."""

    status = 404


class Conflict(ApiError):
    """409: the request conflicts with what exists (a duplicate name...)."""

    status = 409


class AmbiguousName(Conflict):
    """More than one database visible to the caller has this name: address it by id. Raised by
    the client itself (code ``ambiguous_name``); ``body["ids"]`` lists the candidates."""


class PayloadTooLarge(ApiError):
    """413: the body or the answer would exceed the server's bounds."""

    status = 413


class RateLimited(ApiError):
    """429: too many requests; ``retry_after`` seconds (from the answer)."""

    status = 429

    @property
    def retry_after(self) -> int | None:
        value = self.body.get("retry_after")
        return int(value) if isinstance(value, int | float) else None


class ServerError(ApiError):
    """500 and any other status this SDK does not name."""

    status = 500


class Unavailable(ApiError):
    """503: the server cannot do it now (starting, the index behind, a query timeout...)."""

    status = 503


class ReadOnly(Unavailable):
    """503 ``read_only``: the server is in readonly mode; reads go on."""


class NotPrimary(Unavailable):
    """503 ``not_primary``: a replica refuses writes; ``body["primary"]`` names the primary."""


class InsufficientStorage(ApiError):
    """507: the server's disk is full; nothing was written."""

    status = 507


_BY_STATUS: dict[int, type[ApiError]] = {
    400: BadRequest,
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    409: Conflict,
    413: PayloadTooLarge,
    429: RateLimited,
    503: Unavailable,
    507: InsufficientStorage,
}
_BY_CODE: dict[str, type[ApiError]] = {
    "dimension_mismatch": DimensionMismatch,
    "read_only": ReadOnly,
    "not_primary": NotPrimary,
    "ambiguous_name": AmbiguousName,
}


def from_answer(status: int, body: object, request_id: str = "") -> ApiError:
    """The error for an answer with ``status`` >= 400 and its decoded JSON ``body`` (anything
    else, e.g. a proxy's HTML page, keeps its status with code ``http_<status>``)."""
    if isinstance(body, dict):
        code = str(body.get("error") or f"http_{status}")
        message = str(body.get("message") or "")
        data: dict[str, Any] = body
    else:
        code, message, data = f"http_{status}", str(body or "")[:500], {}
    cls = _BY_CODE.get(code)
    if cls is None or cls.status != status:  # a code is trusted only with its own status
        cls = _BY_STATUS.get(status, ServerError)
    return cls(status, code, message, data, request_id)
