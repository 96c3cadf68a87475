"""Authentication and authorization: who is calling, and may they.

- Passwords: argon2id (pynacl), cost from settings; strength policy per environment.
- Tokens: JWT HS256 signed with ``JWT_SECRET``; ``JWT_SECRET_PREVIOUS`` still verifies during a
  rotation. A token is alive while its session exists in the auth store (logout revokes it) and
  it was issued after the user's ``tokens_valid_after`` (deactivation, password change).
- API keys: ``jadevdb_`` + 32 random bytes hex; only a SHA-256 digest is stored (keys are
  high-entropy, so a fast digest is enough and keeps every request cheap).
- One permission check (``authorize``) for every route, behind a bounded TTL cache keyed by the
  auth store's version, so a grant, revocation or role change takes effect at once.
- Throttling: lockout, failed-login IP blocks and rate limits (in memory; a lock or block that
  is imposed is a log record, so it survives restarts and reaches replicas).
"""

from __future__ import annotations

import hashlib
import ipaddress
import secrets
import string
import threading
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Any

import jwt
import nacl.exceptions
import nacl.pwhash

from jade.auth.store import AuthStore
from jade.errors import Forbidden, InvalidArgument, RateLimited, Unauthorized
from jade.metrics import Metrics
from jade.settings import Settings
from jade.stores.data import DataStore, VersionedCache

KEY_PREFIX = "jadevdb_"
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


def now_ms() -> int:
    return int(time.time() * 1000)


def digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


class RateLimiter:
    """Fixed-window counters per key: ``hit(key)`` returns 0 when allowed, else the seconds until
    the window resets. Bounded: old windows are dropped as new ones start."""

    def __init__(self, limit: int, window: float) -> None:
        self.limit = limit
        self.window = window
        self._hits: dict[str, tuple[float, int]] = {}
        self._lock = threading.Lock()

    def hit(self, key: str) -> int:
        if self.limit <= 0:
            return 0
        now = time.monotonic()
        with self._lock:
            start, n = self._hits.get(key, (now, 0))
            if now - start >= self.window:
                start, n = now, 0
            if n >= self.limit:
                return max(1, int(self.window - (now - start)) + 1)
            self._hits[key] = (start, n + 1)
            if len(self._hits) > 100_000:
                self.cleanup()
            return 0

    def cleanup(self) -> int:
        now = time.monotonic()
        old = [k for k, (s, _) in self._hits.items() if now - s >= self.window]
        for k in old:
            self._hits.pop(k, None)
        return len(old)


@dataclass(slots=True)
class _Cached:
    allowed: bool
    expires: float


@dataclass
class AuthService:
    settings: Settings
    engine: Any  # jade.engine.Engine; its stores exist once it is open
    metrics: Metrics
    secret: str
    _cache: OrderedDict[tuple[Any, ...], _Cached] = field(default_factory=OrderedDict)
    _cache_lock: threading.Lock = field(default_factory=threading.Lock)
    _fail_user: dict[str, int] = field(default_factory=dict)
    _fail_ip: dict[str, deque[float]] = field(default_factory=dict)
    key_usage: dict[str, tuple[int, int]] = field(default_factory=dict)  # key_id -> (count, ms)
    _principals: dict[str, tuple[Principal, int]] = field(default_factory=dict)
    _ok_series: dict[str, Any] = field(default_factory=dict)
    _dummy_hash: str = ""

    @property
    def store(self) -> AuthStore:
        return self.engine.auth  # type: ignore[no-any-return]

    @property
    def data(self) -> DataStore:
        return self.engine.store  # type: ignore[no-any-return]

    def __post_init__(self) -> None:
        s = self.settings
        # labelled children bound once: .labels() costs more than the check itself
        self._granted = self.metrics.permission_checks.labels("granted")
        self._denied = self.metrics.permission_checks.labels("denied")
        self.login_limit = RateLimiter(s.login_rate_per_minute, 60)
        self.register_limit = RateLimiter(s.register_rate_per_hour, 3600)
        self.forgot_limit = RateLimiter(s.forgot_rate_per_hour, 3600)
        self.api_limit = RateLimiter(s.api_rate_per_minute, 60)
        # ip -> its block record (or None); a block comes and goes with an auth record
        self._blocks = VersionedCache(lambda: self.store.version)
        self.trusted = {p.strip() for p in s.trusted_proxies.split(",") if p.strip()}

    # -- passwords --------------------------------------------------------------------------
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

    # -- tokens -----------------------------------------------------------------------------
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

    # -- who is calling ---------------------------------------------------------------------
    @staticmethod
    def credential(headers: Any) -> str | None:
        auth = headers.get("Authorization", "")
        if auth:
            scheme, _, value = auth.partition(" ")
            if scheme.lower() in ("bearer", "apikey") and value.strip():
                return value.strip()
            raise Unauthorized(
                "unsupported Authorization header (use Bearer or ApiKey)",
                code="invalid_credentials",
            )
        key = headers.get("X-API-Key", "")
        return key.strip() or None

    def authenticate(self, headers: Any) -> Principal | None:
        """The caller, None when no credential was sent; ``Unauthorized`` for a bad one."""
        t0 = time.perf_counter()
        cred = self.credential(headers)
        if cred is None:
            return None
        try:
            # Verified credentials are cached per auth-store version: any logout, revocation,
            # deactivation or role change bumps the version, so the cache is never stale.
            version = self.store.version
            hit = self._principals.get(cred)
            if hit is not None and hit[1] == version and (
                    hit[0].expires_ms is None or hit[0].expires_ms > now_ms()):
                p = hit[0]
                if p.key_id is not None:
                    n, _ = self.key_usage.get(p.key_id, (0, 0))
                    self.key_usage[p.key_id] = (n + 1, now_ms())
            else:
                if cred.count(".") == 2 and not cred.startswith(KEY_PREFIX):
                    p = self._from_token(cred)
                else:
                    p = self._from_key(cred)
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

    def _from_token(self, token: str) -> Principal:
        claims = self._decode(token)
        jti = str(claims["jti"])
        if self.store.session(jti) is None:
            raise Unauthorized("token revoked or unknown", code="token_revoked")
        user = self.store.user(str(claims["sub"]))
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

    def _from_key(self, key: str) -> Principal:
        rec = self.store.key_by_hash(digest(key))
        if rec is None or not rec["is_active"]:
            raise Unauthorized("invalid or revoked API key", code="invalid_api_key")
        if rec.get("expires_at") and rec["expires_at"] < now_ms():
            raise Unauthorized("API key expired", code="api_key_expired")
        user = self.store.user(rec["user_id"])
        if user is None or not user["is_active"]:
            raise Unauthorized("user inactive or deleted", code="user_inactive")
        n, _ = self.key_usage.get(rec["key_id"], (0, 0))
        self.key_usage[rec["key_id"]] = (n + 1, now_ms())
        return Principal(
            user["user_id"],
            user["username"],
            tuple(user["roles"]),
            "key",
            key_id=rec["key_id"],
            scopes=tuple(rec.get("permissions", [])),
            expires_ms=rec.get("expires_at") or None,
        )

    # -- may they ---------------------------------------------------------------------------
    def authorize(self, p: Principal, action: str, db_id: str | None = None) -> None:
        """Raise ``Forbidden`` unless ``p`` may do ``action`` ("read" | "write" | "create" |
        "admin") on ``db_id``. Cached per (user, roles, scopes, action, db, auth version)."""
        t0 = time.perf_counter()
        m = self.metrics
        key = (p.user_id, p.roles, p.scopes, action, db_id, self.store.version)
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
        db = self.data.database(db_id)
        if db is None:
            return True  # the handler answers 404; existence is not a secret worth a 403
        if db.get("owner") == p.user_id:
            return True
        grant = self.store.grant(db_id, p.user_id)
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
        self._principals.clear()

    # -- client address and throttling -------------------------------------------------------
    def client_ip(self, peer: str | None, headers: Any) -> str:
        peer = peer or ""
        if peer in self.trusted:
            fwd = headers.get("X-Forwarded-For", "")
            if fwd:
                return fwd.split(",")[0].strip()
            real = headers.get("X-Real-IP", "")
            if real:
                return real.strip()
        return peer

    @staticmethod
    def is_loopback(ip: str) -> bool:
        try:
            return ipaddress.ip_address(ip).is_loopback
        except ValueError:
            return False

    def check_blocked(self, ip: str) -> None:
        if not ip:
            return
        block = self._blocks.get(ip, lambda: self.store.block(ip))
        if block is not None and block["until"] > now_ms():
            retry = max(1, (block["until"] - now_ms()) // 1000)
            exc = Forbidden(
                f"IP {ip} is blocked after repeated failed logins",
                code="ip_blocked",
                reason=block.get("reason", ""),
                retry_after=retry,
            )
            exc.headers["Retry-After"] = str(retry)
            raise exc

    def limit(self, limiter: RateLimiter, key: str, name: str) -> None:
        wait = limiter.hit(key)
        if wait:
            self.metrics.rate_limit_exceeded.labels(name).inc()
            raise RateLimited(f"too many {name} requests; retry in {wait} s", retry_after=wait)

    def note_failure(self, user: dict[str, Any] | None, ip: str) -> tuple[int | None, int | None]:
        """Count a failed login. Returns (lock-until for the user, block-until for the IP) when
        a threshold is crossed, for the caller to record as log commands."""
        s = self.settings
        self.metrics.failed_logins.inc()
        lock_until = block_until = None
        if user is not None and s.lockout_threshold:
            n = self._fail_user.get(user["user_id"], 0) + 1
            self._fail_user[user["user_id"]] = n
            if n >= s.lockout_threshold:
                lock_until = now_ms() + s.lockout_seconds * 1000
                self._fail_user[user["user_id"]] = 0
                self.metrics.locked_accounts.inc()
        if ip and s.ip_block_threshold:
            q = self._fail_ip.setdefault(ip, deque())
            t = time.monotonic()
            q.append(t)
            while q and t - q[0] > s.ip_block_window_seconds:
                q.popleft()
            if len(q) >= s.ip_block_threshold:
                block_until = now_ms() + s.ip_block_seconds * 1000
                q.clear()
                self.metrics.ip_blocks.inc()
        return lock_until, block_until

    def note_success(self, user_id: str, ip: str) -> None:
        self._fail_user.pop(user_id, None)

    def forget_ip(self, ip: str) -> None:
        self._fail_ip.pop(ip, None)

    def failures_of(self, ip: str) -> int:
        return len(self._fail_ip.get(ip, ()))

    def cleanup(self) -> int:
        """Drop expired rate-limit windows and stale failure counters (scheduled)."""
        n = sum(
            x.cleanup()
            for x in (self.login_limit, self.register_limit, self.forgot_limit, self.api_limit)
        )
        t = time.monotonic()
        for ip in [
            ip
            for ip, q in self._fail_ip.items()
            if not q or t - q[-1] > self.settings.ip_block_window_seconds
        ]:
            self._fail_ip.pop(ip, None)
            n += 1
        return n
