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
    docs = csub.add_parser("docs", help="print docs/CONFIG.md (the settings table)")
    docs.set_defaults(run=run_docs)


def run_show(args: argparse.Namespace) -> int:
    s = settings_mod.load()
    print(json.dumps(s.redacted(), indent=2, sort_keys=True))
    return 0


HEADER = """# Configuration

One frozen `Settings` object (`jade/settings.py`) is built at start-up from these layers, later
wins:

1. built-in defaults (production-safe; development relaxes some, column "development default"),
2. `config/development.json` or `config/production.json`, chosen by `JADEVECTORDB_ENV`
   (unset, `development`, `dev`, `test`, `testing`, `local` → development; `production`),
3. `config/performance.json`,
4. environment variables.

The config directory is `./config` (override with `JADEVECTORDB_CONFIG_DIR`). JSON files nest by
the dotted key's first part (`{"cache": {"permission_cache_size": 100000}}`); keys starting
with `_` are comments. An unknown key or variable, or a bad value, stops the server with a
message naming it. `jade config show` prints the effective configuration with secrets redacted.
Production refuses to start without a `JWT_SECRET` of at least 32 characters.

The commands that talk to a server (`jade import`, `jade export`) read two more variables,
which are not settings of the server (it tolerates them in its environment): `JADEVECTORDB_URL`
(the server; default `http://JADEVECTORDB_HOST:JADEVECTORDB_PORT`, `http://127.0.0.1:8080`
when neither is set) and `JADEVECTORDB_API_KEY` (an API key or a token). The offline commands
(`jade snapshot`, `restore`, `verify`, `wal inspect`, `user create`) take `--data-dir DIR`
over `JADEVECTORDB_DATA_DIR`.

`config/logging.json` is read by the logging set-up: `max_bytes`, `backup_count`, `console`,
`loggers` (`{name: level}`).

This file is generated: `jade config docs > docs/CONFIG.md`.
"""


def docs_markdown() -> str:
    rows = [
        "| key (JSON path) | environment variable | type | default | development default "
        "| what it does |",
        "|---|---|---|---|---|---|",
    ]
    for s in settings_mod.FIELDS:
        if s.secret:
            d = "*(secret)*"
        elif s.default == "":
            d = "*(derived)*"
        else:
            d = f"`{s.default!r}`"
        dev = (
            f"`{settings_mod.DEV_DEFAULTS[s.attr]!r}`"
            if s.attr in settings_mod.DEV_DEFAULTS
            else ""
        )
        rows.append(f"| `{s.path}` | `{s.env}` | {s.type.__name__} | {d} | {dev} | {s.doc} |")
    return HEADER + "\n" + "\n".join(rows) + "\n"


def run_docs(args: argparse.Namespace) -> int:
    print(docs_markdown(), end="")
    return 0
