"""Tokens: JWT HS256 signed with ``JWT_SECRET``; ``JWT_SECRET_PREVIOUS`` still verifies during a
rotation. A token is alive while its session exists in the auth store (logout revokes it) and
it was issued after the user's ``tokens_valid_after`` (deactivation, password change)."""

from __future__ import annotations

import secrets
from collections.abc import Callable
from typing import Any

import jwt

from jade.auth.clock import now_ms
from jade.auth.principal import Principal
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
        jti = secrets.token_hex(16)
        iat = now_ms()
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
        if self._store().session(jti) is None:
            raise Unauthorized("token revoked or unknown", code="token_revoked")
        user = self._store().user(str(claims["sub"]))
        if user is None or not user["is_active"]:
            raise Unauthorized("user inactive or deleted", code="user_inactive")
        if int(claims.get("iat_ms", 0)) < user["tokens_valid_after"]:
            raise Unauthorized("token revoked", code="token_revoked")
        return Principal(
            user["user_id"],
            user["username"],
            tuple(user["roles"]),
            "token",
            jti=jti,
            enroll_only=claims.get("scope") == "totp_enroll",
            expires_ms=int(claims["exp"]) * 1000,
        )
