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


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


class Addresses:
    def __init__(self, settings: Settings, store: Callable[[], AuthStore]) -> None:
        self._store = store  # the engine's, once it is open
        # ip -> its block record (or None); a block comes and goes with an auth record
        self._blocks = VersionedCache(lambda: store().version)
        self.trusted: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = [
            ipaddress.ip_network(p.strip(), strict=False)
            for p in settings.trusted_proxies.split(",") if p.strip()
        ]

    def _is_trusted(self, ip: str) -> bool:
        try:
            addr = ipaddress.ip_address(ip)
        except ValueError:
            return False
        return any(addr in net for net in self.trusted)

    def client_ip(self, peer: str | None, headers: Mapping[str, str]) -> str:
        """The caller's address. Behind trusted proxies (``security.trusted_proxies``: addresses
        or networks) it is the rightmost ``X-Forwarded-For`` entry that no trusted proxy added:
        each proxy appends the address it saw, so everything left of that entry was written by
        the client itself and proves nothing (the leftmost entry is the client's choice). An
        entry that is not an address ends the walk at the proxy that passed it on."""
        peer = peer or ""
        if not self.trusted or not self._is_trusted(peer):
            return peer
        getall = getattr(headers, "getall", None)  # several headers are one list, in order
        fwd = ",".join(getall("X-Forwarded-For", []) if getall is not None
                       else [headers.get("X-Forwarded-For", "")])
        hops = [h.strip() for h in fwd.split(",") if h.strip()]
        if not hops:
            real = headers.get("X-Real-IP", "").strip()
            return real if real and _is_ip(real) else peer
        closest = peer
        for hop in reversed(hops):
            if not _is_ip(hop):
                return closest
            if not self._is_trusted(hop):
                return hop
            closest = hop
        return closest  # every hop is a trusted proxy: the first of them

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
