"""The embedded mode: ``Client(path="./data")`` opens a data directory in this process, with no
separate server, as ``chromadb.PersistentClient(path)`` and ``QdrantClient(path=...)`` do.

It is the server itself, not a second implementation: the same aiohttp application
(``jade.http.app.build_app``: the same engine, log, projections, validation and answers) runs
on an event loop in a daemon thread, listening on a unix socket in a private directory (0700,
made by ``tempfile.mkdtemp``: no other user, and no web page, can reach it; no TCP port is
opened). The client talks to it through the same code as to a remote server, with a credential
this process made for itself (``AuthService.process_credential``: random, held only in memory,
never written to the log or the data directory). That credential acts as the admin role under
the user id ``system``, the same owner as ``jade serve``'s token-less loopback admin: whoever
can open the data directory's files has every database in it anyway.

The directory it writes is the server's: ``jade serve --data-dir`` serves it later unchanged
(and this mode opens one a server wrote). It takes the data directory lock (``jade.datadir``)
for as long as it is open: a ``jade serve`` or an offline tool on the same directory is refused
meanwhile, naming this process, and so is an embedded client of another process. Several
clients of the same directory in one process share one embedded server (counted; the last
``close`` stops it). Whatever is still open at interpreter exit is closed cleanly (an index
checkpoint, like a server's SIGTERM), before the interpreter's thread pools shut down.

Settings are the server's (``jade.settings.load``: defaults, config files, ``JADEVECTORDB_*``
variables), with ``data_dir`` set to ``path``, the token-less loopback admin off (no TCP port
anyway) and no rate limit on the process's own credential; ``settings`` (attribute names of
``jade.settings.Settings``) override them."""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures.thread  # noqa: F401 (its exit hook first: see close_all's registration)
import logging
import os
import secrets
import shutil
import tempfile
import threading
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from typing import Any

from aiohttp import web

from jade import datadir
from jade import settings as settings_mod
from jade.auth.principal import ADMIN, Principal
from jade.engine import refuse_unfinished_restore
from jade.errors import RestoreIncomplete
from jade.http.app import build_app
from jade.http.keys import AUTH
from jadevectordb_server import errors

log = logging.getLogger("jadevectordb_server.embedded")

PURPOSE = "jadevectordb_server.Client(path=...) (embedded)"
PRINCIPAL = Principal("system", "embedded", (ADMIN,), "process")
SOCKET_NAME = "api.sock"


class Embedded:
    """One data directory served in this process. Made by ``acquire``; ``release`` when done."""

    def __init__(self, path: str, overrides: Mapping[str, Any]) -> None:
        self.path = os.path.abspath(path)
        self.overrides = dict(overrides)
        self.credential = secrets.token_urlsafe(32)
        self.socket_path = ""
        self.count = 1
        self._lock: datadir.DataDirLock | None = None
        self._sockdir = ""
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None

    # -- start ----------------------------------------------------------------------------------
    def start(self) -> None:
        """Take the directory, open the engine and listen; raises what refused it."""
        try:
            self._lock = datadir.hold(self.path, PURPOSE)
        except datadir.DataDirBusy as exc:
            hint = ""
            if str(exc.info.get("purpose", "")).startswith("jade serve"):
                hint = "; a server has it: connect to that server instead (Client(url, ...))"
            raise errors.DataDirLocked(str(exc) + hint, exc.info) from None
        try:
            refuse_unfinished_restore(self.path)
            s = settings_mod.load(**{"loopback_admin": False, "api_rate_per_minute": 0,
                                     **self.overrides, "data_dir": self.path})
            app = build_app(s)
            app[AUTH].process_credential = (self.credential, PRINCIPAL)
            self._sockdir = tempfile.mkdtemp(prefix="jadevectordb-")  # 0700
            self.socket_path = os.path.join(self._sockdir, SOCKET_NAME)
            ready: Future[None] = Future()
            self._thread = threading.Thread(target=self._serve, args=(app, ready),
                                            name="jadevectordb-embedded", daemon=True)
            self._thread.start()
            ready.result()  # the engine's failure to open (damage, a bad setting) is raised here
        except RestoreIncomplete as exc:
            self._cleanup()
            raise errors.JadeClientError(str(exc)) from None
        except BaseException:
            self._cleanup()
            raise

    def _serve(self, app: web.Application, ready: Future[None]) -> None:
        loop = _new_loop()
        self._loop = loop
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        try:
            self._stop = asyncio.Event()
            loop.run_until_complete(runner.setup())  # opens the engine (replays the log)
            site = web.UnixSite(runner, self.socket_path)
            loop.run_until_complete(site.start())
        except BaseException as exc:
            try:
                loop.run_until_complete(runner.cleanup())
            except Exception:  # the first failure is the one to report
                log.exception("cleaning up an embedded server that failed to start")
            loop.close()
            ready.set_exception(exc)
            return
        ready.set_result(None)
        try:
            loop.run_until_complete(self._stop.wait())
        finally:
            loop.run_until_complete(runner.cleanup())  # closes the engine: checkpoint
            loop.close()

    # -- stop -----------------------------------------------------------------------------------
    def release(self) -> None:
        """One client fewer; the last one stops the server and frees the directory."""
        with _guard:
            self.count -= 1
            if self.count > 0:
                return
            if _open.get(_key(self.path)) is self:
                del _open[_key(self.path)]
        self.stop()

    def stop(self) -> None:
        loop, stop, thread = self._loop, self._stop, self._thread
        if thread is not None and thread.is_alive() and loop is not None and stop is not None:
            try:
                loop.call_soon_threadsafe(stop.set)
            except RuntimeError:  # the loop closed already
                pass
            thread.join()
        self._thread = None
        self._cleanup()

    def _cleanup(self) -> None:
        if self._sockdir:
            shutil.rmtree(self._sockdir, ignore_errors=True)
            self._sockdir = ""
        lock, self._lock = self._lock, None
        if lock is not None:
            lock.release()


_guard = threading.Lock()
_open: dict[str, Embedded] = {}  # real path of the data directory -> its server


def _key(path: str) -> str:
    return os.path.realpath(path)


def acquire(path: str, overrides: Mapping[str, Any] | None = None) -> Embedded:
    """The embedded server of ``path`` in this process, started if needed (see the module
    docstring); the caller ``release``s it once."""
    overrides = dict(overrides or {})
    with _guard:
        emb = _open.get(_key(path))
        if emb is not None:
            if overrides and overrides != emb.overrides:
                raise ValueError(f"{path} is already open in this process with other settings "
                                 f"({emb.overrides}): close its clients first")
            emb.count += 1
            return emb
        emb = Embedded(path, overrides)
        emb.start()
        _open[_key(path)] = emb
        return emb


def close_all() -> None:
    """Stop every embedded server of this process (at interpreter exit)."""
    with _guard:
        servers = list(_open.values())
        _open.clear()
    for emb in servers:
        try:
            emb.stop()
        except Exception:
            log.exception("closing the embedded server of %s", emb.path)


def _new_loop() -> asyncio.AbstractEventLoop:
    """uvloop's event loop where it is installed (as ``jade serve`` runs), else asyncio's."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
    return loop


def _forget_in_child() -> None:
    """A forked child has none of its parent's server threads (nor its lock: jade.datadir)."""
    global _guard
    _guard = threading.Lock()
    _open.clear()


# At exit, before the interpreter shuts its thread pools down (threading's own exit hooks run
# before atexit's, the last registered first; concurrent.futures.thread, imported above,
# registers its own on import; closing the engine flushes through a pool): a clean close, so
# the next open loads the index checkpoints instead of replaying.
_register: Callable[[Callable[[], None]], Any] | None = getattr(
    threading, "_register_atexit", None)
if _register is not None:
    _register(close_all)
else:
    atexit.register(close_all)
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_in_child)
