"""``jade verify DIR``: our ``PRAGMA integrity_check`` for a data directory.

1. The log: every record's checksum and the chain from the first retained record, no gaps.
2. The projections: the catalog + vector store and the auth store equal a fresh replay of the
   log up to their applied LSN (when the log still starts at LSN 1; otherwise that check is
   reported as skipped).
3. The indexes: loading each checkpoint and replaying the tail gives exactly the stored vectors
   (same labels; a sample of vectors compared value by value).
A restored directory's marker is reported: the LSN the restore reached, or, for a restore that
did not finish (killed: its in-progress marker is still there), a failure.
Works on a stopped server's directory or a copy; opens the files read-only.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import dataclass, field
from typing import Any

import lmdb
import numpy as np

from jade.auth.store import SUBS, AuthStore
from jade.backup.restore import RESTORED, read_marker
from jade.engine import RESTORE_INCOMPLETE
from jade.engine.replay import replay
from jade.events import AUTH_TYPES
from jade.indexes.projection import IndexProjection
from jade.settings import Settings
from jade.stores.data import STORE_SCHEMA, DataStore
from wal.codec import CodecError
from wal.lmdbenv import Env
from wal.log import Log, LogError


@dataclass
class Report:
    ok: bool = True
    lines: list[str] = field(default_factory=list)
    facts: dict[str, Any] = field(default_factory=dict)

    def good(self, text: str) -> None:
        self.lines.append(f"ok    {text}")

    def bad(self, text: str) -> None:
        self.ok = False
        self.lines.append(f"FAIL  {text}")

    def note(self, text: str) -> None:
        self.lines.append(f"skip  {text}")


def _digest_env(env: Env, subs: tuple[bytes, ...], skip_keys: set[bytes]) -> str:
    h = hashlib.sha256()
    with env.read() as txn:
        for sub in subs:
            try:
                db = env.db(sub)
            except lmdb.Error:
                continue
            h.update(b"[" + sub + b"]")
            for k, v in txn.cursor(db=db):
                if k in skip_keys:
                    continue
                h.update(len(k).to_bytes(4, "big") + k + len(v).to_bytes(4, "big") + v)
    return h.hexdigest()


DATA_SUBS = (b"dbs", b"vec", b"lbl", b"sys")


def verify_dir(settings: Settings, *, sample: int = 200) -> Report:
    r = Report()
    restored = read_marker(settings.data_dir)
    if not os.path.exists(settings.db_path):
        _check_restore(r, settings.data_dir, restored, None)
        r.bad(f"{settings.db_path}: missing")
        return r
    try:
        env = Env(settings.db_path, readonly=True)
    except lmdb.Error as exc:
        _check_restore(r, settings.data_dir, restored, None)
        r.bad(f"{settings.db_path}: does not open ({exc})")
        return r
    aenv = None
    try:
        log = Log(env)
        r.facts.update(first_lsn=log.first_lsn, last_lsn=log.last_lsn, epoch=log.epoch)
        _check_restore(r, settings.data_dir, restored, log.last_lsn)
        # 1. the log
        try:
            n = sum(1 for _ in log.iterate(log.first_lsn - 1, verify=True))
            r.good(f"log: {n} records {log.first_lsn}..{log.last_lsn}, checksum chain intact")
        except (LogError, CodecError) as exc:
            r.bad(f"log: {exc}")
            return r
        store = DataStore(env)
        applied = store.applied_lsn()
        if store.schema() < STORE_SCHEMA:
            r.note(f"store: written by an older release (schema {store.schema()}); the next "
                   "start upgrades it, and verification of the projections waits for that")
            return r
        if applied != log.last_lsn:
            r.bad(f"store: applied LSN {applied} != log's last LSN {log.last_lsn}")
        if os.path.exists(settings.auth_db_path):
            aenv = Env(settings.auth_db_path, readonly=True)
        else:
            held = sum(1 for rec in log.iterate(log.first_lsn - 1, verify=False)
                       if rec.type in AUTH_TYPES)
            if held:  # users, keys... the log says exist: an unchecked auth store is no "OK"
                r.bad(f"auth store: {settings.auth_db_path} is missing, and the log holds {held} "
                      "auth records (give its path: JADEVECTORDB_AUTH_DB_PATH or --auth-db)")
            else:
                r.note(f"auth store: {settings.auth_db_path} is missing (the log holds no auth "
                       "record)")
        # 2. projections equal the replay
        if log.first_lsn == 1:
            _check_replay(r, log, env, aenv, applied)
        else:
            r.note(
                f"projection replay: the log starts at LSN {log.first_lsn} (truncated); "
                "restore a snapshot plus archive and verify that instead"
            )
        # 3. indexes
        _check_indexes(r, settings, env, log, store, sample)
    finally:
        env.close()
        if aenv is not None:
            aenv.close()
    return r


def _check_restore(
    r: Report, data_dir: str, marker: tuple[str, dict[str, Any]] | None, last_lsn: int | None
) -> None:
    """A restored directory: what its completion marker says. An unfinished restore's (its
    in-progress marker still there): a failure, whatever the rest says, with the LSN its log
    reached (``last_lsn``, None: no readable log)."""
    if marker is None:
        return
    name, m = marker
    r.facts["restore"] = {"state": "complete" if name == RESTORED else "in progress", **m}
    asked: dict[str, Any] = m["asked"] if isinstance(m.get("asked"), dict) else {}
    if asked.get("latest"):
        what = "latest"
    elif asked.get("time"):
        what = f"time {asked['time']}"
    elif asked.get("lsn") is not None:
        what = f"LSN {asked['lsn']}"
    else:
        what = "?"
    snap = f"snapshot {m.get('snapshot', '?')} (LSN {m.get('snapshot_lsn', '?')})"
    if name == RESTORED:
        r.good(f"restored to LSN {m.get('reached_lsn', '?')} (asked: {what}) from {snap}, "
               f"finished {m.get('finished_at', '?')}")
        return
    reached = f"LSN ≤ {last_lsn}" if last_lsn is not None else "nothing: no readable data file"
    r.bad(f"restore did not finish (reached {reached}, of LSN {m.get('target_lsn', '?')} asked "
          f"as {what}, from {snap}, started {m.get('started_at', '?')}): "
          f"{os.path.join(data_dir, RESTORE_INCOMPLETE)} is there; do not serve this directory, "
          "run the restore again")


def _check_replay(r: Report, log: Log, env: Env, aenv: Env | None, applied: int) -> None:
    with tempfile.TemporaryDirectory(prefix="jade-verify-") as tmp:
        denv2 = Env(os.path.join(tmp, "data.db"))
        aenv2 = Env(os.path.join(tmp, "auth.db"))
        try:
            store2, auth2 = DataStore(denv2), AuthStore(aenv2)
            auth_applied = AuthStore(aenv).applied_lsn() if aenv is not None else 0
            replay(log, store2, after=0, upto=applied, verify=False, chunk=2048)
            replay(log, auth2, after=0, upto=min(auth_applied, applied), verify=False,
                   chunk=2048)
            if _digest_env(env, DATA_SUBS, set()) == _digest_env(denv2, DATA_SUBS, set()):
                r.good(f"catalog + vectors equal the replay of the log to LSN {applied}")
            else:
                r.bad("catalog + vectors differ from the replay of the log")
            if aenv is not None:
                skip = {b"applied_lsn"}
                if _digest_env(aenv, SUBS, skip) == _digest_env(aenv2, SUBS, skip):
                    r.good(f"auth store equals the replay of the log to LSN {auth_applied}")
                else:
                    r.bad("auth store differs from the replay of the log")
        finally:
            denv2.close()
            aenv2.close()


def _check_indexes(
    r: Report, settings: Settings, env: Env, log: Log, store: DataStore, sample: int
) -> None:
    from jade.indexes.checkpoints import FORMAT as CHECKPOINT_FORMAT

    mgr = IndexProjection(store, settings.index_dir, threads=1)
    # every file of every checkpoint against its checksum, before anything parses one: a
    # damaged file is a failure even though a start-up would rebuild that index from the store
    for db in store.databases():
        fmt, problems = mgr.files.check(db["id"])
        for problem in problems:
            r.bad(f"index checkpoint of {db['id']}: {problem} (a start-up rebuilds this index "
                  "from the store)")
        if fmt is None:
            r.note(f"index checkpoint of {db['id']}: none (a start-up rebuilds this index from "
                   "the store)")
        elif fmt != CHECKPOINT_FORMAT:
            r.note(f"index checkpoint of {db['id']}: format {fmt}, without checksums (a start-up "
                   "rebuilds this index once)")
        elif not problems:
            r.good(f"index checkpoint of {db['id']}: every file matches its checksum")
    try:
        rep = mgr.open(log, remove_orphans=False)  # verifying changes nothing
    except Exception as exc:  # a broken index must be reported, whatever broke
        r.bad(f"indexes: could not load ({type(exc).__name__}: {exc})")
        return
    r.facts["indexes"] = rep
    rng = np.random.default_rng(0)
    for db in store.databases():
        live = mgr.get(db["id"])
        if live is None:
            r.bad(f"index of {db['id']}: missing")
            continue
        stored = {}
        for chunk in store.scan(db["id"]):
            for v in chunk:
                stored[v.label] = v
        if set(live.meta) != set(stored) or len(live.index) != len(stored):
            r.bad(f"index of {db['id']}: {len(live.index)} vectors indexed, {len(stored)} stored")
            continue
        labels = list(stored)
        pick = (
            rng.choice(len(labels), size=min(sample, len(labels)), replace=False)
            if labels
            else np.empty(0, dtype=np.int64)
        )
        bad = 0
        for i in pick:
            v = stored[labels[int(i)]]
            want = v.array().astype(np.float32)
            if db["metric"] == "cosine":
                want = want / (np.linalg.norm(want) + 1e-30)
            got = live.index.get(np.array([v.label], dtype=np.int64))[0]
            if not np.allclose(got, want, atol=1e-5):
                bad += 1
        if bad:
            r.bad(
                f"index of {db['id']}: {bad} of {len(pick)} sampled vectors differ from the store"
            )
        else:
            r.good(
                f"index of {db['id']}: {len(stored)} vectors match the store ({len(pick)} compared)"
            )
