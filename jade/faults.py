"""Named failure points, for tests that must make a real code path fail where production would
(a commit failing after other commits succeeded, a projection that cannot apply a record).

A point costs one dict lookup when nothing is armed. Only tests arm points (``arm``); nothing
reads the environment, so a production process never has one armed.
"""

from __future__ import annotations

import threading

_lock = threading.Lock()
_armed: dict[str, list[BaseException | int]] = {}  # point -> [exception, times left]


class FaultInjected(RuntimeError):
    """The default exception of an armed point."""


def arm(point: str, times: int = 1, exc: BaseException | None = None) -> None:
    """Make the next ``times`` hits of ``point`` raise ``exc`` (default ``FaultInjected``)."""
    with _lock:
        _armed[point] = [exc if exc is not None else FaultInjected(point), times]


def disarm(point: str | None = None) -> None:
    with _lock:
        if point is None:
            _armed.clear()
        else:
            _armed.pop(point, None)


def hit(point: str) -> None:
    if not _armed:
        return
    with _lock:
        entry = _armed.get(point)
        if entry is None:
            return
        exc, left = entry
        assert isinstance(exc, BaseException) and isinstance(left, int)
        if left <= 1:
            del _armed[point]
        else:
            entry[1] = left - 1
    raise exc
