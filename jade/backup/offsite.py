"""Offsite copies of the backups: every snapshot and archive segment of the backup directory
copied to a second location — a directory on another disk (``backup.offsite_path``) or an
S3-compatible bucket (``backup.offsite_s3_url``, through boto3) — so that losing the data volume,
which holds the backup directory by default, loses no backup. pgBackRest's second repository
and Litestream's replica do the same.

The layout at the target is the backup directory's own (``snapshots/<name>/<files>``,
``archive/<segment>``), under the bucket's prefix for S3. A path target therefore *is* a backup
directory ``jade restore`` reads as it is (``JADEVECTORDB_BACKUP_DIR=<path>``); an S3 prefix
becomes one by ``fetch`` (``jade snapshot fetch``).

A copy is complete or absent:

- a snapshot's files are copied first and its ``manifest.json`` last, and a snapshot counts as
  copied (``listing``, ``fetch``) only once its manifest is there. Retention removes the manifest
  first;
- an archive segment's name carries the first 16 hex digits of its SHA-256: a name present at
  the target is that segment;
- on a path every file is written under a temporary name, fsynced and renamed (the directory
  fsynced); an S3 object appears whole or not at all.

Every file is checked against its checksum (the manifest's SHA-256, the segment's name) as it is
read for the copy: a damaged local backup is named and not copied (the run ends in error, the
rest copied). Local retention never deletes an offsite copy (a data disk that lost its snapshots
must not empty the second location); the target applies ``backup.snapshot_retention_days`` to
its own snapshots, the newest always kept. Archive segments stay, as they do locally.

Blocking I/O: call from a worker thread (the ``offsite`` job of ``jade.http.jobs`` does).
"""

from __future__ import annotations

import calendar
import hashlib
import importlib
import logging
import os
import re
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from jade.backup import archive, snapshot
from jade.settings import ConfigError, Settings
from wal.files import fsync_path, sha256_file

log = logging.getLogger(__name__)

SNAPSHOTS = "snapshots"
ARCHIVE = "archive"
_CHUNK = 1 << 20
TMP_DIR = ".tmp"  # a path target's partial files
_SNAP_TIME = re.compile(r"^snap-\d{16}-(\d{8}T\d{6}Z)")


class OffsiteError(RuntimeError):
    """A copy that did not complete; the message names the file and the target."""


class Target(Protocol):
    """A second location for backups. Keys are '/'-separated paths relative to its root."""

    @property
    def kind(self) -> str: ...  # "path" or "s3": the metric label

    @property
    def where(self) -> str: ...  # for messages and /status: "/mnt/offsite", "s3://b/p"

    def files(self, under: str) -> dict[str, int]:
        """Every key under ``under`` (a folder) with its size."""
        ...

    def put(self, key: str, local: str, check: Callable[[str], None]) -> int:
        """Copy the local file to ``key`` (whole or not at all); ``check`` is called with the
        file's SHA-256 before the copy becomes visible and raises to refuse it. Bytes copied."""
        ...

    def get(self, key: str, local: str) -> int:
        """Copy ``key`` to the local path (whole or not at all). Bytes copied."""
        ...

    def delete(self, key: str) -> None: ...


# -- a directory (another disk, a network file system) ----------------------------------------


class PathTarget:
    kind = "path"

    def __init__(self, root: str) -> None:
        self.root = os.path.abspath(root)

    @property
    def where(self) -> str:
        return self.root

    def _path(self, key: str) -> str:
        p = os.path.normpath(os.path.join(self.root, *key.split("/")))
        if not p.startswith(self.root + os.sep):
            raise OffsiteError(f"{key!r}: outside {self.root}")
        return p

    def _mounted(self) -> None:
        # never created here: a missing root is an unmounted disk, and copying into the mount
        # point would fill the root file system with backups that vanish on the next mount
        if not os.path.isdir(self.root):
            raise OffsiteError(f"{self.root} does not exist (is the other disk mounted?): "
                               "create it, or mount the disk there")

    def files(self, under: str) -> dict[str, int]:
        self._mounted()
        base = self._path(under)
        out: dict[str, int] = {}
        for dirpath, _, names in os.walk(base):
            for n in names:
                p = os.path.join(dirpath, n)
                try:
                    out[os.path.relpath(p, self.root).replace(os.sep, "/")] = os.path.getsize(p)
                except FileNotFoundError:
                    continue
        return out

    def put(self, key: str, local: str, check: Callable[[str], None]) -> int:
        self._mounted()
        dst = self._path(key)
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        # the partial file lives in <root>/.tmp (same file system: the rename is atomic), never
        # beside the copies, where a restore would take it for an unlisted file
        tmp_dir = os.path.join(self.root, TMP_DIR)
        os.makedirs(tmp_dir, exist_ok=True)
        return _copy_file(local, dst, check, tmp_dir)

    def cleanup(self) -> int:
        """Remove the partial files of copies whose process is gone."""
        tmp_dir = os.path.join(self.root, TMP_DIR)
        n = 0
        try:
            names = os.listdir(tmp_dir)
        except FileNotFoundError:
            return 0
        for name in names:
            if not snapshot._alive(name.split("-")[0]):
                try:
                    os.remove(os.path.join(tmp_dir, name))
                    n += 1
                except FileNotFoundError:
                    pass
        return n

    def get(self, key: str, local: str) -> int:
        d = os.path.dirname(local) or "."
        os.makedirs(d, exist_ok=True)
        return _copy_file(self._path(key), local, lambda _: None, d)

    def delete(self, key: str) -> None:
        p = self._path(key)
        try:
            os.remove(p)
        except FileNotFoundError:
            return
        d = os.path.dirname(p)
        while d != self.root and d.startswith(self.root):  # drop the emptied folders
            try:
                os.rmdir(d)
            except OSError:
                break
            d = os.path.dirname(d)


def _copy_file(src: str, dst: str, check: Callable[[str], None], tmp_dir: str) -> int:
    """Copy hashing as it reads; ``check(sha256)`` before the rename makes it visible."""
    tmp = os.path.join(tmp_dir, f"{os.getpid()}-{threading.get_ident()}-{time.time_ns()}.part")
    h = hashlib.sha256()
    n = 0
    try:
        with open(src, "rb") as fin, open(tmp, "wb") as fout:
            for chunk in iter(lambda: fin.read(_CHUNK), b""):
                h.update(chunk)
                fout.write(chunk)
                n += len(chunk)
            fout.flush()
            os.fsync(fout.fileno())
        check(h.hexdigest())
        os.replace(tmp, dst)
        fsync_path(os.path.dirname(dst))
    except BaseException:
        try:
            os.remove(tmp)
        except FileNotFoundError:
            pass
        raise
    return n


# -- an S3-compatible bucket (AWS S3, MinIO, Ceph RGW, R2...) ---------------------------------


def parse_s3_url(url: str) -> tuple[str, str]:
    """``s3://bucket/some/prefix`` → (bucket, "some/prefix")."""
    m = re.fullmatch(r"s3://([a-z0-9][a-z0-9.\-]{1,61}[a-z0-9])(?:/(.*))?", url.strip())
    if m is None:
        raise ConfigError(f"backup.offsite_s3_url: {url!r} is not s3://BUCKET[/PREFIX]")
    return m[1], (m[2] or "").strip("/")


class S3Target:
    kind = "s3"

    def __init__(self, url: str, *, endpoint_url: str = "", region: str = "",
                 access_key_id: str = "", secret_access_key: str = "",
                 client: Any = None) -> None:
        self.bucket, self.prefix = parse_s3_url(url)
        if client is None:
            # imported here: only a server with an S3 target needs boto3 loaded. Credentials:
            # the settings when given, else boto3's own chain (AWS_* variables, ~/.aws, an
            # instance or pod role)
            try:
                boto3 = importlib.import_module("boto3")
                botocore_config = importlib.import_module("botocore.config")
            except ImportError as exc:  # a slim install: the s3 extra is not there
                raise OffsiteError(
                    "backup.offsite_s3_url is set but boto3 is not installed: pip install "
                    "'jadevectordb-server[s3]'") from exc
            kw: dict[str, Any] = {}
            if endpoint_url:
                kw["endpoint_url"] = endpoint_url
            if region:
                kw["region_name"] = region
            if access_key_id or secret_access_key:
                kw["aws_access_key_id"] = access_key_id
                kw["aws_secret_access_key"] = secret_access_key
            cfg = botocore_config.Config(
                retries={"max_attempts": 5, "mode": "standard"},
                connect_timeout=10, read_timeout=60,
                # MinIO and most S3-compatible stores serve path-style URLs
                s3={"addressing_style": "path"} if endpoint_url else {},
            )
            client = boto3.client("s3", config=cfg, **kw)
        self.client = client

    @property
    def where(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}".rstrip("/")

    def _key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def files(self, under: str) -> dict[str, int]:
        start = self._key(under).rstrip("/") + "/"
        cut = len(self.prefix) + 1 if self.prefix else 0
        out: dict[str, int] = {}
        pages = self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=start)
        for page in pages:
            for obj in page.get("Contents", []):
                out[str(obj["Key"])[cut:]] = int(obj["Size"])
        return out

    def put(self, key: str, local: str, check: Callable[[str], None]) -> int:
        check(sha256_file(local))
        self.client.upload_file(local, self.bucket, self._key(key))
        return os.path.getsize(local)

    def get(self, key: str, local: str) -> int:
        os.makedirs(os.path.dirname(local) or ".", exist_ok=True)
        tmp = f"{local}.tmp-{os.getpid()}"
        try:
            self.client.download_file(self.bucket, self._key(key), tmp)
            os.replace(tmp, local)
        except BaseException:
            try:
                os.remove(tmp)
            except FileNotFoundError:
                pass
            raise
        return os.path.getsize(local)

    def delete(self, key: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=self._key(key))


# -- which targets ----------------------------------------------------------------------------


def targets(s: Settings) -> list[Target]:
    """The configured targets (none: offsite copies are off). A path inside the data or backup
    directory is refused: it would live on the disk it is meant to outlive."""
    out: list[Target] = []
    if s.offsite_path:
        check_apart(s.offsite_path, s, "backup.offsite_path")
        out.append(PathTarget(s.offsite_path))
    if s.offsite_s3_url:
        out.append(S3Target(
            s.offsite_s3_url, endpoint_url=s.offsite_s3_endpoint_url,
            region=s.offsite_s3_region, access_key_id=s.offsite_s3_access_key_id,
            secret_access_key=s.offsite_s3_secret_access_key))
    return out


def check_apart(path: str, s: Settings, what_is_it: str) -> None:
    """Refuse a second location inside (or around) the data or backup directory."""
    root = os.path.realpath(path)
    for what, p in (("data directory", s.data_dir), ("backup directory", s.backup_dir)):
        inner = os.path.realpath(p)
        if root == inner or root.startswith(inner + os.sep) or inner.startswith(root + os.sep):
            raise ConfigError(
                f"{what_is_it} ({path}) overlaps the {what} ({p}): put the offsite copy on "
                "another disk")


def target_for(where: str, s: Settings, *, endpoint_url: str = "") -> Target:
    """A target named on a command line (``jade snapshot push --to``, ``fetch --from``):
    ``s3://BUCKET/PREFIX`` (credentials, region and endpoint from the settings unless
    ``endpoint_url`` is given), else a directory."""
    if where.startswith("s3://"):
        return S3Target(
            where, endpoint_url=endpoint_url or s.offsite_s3_endpoint_url,
            region=s.offsite_s3_region, access_key_id=s.offsite_s3_access_key_id,
            secret_access_key=s.offsite_s3_secret_access_key)
    if "://" in where:
        raise ConfigError(f"{where!r}: a directory or s3://BUCKET/PREFIX")
    return PathTarget(where)


# -- copying out ------------------------------------------------------------------------------


@dataclass
class PushResult:
    target: str
    snapshots: list[str]
    segments: int
    bytes: int
    deleted: list[str]
    problems: list[str]

    def json(self) -> dict[str, Any]:
        return {"target": self.target, "snapshots": self.snapshots, "segments": self.segments,
                "bytes": self.bytes, "deleted": self.deleted, "problems": self.problems}


def push(backup_dir: str, target: Target, retention_days: int = 0) -> PushResult:
    """Copy to ``target`` every local snapshot and archive segment it lacks, then apply the
    snapshot retention there. Problems with one file (a damaged local copy, a snapshot deleted
    by local retention meanwhile) are listed and the rest copied; the caller decides whether
    they are an error (``push_all`` raises)."""
    res = PushResult(target.where, [], 0, 0, [], [])
    if isinstance(target, PathTarget):
        target.cleanup()
    # archive segments first: a snapshot without the segments after it restores less
    have = target.files(ARCHIVE)
    for seg in archive.segments(backup_dir):
        key = f"{ARCHIVE}/{seg.name}"
        if key in have:
            continue

        def check_seg(sha: str, seg: archive.Segment = seg) -> None:
            if sha[:16] != seg.sha16:
                raise OffsiteError(f"{seg.path}: checksum mismatch (damaged): not copied")

        try:
            res.bytes += target.put(key, seg.path, check_seg)
            res.segments += 1
        except OffsiteError as exc:
            res.problems.append(str(exc))
            break  # the segments after a damaged one would leave a gap at the target
        except FileNotFoundError as exc:
            res.problems.append(f"{seg.path}: vanished during the copy ({exc})")
            break
    remote = target.files(SNAPSHOTS)
    local = snapshot.listing(backup_dir)
    cutoff = time.time() - retention_days * 86400 if retention_days > 0 else None
    for info in local:
        if f"{SNAPSHOTS}/{info.name}/{snapshot.MANIFEST}" in remote:
            continue
        if cutoff is not None and info.created_at < cutoff and info is not local[-1]:
            continue  # past retention (local retention deletes it at its next run)
        try:
            res.bytes += _push_snapshot(info, target, remote)
            res.snapshots.append(info.name)
        except (OffsiteError, snapshot.SnapshotError) as exc:
            res.problems.append(str(exc))
        except FileNotFoundError:
            if os.path.isdir(info.path):
                raise
            res.problems.append(f"snapshot {info.name} was deleted during the copy: skipped")
    if retention_days > 0:
        res.deleted = _apply_retention(target, retention_days)
    return res


def _push_snapshot(info: snapshot.SnapshotInfo, target: Target, remote: dict[str, int]) -> int:
    m = snapshot.read_manifest(info.path)
    if m.get("manifest_sha256") != snapshot.manifest_checksum(m):
        raise OffsiteError(f"{info.path}/{snapshot.MANIFEST}: checksum mismatch (damaged): "
                           f"snapshot {info.name} not copied")
    n = 0
    for rel, f in sorted(m["files"].items()):
        key = f"{SNAPSHOTS}/{info.name}/{rel}"
        if remote.get(key) == int(f["size"]):
            continue  # copied by an earlier run that stopped before the manifest

        def check(sha: str, rel: str = rel, want: str = str(f["sha256"])) -> None:
            if sha != want:
                raise OffsiteError(f"{info.path}/{rel}: checksum mismatch (damaged): snapshot "
                                   f"{info.name} not copied")

        n += target.put(key, os.path.join(info.path, *rel.split("/")), check)
    # last: its presence says every file is there
    n += target.put(f"{SNAPSHOTS}/{info.name}/{snapshot.MANIFEST}",
                    os.path.join(info.path, snapshot.MANIFEST), lambda _: None)
    return n


def remote_snapshots(target: Target) -> dict[str, list[str]]:
    """The complete snapshots at the target (manifest present): name → its keys, oldest name
    first."""
    by_name: dict[str, list[str]] = {}
    complete: set[str] = set()
    for key in target.files(SNAPSHOTS):
        parts = key.split("/")
        if len(parts) < 3:
            continue
        by_name.setdefault(parts[1], []).append(key)
        if parts[2:] == [snapshot.MANIFEST]:
            complete.add(parts[1])
    return {n: sorted(by_name[n]) for n in sorted(complete)}


def _created(name: str) -> float | None:
    m = _SNAP_TIME.match(name)
    if m is None:
        return None
    return float(calendar.timegm(time.strptime(m[1], "%Y%m%dT%H%M%SZ")))


def _apply_retention(target: Target, days: int) -> list[str]:
    snaps = remote_snapshots(target)
    names = sorted(snaps, key=lambda n: n.split("-")[1])  # by LSN: the newest last
    cutoff = time.time() - days * 86400
    gone = []
    for name in names[:-1]:
        created = _created(name)
        if created is None or created >= cutoff:
            continue
        keys = snaps[name]
        manifest = f"{SNAPSHOTS}/{name}/{snapshot.MANIFEST}"
        target.delete(manifest)  # first: from here on it is not a complete snapshot
        for key in keys:
            if key != manifest:
                target.delete(key)
        gone.append(name)
    return gone


class Offsite:
    """The server's offsite copier: one run at a time, every configured target."""

    def __init__(self, settings: Settings, on_bytes: Callable[[str, int], None] | None = None
                 ) -> None:
        self.settings = settings
        self.targets = targets(settings)
        self.on_bytes = on_bytes
        self._lock = threading.Lock()

    def push_all(self) -> dict[str, Any]:
        """Copy to every target; raises ``OffsiteError`` naming every problem after trying
        all targets (the scheduler records the run as failed)."""
        out: list[dict[str, Any]] = []
        problems: list[str] = []
        with self._lock:
            for t in self.targets:
                try:
                    r = push(self.settings.backup_dir, t, self.settings.snapshot_retention_days)
                except Exception as exc:  # a target unreachable: the others still get theirs
                    log.warning("offsite copy to %s failed: %s", t.where, exc)
                    problems.append(f"{t.where}: {type(exc).__name__}: {exc}")
                    continue
                if self.on_bytes is not None and r.bytes:
                    self.on_bytes(t.kind, r.bytes)
                if r.snapshots or r.segments or r.deleted:
                    log.info("offsite copy to %s: %d snapshot(s), %d segment(s), %d bytes, "
                             "%d old snapshot(s) deleted", t.where, len(r.snapshots),
                             r.segments, r.bytes, len(r.deleted))
                problems.extend(f"{t.where}: {p}" for p in r.problems)
                out.append(r.json())
        if problems:
            raise OffsiteError("; ".join(problems))
        return {"targets": out}


# -- copying back -----------------------------------------------------------------------------


def fetch(target: Target, backup_dir: str, *, names: list[str] | None = None) -> dict[str, Any]:
    """Copy the target's complete snapshots (``names``: only those) and its archive into
    ``backup_dir``, a local directory ``jade restore`` then reads
    (``JADEVECTORDB_BACKUP_DIR=backup_dir``). Each snapshot lands under a temporary name and is
    renamed once complete; ``jade restore`` verifies it (checksums, signature) before use."""
    snaps = remote_snapshots(target)
    if names is not None:
        missing = sorted(set(names) - set(snaps))
        if missing:
            raise OffsiteError(f"{target.where}: no complete snapshot named {', '.join(missing)}")
        snaps = {n: snaps[n] for n in names}
    root = snapshot.snapshots_dir(backup_dir)
    os.makedirs(root, exist_ok=True)
    n_bytes = 0
    got: list[str] = []
    for name, keys in snaps.items():
        final = os.path.join(root, name)
        if os.path.isdir(final):
            continue
        tmp = os.path.join(root, f"{snapshot.TMP_PREFIX}{os.getpid()}-{time.time_ns()}")
        try:
            for key in keys:
                rel = key.split("/", 2)[2]
                n_bytes += target.get(key, os.path.join(tmp, *rel.split("/")))
            os.replace(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        got.append(name)
    adir = archive.archive_dir(backup_dir)
    os.makedirs(adir, exist_ok=True)
    segs = 0
    for key in sorted(target.files(ARCHIVE)):
        name = key.split("/", 1)[1]
        if "/" in name or not archive.NAME.match(name):
            continue
        local = os.path.join(adir, name)
        if os.path.exists(local):
            continue
        n_bytes += target.get(key, local)
        segs += 1
    fsync_path(root)
    fsync_path(adir)
    return {"target": target.where, "backup_dir": backup_dir, "snapshots": got,
            "segments": segs, "bytes": n_bytes}
