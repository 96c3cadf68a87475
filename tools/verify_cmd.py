"""``jade verify [DIR]`` — our ``PRAGMA integrity_check``; ``jade wal inspect`` prints records."""

from __future__ import annotations

import argparse
import json
import os
from typing import Any

from jade.backup.verify import verify_dir
from tools.errors import USAGE, CliError
from tools.offline import add_data_dir, require_data, require_dir, settings_for
from tools.progress import emit
from wal.lmdbenv import Env
from wal.log import Log


def register(sub: Any) -> None:
    p = sub.add_parser("verify", help="integrity check of a data directory (exit 1 on damage)")
    p.add_argument("dir", nargs="?", help="data directory (default: the configured one)")
    p.add_argument("--auth-db", help="the auth store's file (default: the configured one for "
                   "the configured data directory, else DIR/jadevectordb_auth.db)")
    p.add_argument("--json", action="store_true")
    add_data_dir(p)
    p.set_defaults(run=run_verify)
    w = sub.add_parser("wal", help="the log")
    wsub = w.add_subparsers(dest="wal_command", required=True)
    i = wsub.add_parser("inspect", help="print log records")
    i.add_argument("--from", dest="start", type=int, default=None, help="first LSN")
    i.add_argument("--limit", type=int, default=20)
    i.add_argument("--type", default=None, help="only records of this type (prefix match)")
    i.add_argument("--json", action="store_true")
    add_data_dir(i)
    i.set_defaults(run=run_inspect)


def run_verify(args: argparse.Namespace) -> int:
    if args.dir and args.data_dir and os.path.realpath(args.dir) != os.path.realpath(
            args.data_dir):
        raise CliError(f"two data directories: {args.dir} and --data-dir {args.data_dir}", USAGE)
    s = settings_for(args.dir or args.data_dir, args.auth_db)
    require_dir(s.data_dir)
    report = verify_dir(s)
    unfinished = report.facts.get("restore", {}).get("state") == "in progress"
    verdict = "OK" if report.ok else "UNFINISHED RESTORE" if unfinished else "DAMAGED"
    emit(
        {"ok": report.ok, "lines": report.lines, "facts": report.facts},
        args.json,
        "\n".join(report.lines) + f"\n{verdict}: {s.data_dir}",
    )
    return 0 if report.ok else 1


def _short(v: Any) -> Any:
    if isinstance(v, bytes):
        return f"<{len(v)} bytes>"
    if isinstance(v, dict):
        return {k: _short(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_short(x) for x in v[:8]] + ([f"... {len(v) - 8} more"] if len(v) > 8 else [])
    return v


def run_inspect(args: argparse.Namespace) -> int:
    s = settings_for(args.data_dir)
    require_data(s)
    env = Env(s.db_path, readonly=True)
    try:
        log = Log(env)
        start = (
            args.start
            if args.start is not None
            else max(log.first_lsn, log.last_lsn - args.limit + 1)
        )
        n = 0
        for rec in log.iterate(max(start, log.first_lsn) - 1, verify=True):
            if args.type and not rec.type.startswith(args.type):
                continue
            row = {
                "lsn": rec.lsn,
                "ts": rec.ts,
                "epoch": rec.epoch,
                "type": rec.type,
                "actor": rec.actor,
                "body": _short(rec.body),
                "checksum": rec.checksum.hex(),
            }
            print(
                json.dumps(row, default=str)
                if args.json
                else f"{rec.lsn:>8} e{rec.epoch} {rec.type:<20} {rec.actor:<18} "
                f"{json.dumps(_short(rec.body), default=str)[:160]}"
            )
            n += 1
            if n >= args.limit:
                break
    finally:
        env.close()
    return 0
