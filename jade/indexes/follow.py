"""The index follower: the thread that folds staged vector writes into the HNSW graphs.

A write is acknowledged once its record is durable and applied to the stores; the in-memory
side of the index projection takes it in the same group (metadata, filter terms, the exact
rows: ``HnswIndex.stage``), and this thread inserts the vectors into the graph behind it, in
batches (one multi-threaded ``add_items`` for everything staged since the last fold). Searches
meanwhile are exact about every staged write (``HnswIndex.search``).

The writer thread ``kick``s the databases a group staged vectors into; the thread folds each
(``VectorIndex.fold``). A fold that raises takes the database out of service and the writer
rebuilds it from the store (``IndexProjection.fold_failed``). How far behind the graphs are is
``IndexProjection.lag``; writes wait for room beyond ``index_lag_max_vectors`` staged vectors
(``Engine.index_room``).

``hold``/``release``: for tests, which make the graph lag on purpose.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from jade.indexes.live import LiveDb

log = logging.getLogger(__name__)


class Follower:
    def __init__(self, on_failure: Callable[[LiveDb, Exception], None]) -> None:
        self._on_failure = on_failure
        self._cond = threading.Condition()
        self._kicked: dict[int, LiveDb] = {}
        self._stopping = False
        self._held = False
        self._busy = False  # a batch is being folded (outside ``_cond``)
        self.folds = 0  # fold rounds that inserted something (a metric)
        self.folded = 0  # labels folded
        self._thread = threading.Thread(target=self._run, name="index-follower", daemon=True)
        self._thread.start()

    def kick(self, lives: Iterable[LiveDb]) -> None:
        with self._cond:
            for live in lives:
                self._kicked[id(live)] = live
            self._cond.notify_all()

    def hold(self) -> None:
        """Stop folding until ``release`` (tests: a graph that lags on purpose). Returns once a
        batch the thread had already taken is folded, so nothing staged after it folds."""
        with self._cond:
            self._held = True
            while self._busy:
                self._cond.wait()

    def release(self) -> None:
        with self._cond:
            self._held = False
            self._cond.notify_all()

    def stop(self) -> None:
        """Stop the thread; what is still staged is folded by whoever needs the graph next (a
        checkpoint's capture folds it first)."""
        with self._cond:
            self._stopping = True
            self._held = False
            self._cond.notify_all()
        self._thread.join()

    def _run(self) -> None:
        while True:
            with self._cond:
                while (not self._kicked or self._held) and not self._stopping:
                    self._cond.wait()
                if self._stopping:
                    return
                batch = list(self._kicked.values())
                self._kicked.clear()
                self._busy = True
            try:
                self._fold(batch)
            finally:
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()

    def _fold(self, batch: list[LiveDb]) -> None:
        for live in batch:
            try:
                n = live.index.fold()
            except Exception as exc:
                self._on_failure(live, exc)
                continue
            if n:
                self.folds += 1
                self.folded += n
