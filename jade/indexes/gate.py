"""``EfGate``: how searches and resizes share one hnswlib index.

hnswlib allows searches concurrent with ``add_items``, but not with ``resize_index``, and its
``ef`` is one value for the whole index: ``EfGate`` lets searches share the index while they
want the same ef, and gives a resize (or a search wanting another ef) the index once it is idle.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


class EfGate:
    """Shared use of an hnswlib index by searches with the same ``ef``; exclusive use for a
    resize. A search wanting another ef waits until the searches in flight finish, then
    switches the index's ef (the usual case, every search with the database's ef, never
    waits). Fair: while a resize or a search wanting another ef waits, new searches with the
    current ef wait behind it, so a steady stream of them cannot starve either."""

    def __init__(self, index: Any, ef: int) -> None:
        self._index = index
        self._cond = threading.Condition(threading.Lock())
        self._ef = ef
        self._active = 0
        self._exclusive = False
        self._exclusive_waiting = 0
        self._switching = 0  # searches waiting to switch the ef

    @contextmanager
    def shared(self, ef: int) -> Iterator[None]:
        c = self._cond
        with c:
            registered = False
            try:
                while True:
                    if not (self._exclusive or self._exclusive_waiting):
                        if self._ef == ef:
                            if self._switching - registered == 0:
                                break
                        elif not self._active:
                            self._index.set_ef(ef)
                            self._ef = ef
                            c.notify_all()  # others waiting for this ef may join
                            break
                        elif not registered:
                            self._switching += 1
                            registered = True
                    c.wait()
            finally:
                if registered:
                    self._switching -= 1
                    c.notify_all()
            self._active += 1
        try:
            yield
        finally:
            with c:
                self._active -= 1
                if not self._active:
                    c.notify_all()

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        c = self._cond
        with c:
            self._exclusive_waiting += 1
            try:
                while self._exclusive or self._active:
                    c.wait()
            finally:
                self._exclusive_waiting -= 1
            self._exclusive = True
        try:
            yield
        finally:
            with c:
                self._exclusive = False
                c.notify_all()
