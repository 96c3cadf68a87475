"""Opening the data directory from a command-line tool. The server owns its data directory
while it runs (one writer per log), so tools that write take the directory's lock
(``jade.datadir``) and refuse to run beside a live server, or beside another such tool."""

from __future__ import annotations

import os
from dataclasses import replace
from typing import Any

from jade import settings as settings_mod
from jade.datadir import DataDirBusy, DataDirLock, hold
from jade.engine import Engine
from jade.settings import Settings
from tools.errors import CliError

DATA_DIR_HELP = ("the data directory (default: JADEVECTORDB_DATA_DIR, else the configured one, "
                 "else ./data)")


def add_data_dir(p: Any) -> None:
    """``--data-dir DIR``: the option of every command that opens a data directory."""
    p.add_argument("--data-dir", metavar="DIR", help=DATA_DIR_HELP)


def settings_for(d: str | None, auth_db: str | None = None) -> Settings:
    """The configured settings for the configured data directory (its configured file paths,
    e.g. an auth store kept elsewhere); for another directory, the default paths of its files
    inside it, and its backups there too unless a backup directory is configured
    (``JADEVECTORDB_BACKUP_DIR``: a restore reads the backups of a lost directory from it)."""
    s = settings_mod.load()
    if not d or os.path.realpath(d) == os.path.realpath(s.data_dir):
        return replace(s, auth_db_path=auth_db) if auth_db else s
    derived = os.path.realpath(s.backup_dir) == os.path.realpath(
        os.path.join(s.data_dir, "backups"))
    return replace(
        s,
        data_dir=d,
        db_path=os.path.join(d, "jadevectordb.db"),
        auth_db_path=auth_db or os.path.join(d, "jadevectordb_auth.db"),
        index_dir=os.path.join(d, "indexes"),
        backup_dir=os.path.join(d, "backups") if derived else s.backup_dir,
    )


def _where(path: str) -> str:
    full = os.path.abspath(path)
    return path if full == path else f"{path} ({full})"


HINT = "give --data-dir DIR or set JADEVECTORDB_DATA_DIR"


def require_dir(path: str, what: str = "data directory") -> None:
    """``path`` is a directory this process can read, else ``CliError`` (one line, the path
    made absolute: a relative default names the current directory's)."""
    if not os.path.exists(path):
        raise CliError(f"no {what} at {_where(path)}: {HINT}")
    if not os.path.isdir(path):
        raise CliError(f"the {what} {_where(path)} is not a directory: {HINT}")
    if not os.access(path, os.R_OK | os.X_OK):
        raise CliError(f"cannot read the {what} {_where(path)}: permission denied")


def require_data(s: Settings) -> None:
    """The data directory exists and holds a data file (the log): for tools that read it."""
    require_dir(s.data_dir)
    if not os.path.exists(s.db_path):
        raise CliError(f"no data file {_where(s.db_path)}: is {s.data_dir} a JadeVectorDB data "
                       f"directory? ({HINT})")


class ServerRunning(DataDirBusy):
    """The data directory is held by a server (or another tool): the tool does not run."""


class ToolEngine(Engine):
    """An engine that holds the data directory lock until it is closed."""

    def __init__(self, settings: Settings, lock: DataDirLock) -> None:
        super().__init__(settings)
        self.datadir_lock = lock

    def close(self, checkpoint: bool = True) -> None:
        try:
            super().close(checkpoint)
        finally:
            self.datadir_lock.release()


def open_engine(settings: Settings, purpose: str = "a jade tool") -> Engine:
    """The engine on ``settings.data_dir`` for a tool that writes, holding the directory until
    ``engine.close()``. Raises ``ServerRunning`` (one line, naming the holder) when a server or
    another tool holds it."""
    try:
        lock = hold(settings.data_dir, purpose)
    except DataDirBusy as exc:
        server = str(exc.info.get("purpose", "")).startswith("jade serve")
        raise ServerRunning(exc.data_dir, exc.info, "use its HTTP API instead, or stop it first"
                            if server else "wait for it to finish") from None
    try:
        engine = ToolEngine(settings, lock)
        engine.open()
    except BaseException:
        lock.release()
        raise
    return engine
