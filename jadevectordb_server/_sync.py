"""``Client``: the blocking client. Each call runs ``AsyncClient``'s coroutine on a private event
loop in a daemon thread and waits for it: one implementation of every call (the requests, the
answers, the errors) for both clients, aiohttp's connection pool, and no clash with an event
loop the caller already runs (a Jupyter notebook's). Safe to call from several threads."""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures.thread  # noqa: F401 (its exit hook first: see _close_all below)
import threading
import weakref
from collections.abc import Callable, Coroutine, Mapping, Sequence
from concurrent.futures import Future
from typing import Any, TypeVar

from jadevectordb_server._async import AsyncClient, DbRef, VectorLike
from jadevectordb_server.errors import JadeClientError
from jadevectordb_server.models import (
    JSON,
    Database,
    Health,
    Hit,
    HybridHit,
    Status,
    Vector,
)

T = TypeVar("T")


class _LoopThread:
    """An event loop running in a daemon thread, for one ``Client``."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever,
                                       name="jadevectordb-client", daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        if self.loop.is_closed():
            coro.close()
            raise JadeClientError("this client is closed")
        if threading.current_thread() is self.thread:
            coro.close()
            raise RuntimeError("a Client call from inside its own loop would wait for itself")
        fut: Future[T] = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return fut.result()
        except BaseException:  # KeyboardInterrupt in a notebook: stop the call too
            fut.cancel()
            raise

    def stop(self) -> None:
        if self.loop.is_closed():
            return
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join()
        self.loop.close()


class Client:
    """The blocking client: ``Client(url, api_key=...)`` for a server, ``Client(path=...)`` for
    a data directory opened in this process (the embedded mode). The methods are those of
    ``AsyncClient``, without ``await``; see there. Use ``with Client(...) as client:`` or call
    ``close()`` (the embedded mode also closes at interpreter exit)."""

    def __init__(self, url: str | None = None, *, api_key: str | None = None,
                 path: str | None = None, timeout: float = 60.0,
                 settings: Mapping[str, Any] | None = None) -> None:
        self._aio = AsyncClient(url, api_key=api_key, path=path, timeout=timeout,
                                settings=settings)
        self._loop = _LoopThread()
        _live.add(self)
        try:
            if path is not None:  # open now: a held directory is refused at construction
                self._loop.run(self._aio._open())
        except BaseException:
            self._loop.stop()
            raise

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self._loop.run(coro)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def embedded(self) -> bool:
        return self._aio.embedded

    def close(self) -> None:
        """See ``AsyncClient.close``. Idempotent."""
        if self._loop.loop.is_closed():
            return
        try:
            self._run(self._aio.close())
        finally:
            self._loop.stop()

    # system
    def health(self) -> Health:
        return self._run(self._aio.health())

    def status(self) -> Status:
        return self._run(self._aio.status())

    def login(self, username: str, password: str) -> str:
        return self._run(self._aio.login(username, password))

    # databases
    def create_database(self, name: str, dimension: int, *, metric: str = "cosine",
                        index_type: str = "hnsw", description: str = "",
                        index_parameters: Mapping[str, int] | None = None) -> Database:
        return self._run(self._aio.create_database(
            name, dimension, metric=metric, index_type=index_type, description=description,
            index_parameters=index_parameters))

    def list_databases(self) -> list[Database]:
        return self._run(self._aio.list_databases())

    def get_database(self, db: DbRef) -> Database:
        return self._run(self._aio.get_database(db))

    def delete_database(self, db: DbRef) -> None:
        self._run(self._aio.delete_database(db))

    # vectors
    def upsert(self, db: DbRef, id: str, values: VectorLike,
               metadata: Mapping[str, JSON] | None = None) -> None:
        self._run(self._aio.upsert(db, id, values, metadata))

    def upsert_batch(self, db: DbRef, ids: Sequence[str], vectors: Any,
                     metadatas: Sequence[Mapping[str, JSON] | None] | None = None, *,
                     batch_size: int = 1000) -> int:
        return self._run(self._aio.upsert_batch(db, ids, vectors, metadatas,
                                                batch_size=batch_size))

    def get(self, db: DbRef, id: str) -> Vector:
        return self._run(self._aio.get(db, id))

    def get_many(self, db: DbRef, ids: Sequence[str]) -> list[Vector]:
        return self._run(self._aio.get_many(db, ids))

    def delete(self, db: DbRef, id: str) -> None:
        self._run(self._aio.delete(db, id))

    # search
    def search(self, db: DbRef, vector: VectorLike, *, top_k: int = 10,
               filters: Mapping[str, Any] | None = None, threshold: float | None = None,
               include_metadata: bool = False, include_values: bool = False,
               ef_search: int | None = None) -> list[Hit]:
        return self._run(self._aio.search(
            db, vector, top_k=top_k, filters=filters, threshold=threshold,
            include_metadata=include_metadata, include_values=include_values,
            ef_search=ef_search))

    def search_batch(self, db: DbRef, vectors: Any, *, top_k: int = 10,
                     include_metadata: bool = False,
                     ef_search: int | None = None) -> list[list[Hit]]:
        return self._run(self._aio.search_batch(db, vectors, top_k=top_k,
                                                include_metadata=include_metadata,
                                                ef_search=ef_search))

    def hybrid_search(self, db: DbRef, *, text: str | None = None,
                      vector: VectorLike | None = None, top_k: int = 10, fusion: str = "rrf",
                      alpha: float | None = None, filters: Mapping[str, Any] | None = None,
                      include_metadata: bool = False,
                      include_values: bool = False) -> list[HybridHit]:
        return self._run(self._aio.hybrid_search(
            db, text=text, vector=vector, top_k=top_k, fusion=fusion, alpha=alpha,
            filters=filters, include_metadata=include_metadata,
            include_values=include_values))

    def build_text_index(self, db: DbRef, text_field: str = "text") -> dict[str, JSON]:
        return self._run(self._aio.build_text_index(db, text_field))


_live: weakref.WeakSet[Client] = weakref.WeakSet()


def _close_all() -> None:
    """Close the clients still open at interpreter exit (a notebook that never called close):
    their connections, and their hold on an embedded data directory."""
    for client in list(_live):
        try:
            client.close()
        except Exception:  # at exit: the next one still closes
            pass


# threading's exit hooks run before atexit's, the last registered first: after the thread
# pools' own (imported above), while the client's loop thread and its pool still run
_register: Callable[[Callable[[], None]], Any] | None = getattr(
    threading, "_register_atexit", None)
if _register is not None:
    _register(_close_all)
else:
    atexit.register(_close_all)
