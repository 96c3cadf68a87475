"""``jade restore --to-time T | --to-lsn N | --latest --target DIR`` (point-in-time restore)."""

from __future__ import annotations

import argparse
import re
import sys
from datetime import UTC, datetime
from typing import Any

from jade.backup.restore import RestoreError, restore
from tools.offline import add_data_dir, settings_for
from tools.progress import emit, reporter


def register(sub: Any) -> None:
    p = sub.add_parser("restore", help="restore to a time or an LSN into a new directory")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--to-time", help="RFC 3339 time, e.g. 2026-11-28T10:00:00.123456Z")
    g.add_argument("--to-lsn", type=int)
    g.add_argument("--latest", action="store_true")
    p.add_argument("--target", required=True, help="new data directory (filled as "
                   "TARGET.restoring-*, renamed to TARGET once complete)")
    p.add_argument("--force", action="store_true",
                   help="replace a non-empty target (once the new directory is complete)")
    p.add_argument("--verify-key", default="", help="hex Ed25519 key snapshots must be signed by")
    p.add_argument("--json", action="store_true")
    add_data_dir(p)  # the source: its log, its backups (which may be all that is left of it)
    p.set_defaults(run=run)


def parse_time(text: str) -> int:
    """RFC 3339 → ns since the epoch, exactly (integer arithmetic; up to 9 fraction digits are
    kept, so a record's own ``ts`` can be named)."""
    t = text.strip().replace("z", "Z")
    if t.endswith("Z"):
        t = t[:-1] + "+00:00"
    frac_ns = 0
    m = re.search(r"\.(\d+)(?=[+-]\d\d:?\d\d$|$)", t)
    if m:
        digits = m[1]
        if len(digits) > 9:
            raise RestoreError(f"time {text!r}: more than 9 fraction digits")
        frac_ns = int(digits.ljust(9, "0"))
        t = t[: m.start()] + t[m.end() :]
    try:
        dt = datetime.fromisoformat(t)
    except ValueError:
        raise RestoreError(f"not an RFC 3339 time: {text!r}") from None
    if dt.tzinfo is None:
        raise RestoreError(f"time {text!r} needs a zone (Z or ±hh:mm)")
    d = dt - datetime(1970, 1, 1, tzinfo=UTC)
    return (d.days * 86400 + d.seconds) * 1_000_000_000 + frac_ns


def run(args: argparse.Namespace) -> int:
    s = settings_for(args.data_dir)
    update, close = reporter(0, "restore", not args.json)
    try:
        ts = parse_time(args.to_time) if args.to_time else None
        result = restore(
            s,
            args.target,
            lsn=args.to_lsn,
            ts=ts,
            latest=args.latest,
            force=args.force,
            verify_key=args.verify_key,
            progress=update,
        )
    except Exception as exc:  # one line (tools.cli.explain) and exit 1, and the --json answer
        close()
        from tools.cli import explain

        msg, _ = explain(exc)
        if args.json:
            emit({"ok": False, "error": msg}, True, "")
        print(f"jade: restore failed: {msg}", file=sys.stderr)
        return 1
    close()
    emit(
        {"ok": True, **result},
        args.json,
        f"restored to LSN {result['target_lsn']} ({result['target_time']}) in {args.target}: "
        f"snapshot {result['snapshot']} + {result['replayed']} records; marker "
        f"{result['marker']}"
        + "".join(f"\nremoved {d} (left by a restore that did not finish)"
                  for d in result["removed_leftovers"]),
    )
    return 0
