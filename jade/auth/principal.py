"""Who is calling: a ``Principal`` (a user, through a token, an API key or the loopback), and
the two roles the checks know by name (``ADMIN``, ``REPLICATOR``)."""

from __future__ import annotations

from dataclasses import dataclass

ADMIN = "admin"
REPLICATOR = "replicator"


@dataclass(frozen=True, slots=True)
class Principal:
    user_id: str
    username: str
    roles: tuple[str, ...]
    via: str  # "token" | "key" | "loopback"
    jti: str | None = None
    key_id: str | None = None
    scopes: tuple[str, ...] = ()
    enroll_only: bool = False
    expires_ms: int | None = None  # when the credential stops being valid (None: never)

    @property
    def is_admin(self) -> bool:
        """The admin role, through a credential not restricted away from it: an API key with
        scopes acts as an admin only when ``admin`` is one of them."""
        return ADMIN in self.roles and (not self.scopes or ADMIN in self.scopes)

    @property
    def is_replicator_only(self) -> bool:
        return REPLICATOR in self.roles and ADMIN not in self.roles


LOOPBACK_ADMIN = Principal("system", "loopback-admin", (ADMIN,), "loopback")
