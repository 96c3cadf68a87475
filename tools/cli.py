"""The ``jade`` command line: the composition root. One module per subcommand lives beside this
file; this one only parses arguments and dispatches. Only the module of the command being run
is imported (the server and the HTTP client are slow to import); ``jade --help`` imports all."""

from __future__ import annotations

import argparse
import importlib
import sys

from jade.errors import RestoreIncomplete, StorageDamaged
from jade.settings import ConfigError
from wal.lmdbenv import FileDamaged

# command word -> module in tools/ that registers it
COMMANDS = {
    "serve": "serve",
    "config": "config_cmd",
    "user": "user",
    "snapshot": "snapshot_cmd",
    "restore": "restore_cmd",
    "verify": "verify_cmd",
    "wal": "verify_cmd",
    "import": "bulk_cmd",
    "export": "bulk_cmd",
    "openapi": "openapi_cmd",
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="jade", description="JadeVectorDB server and tools")
    sub = parser.add_subparsers(dest="command", required=True)
    word = next((a for a in argv if not a.startswith("-")), None)
    modules = [COMMANDS[word]] if word in COMMANDS else list(dict.fromkeys(COMMANDS.values()))
    for name in modules:
        importlib.import_module(f"tools.{name}").register(sub)
    args = parser.parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except ConfigError as exc:
        print(f"jade: configuration error: {exc}", file=sys.stderr)
        return 2
    except RestoreIncomplete as exc:  # any opener of an unfinished restore's directory
        print(f"jade: {exc}", file=sys.stderr)
        return 1
    except (StorageDamaged, FileDamaged) as exc:  # a damaged file: named, one line, no trace
        print(f"jade: damaged: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
