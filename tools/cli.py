"""The ``jade`` command line: the composition root. One module per subcommand lives beside this
file; this one only parses arguments and dispatches."""

from __future__ import annotations

import argparse
import sys

from jade.settings import ConfigError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="jade", description="JadeVectorDB server and tools")
    sub = parser.add_subparsers(dest="command", required=True)

    from tools import (
        bulk_cmd,
        config_cmd,
        openapi_cmd,
        restore_cmd,
        serve,
        snapshot_cmd,
        user,
        verify_cmd,
    )

    serve.register(sub)
    config_cmd.register(sub)
    user.register(sub)
    snapshot_cmd.register(sub)
    restore_cmd.register(sub)
    verify_cmd.register(sub)
    bulk_cmd.register(sub)
    openapi_cmd.register(sub)
    args = parser.parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except ConfigError as exc:
        print(f"jade: configuration error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
