"""The ``jade`` command line: the composition root. One module per subcommand lives beside this
file; this one only parses arguments and dispatches. Only the module of the command being run
is imported (the server and the HTTP client are slow to import); ``jade --help`` imports all.

Errors: ``explain`` is the one place an exception becomes a line on stderr and an exit code;
``main`` sends every exception there, so no command shows a traceback (``--debug`` does, for
an exception no rule names)."""

from __future__ import annotations

import argparse
import errno
import importlib
import os
import sys

from tools import errors
from tools.errors import CliError

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
    "status": "admin_cmd",
    "db": "admin_cmd",
    "readonly": "admin_cmd",
    "key": "admin_cmd",
    "promote": "admin_cmd",
    "shutdown": "admin_cmd",
}

EPILOG = f"""\
environment:
  The server and the offline commands read the server's settings: JADEVECTORDB_* variables
  and the config directory (docs/CONFIG.md; JADEVECTORDB_DATA_DIR is the data directory that
  --data-dir overrides, default ./data). Commands that talk to a server (import, export,
  status, db, readonly, key, promote, shutdown):
    JADEVECTORDB_URL      the server (--url); default http://JADEVECTORDB_HOST:JADEVECTORDB_PORT,
                          i.e. http://127.0.0.1:8080 when neither is set
    JADEVECTORDB_API_KEY  an API key or a token, sent as "Authorization: Bearer" (--api-key)

exit codes:
  {errors.OK}    success
  {errors.FAILED}    failed (also: some items of an import failed, damage found)
  {errors.USAGE}    bad arguments or a bad configuration
  {errors.NO_SERVER}    the server did not answer (nothing listens at the URL, or timed out)
  {errors.INTERRUPTED}  interrupted (Ctrl-C)
  {errors.BROKEN_PIPE}  the output was closed (e.g. `jade ... | head -1`)
"""


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The parser, with every command registered (``argv`` None) or only the one ``argv``
    names (none if it names none: then all)."""
    from jade import __version__

    parser = argparse.ArgumentParser(
        prog="jade", description="JadeVectorDB server and tools", epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"jade {__version__}")
    parser.add_argument("--debug", action="store_true",
                        help="show the traceback of an unexpected error")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    word = next((a for a in argv or [] if not a.startswith("-")), None)
    modules = [COMMANDS[word]] if word in COMMANDS else list(dict.fromkeys(COMMANDS.values()))
    for name in modules:
        importlib.import_module(f"tools.{name}").register(sub)
    return parser


def explain(exc: BaseException) -> tuple[str, int]:
    """The one line (without the ``jade: `` prefix) and the exit code for ``exc``."""
    from jade.datadir import DataDirBusy
    from jade.errors import JadeError, RestoreIncomplete, StorageDamaged
    from jade.settings import ConfigError
    from wal.lmdbenv import FileDamaged

    if isinstance(exc, CliError):
        return exc.message, exc.code
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted", errors.INTERRUPTED
    if isinstance(exc, BrokenPipeError):
        return "output closed before everything was written (broken pipe)", errors.BROKEN_PIPE
    if isinstance(exc, ConfigError):
        return f"configuration error: {exc}", errors.USAGE
    if isinstance(exc, (RestoreIncomplete, DataDirBusy)):
        return _one_line(exc), errors.FAILED
    if isinstance(exc, (StorageDamaged, FileDamaged)):  # a damaged file: named
        return f"damaged: {_one_line(exc)}", errors.FAILED
    if isinstance(exc, JadeError):
        return exc.message, errors.FAILED
    if any(isinstance(exc, t) for t in _loaded(OPERATOR_ERRORS)):  # their message says it all
        return _one_line(exc), errors.FAILED
    client = _client_error(exc)
    if client is not None:
        return client
    lmdb = sys.modules.get("lmdb")
    if lmdb is not None and isinstance(exc, lmdb.Error):
        return f"cannot open the store: {_one_line(exc)}", errors.FAILED
    if isinstance(exc, OSError):
        return _os_error(exc), errors.FAILED
    return f"internal error: {type(exc).__name__}: {_one_line(exc)} (--debug shows where)", \
        errors.FAILED


# exceptions whose message is written for the operator: (module, class)
OPERATOR_ERRORS = (
    ("jade.backup.restore", "RestoreError"),
    ("jade.backup.snapshot", "SnapshotError"),
    ("jade.backup.offsite", "OffsiteError"),
    # an S3 store's answer (NoSuchBucket, AccessDenied...) or its absence: the message names it
    ("botocore.exceptions", "ClientError"),
    ("botocore.exceptions", "BotoCoreError"),
)


def _loaded(names: tuple[tuple[str, str], ...]) -> list[type]:
    """The classes of ``names`` whose modules are imported (an exception of a module never
    imported was never raised: no import only to compare)."""
    return [getattr(sys.modules[m], c) for m, c in names if m in sys.modules]


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def _os_error(exc: OSError) -> str:
    if exc.errno == errno.EADDRINUSE:
        return (f"the port is in use ({exc.strerror or _one_line(exc)}): another process "
                "listens there; choose another port with --port or JADEVECTORDB_PORT")
    what = exc.strerror or _one_line(exc)
    if exc.filename is not None:
        return f"{what}: {exc.filename}"
    return what


def _client_error(exc: BaseException) -> tuple[str, int] | None:
    """An HTTP client's failure to reach the server (only if the client was imported)."""
    aiohttp = sys.modules.get("aiohttp")
    if aiohttp is None:
        return None
    hint = "is the server running? give --url or set JADEVECTORDB_URL"
    if isinstance(exc, aiohttp.ClientConnectorError):
        e = exc.os_error
        why = os.strerror(e.errno).lower() if e.errno else _one_line(e)
        return f"no answer from {exc.host}:{exc.port}: {why}; {hint}", errors.NO_SERVER
    if isinstance(exc, (aiohttp.ServerTimeoutError, TimeoutError)):
        return f"the server did not answer in time ({hint}; --timeout)", errors.NO_SERVER
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return "the server closed the connection without an answer", errors.NO_SERVER
    if isinstance(exc, aiohttp.InvalidURL):
        return f"not a valid URL: {exc}", errors.USAGE
    if isinstance(exc, aiohttp.ClientError):
        return f"HTTP error: {_one_line(exc)}", errors.FAILED
    return None


def fail(exc: BaseException, debug: bool = False) -> int:
    """Say what went wrong on stderr, in one line, and give the exit code."""
    try:
        message, code = explain(exc)
    except Exception:  # noqa: BLE001 - (a broken installation) still one line
        message, code = f"internal error: {type(exc).__name__}: {_one_line(exc)}", errors.FAILED
    if isinstance(exc, BrokenPipeError):
        _silence_stdout()
    if debug and message.startswith("internal error"):
        import traceback

        traceback.print_exception(exc)
    try:
        print(f"jade: {message}", file=sys.stderr, flush=True)
    except OSError:  # stderr is gone too: the exit code says it
        pass
    return code


def _silence_stdout() -> None:
    """Point stdout at /dev/null, so the interpreter's flush at exit does not fail again on
    the closed pipe (and print "Exception ignored ... BrokenPipeError")."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    debug = "--debug" in argv
    try:
        args = build_parser(argv).parse_args(argv)
        code = int(args.run(args) or 0)
        sys.stdout.flush()  # a closed pipe shows here, not at exit
        return code
    except SystemExit as exc:  # argparse: --help, --version, a usage error
        try:
            sys.stdout.flush()
        except BrokenPipeError as pipe:
            return fail(pipe)
        if exc.code is None or isinstance(exc.code, int):
            return exc.code or 0
        print(exc.code, file=sys.stderr)  # sys.exit("message")
        return errors.FAILED
    except BaseException as exc:  # noqa: BLE001 - the one place: every exception, one line
        return fail(exc, debug)


if __name__ == "__main__":
    sys.exit(main())
