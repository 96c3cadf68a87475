"""Opening the data directory from a command-line tool. The server owns its log while it runs
(one writer per log), so tools that write refuse to run beside a live server."""

from __future__ import annotations

import os

from jade.engine import Engine
from jade.settings import Settings


class ServerRunning(RuntimeError):
    pass


def server_pid(settings: Settings) -> int | None:
    """The pid of a live server on this data directory, if any."""
    marker = settings.db_path + ".running"
    try:
        with open(marker) as fh:
            pid = int(fh.read().strip() or 0)
    except (OSError, ValueError):
        return None
    if pid <= 0:
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        return pid
    return pid if pid != os.getpid() else None


def open_engine(settings: Settings) -> Engine:
    pid = server_pid(settings)
    if pid is not None:
        raise ServerRunning(
            f"a server (pid {pid}) is running on {settings.data_dir}; use its HTTP API instead "
            "or stop it first"
        )
    engine = Engine(settings)
    engine.open()
    return engine
