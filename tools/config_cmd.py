"""``jade config show``: the effective configuration, secrets redacted, as the server would
load it (same files, same environment)."""

from __future__ import annotations

import argparse
import json
from typing import Any

from jade import settings as settings_mod


def register(sub: Any) -> None:
    p = sub.add_parser("config", help="configuration")
    csub = p.add_subparsers(dest="config_command", required=True)
    show = csub.add_parser("show", help="print the effective configuration (secrets redacted)")
    show.set_defaults(run=run_show)


def run_show(args: argparse.Namespace) -> int:
    s = settings_mod.load()
    print(json.dumps(s.redacted(), indent=2, sort_keys=True))
    return 0
