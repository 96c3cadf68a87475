"""Logging: the runbook's four files in the log directory, every request line tagged with its
request id.

  app.log     everything from the server except access and audit lines
  access.log  one line per HTTP request (``jade.access``)
  audit.log   security events, one JSON object per line (``jade.audit``)
  error.log   ERROR and above from everywhere

Format: JSON lines in production, readable text in development (``logging.format``); level from
``JADEVECTORDB_LOG_LEVEL``. ``config/logging.json`` may set ``max_bytes``, ``backup_count``,
``console`` and per-logger levels (``loggers: {name: level}``).
"""

from __future__ import annotations

import contextvars
import errno
import json
import logging
import logging.handlers
import os
import sys
import threading
import time
from typing import Any

import orjson

from jade.settings import ConfigError, Settings

request_id_var: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")

_STD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None)).keys()) | {"message", "asctime"}


class RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            record.request_id = request_id_var.get()
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "request_id": getattr(record, "request_id", "-"),
            "message": record.getMessage(),
        }
        for k, v in vars(record).items():
            # ``extra`` may carry non-string keys (an aiohttp RequestKey...): json cannot
            # write them and the whole line would be lost, so they are skipped
            if isinstance(k, str) and k not in _STD and k not in out and k != "audit":
                out[k] = v if isinstance(v, (str, int, float, bool, type(None))) else str(v)
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


class AuditFormatter(logging.Formatter):
    """Audit messages are already JSON objects: write them as they are."""

    def format(self, record: logging.LogRecord) -> str:
        return record.getMessage()


class _FileHandler(logging.handlers.RotatingFileHandler):
    """A log file that a full disk does not turn into a traceback per line: the lines are
    dropped, one line on stderr says so, and writing resumes once the disk takes them."""

    _dropping = False  # writes fail for want of space (stderr was told, once)
    _failed = False  # the current write failed

    def handleError(self, record: logging.LogRecord) -> None:  # noqa: N802 (logging's name)
        exc = sys.exc_info()[1]
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            self._dropped(exc)
            return
        super().handleError(record)

    def _dropped(self, exc: OSError) -> None:
        self._failed = True
        if not self._dropping:
            self._dropping = True
            print(f"jade: cannot write {self.baseFilename}: {exc.strerror}; its lines are "
                  "dropped until the disk takes them", file=sys.stderr, flush=True)

    def _resumed(self) -> None:
        if self._dropping:
            self._dropping = False
            print(f"jade: writing {self.baseFilename} again", file=sys.stderr, flush=True)

    def emit(self, record: logging.LogRecord) -> None:
        self._failed = False
        super().emit(record)  # a failed write calls handleError
        if not self._failed:
            self._resumed()


class AccessLog(_FileHandler):
    """access.log without the logging machinery on the request path.

    The HTTP middleware hands ``request`` the finished fields of each request; they are queued
    as they are and formatted (timestamp cached per second) when the buffer is written, by a
    background thread every ``FLUSH_SECONDS`` (sooner past ``MAX_BUFFER`` lines; at once on
    ``flush`` and ``close``), never on the request path. Rotation is the
    ``RotatingFileHandler``'s, checked per write of the buffer rather than per line. Records
    logged through ``logging`` to ``jade.access`` still arrive through ``emit``. A crash loses
    at most the last ``FLUSH_SECONDS`` of access lines.
    """

    FLUSH_SECONDS = 0.2
    MAX_BUFFER = 512

    def __init__(self, path: str, max_bytes: int, backups: int, json_lines: bool) -> None:
        super().__init__(path, maxBytes=max_bytes, backupCount=backups, encoding="utf-8")
        self.json_lines = json_lines
        self._buf: list[tuple[Any, ...] | str] = []  # request fields, or finished lines
        self._sec = -1
        self._stamp = ""
        self._io = threading.Lock()
        self._closed = False
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread = threading.Thread(target=self._run, name="access-log", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.FLUSH_SECONDS)
            self._wake.clear()
            self.flush()

    def request(
        self, rid: str, remote: str | None, method: str, path_qs: str, path: str, status: int,
        seconds: float,
    ) -> None:
        """Queue one request's fields; the line is formatted when the buffer is written."""
        self._buf.append((time.time(), rid, remote, method, path_qs, path, status, seconds))
        if len(self._buf) >= self.MAX_BUFFER:
            self._wake.set()  # the writer thread writes it now: no file I/O on the caller's

    def _line(self, item: tuple[Any, ...] | str) -> str:
        if isinstance(item, str):  # a record that came through ``emit``
            return item
        now, rid, remote, method, path_qs, path, status, seconds = item
        sec = int(now)
        msec = int((now - sec) * 1000)
        if self.json_lines:
            if sec != self._sec:
                self._sec, self._stamp = sec, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec))
            return orjson.dumps({
                "ts": f"{self._stamp}.{msec:03d}Z", "level": "info", "logger": "jade.access",
                "request_id": rid,
                "message": f'{remote} "{method} {path_qs}" {status} {seconds * 1000:.2f}ms',
                "status": status, "method": method, "path": path, "remote": remote,
                "duration_ms": round(seconds * 1000, 3),
            }).decode()
        if sec != self._sec:
            self._sec, self._stamp = sec, time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(sec))
        return (f"{self._stamp},{msec:03d} INFO jade.access [{rid}] {remote} "
                f'"{method} {path_qs}" {status} {seconds * 1000:.2f}ms')

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self._buf.append(self.format(record))
        except Exception:
            self.handleError(record)

    def flush(self) -> None:
        with self._io:
            buf, self._buf = self._buf, []  # swapped, not copied: appends go to the new list
            if not buf or self._closed:
                return
            text = "\n".join(map(self._line, buf)) + "\n"
            try:
                if self.stream is None:
                    self.stream = self._open()
                if self.maxBytes > 0 and self.stream.tell() + len(text) >= self.maxBytes:
                    self.doRollover()
                self.stream.write(text)
                self.stream.flush()
            except OSError as exc:
                if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
                    raise
                self._dropped(exc)  # the lines are lost, the writer thread lives on
                return
            self._resumed()

    def close(self) -> None:
        global _access
        if _access is self:
            _access = None
        self._stop.set()
        self._wake.set()
        self.flush()
        self._closed = True
        super().close()


_access: AccessLog | None = None


def access(
    rid: str, remote: str | None, method: str, path_qs: str, path: str, status: int,
    seconds: float,
) -> bool:
    """Write one access line through the fast writer; False when there is none (logging was
    not set up by ``setup``: the caller falls back to the ``jade.access`` logger)."""
    a = _access
    if a is None:
        return False
    a.request(rid, remote, method, path_qs, path, status, seconds)
    return True


class _Only(logging.Filter):
    def __init__(self, names: tuple[str, ...], include: bool) -> None:
        super().__init__()
        self.names, self.include = names, include

    def filter(self, record: logging.LogRecord) -> bool:
        hit = record.name.startswith(self.names)
        return hit if self.include else not hit


def _options(settings: Settings) -> dict[str, Any]:
    path = os.path.join(settings.config_dir, "logging.json")
    if not os.path.exists(path):
        return {}
    try:
        with open(path) as fh:
            data = json.load(fh)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path}: not valid JSON ({exc})") from None
    allowed = {"max_bytes", "backup_count", "console", "loggers", "_comment"}
    unknown = set(data) - allowed
    if unknown:
        raise ConfigError(f"{path}: unknown setting(s) {sorted(unknown)}")
    return dict(data)


def setup(settings: Settings, *, console: bool | None = None) -> str:
    """Install the handlers on the root logger. Returns the log directory."""
    opts = _options(settings)
    log_dir = settings.log_dir
    os.makedirs(log_dir, exist_ok=True)
    level = getattr(logging, settings.log_level.upper())
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
        h.close()
    root.setLevel(level)
    fmt: logging.Formatter
    if settings.log_format == "json":
        fmt = JsonFormatter()
    else:
        fmt = logging.Formatter("%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s")
    rid = RequestIdFilter()
    max_bytes = int(opts.get("max_bytes", 50 * 1024 * 1024))
    backups = int(opts.get("backup_count", 5))

    def file(name: str, formatter: logging.Formatter, lvl: int = logging.NOTSET) -> logging.Handler:
        h = _FileHandler(
            os.path.join(log_dir, name),
            maxBytes=max_bytes,
            backupCount=backups,
            encoding="utf-8",
        )
        h.setFormatter(formatter)
        h.addFilter(rid)
        h.setLevel(lvl)
        return h

    app = file("app.log", fmt)
    app.addFilter(_Only(("jade.access", "jade.audit"), include=False))
    global _access
    access = AccessLog(os.path.join(log_dir, "access.log"), max_bytes, backups,
                       settings.log_format == "json")
    access.setFormatter(fmt)
    access.addFilter(rid)
    access.addFilter(_Only(("jade.access",), include=True))
    audit = file("audit.log", AuditFormatter())
    audit.addFilter(_Only(("jade.audit",), include=True))
    error = file("error.log", fmt, logging.ERROR)
    for h in (app, access, audit, error):
        root.addHandler(h)
    want_console = opts.get("console", not settings.production) if console is None else console
    if want_console:
        c = logging.StreamHandler(sys.stderr)
        c.setFormatter(fmt)
        c.addFilter(rid)
        c.addFilter(_Only(("jade.access", "jade.audit"), include=False))
        root.addHandler(c)
    for name, lvl in (opts.get("loggers") or {}).items():
        logging.getLogger(name).setLevel(str(lvl).upper())
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    logging.getLogger("apscheduler").setLevel(logging.WARNING)
    # the fast path writes only while jade.access logs INFO (a per-logger level can mute it)
    _access = access if logging.getLogger("jade.access").isEnabledFor(logging.INFO) else None
    return log_dir
