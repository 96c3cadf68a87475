"""May they: the one permission check (``authorize``) for every route, behind a bounded TTL
cache keyed by the auth store's version, so a grant, revocation or role change takes effect at
once. The decision reads roles and key scopes from the ``Principal``, and database ownership
and grants from the stores."""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from jade.auth.principal import ADMIN, Principal
from jade.auth.store import AuthStore
from jade.errors import Forbidden
from jade.metrics import Metrics
from jade.settings import Settings
from jade.stores.data import DataStore


@dataclass(slots=True)
class _Cached:
    allowed: bool
    expires: float


class Permissions:
    def __init__(
        self,
        settings: Settings,
        metrics: Metrics,
        store: Callable[[], AuthStore],
        data: Callable[[], DataStore],
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self._store = store  # the engine's stores, once it is open
        self._data = data
        self._cache: OrderedDict[tuple[Any, ...], _Cached] = OrderedDict()
        self._cache_lock = threading.Lock()
        # labelled children bound once: .labels() costs more than the check itself
        self._granted = metrics.permission_checks.labels("granted")
        self._denied = metrics.permission_checks.labels("denied")

    def authorize(self, p: Principal, action: str, db_id: str | None = None) -> None:
        """Raise ``Forbidden`` unless ``p`` may do ``action`` ("read" | "write" | "create" |
        "admin") on ``db_id``. Cached per (user, roles, scopes, action, db, auth version)."""
        t0 = time.perf_counter()
        m = self.metrics
        key = (p.user_id, p.roles, p.scopes, action, db_id, self._store().version)
        now = time.monotonic()
        allowed: bool | None = None
        size = self.settings.permission_cache_size
        if size:
            with self._cache_lock:
                hit = self._cache.get(key)
                if hit is not None and hit.expires > now:
                    self._cache.move_to_end(key)
                    allowed = hit.allowed
        if allowed is None:
            m.permission_cache_misses.inc()
            allowed = self._decide(p, action, db_id)
            if size:
                with self._cache_lock:
                    ttl = self.settings.permission_cache_ttl_seconds
                    self._cache[key] = _Cached(allowed, now + ttl)
                    while len(self._cache) > size:
                        self._cache.popitem(last=False)
        else:
            m.permission_cache_hits.inc()
        (self._granted if allowed else self._denied).inc()
        m.permission_check_duration.observe(time.perf_counter() - t0)
        if not allowed:
            raise Forbidden(
                f"permission denied: {action}" + (f" on {db_id}" if db_id else ""),
                code="permission_denied",
            )

    def _decide(self, p: Principal, action: str, db_id: str | None) -> bool:
        if action == "replicate":
            return (p.is_replicator_only or ADMIN in p.roles) and (
                not p.scopes or "replicate" in p.scopes
            )
        if p.is_replicator_only:
            return False
        if (
            p.scopes
            and action in ("read", "write", "create")
            and action not in p.scopes
            and not ("write" in p.scopes and action in ("read", "create"))
        ):
            return False  # a key restricted by scopes
        if p.is_admin:
            return True
        if action in ("create", "list"):
            return True
        if action in ("admin", "replicate"):
            return False
        if db_id is None:
            return False
        db = self._data().database(db_id)
        if db is None:
            return True  # the handler answers 404; existence is not a secret worth a 403
        if db.get("owner") == p.user_id:
            return True
        grant = self._store().grant(db_id, p.user_id)
        return grant == "write" or (grant == "read" and action == "read")

    def visible(self, p: Principal, dbs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        if p.is_admin:
            return dbs
        out = []
        for db in dbs:
            try:
                self.authorize(p, "read", db["id"])
                out.append(db)
            except Forbidden:
                pass
        return out

    def clear_cache(self) -> None:
        with self._cache_lock:
            self._cache.clear()
