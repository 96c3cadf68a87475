"""Throttling, in memory: the rate limits (login, register, forgot-password, API), and failed
logins counted per user and per IP until a threshold imposes an account lock or an IP block
(the caller records those as log commands, so they survive restarts and reach replicas)."""

from __future__ import annotations

import threading
import time
from collections import deque
from typing import Any

from jade.auth.clock import now_ms
from jade.errors import RateLimited
from jade.metrics import Metrics
from jade.settings import Settings


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


class Limits:
    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        self.settings = settings
        self.metrics = metrics
        s = settings
        self.login_limit = RateLimiter(s.login_rate_per_minute, 60)
        self.register_limit = RateLimiter(s.register_rate_per_hour, 3600)
        self.forgot_limit = RateLimiter(s.forgot_rate_per_hour, 3600)
        self.api_limit = RateLimiter(s.api_rate_per_minute, 60)
        self._fail_user: dict[str, int] = {}
        self._fail_ip: dict[str, deque[float]] = {}

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
