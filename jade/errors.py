"""The one error hierarchy. Every refusal the server makes is a ``JadeError``; the HTTP layer maps
it to ``{"error": code, "message": text}`` with ``status`` in exactly one place
(``jade.http.middleware``). Anything else that escapes a handler is a bug and becomes a 500.
"""

from __future__ import annotations

from typing import Any


class JadeError(Exception):
    status: int = 500
    code: str = "internal_error"

    def __init__(self, message: str, *, code: str | None = None, **extra: Any) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.extra = extra
        self.headers: dict[str, str] = {}

    def body(self) -> dict[str, Any]:
        return {"error": self.code, "message": self.message, **self.extra}


class InvalidArgument(JadeError):
    status = 400
    code = "invalid_argument"


class Unauthorized(JadeError):
    status = 401
    code = "unauthorized"


class Forbidden(JadeError):
    status = 403
    code = "forbidden"


class NotFound(JadeError):
    status = 404
    code = "not_found"


class MethodNotAllowed(JadeError):
    status = 405
    code = "method_not_allowed"


class Conflict(JadeError):
    status = 409
    code = "conflict"


class PayloadTooLarge(JadeError):
    status = 413
    code = "payload_too_large"


class UnsupportedMediaType(JadeError):
    status = 415
    code = "unsupported_media_type"


class RateLimited(JadeError):
    status = 429
    code = "rate_limit_exceeded"

    def __init__(self, message: str, *, retry_after: int, **extra: Any) -> None:
        super().__init__(message, retry_after=retry_after, **extra)
        self.headers["Retry-After"] = str(retry_after)


class Unavailable(JadeError):
    status = 503
    code = "unavailable"


class IndexBehind(Unavailable):
    """A vector write refused while the search index's graphs are too far behind the log (the
    ``index.lag_max_vectors`` setting) and did not catch up within ``index.lag_wait_seconds``.
    Nothing was written; retry (``Retry-After``)."""

    code = "index_behind"

    def __init__(self, message: str, *, retry_after: int = 1, **extra: Any) -> None:
        super().__init__(message, **extra)
        self.headers["Retry-After"] = str(retry_after)


class ModelUnavailable(Unavailable):
    """A text model (embeddings, reranking) cannot be loaded here: its package, onnxruntime or
    its file is missing. The message names what and how to install it (``missing``)."""

    code = "model_unavailable"


class ReadOnly(Unavailable):
    code = "read_only"


class NotPrimary(Unavailable):
    """A write sent to a node that is not the primary (a replica, or a primary that lost its
    leader lease). ``primary``, when known, is also sent as the ``X-Primary-Url`` header."""

    code = "not_primary"

    def __init__(self, message: str, **extra: Any) -> None:
        super().__init__(message, **extra)
        if extra.get("primary"):
            self.headers["X-Primary-Url"] = str(extra["primary"])


class NotReplicated(Unavailable):
    """A write that IS durable in the primary's log (and applied there) but that fewer than
    ``replication.synchronous_replicas`` replicas acknowledged within
    ``replication.synchronous_timeout_seconds``: not reported as written to N replicas, never
    reported as not written. The body says ``written: true`` and its ``lsn``."""

    code = "replication_timeout"


class RestoreIncomplete(Unavailable):
    """The data directory is an unfinished restore (its ``RESTORE_INCOMPLETE`` marker is still
    there: the restore was killed or failed before it completed): nothing may serve it."""

    code = "restore_incomplete"


class InsufficientStorage(JadeError):
    """A write refused because the data directory's disk is full (or below the reserve kept for
    checkpoints and snapshots). Nothing of it was written; reads go on. Retry once space is
    freed (``Retry-After``)."""

    status = 507
    code = "insufficient_storage"

    def __init__(self, message: str, *, retry_after: int = 10, **extra: Any) -> None:
        super().__init__(message, **extra)
        self.headers["Retry-After"] = str(retry_after)


class StorageDamaged(JadeError):
    """A stored value or file does not match its checksum (or is cut short): it is refused, never
    served. ``file`` names what is damaged."""

    status = 500
    code = "data_damaged"


class Internal(JadeError):
    status = 500
    code = "internal_error"
