"""The auth projection: users, password hashes, API keys (hashed), grants, sessions and token
revocations, IP blocks, reset tokens — all applied from ``auth.*`` log records into their own
LMDB file (``JADEVECTORDB_AUTH_DB_PATH``), so replicas and restores have them too.

Sub-databases (msgpack values):
  ``users``    user_id -> user dict          ``usernames`` lower(username) -> user_id
  ``keys``     key_id -> key dict            ``keyhash``   sha256(key) hex -> key_id
  ``sessions`` jti -> session dict           ``revoked``   jti -> expiry (ms)
  ``grants``   db_id NUL user_id -> "read" | "write"
  ``blocks``   ip -> block dict              ``resets``    sha256(token) hex -> reset dict
  ``sys``      b"applied_lsn"; b"applied_sum" (LSN, checksum) of the last auth record applied;
               b"schema" (2: values sealed)

Every value but ``sys``'s is sealed (``wal.seal``: followed by the CRC-32 of its key and bytes)
and checked on every read: a damaged one (a flipped role, a password hash) is refused with
``StorageDamaged`` naming the file and the record, logged once and counted (``damaged``), never
used to decide who may do what. ``applied_sum`` is a witness for the start-up checks
(``jade.engine.integrity``): the log must still hold that record with that checksum, or it lost
records this store saw (a rolled-back header) or was replaced by another history.

``apply`` is deterministic: times come from the record's ``ts``, expiries from its event, the
TOTP time step a login used up (``totp_last_step`` of the user, absent until one is) from its
``auth.session.create`` event. Which sessions end with a password change, a deactivation or a
deletion is decided before the append (``jade.auth.decide``) and logged as one
``auth.session.revoke`` per session: the fold of ``auth.user.update`` ends none by itself.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import lmdb

from jade import events as ev
from jade import faults
from jade.errors import StorageDamaged
from wal.codec import Record, pack, unpack
from wal.lmdbenv import Env
from wal.seal import seal, unseal

log = logging.getLogger(__name__)

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
SCHEMA = 2  # 2: every value but sys's sealed with its checksum


def ms(ts_ns: int) -> int:
    return ts_ns // 1_000_000


class AuthStore:
    def __init__(self, env: Env) -> None:
        self.env = env
        self.db = {name.decode(): env.db(name) for name in SUBS}
        self.version = 0  # bumped on every applied auth record (permission cache invalidation)
        self.damaged = 0  # values refused because they did not match their checksum (metric)
        self._damaged: set[tuple[str, bytes]] = set()
        with env.read() as txn:
            recorded = txn.get(b"schema", db=self.db["sys"]) is not None
            was = self._schema(txn)
        self.sealed = was >= SCHEMA
        if not recorded and not env.readonly:
            self._upgrade(was)

    # -- sealed values ----------------------------------------------------------------------
    def _schema(self, txn: lmdb.Transaction[bytes]) -> int:
        """The store's schema (1: before the seals, when nothing recorded it)."""
        raw = txn.get(b"schema", db=self.db["sys"])
        if raw is not None:
            return int(raw)
        return SCHEMA if txn.get(b"applied_lsn", db=self.db["sys"]) is None else 1

    def _upgrade(self, was: int) -> None:
        """Seal every value of a store written before the seals (schema 1); a new store only
        records its schema."""

        def body(txn: lmdb.Transaction[bytes]) -> None:
            if was < SCHEMA:
                for name in SUBS:
                    if name == b"sys":
                        continue
                    for key, raw in list(txn.cursor(db=self.db[name.decode()])):
                        txn.put(key, seal(key, raw), db=self.db[name.decode()])
            self.mark_schema(txn)

        self.env.write(body)
        self.sealed = True

    def mark_schema(self, txn: lmdb.Transaction[bytes]) -> None:
        txn.put(b"schema", str(SCHEMA).encode(), db=self.db["sys"])

    def _open(self, sub: str, key: bytes, raw: bytes) -> Any:
        """The value stored under ``key`` in ``sub``, after checking its seal."""
        if not self.sealed:
            return unpack(raw)
        body = unseal(key, raw)
        if body is None:
            what = f"{sub} record {key.decode(errors='replace')!r}"
            msg = (f"{self.env.path}: the stored {what} does not match its checksum (the file is "
                   "damaged); refused, not used: run `jade verify`, restore from a snapshot")
            if (sub, key) not in self._damaged:
                self._damaged.add((sub, key))
                self.damaged += 1
                log.error("%s", msg)
            raise StorageDamaged(msg, file=self.env.path)
        return unpack(body)

    # -- generic reads ----------------------------------------------------------------------
    def _get(self, sub: str, key: str, txn: lmdb.Transaction[bytes] | None = None) -> Any:
        if txn is None:
            with self.env.read() as t:
                return self._get(sub, key, t)
        k = key.encode()
        raw = txn.get(k, db=self.db[sub])
        return self._open(sub, k, raw) if raw is not None else None

    def _all(self, sub: str) -> list[Any]:
        with self.env.read() as txn:
            return self._each(txn, sub)

    def _each(self, txn: lmdb.Transaction[bytes], sub: str) -> list[Any]:
        return [self._open(sub, k, v) for k, v in txn.cursor(db=self.db[sub])]

    def _put(self, txn: lmdb.Transaction[bytes], sub: str, key: str, value: Any) -> None:
        k = key.encode()
        txn.put(k, seal(k, pack(value)), db=self.db[sub])

    def _del(self, txn: lmdb.Transaction[bytes], sub: str, key: str) -> None:
        txn.delete(key.encode(), db=self.db[sub])

    def applied_lsn(self) -> int:
        with self.env.read() as txn:
            raw = txn.get(b"applied_lsn", db=self.db["sys"])
        return int.from_bytes(raw, "big") if raw else 0

    # -- typed reads --------------------------------------------------------------------------
    def user(
        self, user_id: str, txn: lmdb.Transaction[bytes] | None = None
    ) -> dict[str, Any] | None:
        return self._get("users", user_id, txn)  # type: ignore[no-any-return]

    def user_by_name(
        self, username: str, txn: lmdb.Transaction[bytes] | None = None
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

    def user_count(self, txn: lmdb.Transaction[bytes] | None = None) -> int:
        if txn is None:
            with self.env.read() as t:
                return self.user_count(t)
        return int(txn.stat(self.db["users"])["entries"])

    def key(self, key_id: str, txn: lmdb.Transaction[bytes] | None = None) -> dict[str, Any] | None:
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

    def sessions_of(self, user_id: str, txn: lmdb.Transaction[bytes]) -> list[dict[str, Any]]:
        """The live sessions of one user, in ``txn`` (a scan: sessions are pruned at expiry)."""
        return [s for s in self._each(txn, "sessions") if s["user_id"] == user_id]

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
                    out[k[len(pre) :].decode()] = self._open("grants", k, v)
        return out

    def block(self, ip: str) -> dict[str, Any] | None:
        return self._get("blocks", ip)  # type: ignore[no-any-return]

    def blocks(self) -> list[dict[str, Any]]:
        return self._all("blocks")

    def reset(
        self, digest: str, txn: lmdb.Transaction[bytes] | None = None
    ) -> dict[str, Any] | None:
        return self._get("resets", digest, txn)  # type: ignore[no-any-return]

    def resets_of(
        self, user_id: str, txn: lmdb.Transaction[bytes]
    ) -> list[tuple[str, dict[str, Any]]]:
        """(digest, reset) of one user's reset tokens not used yet, in ``txn``."""
        out = []
        for k, v in txn.cursor(db=self.db["resets"]):
            reset = self._open("resets", k, v)
            if reset["user_id"] == user_id and not reset["used"]:
                out.append((k.decode(), reset))
        return out

    # -- apply --------------------------------------------------------------------------------
    def apply(self, txn: lmdb.Transaction[bytes], rec: Record, event: ev.Event) -> None:
        """Fold one event (any type: the applied LSN moves over every record, in order) into
        ``txn``, a write transaction of this store's file. ``version`` is bumped by whoever
        commits it (``committed``)."""
        fn = _APPLY.get(event.type)
        if fn is not None:
            fn(self, txn, rec, event)
        txn.put(b"applied_lsn", rec.lsn.to_bytes(8, "big"), db=self.db["sys"])
        if fn is not None:
            self.set_witness(txn, rec)

    def set_witness(self, txn: lmdb.Transaction[bytes], rec: Record) -> None:
        """Remember ``rec``'s LSN and chain checksum: the log must keep agreeing with them."""
        txn.put(b"applied_sum", rec.lsn.to_bytes(8, "big") + rec.checksum, db=self.db["sys"])

    def witness(self) -> tuple[int, bytes] | None:
        """The (LSN, checksum) ``set_witness`` stored last (None: none yet)."""
        with self.env.read() as txn:
            raw = txn.get(b"applied_sum", db=self.db["sys"])
        return (int.from_bytes(raw[:8], "big"), bytes(raw[8:])) if raw and len(raw) > 8 else None

    def apply_group(self, entries: list[tuple[Record, ev.Event]]) -> None:
        """Replay: fold ``entries`` (in LSN order, right after ``applied_lsn``) in one write
        transaction (see ``jade.engine.replay``)."""

        faults.hit("auth.replay")

        def body(txn: lmdb.Transaction[bytes]) -> None:
            for rec, event in entries:
                self.apply(txn, rec, event)
            if entries:  # non-auth records move the LSN too (apply writes it for auth ones)
                last = entries[-1][0]
                txn.put(b"applied_lsn", last.lsn.to_bytes(8, "big"), db=self.db["sys"])
                self.set_witness(txn, last)

        self.env.write(body)
        self.version += 1

    def set_applied(self, txn: lmdb.Transaction[bytes], lsn: int) -> None:
        txn.put(b"applied_lsn", lsn.to_bytes(8, "big"), db=self.db["sys"])

    def _user_create(self, txn: lmdb.Transaction[bytes], rec: Record, e: ev.UserCreate) -> None:
        now = ms(rec.ts)
        user: dict[str, Any] = {
            "user_id": e.user_id,
            "username": e.username,
            "email": e.email,
            "password_hash": e.password_hash,
            "roles": list(e.roles),
            "is_active": True,
            "created_at": now,
            "updated_at": now,
            "last_login": None,
            "must_change_password": e.must_change_password,
            "totp_secret": None,
            "totp_enabled": False,
            "tokens_valid_after": 0,
            "locked_until": 0,
        }
        self._put(txn, "users", user["user_id"], user)
        self._put(txn, "usernames", user["username"].lower(), user["user_id"])

    def _user_update(self, txn: lmdb.Transaction[bytes], rec: Record, e: ev.UserUpdate) -> None:
        self._update_user(txn, rec, e.user_id, dict(e.changes))

    def _user_lock(self, txn: lmdb.Transaction[bytes], rec: Record, e: ev.UserLock) -> None:
        self._update_user(txn, rec, e.user_id, {"locked_until": e.until})

    def _update_user(
        self, txn: lmdb.Transaction[bytes], rec: Record, user_id: str, changes: dict[str, Any]
    ) -> None:
        user = self.user(user_id, txn)
        if user is None:
            return
        now = ms(rec.ts)
        if "username" in changes and changes["username"].lower() != user["username"].lower():
            self._del(txn, "usernames", user["username"].lower())
            self._put(txn, "usernames", changes["username"].lower(), user["user_id"])
        revoke = changes.pop("revoke_tokens", False)
        keep_keys = changes.pop("keep_keys", False)
        if changes.get("is_active") is False or revoke:
            # deactivation and password changes kill every token issued before now, and the
            # API keys unless a password change kept them (the sessions themselves are ended by
            # the SessionRevoke events decided with this one)
            changes["tokens_valid_after"] = now
            if not keep_keys or changes.get("is_active") is False:
                self._revoke_user_keys(txn, user["user_id"])
        user.update(changes)
        user["updated_at"] = now
        self._put(txn, "users", user["user_id"], user)

    def _revoke_user_keys(self, txn: lmdb.Transaction[bytes], user_id: str) -> None:
        for k in self._each(txn, "keys"):
            if k["user_id"] == user_id and k["is_active"]:
                k["is_active"] = False
                self._put(txn, "keys", k["key_id"], k)

    def _user_delete(self, txn: lmdb.Transaction[bytes], rec: Record, e: ev.UserDelete) -> None:
        user = self.user(e.user_id, txn)
        if user is None:
            return
        self._del(txn, "users", user["user_id"])
        self._del(txn, "usernames", user["username"].lower())
        self._revoke_user_keys(txn, user["user_id"])

    def _key_create(self, txn: lmdb.Transaction[bytes], rec: Record, e: ev.KeyCreate) -> None:
        key: dict[str, Any] = {
            "key_id": e.key_id,
            "user_id": e.user_id,
            "hash": e.hash,
            "key_prefix": e.key_prefix,
            "description": e.description,
            "permissions": list(e.permissions),
            "is_active": True,
            "created_at": ms(rec.ts),
            "expires_at": e.expires_at,
        }
        self._put(txn, "keys", key["key_id"], key)
        self._put(txn, "keyhash", key["hash"], key["key_id"])

    def _key_revoke(self, txn: lmdb.Transaction[bytes], rec: Record, e: ev.KeyRevoke) -> None:
        key = self.key(e.key_id, txn)
        if key is None:
            return
        key["is_active"] = False
        self._put(txn, "keys", key["key_id"], key)

    def _session_create(
        self, txn: lmdb.Transaction[bytes], rec: Record, e: ev.SessionCreate
    ) -> None:
        now = ms(rec.ts)
        self._put(
            txn,
            "sessions",
            e.jti,
            {
                "session_id": e.jti,
                "token_id": e.jti,
                "user_id": e.user_id,
                "ip_address": e.ip,
                "created_at": now,
                "expires_at": e.expires_at,
            },
        )
        user = self.user(e.user_id, txn)
        if user is not None:
            user["last_login"] = now
            user["locked_until"] = 0
            if e.totp_step:  # the code is used up: no login with it, or an older one, again
                user["totp_last_step"] = max(user.get("totp_last_step", 0), e.totp_step)
            self._put(txn, "users", user["user_id"], user)

    def _session_revoke(
        self, txn: lmdb.Transaction[bytes], rec: Record, e: ev.SessionRevoke
    ) -> None:
        session = self._get("sessions", e.jti, txn)
        exp = session["expires_at"] if session else e.expires_at
        self._put(txn, "revoked", e.jti, exp)
        self._del(txn, "sessions", e.jti)

    def _prune(self, txn: lmdb.Transaction[bytes], rec: Record, e: ev.Prune) -> None:
        """Forget sessions, revocations, blocks and reset tokens that expired before ``now``."""
        now = e.now
        for sub, field in (
            ("sessions", "expires_at"),
            ("blocks", "until"),
            ("resets", "expires_at"),
        ):
            for k, v in list(txn.cursor(db=self.db[sub])):
                if self._open(sub, k, v)[field] <= now:
                    txn.delete(k, db=self.db[sub])
        for k, v in list(txn.cursor(db=self.db["revoked"])):
            if self._open("revoked", k, v) <= now:
                txn.delete(k, db=self.db["revoked"])

    def _grant_set(self, txn: lmdb.Transaction[bytes], rec: Record, e: ev.GrantSet) -> None:
        key = e.db + "\x00" + e.user_id
        if e.permission:
            self._put(txn, "grants", key, e.permission)
        else:
            self._del(txn, "grants", key)

    def _block_set(self, txn: lmdb.Transaction[bytes], rec: Record, e: ev.BlockSet) -> None:
        if e.until:
            self._put(
                txn,
                "blocks",
                e.ip,
                {
                    "ip": e.ip,
                    "until": e.until,
                    "reason": e.reason,
                    "failures": e.failures,
                    "since": ms(rec.ts),
                },
            )
        else:
            self._del(txn, "blocks", e.ip)

    def _reset_create(self, txn: lmdb.Transaction[bytes], rec: Record, e: ev.ResetCreate) -> None:
        self._put(
            txn,
            "resets",
            e.hash,
            {"user_id": e.user_id, "expires_at": e.expires_at, "used": False},
        )

    def _reset_use(self, txn: lmdb.Transaction[bytes], rec: Record, e: ev.ResetUse) -> None:
        reset = self.reset(e.hash, txn)
        if reset is not None:
            reset["used"] = True
            self._put(txn, "resets", e.hash, reset)


_APPLY: dict[str, Callable[[AuthStore, lmdb.Transaction[bytes], Record, Any], None]] = {
    "auth.user.create": AuthStore._user_create,
    "auth.user.update": AuthStore._user_update,
    "auth.user.lock": AuthStore._user_lock,
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
assert set(_APPLY) == ev.AUTH_TYPES, "every auth event has a fold, and only those"
