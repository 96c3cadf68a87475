"""Passwords: the strength policy (per environment, from settings) and argon2id hashing and
verification (pynacl), cost from settings."""

from __future__ import annotations

import secrets
import string

import nacl.exceptions
import nacl.pwhash

from jade.errors import InvalidArgument
from jade.settings import Settings


class Passwords:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._dummy_hash = ""

    def check_strength(self, password: object, field_name: str = "password") -> str:
        if not isinstance(password, str) or not password:
            raise InvalidArgument(
                f"'{field_name}' must be a non-empty string", code="missing_field"
            )
        s = self.settings
        if len(password) > 1024:
            raise InvalidArgument(f"'{field_name}' is longer than 1024 characters")
        problems = []
        if len(password) < s.password_min_length:
            problems.append(f"at least {s.password_min_length} characters")
        if s.password_require_classes:
            if not any(c.isupper() for c in password):
                problems.append("an upper-case letter")
            if not any(c.islower() for c in password):
                problems.append("a lower-case letter")
            if not any(c.isdigit() for c in password):
                problems.append("a digit")
            if not any(c in string.punctuation for c in password):
                problems.append("a punctuation character")
        if problems:
            raise InvalidArgument(
                "weak password: needs " + ", ".join(problems), code="weak_password"
            )
        return password

    def hash_password(self, password: str) -> str:
        """argon2id; slow on purpose — call it off the event loop."""
        s = self.settings
        return nacl.pwhash.argon2id.str(
            password.encode(), opslimit=s.argon2_opslimit, memlimit=s.argon2_memlimit
        ).decode()

    def waste_verify(self, password: str) -> None:
        """As slow as a real ``verify_password``, for logins of unknown or inactive users: the
        reply time must not tell which user names exist."""
        if not self._dummy_hash:
            self._dummy_hash = self.hash_password(secrets.token_hex(16))
        self.verify_password(self._dummy_hash, password)

    @staticmethod
    def verify_password(hashed: str, password: str) -> bool:
        try:
            return bool(nacl.pwhash.verify(hashed.encode(), password.encode()))
        except (nacl.exceptions.InvalidkeyError, nacl.exceptions.CryptoError, ValueError):
            return False
