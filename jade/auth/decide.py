"""Decisions for ``auth.*`` commands, taken on the writer thread against the auth store's write
transaction of the current group (so two registrations of one name in one group cannot both
win, and two admins removing each other in one group cannot leave no admin). Password hashes,
ids, random tokens and expiries are decided by the handler before submitting and travel in the
command body; nothing here reads a clock except to refuse an expired reset token, and that
refusal writes nothing.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, TypeAlias

import lmdb
import msgspec

from jade import events as ev
from jade.auth.principal import ADMIN
from jade.auth.store import AuthStore
from jade.core.decide import Command
from jade.errors import Conflict, InvalidArgument, NotFound, Unauthorized
from jade.stores.data import DataStore

Events = list[ev.Event]


def decide_auth(
    auth: AuthStore,
    atxn: lmdb.Transaction[bytes],
    cmd: Command,
    data: DataStore,
    dtxn: lmdb.Transaction[bytes],
) -> Events:
    fn = _DECIDE.get(cmd.type)
    if fn is None:
        raise InvalidArgument(f"unknown command {cmd.type!r}")
    return fn(auth, atxn, cmd, data, dtxn)


def _user(auth: AuthStore, atxn: lmdb.Transaction[bytes], user_id: str) -> dict[str, Any]:
    user = auth.user(user_id, atxn)
    if user is None:
        raise NotFound("User not found", user_id=user_id)
    return user


def _active_admin(user: dict[str, Any]) -> bool:
    return bool(user.get("is_active")) and ADMIN in user.get("roles", ())


def _keep_an_admin(
    auth: AuthStore, atxn: lmdb.Transaction[bytes], user: dict[str, Any],
    after: dict[str, Any] | None,
) -> None:
    """Refuse to delete (``after`` None), deactivate or demote the last active admin: nobody
    could manage users, reset passwords or leave readonly mode again. Decided here, in the
    group's write transaction (which holds every earlier command of the group), so two
    concurrent removals cannot both see "another admin is left"."""
    if not _active_admin(user) or (after is not None and _active_admin(after)):
        return
    # AuthStore has no public ``users(txn)``; ``_each`` reads the users of this transaction
    for other in auth._each(atxn, "users"):
        if other["user_id"] != user["user_id"] and _active_admin(other):
            return
    raise Conflict(
        "this is the last active admin: make another user an admin first",
        code="last_admin",
        user_id=user["user_id"],
    )


def _end_access(
    auth: AuthStore, atxn: lmdb.Transaction[bytes], user_id: str, *, but: str = ""
) -> Events:
    """What ends with a user's credentials (a password change or reset, a deactivation, a
    deletion): every session of the user, and every reset token not used yet (``but`` the one
    being used). Explicit records, decided in the group's transaction, so the log says which
    sessions ended and a replica folds exactly that."""
    out: Events = [
        ev.SessionRevoke(jti=s["session_id"], expires_at=int(s["expires_at"]))
        for s in auth.sessions_of(user_id, atxn)
    ]
    out += [ev.ResetUse(hash=h) for h, _ in auth.resets_of(user_id, atxn) if h != but]
    return out


def _user_create(
    auth: AuthStore, atxn: lmdb.Transaction[bytes], cmd: Command, data: DataStore,
    dtxn: lmdb.Transaction[bytes],
) -> Events:
    b = dict(cmd.body)
    if auth.user_by_name(b["username"], atxn) is not None:
        raise Conflict("Username already exists", code="username_exists")
    if auth.user(b["user_id"], atxn) is not None:
        raise Conflict("user_id already exists", code="user_exists")
    # roles asked for on the strength of "the system is empty" hold only if it still is
    if b.pop("bootstrap", False) and auth.user_count(atxn) > 0:
        b["roles"] = ["user"]
    return [_event(cmd.type, b)]


def _user_update(
    auth: AuthStore, atxn: lmdb.Transaction[bytes], cmd: Command, data: DataStore,
    dtxn: lmdb.Transaction[bytes],
) -> Events:
    user = _user(auth, atxn, cmd.body["user_id"])
    changes = cmd.body["changes"]
    new_name = changes.get("username")
    if new_name and new_name.lower() != user["username"].lower():
        if auth.user_by_name(new_name, atxn) is not None:
            raise Conflict("Username already exists", code="username_exists")
    if "roles" in changes or "is_active" in changes:
        _keep_an_admin(auth, atxn, user, {**user, **changes})
    step = changes.get("totp_last_step")
    if step is not None and int(step) <= user.get("totp_last_step", 0):
        raise InvalidArgument("this TOTP code was already used: wait for the next one",
                              code="totp_reused")
    out = [_event(cmd.type, cmd.body)]
    if changes.get("is_active") is False or changes.get("revoke_tokens"):
        out += _end_access(auth, atxn, user["user_id"])
    return out


def _user_lock(
    auth: AuthStore, atxn: lmdb.Transaction[bytes], cmd: Command, data: DataStore,
    dtxn: lmdb.Transaction[bytes],
) -> Events:
    _user(auth, atxn, cmd.body["user_id"])
    return [ev.UserLock(user_id=cmd.body["user_id"], until=int(cmd.body["until"]))]


def _user_delete(
    auth: AuthStore, atxn: lmdb.Transaction[bytes], cmd: Command, data: DataStore,
    dtxn: lmdb.Transaction[bytes],
) -> Events:
    _keep_an_admin(auth, atxn, _user(auth, atxn, cmd.body["user_id"]), None)
    return [_event(cmd.type, cmd.body), *_end_access(auth, atxn, cmd.body["user_id"])]


def _key_create(
    auth: AuthStore, atxn: lmdb.Transaction[bytes], cmd: Command, data: DataStore,
    dtxn: lmdb.Transaction[bytes],
) -> Events:
    user = _user(auth, atxn, cmd.body["user_id"])
    if not user["is_active"]:
        raise InvalidArgument("the user is inactive")
    return [_event(cmd.type, cmd.body)]


def _key_revoke(
    auth: AuthStore, atxn: lmdb.Transaction[bytes], cmd: Command, data: DataStore,
    dtxn: lmdb.Transaction[bytes],
) -> Events:
    if auth.key(cmd.body["key_id"], atxn) is None:
        raise NotFound("API key not found", key_id=cmd.body["key_id"])
    return [_event(cmd.type, cmd.body)]


def _session_create(
    auth: AuthStore, atxn: lmdb.Transaction[bytes], cmd: Command, data: DataStore,
    dtxn: lmdb.Transaction[bytes],
) -> Events:
    """A login's session, refused when what the login verified no longer holds by the time it
    commits: the user's tokens were revoked since the login read the user (a password changed
    while the login checked the old one: ``valid_after``, the user's ``tokens_valid_after`` as
    the login saw it, travels in the command only), or the TOTP code's time step was used
    already (two logins with one code in flight: one wins)."""
    b = dict(cmd.body)
    seen = b.pop("valid_after", None)
    user = _user(auth, atxn, b["user_id"])
    if not user["is_active"]:
        raise InvalidArgument("the user is inactive")
    if seen is not None and user["tokens_valid_after"] > int(seen):
        raise Unauthorized("the account's credentials changed during the login: log in again",
                           code="token_revoked")
    step = int(b.get("totp_step") or 0)
    if step and step <= user.get("totp_last_step", 0):
        raise Unauthorized("this TOTP code was already used: wait for the next one",
                           code="totp_reused")
    return [_event(cmd.type, b)]


def _session_revoke(
    auth: AuthStore, atxn: lmdb.Transaction[bytes], cmd: Command, data: DataStore,
    dtxn: lmdb.Transaction[bytes],
) -> Events:
    """One session (a logout), or with ``all_of`` every session of that user as well (a logout
    everywhere): the sessions of this transaction, so one committed earlier in the group ends
    too."""
    b = dict(cmd.body)
    user_id = b.pop("all_of", None)
    out: Events = [_event(cmd.type, b)]
    if user_id is not None:
        out += [ev.SessionRevoke(jti=s["session_id"], expires_at=int(s["expires_at"]))
                for s in auth.sessions_of(str(user_id), atxn) if s["session_id"] != b["jti"]]
    return out


def _grant_set(
    auth: AuthStore, atxn: lmdb.Transaction[bytes], cmd: Command, data: DataStore,
    dtxn: lmdb.Transaction[bytes],
) -> Events:
    if data.database(cmd.body["db"], dtxn) is None:
        raise NotFound("Database not found", database_id=cmd.body["db"])
    _user(auth, atxn, cmd.body["user_id"])
    return [_event(cmd.type, cmd.body)]


def _reset_use(
    auth: AuthStore, atxn: lmdb.Transaction[bytes], cmd: Command, data: DataStore,
    dtxn: lmdb.Transaction[bytes],
) -> Events:
    b = cmd.body
    reset = auth.reset(b["hash"], atxn)
    if reset is None or reset["used"] or reset["expires_at"] < time.time() * 1000:
        raise InvalidArgument("invalid or expired reset token", code="invalid_reset_token")
    user = auth.user(reset["user_id"], atxn)
    # an inactive user's token resets nothing (a deactivation ends them, but a log written
    # before that rule may still hold some)
    if user is None or not user["is_active"]:
        raise InvalidArgument("invalid or expired reset token", code="invalid_reset_token")
    change = {
        "password_hash": b["password_hash"],
        "must_change_password": False,
        "revoke_tokens": True,
        "locked_until": 0,
    }
    return [
        ev.ResetUse(hash=b["hash"]),
        ev.UserUpdate(user_id=user["user_id"], changes=change),
        *_end_access(auth, atxn, user["user_id"], but=b["hash"]),
    ]


def _passthrough(
    auth: AuthStore, atxn: lmdb.Transaction[bytes], cmd: Command, data: DataStore,
    dtxn: lmdb.Transaction[bytes],
) -> Events:
    return [_event(cmd.type, cmd.body)]


def _event(type_: str, body: dict[str, Any]) -> ev.Event:
    """The event of ``type_`` from a handler's body (its shape was checked by the handler; a
    field this vocabulary does not know is refused, never dropped)."""
    try:
        return msgspec.convert(body, ev.EVENTS[type_])
    except msgspec.ValidationError as exc:
        raise InvalidArgument(f"{type_}: {exc}") from None


# A string alias: ``lmdb.Transaction`` is generic only in its stubs, not at runtime.
_Fn: TypeAlias = (
    "Callable[[AuthStore, lmdb.Transaction[bytes], Command, DataStore, lmdb.Transaction[bytes]],"
    " Events]"
)
_DECIDE: dict[str, _Fn] = {
    ev.UserCreate.type: _user_create,
    ev.UserUpdate.type: _user_update,
    ev.UserLock.type: _user_lock,
    ev.UserDelete.type: _user_delete,
    ev.KeyCreate.type: _key_create,
    ev.KeyRevoke.type: _key_revoke,
    ev.SessionCreate.type: _session_create,
    ev.SessionRevoke.type: _session_revoke,
    ev.Prune.type: _passthrough,
    ev.GrantSet.type: _grant_set,
    ev.BlockSet.type: _passthrough,
    ev.ResetCreate.type: _passthrough,
    ev.ResetUse.type: _reset_use,
}
