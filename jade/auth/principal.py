"""Who is calling: a ``Principal`` (a user, through a token, an API key or the loopback), the
two roles the checks know by name (``ADMIN``, ``REPLICATOR``), and what an API key's scopes
imply (``implied``)."""

from __future__ import annotations

from dataclasses import dataclass

ADMIN = "admin"
REPLICATOR = "replicator"

# A key's scope stands for the narrower ones too: "admin" can write, "write" can read and create
# databases. "replicate" stands alone.
_IMPLIES = {ADMIN: ("write", "read", "create"), "write": ("read", "create")}


def implied(scopes: tuple[str, ...] | list[str]) -> frozenset[str]:
    """The scopes ``scopes`` stand for, the narrower ones included."""
    out = set(scopes)
    for s in scopes:
        out.update(_IMPLIES.get(s, ()))
    return frozenset(out)


@dataclass(frozen=True, slots=True)
class Principal:
    user_id: str
    username: str
    roles: tuple[str, ...]
    via: str  # "token" | "key" | "loopback" (an API key: see ``jade.http.routes`` KEY_RULES)
    jti: str | None = None
    key_id: str | None = None
    scopes: tuple[str, ...] = ()
    enroll_only: bool = False  # an admin without TOTP where admins need it: may only enrol
    must_change_password: bool = False  # a token of a user with a temporary password
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
