"""Opening the data directory from a command-line tool. The server owns its data directory
while it runs (one writer per log), so tools that write take the directory's lock
(``jade.datadir``) and refuse to run beside a live server, or beside another such tool."""

from __future__ import annotations

from jade.datadir import DataDirBusy, DataDirLock, hold
from jade.engine import Engine
from jade.settings import Settings


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
