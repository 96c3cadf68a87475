"""The auth projection: users, password hashes, API keys (hashed), grants, sessions and token
revocations, IP blocks, reset tokens — all applied from ``auth.*`` log records into their own
LMDB file (``JADEVECTORDB_AUTH_DB_PATH``), so replicas and restores have them too.

Sub-databases (msgpack values):
  ``users``    user_id -> user dict          ``usernames`` lower(username) -> user_id
  ``keys``     key_id -> key dict            ``keyhash``   sha256(key) hex -> key_id
  ``sessions`` jti -> session dict           ``revoked``   jti -> expiry (ms)
  ``grants``   db_id NUL user_id -> "read" | "write"
  ``blocks``   ip -> block dict              ``resets``    sha256(token) hex -> reset dict
  ``sys``      b"applied_lsn"

``apply`` is deterministic: times come from the record's ``ts``, expiries from its body.
"""

from __future__ import annotations

from typing import Any

import lmdb

from wal.codec import Record, pack, unpack
from wal.lmdbenv import Env

SUBS = (
    b"users",
    b"usernames",
    b"keys",
    b"keyhash",
    b"sessions",
    b"revoked",
    b"grants",
    b"blocks",
    b"resets",
    b"sys",
)


def ms(ts_ns: int) -> int:
    return ts_ns // 1_000_000


class AuthStore:
    def __init__(self, env: Env) -> None:
        self.env = env
        self.db = {name.decode(): env.db(name) for name in SUBS}
        self.version = 0  # bumped on every applied auth record (permission cache invalidation)

    # -- generic reads ----------------------------------------------------------------------
    def _get(self, sub: str, key: str, txn: lmdb.Transaction | None = None) -> Any:
        if txn is None:
            with self.env.read() as t:
                return self._get(sub, key, t)
        raw = txn.get(key.encode(), db=self.db[sub])
        return unpack(raw) if raw is not None else None

    def _all(self, sub: str) -> list[Any]:
        with self.env.read() as txn:
            return [unpack(v) for _, v in txn.cursor(db=self.db[sub])]

    def _put(self, txn: lmdb.Transaction, sub: str, key: str, value: Any) -> None:
        txn.put(key.encode(), pack(value), db=self.db[sub])

    def _del(self, txn: lmdb.Transaction, sub: str, key: str) -> None:
        txn.delete(key.encode(), db=self.db[sub])

    def applied_lsn(self) -> int:
        with self.env.read() as txn:
            raw = txn.get(b"applied_lsn", db=self.db["sys"])
        return int.from_bytes(raw, "big") if raw else 0

    # -- typed reads --------------------------------------------------------------------------
    def user(self, user_id: str, txn: lmdb.Transaction | None = None) -> dict[str, Any] | None:
        return self._get("users", user_id, txn)  # type: ignore[no-any-return]

    def user_by_name(
        self, username: str, txn: lmdb.Transaction | None = None
    ) -> dict[str, Any] | None:
        uid = self._get("usernames", username.lower(), txn)
        return self.user(uid, txn) if uid else None

    def user_by_email(self, email: str) -> dict[str, Any] | None:
        email = email.lower()
        for u in self.users():
            if (u.get("email") or "").lower() == email:
                return u
        return None

    def users(self) -> list[dict[str, Any]]:
        return self._all("users")

    def user_count(self, txn: lmdb.Transaction | None = None) -> int:
        if txn is None:
            with self.env.read() as t:
                return self.user_count(t)
        return int(txn.stat(self.db["users"])["entries"])

    def key(self, key_id: str, txn: lmdb.Transaction | None = None) -> dict[str, Any] | None:
        return self._get("keys", key_id, txn)  # type: ignore[no-any-return]

    def key_by_hash(self, digest: str) -> dict[str, Any] | None:
        with self.env.read() as txn:
            kid = self._get("keyhash", digest, txn)
            return self.key(kid, txn) if kid else None

    def keys(self) -> list[dict[str, Any]]:
        return self._all("keys")

    def session(self, jti: str) -> dict[str, Any] | None:
        return self._get("sessions", jti)  # type: ignore[no-any-return]

    def sessions(self) -> list[dict[str, Any]]:
        return self._all("sessions")

    def is_revoked(self, jti: str) -> bool:
        return self._get("revoked", jti) is not None

    def grant(self, db_id: str, user_id: str) -> str | None:
        return self._get("grants", db_id + "\x00" + user_id)  # type: ignore[no-any-return]

    def grants(self, db_id: str) -> dict[str, str]:
        pre = (db_id + "\x00").encode()
        out: dict[str, str] = {}
        with self.env.read() as txn:
            cur = txn.cursor(db=self.db["grants"])
            if cur.set_range(pre):
                for k, v in cur:
                    if not k.startswith(pre):
                        break
                    out[k[len(pre) :].decode()] = unpack(v)
        return out

    def block(self, ip: str) -> dict[str, Any] | None:
        return self._get("blocks", ip)  # type: ignore[no-any-return]

    def blocks(self) -> list[dict[str, Any]]:
        return self._all("blocks")

    def reset(self, digest: str, txn: lmdb.Transaction | None = None) -> dict[str, Any] | None:
        return self._get("resets", digest, txn)  # type: ignore[no-any-return]

    # -- apply --------------------------------------------------------------------------------
    def apply(self, txn: lmdb.Transaction, rec: Record) -> None:
        fn = _APPLY.get(rec.type)
        if fn is not None:
            fn(self, txn, rec)
            self.version += 1
        txn.put(b"applied_lsn", rec.lsn.to_bytes(8, "big"), db=self.db["sys"])

    def _user_create(self, txn: lmdb.Transaction, rec: Record) -> None:
        b = dict(rec.body)
        now = ms(rec.ts)
        user = {
            "user_id": b["user_id"],
            "username": b["username"],
            "email": b.get("email", ""),
            "password_hash": b["password_hash"],
            "roles": list(b["roles"]),
            "is_active": True,
            "created_at": now,
            "updated_at": now,
            "last_login": None,
            "must_change_password": bool(b.get("must_change_password", False)),
            "totp_secret": None,
            "totp_enabled": False,
            "tokens_valid_after": 0,
            "locked_until": 0,
        }
        self._put(txn, "users", user["user_id"], user)
        self._put(txn, "usernames", user["username"].lower(), user["user_id"])

    def _user_update(self, txn: lmdb.Transaction, rec: Record) -> None:
        b = rec.body
        user = self.user(b["user_id"], txn)
        if user is None:
            return
        changes = dict(b["changes"])
        now = ms(rec.ts)
        if "username" in changes and changes["username"].lower() != user["username"].lower():
            self._del(txn, "usernames", user["username"].lower())
            self._put(txn, "usernames", changes["username"].lower(), user["user_id"])
        if changes.get("is_active") is False or changes.pop("revoke_tokens", False):
            # deactivation and password changes kill every token and key issued before now
            changes["tokens_valid_after"] = now
            self._revoke_user_keys(txn, user["user_id"])
        user.update(changes)
        user["updated_at"] = now
        self._put(txn, "users", user["user_id"], user)

    def _revoke_user_keys(self, txn: lmdb.Transaction, user_id: str) -> None:
        for k in [unpack(v) for _, v in txn.cursor(db=self.db["keys"])]:
            if k["user_id"] == user_id and k["is_active"]:
                k["is_active"] = False
                self._put(txn, "keys", k["key_id"], k)

    def _user_delete(self, txn: lmdb.Transaction, rec: Record) -> None:
        user = self.user(rec.body["user_id"], txn)
        if user is None:
            return
        self._del(txn, "users", user["user_id"])
        self._del(txn, "usernames", user["username"].lower())
        self._revoke_user_keys(txn, user["user_id"])

    def _key_create(self, txn: lmdb.Transaction, rec: Record) -> None:
        b = dict(rec.body)
        key = {
            "key_id": b["key_id"],
            "user_id": b["user_id"],
            "hash": b["hash"],
            "key_prefix": b["key_prefix"],
            "description": b.get("description", ""),
            "permissions": list(b.get("permissions", [])),
            "is_active": True,
            "created_at": ms(rec.ts),
            "expires_at": b.get("expires_at"),
        }
        self._put(txn, "keys", key["key_id"], key)
        self._put(txn, "keyhash", key["hash"], key["key_id"])

    def _key_revoke(self, txn: lmdb.Transaction, rec: Record) -> None:
        key = self.key(rec.body["key_id"], txn)
        if key is None:
            return
        key["is_active"] = False
        self._put(txn, "keys", key["key_id"], key)

    def _session_create(self, txn: lmdb.Transaction, rec: Record) -> None:
        b = rec.body
        now = ms(rec.ts)
        self._put(
            txn,
            "sessions",
            b["jti"],
            {
                "session_id": b["jti"],
                "token_id": b["jti"],
                "user_id": b["user_id"],
                "ip_address": b.get("ip", ""),
                "created_at": now,
                "expires_at": b["expires_at"],
            },
        )
        user = self.user(b["user_id"], txn)
        if user is not None:
            user["last_login"] = now
            user["locked_until"] = 0
            self._put(txn, "users", user["user_id"], user)

    def _session_revoke(self, txn: lmdb.Transaction, rec: Record) -> None:
        jti = rec.body["jti"]
        session = self._get("sessions", jti, txn)
        exp = session["expires_at"] if session else rec.body.get("expires_at", 0)
        self._put(txn, "revoked", jti, exp)
        self._del(txn, "sessions", jti)

    def _prune(self, txn: lmdb.Transaction, rec: Record) -> None:
        """Forget sessions, revocations, blocks and reset tokens that expired before ``now``."""
        now = rec.body["now"]
        for sub, field in (
            ("sessions", "expires_at"),
            ("blocks", "until"),
            ("resets", "expires_at"),
        ):
            for k, v in list(txn.cursor(db=self.db[sub])):
                if unpack(v)[field] <= now:
                    txn.delete(k, db=self.db[sub])
        for k, v in list(txn.cursor(db=self.db["revoked"])):
            if unpack(v) <= now:
                txn.delete(k, db=self.db["revoked"])

    def _grant_set(self, txn: lmdb.Transaction, rec: Record) -> None:
        b = rec.body
        key = b["db"] + "\x00" + b["user_id"]
        if b.get("permission"):
            self._put(txn, "grants", key, b["permission"])
        else:
            self._del(txn, "grants", key)

    def _block_set(self, txn: lmdb.Transaction, rec: Record) -> None:
        b = rec.body
        if b.get("until"):
            self._put(
                txn,
                "blocks",
                b["ip"],
                {
                    "ip": b["ip"],
                    "until": b["until"],
                    "reason": b.get("reason", ""),
                    "failures": b.get("failures", 0),
                    "since": ms(rec.ts),
                },
            )
        else:
            self._del(txn, "blocks", b["ip"])

    def _reset_create(self, txn: lmdb.Transaction, rec: Record) -> None:
        b = rec.body
        self._put(
            txn,
            "resets",
            b["hash"],
            {"user_id": b["user_id"], "expires_at": b["expires_at"], "used": False},
        )

    def _reset_use(self, txn: lmdb.Transaction, rec: Record) -> None:
        b = rec.body
        reset = self.reset(b["hash"], txn)
        if reset is not None:
            reset["used"] = True
            self._put(txn, "resets", b["hash"], reset)


_APPLY = {
    "auth.user.create": AuthStore._user_create,
    "auth.user.update": AuthStore._user_update,
    "auth.user.delete": AuthStore._user_delete,
    "auth.key.create": AuthStore._key_create,
    "auth.key.revoke": AuthStore._key_revoke,
    "auth.session.create": AuthStore._session_create,
    "auth.session.revoke": AuthStore._session_revoke,
    "auth.prune": AuthStore._prune,
    "auth.grant.set": AuthStore._grant_set,
    "auth.block.set": AuthStore._block_set,
    "auth.reset.create": AuthStore._reset_create,
    "auth.reset.use": AuthStore._reset_use,
}

AUTH_TYPES = frozenset(_APPLY)
