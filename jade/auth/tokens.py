"""Tokens: JWT HS256 signed with ``JWT_SECRET``; ``JWT_SECRET_PREVIOUS`` still verifies during a
rotation. The signature only says the token was made with a secret; the auth store says whether
it is alive: its session (the ``jti``) must exist, belong to the token's subject and not have
expired (so someone who learns a secret cannot make a session theirs or longer), and the token
and session must be newer than the user's ``tokens_valid_after`` (deactivation, password
change)."""

from __future__ import annotations

import secrets
from collections.abc import Callable
from typing import Any

import jwt

from jade.auth.clock import now_ms
from jade.auth.principal import ADMIN, Principal
from jade.auth.store import AuthStore
from jade.errors import Unauthorized
from jade.settings import Settings


class Tokens:
    def __init__(self, settings: Settings, secret: str, store: Callable[[], AuthStore]) -> None:
        self.settings = settings
        self.secret = secret
        self._store = store  # the engine's, once it is open

    def issue_token(
        self, user: dict[str, Any], *, enroll_only: bool = False
    ) -> tuple[str, str, int]:
        """(token, jti, expiry ms). Issued no earlier than the user's ``tokens_valid_after``,
        so a token issued right after a revocation (the one a password change hands back) is
        never older than it, whatever the clock did."""
        jti = secrets.token_hex(16)
        iat = max(now_ms(), int(user.get("tokens_valid_after", 0)))
        exp = iat + self.settings.token_ttl_seconds * 1000
        claims = {
            "sub": user["user_id"],
            "jti": jti,
            "iat": iat // 1000,
            "iat_ms": iat,
            "exp": -(-exp // 1000),  # rounded up: a token never dies before its TTL
            "name": user["username"],
        }
        if enroll_only:
            claims["scope"] = "totp_enroll"
        return jwt.encode(claims, self.secret, algorithm="HS256"), jti, exp

    def _decode(self, token: str) -> dict[str, Any]:
        secrets_ = [self.secret] + (
            [self.settings.jwt_secret_previous] if self.settings.jwt_secret_previous else []
        )
        last: Exception | None = None
        for key in secrets_:
            try:
                return jwt.decode(
                    token, key, algorithms=["HS256"], options={"require": ["exp", "sub", "jti"]}
                )
            except jwt.ExpiredSignatureError:
                raise Unauthorized("token expired", code="token_expired") from None
            except jwt.InvalidTokenError as exc:
                last = exc
        raise Unauthorized("invalid token", code="invalid_token") from last

    def principal(self, token: str) -> Principal:
        """The caller a token names; ``Unauthorized`` unless it is valid and alive."""
        claims = self._decode(token)
        jti = str(claims["jti"])
        session = self._store().session(jti)
        if session is None or session["user_id"] != str(claims["sub"]):
            if session is None:  # ended with its user's deactivation or deletion: say so
                owner = self._store().user(str(claims["sub"]))
                if owner is None or not owner["is_active"]:
                    raise Unauthorized("user inactive or deleted", code="user_inactive")
            raise Unauthorized("token revoked or unknown", code="token_revoked")
        if session["expires_at"] <= now_ms():
            raise Unauthorized("token expired", code="token_expired")
        user = self._store().user(session["user_id"])
        if user is None or not user["is_active"]:
            raise Unauthorized("user inactive or deleted", code="user_inactive")
        valid_after = user["tokens_valid_after"]
        if int(claims.get("iat_ms", 0)) < valid_after or session["created_at"] < valid_after:
            raise Unauthorized("token revoked", code="token_revoked")
        # an admin without TOTP where admins need it may only enrol, whether the token was
        # issued so or the admin role came after the login
        enroll_only = claims.get("scope") == "totp_enroll" or (
            self.settings.require_admin_totp
            and ADMIN in user["roles"]
            and not user.get("totp_enabled")
        )
        return Principal(
            user["user_id"],
            user["username"],
            tuple(user["roles"]),
            "token",
            jti=jti,
            enroll_only=enroll_only,
            must_change_password=bool(user.get("must_change_password")),
            expires_ms=min(int(claims["exp"]) * 1000, int(session["expires_at"])),
        )
