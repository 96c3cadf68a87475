"""May they: the one permission check (``authorize``) for every route, behind a bounded TTL
cache keyed by the auth store's version, so a grant, revocation or role change takes effect at
once. The decision reads roles and key scopes from the ``Principal``, and database ownership
and grants from the stores. ``check_key`` applies the route table's key rule to a caller
through an API key (what a key may never do, whatever its scopes)."""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from jade.auth.principal import ADMIN, Principal, implied
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
        if p.scopes and action in ("read", "write", "create") and action not in implied(p.scopes):
            return False  # a key restricted by scopes ("admin" and "write" imply the narrower)
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

    def check_key(self, p: Principal, rule: str, target_user: str | None = None) -> None:
        """The route's key rule (``jade.http.routes.KEY_RULES``) for ``p``; a login token (or the
        loopback) passes every rule. Through an API key: "any" passes; "none" is refused
        (``token_required``: the account's password, 2FA); "admin" needs a key with admin
        authority (the admin role and the "admin" scope, or no scopes:
        ``admin_key_required``), and never acts on the key's own account (``target_user``, the
        route's ``{uid}``: ``token_required``). A leaked key, even a read-only one, must not be
        able to take the account over or hand it to someone else."""
        if p.via != "key" or rule == "any":
            return
        if rule == "none" or (target_user is not None and target_user == p.user_id):
            self._denied.inc()
            raise Forbidden(
                "this route changes the account's own security (password, two-factor, name, "
                "email, roles, activation): it needs a login token, not an API key",
                code="token_required",
            )
        if rule != "admin":
            raise ValueError(f"unknown key rule {rule!r}")
        if not p.is_admin:
            self._denied.inc()
            raise Forbidden(
                "through an API key this route needs an admin's key with the 'admin' scope; "
                "or use a login token",
                code="admin_key_required",
            )

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
