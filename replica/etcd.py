"""A small etcd v3 client over its JSON gateway (``/v3/...``), on aiohttp.

Only what the cluster needs (``replica.cluster``): leases (grant, keep-alive, revoke), put, get,
a prefix range, delete, and the one transaction of an election (create a key only if it does not
exist). etcd decides every question of ownership; this module only carries the calls. Keys and
values travel base64-encoded, integers (revisions, lease ids, TTLs) as decimal strings, and
fields equal to their default (0, false, empty) are left out of the answers (proto3 JSON).

Every call has a deadline (``timeout``): an etcd that does not answer is an ``EtcdError``, never a
wait without end. The caller decides what a failed call means (a primary fences itself).
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Any

import aiohttp


class EtcdError(Exception):
    """etcd could not be reached, or refused the call."""


@dataclass(frozen=True, slots=True)
class KeyValue:
    key: str
    value: bytes
    create_revision: int
    mod_revision: int
    lease: int


def _b64(s: str | bytes) -> str:
    return base64.b64encode(s.encode() if isinstance(s, str) else s).decode()


def _prefix_end(prefix: str) -> str:
    """The range end that covers every key starting with ``prefix`` (etcd's "prefix" range)."""
    raw = bytearray(prefix.encode())
    while raw:
        if raw[-1] < 0xFF:
            raw[-1] += 1
            return _b64(bytes(raw))
        raw.pop()
    return _b64(b"\0")


def _kv(raw: dict[str, Any]) -> KeyValue:
    return KeyValue(
        key=base64.b64decode(raw.get("key", "")).decode(),
        value=base64.b64decode(raw.get("value", "")),
        create_revision=int(raw.get("create_revision", 0)),
        mod_revision=int(raw.get("mod_revision", 0)),
        lease=int(raw.get("lease", 0)),
    )


def endpoint_of(url: str) -> str:
    """``etcd://host:2379`` (or ``http://``/``https://``) -> the gateway's base URL."""
    for scheme, repl in (("etcd://", "http://"), ("etcds://", "https://")):
        if url.startswith(scheme):
            return repl + url[len(scheme):].rstrip("/")
    if url.startswith(("http://", "https://")):
        return url.rstrip("/")
    raise ValueError(f"coordinator URL {url!r}: expected etcd://host:port")


class Etcd:
    """One etcd endpoint. ``session`` is the caller's (closed by the caller)."""

    def __init__(self, session: aiohttp.ClientSession, url: str, timeout: float = 2.0) -> None:
        self.session = session
        self.base = endpoint_of(url)
        self.timeout = aiohttp.ClientTimeout(total=timeout)

    async def _call(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        try:
            async with self.session.post(self.base + path, json=body,
                                         timeout=self.timeout) as resp:
                data = await resp.json(content_type=None)
                if resp.status != 200:
                    raise EtcdError(f"etcd {path} answered {resp.status}: {data}")
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            raise EtcdError(f"etcd {path}: {type(exc).__name__}: {exc}") from None
        if not isinstance(data, dict):
            raise EtcdError(f"etcd {path}: unexpected answer {data!r}")
        if "error" in data and "result" not in data:
            raise EtcdError(f"etcd {path}: {data.get('message') or data['error']}")
        return data

    # -- leases ---------------------------------------------------------------------------------
    async def grant(self, ttl: int) -> int:
        """A new lease of ``ttl`` seconds; its id."""
        data = await self._call("/v3/lease/grant", {"TTL": ttl})
        if data.get("error"):
            raise EtcdError(f"lease grant: {data['error']}")
        return int(data["ID"])

    async def keepalive(self, lease: int) -> int:
        """Renew ``lease``; the TTL it has again, 0 when it no longer exists (expired)."""
        data = await self._call("/v3/lease/keepalive", {"ID": str(lease)})
        result = data.get("result", {})
        return int(result.get("TTL", 0))

    async def revoke(self, lease: int) -> None:
        """End ``lease`` now: every key bound to it is deleted."""
        await self._call("/v3/lease/revoke", {"ID": str(lease)})

    # -- keys -----------------------------------------------------------------------------------
    async def put(self, key: str, value: bytes, lease: int = 0) -> int:
        """Set ``key``; the new revision."""
        body: dict[str, Any] = {"key": _b64(key), "value": _b64(value)}
        if lease:
            body["lease"] = str(lease)
        data = await self._call("/v3/kv/put", body)
        return int(data.get("header", {}).get("revision", 0))

    async def get(self, key: str) -> KeyValue | None:
        data = await self._call("/v3/kv/range", {"key": _b64(key)})
        kvs = data.get("kvs", [])
        return _kv(kvs[0]) if kvs else None

    async def range(self, prefix: str) -> list[KeyValue]:
        """Every key under ``prefix``, in key order."""
        data = await self._call("/v3/kv/range",
                                {"key": _b64(prefix), "range_end": _prefix_end(prefix)})
        return [_kv(raw) for raw in data.get("kvs", [])]

    async def delete(self, key: str) -> int:
        """Delete ``key``; how many keys were deleted (0 or 1)."""
        data = await self._call("/v3/kv/deleterange", {"key": _b64(key)})
        return int(data.get("deleted", 0))

    # -- transactions ---------------------------------------------------------------------------
    async def create(self, key: str, value: bytes, lease: int = 0,
                     also: dict[str, bytes] | None = None) -> tuple[bool, KeyValue | None]:
        """Set ``key`` only if it does not exist (its create revision is 0), and in the same
        transaction the keys of ``also`` (unleased). (True, our key, its create revision set)
        when created; (False, the holder's key) when someone else has it."""
        put: dict[str, Any] = {"key": _b64(key), "value": _b64(value)}
        if lease:
            put["lease"] = str(lease)
        success = [{"request_put": put}]
        for k, v in (also or {}).items():
            success.append({"request_put": {"key": _b64(k), "value": _b64(v)}})
        data = await self._call("/v3/kv/txn", {
            "compare": [{"key": _b64(key), "target": "CREATE", "result": "EQUAL",
                         "create_revision": "0"}],
            "success": success,
            "failure": [{"request_range": {"key": _b64(key)}}],
        })
        if data.get("succeeded"):
            rev = int(data.get("header", {}).get("revision", 0))
            return True, KeyValue(key, value, rev, rev, lease)
        for r in data.get("responses", []):
            kvs = r.get("response_range", {}).get("kvs", [])
            if kvs:
                return False, _kv(kvs[0])
        return False, None

    async def replace(self, key: str, value: bytes, create_revision: int, lease: int = 0) -> bool:
        """Set ``key`` only while it is the same key (its create revision unchanged: not deleted
        and created again by another holder). Whether it was set."""
        put: dict[str, Any] = {"key": _b64(key), "value": _b64(value)}
        if lease:
            put["lease"] = str(lease)
        data = await self._call("/v3/kv/txn", {
            "compare": [{"key": _b64(key), "target": "CREATE", "result": "EQUAL",
                         "create_revision": str(create_revision)}],
            "success": [{"request_put": put}],
        })
        return bool(data.get("succeeded"))

    async def delete_if(self, key: str, create_revision: int) -> bool:
        """Delete ``key`` only while it is the same key (create revision). Whether it was."""
        data = await self._call("/v3/kv/txn", {
            "compare": [{"key": _b64(key), "target": "CREATE", "result": "EQUAL",
                         "create_revision": str(create_revision)}],
            "success": [{"request_delete_range": {"key": _b64(key)}}],
        })
        return bool(data.get("succeeded"))
