"""Hot snapshots: a consistent copy of the data directory at one LSN, taken while writes go on.

Order matters (each copy is at or before the next one's LSN):
  1. index checkpoints (they cover some LSN c <= L; a restore replays (c, L]),
  2. the auth store (at A <= L; brought to exactly L from the log right after copying),
  3. the data file (log + catalog + vectors) inside ONE read transaction: that is L.
Everything is written under a temporary name, fsynced, then renamed; a manifest records LSN,
epoch, time, format version and per-file SHA-256, optionally signed with Ed25519.
Leftover temporary directories (an interrupted snapshot) are never listed and are removed by the
next snapshot or ``cleanup``.

Blocking file I/O throughout: call from a worker thread, never from the event loop.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass
from typing import Any

import lmdb
import nacl.encoding
import nacl.exceptions
import nacl.signing

from jade.auth.store import AuthStore
from jade.engine.replay import replay
from jade.stores.data import DataStore
from wal.codec import decode, lsn_key
from wal.files import fsync_path, sha256_file
from wal.lmdbenv import Env
from wal.log import LOG_DB, Log, LogError

FORMAT = 1
DATA_FILE = "jadevectordb.db"
AUTH_FILE = "jadevectordb_auth.db"
MANIFEST = "manifest.json"
TMP_PREFIX = ".tmp-"


class SnapshotError(RuntimeError):
    """A snapshot that cannot be trusted; the message names the file and the problem."""


@dataclass(frozen=True, slots=True)
class SnapshotInfo:
    name: str
    path: str
    lsn: int
    epoch: int
    ts: int  # ns, time of record ``lsn`` (0 for an empty log)
    created_at: float
    size: int
    signed: bool

    def json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "lsn": self.lsn,
            "epoch": self.epoch,
            "record_ts": self.ts,
            "created_at": self.created_at,
            "size_bytes": self.size,
            "signed": self.signed,
        }


def snapshots_dir(backup_dir: str) -> str:
    return os.path.join(backup_dir, "snapshots")


def _signing_key(hex_seed: str) -> nacl.signing.SigningKey:
    try:
        return nacl.signing.SigningKey(
            hex_seed.strip().encode(), encoder=nacl.encoding.HexEncoder
        )
    except (ValueError, TypeError, nacl.exceptions.CryptoError) as exc:
        raise SnapshotError(f"bad snapshot signing key: {exc}") from None


def _canonical(manifest: dict[str, Any]) -> bytes:
    body = {
        k: v for k, v in manifest.items() if k not in ("signature", "verify_key", "manifest_sha256")
    }
    return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


def manifest_checksum(manifest: dict[str, Any]) -> str:
    """SHA-256 of the manifest's canonical form: a damaged LSN, time or epoch in an unsigned
    manifest is detected, not trusted (the per-file checksums do not cover the manifest)."""
    return hashlib.sha256(_canonical(manifest)).hexdigest()


def create(
    data_env: Env,
    auth_env: Env,
    index_dir: str,
    backup_dir: str,
    *,
    signing_key: str = "",
) -> SnapshotInfo:
    """Take a snapshot of a live (or stopped) data directory."""
    root = snapshots_dir(backup_dir)
    os.makedirs(root, exist_ok=True)
    cleanup(backup_dir)
    tmp = os.path.join(root, f"{TMP_PREFIX}{os.getpid()}-{time.time_ns()}")
    os.makedirs(tmp)
    try:
        # 1. index checkpoints
        _copy_indexes(index_dir, os.path.join(tmp, "indexes"))
        auth_path = os.path.join(tmp, AUTH_FILE)
        data_path = os.path.join(tmp, DATA_FILE)
        store = DataStore(data_env)
        log_db = data_env.db(LOG_DB)  # handles are opened outside the read transaction
        for attempt in range(3):
            # 2. auth store (first: it may only be behind the data file, never ahead)
            for p in (auth_path, data_path):
                if os.path.exists(p):
                    os.remove(p)
            auth_env.copy_to(auth_path)
            # 3. the data file at L, inside one read transaction
            with data_env.read() as txn:
                lsn = store.applied_lsn(txn)
                raw = txn.get(lsn_key(lsn), db=log_db) if lsn else None
                data_env.env.copy(data_path, compact=True, txn=txn)
            try:
                _bring_auth_to(auth_path, data_path, lsn)
                break
            except LogError:
                # the log was truncated between the two copies past what the auth copy had
                # folded (the truncation settles the live auth file first): copy again
                if attempt == 2:
                    raise
        rec = decode(raw) if raw is not None else None
        # manifest
        files = {}
        for dirpath, _, names in os.walk(tmp):
            for n in names:
                p = os.path.join(dirpath, n)
                if n.endswith("-lock"):  # LMDB lock files are per process, never data
                    os.remove(p)
                    continue
                rel = os.path.relpath(p, tmp)
                fsync_path(p)
                files[rel] = {"size": os.path.getsize(p), "sha256": sha256_file(p)}
        manifest: dict[str, Any] = {
            "format": FORMAT,
            "lsn": lsn,
            "epoch": rec.epoch if rec else 1,
            "record_ts": rec.ts if rec else 0,
            "created_at": time.time(),
            "files": files,
        }
        manifest["manifest_sha256"] = manifest_checksum(manifest)
        if signing_key:
            key = _signing_key(signing_key)
            manifest["signature"] = key.sign(_canonical(manifest)).signature.hex()
            manifest["verify_key"] = key.verify_key.encode(nacl.encoding.HexEncoder).decode()
        mpath = os.path.join(tmp, MANIFEST)
        with open(mpath, "w") as fh:
            json.dump(manifest, fh, indent=1, sort_keys=True)
            fh.flush()
            os.fsync(fh.fileno())
        name = f"snap-{lsn:016d}-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}"
        final = os.path.join(root, name)
        dup = 1
        while os.path.exists(final):
            final = os.path.join(root, f"{name}-{dup}")
            dup += 1
        os.replace(tmp, final)
        fsync_path(root)
        return info(final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _copy_indexes(src: str, dst: str) -> None:
    """Copy each database's checkpoint as one consistent set: the files its ``index.json``
    names, then that ``index.json`` — retried when a checkpoint is replaced during the copy.
    A database deleted meanwhile (its directory vanishes) or a checkpoint that keeps moving is
    left out: the restore then rebuilds that index from the vectors in the data file."""
    try:
        names = sorted(os.listdir(src))
    except FileNotFoundError:
        return
    for name in names:
        sdir, ddir = os.path.join(src, name), os.path.join(dst, name)
        if not os.path.isdir(sdir):
            continue
        for _ in range(5):
            shutil.rmtree(ddir, ignore_errors=True)
            try:
                with open(os.path.join(sdir, "index.json"), "rb") as fh:
                    meta_raw = fh.read()
                prefix = str(json.loads(meta_raw)["file"])
                os.makedirs(ddir)
                for fname in os.listdir(sdir):
                    if fname.startswith(prefix) and not fname.endswith(".tmp"):
                        shutil.copy2(os.path.join(sdir, fname), os.path.join(ddir, fname))
                if not os.path.exists(os.path.join(ddir, prefix)):
                    continue  # replaced between reading index.json and copying: again
                with open(os.path.join(sdir, "index.json"), "rb") as fh:
                    if fh.read() != meta_raw:
                        continue
                with open(os.path.join(ddir, "index.json"), "wb") as fh:
                    fh.write(meta_raw)
                break
            except (OSError, ValueError, KeyError, TypeError):
                continue
        else:
            shutil.rmtree(ddir, ignore_errors=True)


def _bring_auth_to(auth_path: str, data_path: str, lsn: int) -> None:
    """Apply to the copied auth store the auth records it lacks up to ``lsn`` (read from the
    copied data file's log), so both files of the snapshot are at the same LSN."""
    aenv = Env(auth_path)
    denv = Env(data_path, readonly=True)
    try:
        astore = AuthStore(aenv)
        replay(Log(denv), astore, upto=lsn, verify=False)
        aenv.write(lambda txn: astore.set_applied(txn, lsn))
    finally:
        aenv.close()
        denv.close()


def info(path: str) -> SnapshotInfo:
    """What the manifest says (``SnapshotError`` for one whose fields do not parse: a flipped
    byte can rename a key and leave valid JSON; ``verify`` names it by its checksum)."""
    m = read_manifest(path)
    try:
        size = sum(int(f["size"]) for f in m["files"].values())
        return SnapshotInfo(
            os.path.basename(path),
            path,
            int(m["lsn"]),
            int(m["epoch"]),
            int(m["record_ts"]),
            float(m["created_at"]),
            size,
            "signature" in m,
        )
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise SnapshotError(f"{os.path.join(path, MANIFEST)}: damaged manifest ({exc!r})") \
            from None


def read_manifest(path: str) -> dict[str, Any]:
    mpath = os.path.join(path, MANIFEST)
    try:
        with open(mpath) as fh:
            m = json.load(fh)
    except FileNotFoundError:
        raise SnapshotError(f"{mpath}: missing manifest") from None
    except (OSError, ValueError) as exc:
        raise SnapshotError(f"{mpath}: unreadable manifest ({exc})") from None
    for key in ("format", "lsn", "epoch", "record_ts", "created_at", "files"):
        if key not in m:
            raise SnapshotError(f"{mpath}: manifest lacks '{key}'")
    if m["format"] != FORMAT:
        raise SnapshotError(f"{mpath}: unknown format {m['format']}")
    if not isinstance(m["files"], dict) or DATA_FILE not in m["files"]:
        raise SnapshotError(f"{mpath}: manifest lists no {DATA_FILE}")
    return dict(m)


def verify(path: str, *, verify_key: str = "") -> list[str]:
    """Problems found in one snapshot (empty list: intact). Checks the manifest, every file's
    size and SHA-256, no unlisted files, the signature when present (against ``verify_key`` when
    given), and that the data file opens and its log chain verifies up to the manifest LSN."""
    problems: list[str] = []
    try:
        m = read_manifest(path)
    except SnapshotError as exc:
        return [str(exc)]
    if m.get("manifest_sha256") != manifest_checksum(m):
        # nothing in a damaged manifest can be trusted, not even its keys
        return [f"{MANIFEST}: checksum mismatch (damaged)"]
    listed = set(m["files"])
    present = set()
    for dirpath, _, names in os.walk(path):
        for n in names:
            rel = os.path.relpath(os.path.join(dirpath, n), path)
            if rel != MANIFEST and not rel.endswith("-lock"):
                present.add(rel)
    for rel in sorted(present - listed):
        problems.append(f"{rel}: not in the manifest")
    for rel in sorted(listed):
        f = m["files"][rel]
        p = os.path.join(path, rel)
        if not os.path.exists(p):
            problems.append(f"{rel}: missing")
            continue
        if os.path.getsize(p) != f["size"]:
            problems.append(f"{rel}: size {os.path.getsize(p)} != {f['size']} (truncated?)")
            continue
        if sha256_file(p) != f["sha256"]:
            problems.append(f"{rel}: checksum mismatch (damaged)")
    if "signature" in m:
        try:
            key = verify_key or m.get("verify_key", "")
            if not isinstance(key, str):
                raise TypeError("verify_key is not a hex string")
            vk = nacl.signing.VerifyKey(key.encode(), encoder=nacl.encoding.HexEncoder)
            vk.verify(_canonical(m), bytes.fromhex(m["signature"]))
        except (
            ValueError,
            TypeError,
            nacl.exceptions.BadSignatureError,
            nacl.exceptions.CryptoError,
        ):
            problems.append(f"{MANIFEST}: bad signature")
    elif verify_key:
        problems.append(f"{MANIFEST}: unsigned, but a verify key was given")
    if not problems:
        problems.extend(_check_log(path, int(m["lsn"])))
    return problems


def _check_log(path: str, lsn: int) -> list[str]:
    from wal.log import Log, LogError

    try:
        env = Env(os.path.join(path, DATA_FILE), readonly=True)
    except lmdb.Error as exc:
        return [f"{DATA_FILE}: does not open ({exc})"]
    try:
        log = Log(env)
        if log.last_lsn != lsn:
            return [f"{DATA_FILE}: log ends at {log.last_lsn}, manifest says {lsn}"]
        n = 0
        for _ in log.iterate(log.first_lsn - 1, verify=True):
            n += 1
        return []
    except (LogError, ValueError, lmdb.Error) as exc:
        return [f"{DATA_FILE}: log check failed ({exc})"]
    finally:
        env.close()


def listing(backup_dir: str) -> list[SnapshotInfo]:
    """Snapshots, oldest first; temporary and unreadable directories are skipped."""
    root = snapshots_dir(backup_dir)
    if not os.path.isdir(root):
        return []
    out = []
    for name in sorted(os.listdir(root)):
        if name.startswith(TMP_PREFIX) or not name.startswith("snap-"):
            continue
        try:
            out.append(info(os.path.join(root, name)))
        except SnapshotError:
            continue
    out.sort(key=lambda s: (s.lsn, s.created_at))
    return out


def delete(backup_dir: str, name: str) -> None:
    root = snapshots_dir(backup_dir)
    path = os.path.join(root, name)
    if os.path.dirname(os.path.abspath(path)) != os.path.abspath(root) or not os.path.isdir(path):
        raise FileNotFoundError(name)
    shutil.rmtree(path)


def _alive(pid: str) -> bool:
    if pid == str(os.getpid()):
        return True
    try:
        n = int(pid)
        if n <= 0:
            return False
        os.kill(n, 0)
    except (ValueError, OverflowError, ProcessLookupError):
        return False
    except PermissionError:  # exists, belongs to someone else
        return True
    return True


def cleanup(backup_dir: str) -> int:
    """Remove temporary directories left by interrupted snapshots. A directory whose process
    still runs is a snapshot in progress (this server's, or ``jade snapshot create`` running
    beside it) and is left alone."""
    root = snapshots_dir(backup_dir)
    n = 0
    if not os.path.isdir(root):
        return 0
    for name in os.listdir(root):
        if name.startswith(TMP_PREFIX):
            pid = name[len(TMP_PREFIX) :].split("-")[0]
            if _alive(pid):
                continue
            shutil.rmtree(os.path.join(root, name), ignore_errors=True)
            n += 1
    return n


def apply_retention(backup_dir: str, days: int) -> list[str]:
    """Delete snapshots older than ``days`` (the newest is always kept). Returns their names."""
    if days <= 0:
        return []
    snaps = listing(backup_dir)
    cutoff = time.time() - days * 86400
    gone = []
    for s in snaps[:-1]:
        if s.created_at < cutoff:
            delete(backup_dir, s.name)
            gone.append(s.name)
    return gone
