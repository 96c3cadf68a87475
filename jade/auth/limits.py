"""Throttling, in memory: the rate limits (login, register, forgot-password, API), and failed
logins counted per user name and per IP until a threshold imposes a lock or an IP block (the
caller records an existing user's lock and a block as log commands, so they survive restarts
and reach replicas).

A name that names nobody is counted and locked exactly like one that does (its lock is held
here, ``lock_name``), so the login answers never tell which user names exist. Both tables are
bounded (least recently failed dropped first)."""

from __future__ import annotations

import threading
import time
from collections import OrderedDict, deque

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
        self.names_max = 100_000  # user names whose failures and locks are remembered
        self._fail_name: OrderedDict[str, int] = OrderedDict()  # lower-case name -> failures
        self._locked_name: OrderedDict[str, int] = OrderedDict()  # unknown name -> until (ms)
        self._fail_ip: dict[str, deque[float]] = {}
        self.lock_seconds = 0.005  # how long recording a lock takes (moving average)

    def limit(self, limiter: RateLimiter, key: str, name: str) -> None:
        wait = limiter.hit(key)
        if wait:
            self.metrics.rate_limit_exceeded.labels(name).inc()
            raise RateLimited(f"too many {name} requests; retry in {wait} s", retry_after=wait)

    def note_failure(self, name: str, ip: str) -> tuple[int | None, int | None]:
        """Count a failed login for the user name ``name`` (whether or not it names a user).
        Returns (lock-until for the name, block-until for the IP) when a threshold is crossed,
        for the caller to record (``lock_name`` for a name that names nobody)."""
        s = self.settings
        self.metrics.failed_logins.inc()
        lock_until = block_until = None
        if s.lockout_threshold:
            key = name.lower()
            n = self._fail_name.pop(key, 0) + 1
            self._fail_name[key] = n  # the most recent at the end
            if len(self._fail_name) > self.names_max:
                self._fail_name.popitem(last=False)
            if n >= s.lockout_threshold:
                lock_until = now_ms() + s.lockout_seconds * 1000
                self._fail_name[key] = 0
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

    def note_success(self, name: str, ip: str) -> None:
        self._fail_name.pop(name.lower(), None)

    def lock_name(self, name: str, until: int) -> None:
        """Lock a user name that names nobody, in memory, as an existing user's lock is
        recorded in the store."""
        key = name.lower()
        self._locked_name.pop(key, None)
        self._locked_name[key] = until
        if len(self._locked_name) > self.names_max:
            self._locked_name.popitem(last=False)

    def name_locked_until(self, name: str) -> int:
        """When the lock of a user name that names nobody ends (ms; 0: not locked)."""
        return self._locked_name.get(name.lower(), 0)

    def note_lock_seconds(self, seconds: float) -> None:
        """How long recording a user's lock took: a name that names nobody waits as long."""
        self.lock_seconds = 0.8 * self.lock_seconds + 0.2 * min(seconds, 1.0)

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
        now = now_ms()
        for name in [k for k, until in self._locked_name.items() if until <= now]:
            self._locked_name.pop(name, None)
            n += 1
        t = time.monotonic()
        for ip in [
            ip
            for ip, q in self._fail_ip.items()
            if not q or t - q[-1] > self.settings.ip_block_window_seconds
        ]:
            self._fail_ip.pop(ip, None)
            n += 1
        return n
