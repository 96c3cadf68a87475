"""``jade verify DIR``: our ``PRAGMA integrity_check`` for a data directory.

0. The files: each LMDB file whole (not cut short: ``wal.lmdbenv.FileDamaged``, which a read
   through the map would turn into a SIGBUS).
1. The log: every record's checksum and the chain from the first retained record, no gaps; and
   the witnesses of a lost log tail (``jade.engine.integrity.lost_records``: the auth store's
   applied LSN and witness, index checkpoints, the archive).
2. The projections: every stored value against its checksum (``wal.seal``) and the counts
   (catalog count = vectors = labels); and the catalog + vector store and the auth store equal a
   fresh replay of the log up to their applied LSN (when the log still starts at LSN 1;
   otherwise that comparison is reported as skipped, the checksums and counts still run).
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
from jade.engine import RESTORE_INCOMPLETE, integrity
from jade.engine.replay import replay
from jade.errors import StorageDamaged
from jade.events import AUTH_TYPES
from jade.indexes.projection import IndexProjection
from jade.settings import Settings
from jade.stores.data import SEP, STORE_SCHEMA, DataStore
from wal.codec import CodecError, unpack
from wal.lmdbenv import Env, FileDamaged
from wal.log import Log, LogError
from wal.seal import unseal


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
            h.update(b"[" + sub + b"]")  # a sub-database an older store lacks: as empty
            try:
                db = env.db(sub)
            except lmdb.Error:
                continue
            for k, v in txn.cursor(db=db):
                if k in skip_keys:
                    continue
                h.update(len(k).to_bytes(4, "big") + k + len(v).to_bytes(4, "big") + v)
    return h.hexdigest()


DATA_SUBS = (b"dbs", b"vec", b"lbl", b"txt", b"sys")


def verify_dir(settings: Settings, *, sample: int = 200) -> Report:
    r = Report()
    restored = read_marker(settings.data_dir)
    if not os.path.exists(settings.db_path):
        _check_restore(r, settings.data_dir, restored, None)
        r.bad(f"{settings.db_path}: missing")
        return r
    try:
        env = Env(settings.db_path, readonly=True)
    except FileDamaged as exc:
        _check_restore(r, settings.data_dir, restored, None)
        r.bad(f"{exc}")
        return r
    except lmdb.Error as exc:
        _check_restore(r, settings.data_dir, restored, None)
        r.bad(f"{settings.db_path}: does not open ({exc})")
        return r
    try:
        _verify(r, settings, env, restored, sample)
    except (FileDamaged, StorageDamaged) as exc:  # whatever check met it first: named, no trace
        r.bad(str(exc))
    finally:
        env.close()
    return r


def _verify(r: Report, settings: Settings, env: Env,
            restored: tuple[str, dict[str, Any]] | None, sample: int) -> None:
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
            r.bad(f"log: {settings.db_path}: {exc}")
            return
        store = DataStore(env)
        applied = store.applied_lsn()
        if store.schema() < STORE_SCHEMA:
            r.note(f"store: written by an older release (schema {store.schema()}); the next "
                   "start upgrades it, and verification of the projections waits for that")
            return
        if applied != log.last_lsn:
            r.bad(f"store: applied LSN {applied} != log's last LSN {log.last_lsn}")
        auth = None
        if os.path.exists(settings.auth_db_path):
            try:
                aenv = Env(settings.auth_db_path, readonly=True)
                auth = AuthStore(aenv)
            except (FileDamaged, lmdb.Error) as exc:
                r.bad(f"auth store: {exc}" if isinstance(exc, FileDamaged)
                      else f"auth store: {settings.auth_db_path}: does not open ({exc})")
        else:
            held = sum(1 for rec in log.iterate(log.first_lsn - 1, verify=False)
                       if rec.type in AUTH_TYPES)
            if held:  # users, keys... the log says exist: an unchecked auth store is no "OK"
                r.bad(f"auth store: {settings.auth_db_path} is missing, and the log holds {held} "
                      "auth records (give its path: JADEVECTORDB_AUTH_DB_PATH or --auth-db)")
            else:
                r.note(f"auth store: {settings.auth_db_path} is missing (the log holds no auth "
                       "record)")
        # 1b. what the log should still hold
        lost = integrity.lost_records(settings, log, auth, store)
        for text in lost:
            r.bad(f"log lost records: {text}")
        if not lost:
            r.good(f"log: no witness (auth store, index checkpoints, archive) past LSN "
                   f"{log.last_lsn}")
        # 2. every value against its checksum, the counts; projections equal the replay
        whole = _check_values(r, env, store, auth)
        if log.first_lsn == 1:
            _check_replay(r, log, env, aenv, applied)
        else:
            r.note(
                f"projection replay: the log starts at LSN {log.first_lsn} (truncated), so the "
                "projections are checked by their values' checksums and counts only; restore a "
                "snapshot plus archive and verify that for a comparison with the log"
            )
        # 3. indexes
        if whole:
            _check_indexes(r, settings, env, log, store, sample)
        else:
            r.note("indexes: not compared with a store holding damaged values")
    finally:
        if aenv is not None:
            aenv.close()


def _check_values(r: Report, env: Env, store: DataStore, auth: AuthStore | None) -> bool:
    """Every sealed value of the data store (and of the auth store) against its checksum, and
    each database's count against its vectors and labels. False when anything is damaged."""
    ok = True
    damaged: list[str] = []
    vectors: dict[bytes, int] = {}
    labels: dict[bytes, int] = {}
    texts: dict[bytes, int] = {}  # documents given to text indexes directly
    catalog: dict[bytes, Any] = {}
    with env.read() as txn:
        for name, sub in ((b"dbs", store.dbs), (b"vec", store.vec), (b"lbl", store.lbl),
                          (b"txt", store.txt)):
            if sub is None:  # an older store without text documents
                continue
            for k, v in txn.cursor(db=sub):
                body = unseal(k, v)
                if body is None:
                    damaged.append(f"{name.decode()} {k.decode(errors='replace')!r}")
                elif name == b"dbs":
                    catalog[k] = unpack(body)
                else:
                    owner = k.split(SEP, 1)[0]
                    counts = vectors if name == b"vec" else labels if name == b"lbl" else texts
                    counts[owner] = counts.get(owner, 0) + 1
    if damaged:
        ok = False
        r.bad(f"store: {env.path}: {len(damaged)} stored value(s) do not match their checksum: "
              + ", ".join(damaged[:10]) + (" ..." if len(damaged) > 10 else ""))
    else:
        total = sum(vectors.values())
        r.good(f"store: every stored value matches its checksum ({len(catalog)} databases, "
               f"{total} vectors)")
    for key, db in catalog.items():
        n, m = vectors.get(key, 0), labels.get(key, 0)
        if not db["count"] == n == m:
            ok = False
            r.bad(f"store: {env.path}: database {key.decode()} counts {db['count']} vectors, "
                  f"holds {n} vectors and {m} labels")
        if db.get("text_docs", 0) != texts.get(key, 0):
            ok = False
            r.bad(f"store: {env.path}: database {key.decode()} counts {db.get('text_docs', 0)} "
                  f"text documents, holds {texts.get(key, 0)}")
    strays = (set(vectors) | set(labels) | set(texts)) - set(catalog)
    if strays:
        ok = False
        r.bad(f"store: {env.path}: vectors or labels of databases not in the catalog: "
              + ", ".join(sorted(k.decode(errors="replace") for k in strays)))
    if auth is not None:
        bad: list[str] = []
        with auth.env.read() as txn:
            for name in SUBS:
                if name == b"sys" or not auth.sealed:
                    continue
                for k, v in txn.cursor(db=auth.db[name.decode()]):
                    if unseal(k, v) is None:
                        bad.append(f"{name.decode()} {k.decode(errors='replace')!r}")
        if bad:
            r.bad(f"auth store: {auth.env.path}: {len(bad)} stored value(s) do not match their "
                  "checksum: " + ", ".join(bad[:10]) + (" ..." if len(bad) > 10 else ""))
        elif auth.sealed:
            r.good("auth store: every stored value matches its checksum")
        else:
            r.note("auth store: written by an older release (no checksums); the next start "
                   "adds them")
    return ok


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
                skip = {b"applied_lsn", b"applied_sum"}
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
