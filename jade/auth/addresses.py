"""Client addresses: the caller's IP (the forwarded one when the peer is a trusted proxy),
loopback, and IP blocks (imposed by log records; looked up through a cache valid until the auth
store changes)."""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Mapping

from jade.auth.clock import now_ms
from jade.auth.store import AuthStore
from jade.errors import Forbidden
from jade.settings import Settings
from jade.stores.data import VersionedCache


class Addresses:
    def __init__(self, settings: Settings, store: Callable[[], AuthStore]) -> None:
        self._store = store  # the engine's, once it is open
        # ip -> its block record (or None); a block comes and goes with an auth record
        self._blocks = VersionedCache(lambda: store().version)
        self.trusted = {p.strip() for p in settings.trusted_proxies.split(",") if p.strip()}

    def client_ip(self, peer: str | None, headers: Mapping[str, str]) -> str:
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
        block = self._blocks.get(ip, lambda: self._store().block(ip))
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
