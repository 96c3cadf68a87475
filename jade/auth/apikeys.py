"""API keys: ``jadevdb_`` + 32 random bytes hex; only a SHA-256 digest is stored (keys are
high-entropy, so a fast digest is enough and keeps every request cheap). Their use is counted in
memory (``usage``: key id -> (count, last use in ms))."""

from __future__ import annotations

import hashlib
from collections.abc import Callable

from jade.auth.clock import now_ms
from jade.auth.principal import Principal
from jade.auth.store import AuthStore
from jade.errors import Unauthorized

KEY_PREFIX = "jadevdb_"


def digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


class ApiKeys:
    def __init__(self, store: Callable[[], AuthStore]) -> None:
        self._store = store  # the engine's, once it is open
        self.usage: dict[str, tuple[int, int]] = {}  # key_id -> (count, ms)

    def note_use(self, key_id: str) -> None:
        n, _ = self.usage.get(key_id, (0, 0))
        self.usage[key_id] = (n + 1, now_ms())

    def principal(self, key: str) -> Principal:
        """The caller a key names; ``Unauthorized`` unless it is active and unexpired."""
        rec = self._store().key_by_hash(digest(key))
        if rec is None or not rec["is_active"]:
            raise Unauthorized("invalid or revoked API key", code="invalid_api_key")
        if rec.get("expires_at") and rec["expires_at"] < now_ms():
            raise Unauthorized("API key expired", code="api_key_expired")
        user = self._store().user(rec["user_id"])
        if user is None or not user["is_active"]:
            raise Unauthorized("user inactive or deleted", code="user_inactive")
        self.note_use(rec["key_id"])
        return Principal(
            user["user_id"],
            user["username"],
            tuple(user["roles"]),
            "key",
            key_id=rec["key_id"],
            scopes=tuple(rec.get("permissions", [])),
            expires_ms=rec.get("expires_at") or None,
        )
