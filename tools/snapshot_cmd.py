"""``jade snapshot create|list|verify|delete`` (also our ``sqlite3 … .backup``), and
``push``/``fetch``: copy the backups to a second location (a directory or an S3 prefix) now, or
copy them back from there into a directory ``jade restore`` reads. Works while the server runs:
the copies are taken inside LMDB read transactions."""

from __future__ import annotations

import argparse
import os
from typing import Any

from jade.backup import archive, offsite, snapshot
from jade.settings import Settings
from tools.errors import USAGE, CliError
from tools.offline import add_data_dir, require_data, require_dir, settings_for
from tools.progress import emit
from wal.lmdbenv import Env


def register(sub: Any) -> None:
    p = sub.add_parser("snapshot", help="hot snapshots")
    ssub = p.add_subparsers(dest="snapshot_command", required=True)
    c = ssub.add_parser("create", help="take a consistent snapshot now")
    c.add_argument("--json", action="store_true")
    c.set_defaults(run=run_create)
    ls = ssub.add_parser("list", help="list snapshots")
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(run=run_list)
    v = ssub.add_parser("verify", help="verify every snapshot and the archive (exit 1 on damage)")
    v.add_argument("name", nargs="?", help="only this snapshot")
    v.add_argument("--verify-key", default="", help="hex Ed25519 public key to require")
    v.add_argument("--json", action="store_true")
    v.set_defaults(run=run_verify)
    d = ssub.add_parser("delete", help="delete a snapshot")
    d.add_argument("name")
    d.set_defaults(run=run_delete)
    pu = ssub.add_parser(
        "push", help="copy the snapshots and the archive to the second location now",
        description="Copy every snapshot and archive segment the target lacks (what the "
        "server's offsite job does every backup.offsite_interval_seconds). The target: --to, "
        "else the configured backup.offsite_path and backup.offsite_s3_url.")
    pu.add_argument("--to", metavar="DIR|s3://BUCKET/PREFIX", help="the target (default: the "
                    "configured ones)")
    pu.add_argument("--endpoint-url", default="", help="an S3-compatible store's URL (MinIO...)")
    pu.add_argument("--json", action="store_true")
    pu.set_defaults(run=run_push)
    fe = ssub.add_parser(
        "fetch", help="copy snapshots and the archive back from the second location",
        description="Copy the complete snapshots (or only those named) and the archive from a "
        "second location into a local backup directory, which `jade restore` then reads "
        "(JADEVECTORDB_BACKUP_DIR=DIR jade restore --latest --target ...).")
    fe.add_argument("--from", dest="source", required=True, metavar="DIR|s3://BUCKET/PREFIX")
    fe.add_argument("--to", metavar="DIR", help="the local backup directory (default: the "
                    "configured one of --data-dir)")
    fe.add_argument("--endpoint-url", default="", help="an S3-compatible store's URL (MinIO...)")
    fe.add_argument("names", nargs="*", metavar="NAME", help="only these snapshots")
    fe.add_argument("--json", action="store_true")
    fe.set_defaults(run=run_fetch)
    for cmd in (c, ls, v, d, pu, fe):
        add_data_dir(cmd)


def _backups(args: argparse.Namespace) -> Settings:
    """The settings of ``--data-dir``, whose backup directory or data directory exists (the
    backups of a lost data directory can still be listed and verified)."""
    s = settings_for(args.data_dir)
    if not os.path.isdir(s.backup_dir):
        require_dir(s.data_dir)  # a wrong directory: one line naming it
    return s


def run_create(args: argparse.Namespace) -> int:
    s = settings_for(args.data_dir)
    require_data(s)
    denv = Env(s.db_path, readonly=True)
    aenv = Env(s.auth_db_path, readonly=True)
    try:
        info = snapshot.create(
            denv, aenv, s.index_dir, s.backup_dir, signing_key=s.snapshot_signing_key
        )
    finally:
        denv.close()
        aenv.close()
    emit(info.json(), args.json, f"snapshot {info.name} at LSN {info.lsn} ({info.size} bytes)")
    return 0


def run_list(args: argparse.Namespace) -> int:
    s = _backups(args)
    snaps = snapshot.listing(s.backup_dir)
    rows = [x.json() for x in snaps]
    text = (
        "\n".join(
            f"{x.name}  LSN {x.lsn}  {x.size} bytes{'  signed' if x.signed else ''}" for x in snaps
        )
        or "no snapshots"
    )
    emit(rows, args.json, text)
    return 0


def run_verify(args: argparse.Namespace) -> int:
    s = _backups(args)
    snaps = snapshot.listing(s.backup_dir)
    names = [x.name for x in snaps]
    root = snapshot.snapshots_dir(s.backup_dir)
    if args.name:
        names = [args.name]
    results: dict[str, list[str]] = {}
    if os.path.isdir(root) and not args.name:
        # directories that are not listed because their manifest is unreadable are damage too
        for n in sorted(os.listdir(root)):
            if n.startswith("snap-") and n not in names:
                names.append(n)
    for n in names:
        results[n] = snapshot.verify(os.path.join(root, n), verify_key=args.verify_key)
    results["archive"] = archive.verify_all(s.backup_dir)
    bad = {k: v for k, v in results.items() if v}
    lines = [
        f"{'DAMAGED' if v else 'ok'}  {k}" + "".join(f"\n    {p}" for p in v)
        for k, v in results.items()
    ]
    emit({"ok": not bad, "results": results}, args.json, "\n".join(lines))
    return 1 if bad else 0


def run_delete(args: argparse.Namespace) -> int:
    s = _backups(args)
    try:
        snapshot.delete(s.backup_dir, args.name)
    except FileNotFoundError:
        raise CliError(f"no snapshot named {args.name} in {s.backup_dir}") from None
    print(f"deleted {args.name}")
    return 0


def run_push(args: argparse.Namespace) -> int:
    s = _backups(args)
    if args.to:
        if not args.to.startswith("s3://"):
            offsite.check_apart(args.to, s, "--to")
        targets = [offsite.target_for(args.to, s, endpoint_url=args.endpoint_url)]
    else:
        targets = offsite.targets(s)
        if not targets:
            raise CliError("no second location: give --to DIR|s3://BUCKET/PREFIX or set "
                           "backup.offsite_path / backup.offsite_s3_url", USAGE)
    rows = []
    problems: list[str] = []
    for t in targets:
        r = offsite.push(s.backup_dir, t, s.snapshot_retention_days)
        rows.append(r.json())
        problems += [f"{t.where}: {p}" for p in r.problems]
    text = "\n".join(
        f"{r['target']}: {len(r['snapshots'])} snapshot(s), {r['segments']} segment(s), "
        f"{r['bytes']} bytes copied" + (f"; {len(r['deleted'])} old snapshot(s) deleted there"
                                        if r["deleted"] else "")
        for r in rows)
    emit({"targets": rows, "problems": problems}, args.json,
         text + "".join(f"\nproblem: {p}" for p in problems))
    return 1 if problems else 0


def run_fetch(args: argparse.Namespace) -> int:
    s = settings_for(args.data_dir)
    dest = args.to or s.backup_dir
    source = offsite.target_for(args.source, s, endpoint_url=args.endpoint_url)
    if not args.source.startswith("s3://"):
        if not os.path.isdir(args.source):
            raise CliError(f"no backup copy at {os.path.abspath(args.source)}: --from names a "
                           "directory or s3://BUCKET/PREFIX")
        if os.path.realpath(args.source) == os.path.realpath(dest):
            raise CliError(f"--from and --to are the same directory ({dest})", USAGE)
    got = offsite.fetch(source, dest, names=args.names or None)
    emit(got, args.json,
         f"{len(got['snapshots'])} snapshot(s) and {got['segments']} archive segment(s) "
         f"({got['bytes']} bytes) copied into {dest}; restore with: "
         f"JADEVECTORDB_BACKUP_DIR={dest} jade restore --latest --target DIR")
    return 0
