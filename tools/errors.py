"""What a ``jade`` command raises to stop with one line on stderr and an exit code. The
mapping of every exception to its line and code is ``tools.cli.explain``; a command raises
``CliError`` for what it finds wrong itself (a missing data directory, a refused credential,
a partial import), and lets other exceptions reach that one place."""

from __future__ import annotations

# exit codes (documented in ``jade --help``)
OK = 0
FAILED = 1  # the operation failed, or failed for some items (a partial import)
USAGE = 2  # bad arguments or a bad configuration (argparse uses 2 too)
NO_SERVER = 3  # the server did not answer: nothing listens at the URL, or it timed out
INTERRUPTED = 130  # Ctrl-C (128 + SIGINT, as a shell reports it)
BROKEN_PIPE = 141  # the reader of our output went away (128 + SIGPIPE, as a shell reports it)


class CliError(Exception):
    """One line for the operator (without the ``jade: `` prefix) and the exit code."""

    def __init__(self, message: str, code: int = FAILED) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
