"""The auth facade: ``AuthService``, the one object the HTTP layer holds for authentication and
authorization, composed of its parts: passwords (``passwords.py``), tokens (``tokens.py``), API
keys (``apikeys.py``), the permission check (``permissions.py``), throttling (``limits.py``) and
client addresses with their IP blocks (``addresses.py``).

It owns authentication itself: the credential in the headers becomes a ``Principal`` (through
a token or an API key), cached per auth-store version.
"""

from __future__ import annotations

import hmac
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from jade.auth.addresses import Addresses
from jade.auth.apikeys import KEY_PREFIX, ApiKeys
from jade.auth.clock import now_ms
from jade.auth.limits import Limits
from jade.auth.passwords import Passwords
from jade.auth.permissions import Permissions
from jade.auth.principal import Principal
from jade.auth.store import AuthStore
from jade.auth.tokens import Tokens
from jade.errors import Unauthorized
from jade.metrics import Metrics
from jade.settings import Settings
from jade.stores.data import DataStore


@dataclass
class AuthService:
    settings: Settings
    engine: Any  # jade.engine.Engine; its stores exist once it is open
    metrics: Metrics
    secret: str
    _principals: dict[str, tuple[Principal, int]] = field(default_factory=dict)
    _ok_series: dict[str, Any] = field(default_factory=dict)
    # the embedded client's credential (jadevectordb_server.embedded): made by this process for
    # itself, never stored, logged or written to the data directory; valid while the process
    # lives. None: there is none (every server started by ``jade serve``)
    process_credential: tuple[str, Principal] | None = None

    @property
    def store(self) -> AuthStore:
        return self.engine.auth  # type: ignore[no-any-return]

    @property
    def data(self) -> DataStore:
        return self.engine.store  # type: ignore[no-any-return]

    def __post_init__(self) -> None:
        s, engine = self.settings, self.engine
        self.passwords = Passwords(s)
        self.tokens = Tokens(s, self.secret, lambda: engine.auth)
        self.apikeys = ApiKeys(lambda: engine.auth)
        self.permissions = Permissions(s, self.metrics, lambda: engine.auth, lambda: engine.store)
        self.limits = Limits(s, self.metrics)
        self.addresses = Addresses(s, lambda: engine.auth)
        # The callers' API: the parts' bound methods and state, not wrappers (no extra call
        # per request).
        self.check_strength = self.passwords.check_strength
        self.hash_password = self.passwords.hash_password
        self.waste_verify = self.passwords.waste_verify
        self.verify_password = self.passwords.verify_password
        self.issue_token = self.tokens.issue_token
        self.key_usage = self.apikeys.usage  # key_id -> (count, ms)
        self.authorize = self.permissions.authorize
        self.visible = self.permissions.visible
        self.client_ip = self.addresses.client_ip
        self.is_loopback = self.addresses.is_loopback
        self.check_blocked = self.addresses.check_blocked
        self.login_limit = self.limits.login_limit
        self.register_limit = self.limits.register_limit
        self.forgot_limit = self.limits.forgot_limit
        self.api_limit = self.limits.api_limit
        self.limit = self.limits.limit
        self.note_failure = self.limits.note_failure
        self.note_success = self.limits.note_success
        self.forget_ip = self.limits.forget_ip
        self.failures_of = self.limits.failures_of
        self.cleanup = self.limits.cleanup

    # -- who is calling ---------------------------------------------------------------------
    @staticmethod
    def credential(headers: Mapping[str, str]) -> str | None:
        auth = headers.get("Authorization", "")
        if auth:
            scheme, _, value = auth.partition(" ")
            if scheme.lower() in ("bearer", "apikey") and value.strip():
                return _printable(value.strip())
            raise Unauthorized(
                "unsupported Authorization header (use Bearer or ApiKey)",
                code="invalid_credentials",
            )
        key = headers.get("X-API-Key", "")
        return _printable(key.strip()) or None

    def authenticate(self, headers: Mapping[str, str]) -> Principal | None:
        """The caller, None when no credential was sent; ``Unauthorized`` for a bad one."""
        t0 = time.perf_counter()
        cred = self.credential(headers)
        if cred is None:
            return None
        local = self.process_credential
        if local is not None and hmac.compare_digest(cred.encode(), local[0].encode()):
            return local[1]
        try:
            # Verified credentials are cached per auth-store version: any logout, revocation,
            # deactivation or role change bumps the version, so the cache is never stale.
            version = self.store.version
            hit = self._principals.get(cred)
            if hit is not None and hit[1] == version and (
                    hit[0].expires_ms is None or hit[0].expires_ms > now_ms()):
                p = hit[0]
                if p.key_id is not None:
                    self.apikeys.note_use(p.key_id)
            else:
                if cred.count(".") == 2 and not cred.startswith(KEY_PREFIX):
                    p = self.tokens.principal(cred)
                else:
                    p = self.apikeys.principal(cred)
                if len(self._principals) >= 10_000:
                    self._principals.clear()
                self._principals[cred] = (p, version)
            ok = self._ok_series.get(p.via)
            if ok is None:
                ok = self._ok_series[p.via] = self.metrics.auth_requests.labels(p.via, "success")
            ok.inc()
            return p
        except Unauthorized as exc:
            self.metrics.auth_requests.labels("credential", "failure").inc()
            self.metrics.auth_errors.labels(exc.code).inc()
            raise
        finally:
            self.metrics.auth_duration.observe(time.perf_counter() - t0)

    def clear_cache(self) -> None:
        """Forget cached permission decisions and verified credentials."""
        self.permissions.clear_cache()
        self._principals.clear()


def _printable(cred: str) -> str:
    """Tokens and API keys are printable ASCII: anything else (bytes that are not UTF-8 reach
    here as surrogates) is a bad credential, not a crash."""
    if not (cred.isascii() and cred.isprintable()):
        raise Unauthorized("malformed credential: tokens and API keys are printable ASCII",
                           code="invalid_credentials")
    return cred
