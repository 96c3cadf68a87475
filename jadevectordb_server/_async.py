"""``AsyncClient``: the SDK's one implementation of the API calls, on aiohttp. The sync ``Client``
runs this same code on a private event loop, and the embedded mode (``Client(path=...)``) talks
to the same server code through it, so every mode sends the same requests and reads the same
answers."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Mapping, Sequence
from typing import Any, TypeVar
from urllib.parse import quote

import aiohttp
import msgspec
import orjson
from yarl import URL

from jadevectordb_server import errors
from jadevectordb_server.models import (
    JSON,
    BatchAnswer,
    Database,
    DatabasePage,
    Health,
    Hit,
    HybridAnswer,
    HybridHit,
    SearchAnswer,
    Status,
    Vector,
    VectorList,
)

T = TypeVar("T")
DbRef = Database | str  # a database, its id, or its name (unique among the caller's)
VectorLike = Sequence[float] | Any  # a list of numbers, or a 1-D numpy array

_PAGE = 1000  # databases per page when listing
_STATUS_FIELDS = frozenset(Status.__struct_fields__) - {"details"}


class AsyncClient:
    """A client of a JadeVectorDB server (``url``, with ``api_key``: an API key or a login
    token), or of a data directory opened in this process (``path``: the embedded mode, no
    separate server; see ``jadevectordb_server.embedded``). Give one of ``url`` and ``path``.

    Use it as ``async with AsyncClient(...) as client:`` or call ``close()``. Databases are
    addressed by a ``Database``, an id, or a name (resolved among the databases the caller
    sees; ``AmbiguousName`` when several share it). Every refusal of the server is raised as
    a typed ``errors.ApiError``."""

    def __init__(self, url: str | None = None, *, api_key: str | None = None,
                 path: str | None = None, timeout: float = 60.0,
                 settings: Mapping[str, Any] | None = None) -> None:
        if (url is None) == (path is None):
            raise ValueError("give either url (a server) or path (a data directory, embedded)")
        if path is not None and api_key is not None:
            raise ValueError("the embedded mode makes its own credential: no api_key")
        if url is not None and settings is not None:
            raise ValueError("settings apply to the embedded mode (path=) only")
        self._base = (url or "http://localhost").rstrip("/")
        self._api_key = api_key
        self._path = path
        self._settings = dict(settings or {})
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._session: aiohttp.ClientSession | None = None
        self._embedded: Any = None  # jadevectordb_server.embedded.Embedded, once opened
        self._opening = asyncio.Lock()
        self._closed = False

    # -- life cycle -------------------------------------------------------------------------
    async def __aenter__(self) -> AsyncClient:
        await self._open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def embedded(self) -> bool:
        """Whether this client opened a data directory in-process (``path=``)."""
        return self._path is not None

    async def close(self) -> None:
        """Close the connections and, in the embedded mode, this client's hold on the data
        directory (the last client of it in the process stops its server: checkpoint, lock
        released). Idempotent."""
        self._closed = True
        session, self._session = self._session, None
        if session is not None:
            await session.close()
        emb, self._embedded = self._embedded, None
        if emb is not None:
            await asyncio.to_thread(emb.release)

    async def _open(self) -> aiohttp.ClientSession:
        if self._session is not None:
            return self._session
        async with self._opening:
            if self._session is not None:
                return self._session
            if self._closed:
                raise errors.JadeClientError("this client is closed")
            headers = {"Accept": "application/json"}
            connector: aiohttp.BaseConnector | None = None
            if self._path is not None:
                from jadevectordb_server import embedded

                self._embedded = await asyncio.to_thread(
                    embedded.acquire, self._path, self._settings)
                connector = aiohttp.UnixConnector(path=self._embedded.socket_path)
                headers["Authorization"] = f"Bearer {self._embedded.credential}"
            elif self._api_key:
                headers["Authorization"] = f"Bearer {self._api_key}"
            self._session = aiohttp.ClientSession(
                connector=connector, headers=headers, timeout=self._timeout,
                json_serialize=lambda o: orjson.dumps(o).decode())
            return self._session

    # -- the one request path -----------------------------------------------------------------
    async def _request(self, method: str, path: str, body: object = None,
                       params: Mapping[str, str | int] | None = None) -> bytes:
        """The answer's bytes for a 2xx; else the typed error (``errors.from_answer``)."""
        session = await self._open()
        data = orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY) if body is not None else None
        headers = {"Content-Type": "application/json"} if data is not None else None
        url = URL(self._base + path, encoded=True)
        try:
            async with session.request(method, url, data=data, headers=headers,
                                       params=params) as r:
                raw = await r.read()
                status, rid = r.status, r.headers.get("X-Request-ID", "")
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise errors.TransportError(
                f"{method} {self._base}{path}: {type(exc).__name__}: {exc}") from exc
        if status >= 400:
            try:
                parsed: object = orjson.loads(raw) if raw else None
            except orjson.JSONDecodeError:
                parsed = raw.decode(errors="replace")
            raise errors.from_answer(status, parsed, rid)
        return raw

    async def _get(self, path: str, kind: type[T], **params: str | int) -> T:
        return _decode(await self._request("GET", path, params=params or None), kind)

    async def _post(self, path: str, body: object, kind: type[T]) -> T:
        return _decode(await self._request("POST", path, body), kind)

    # -- databases addressed by id or name ------------------------------------------------------
    async def _db(self, db: DbRef, method: str, tail: str = "", body: object = None,
                  params: Mapping[str, str | int] | None = None) -> bytes:
        """A request under ``/v1/databases/{db}``: ``db`` tried as an id; when the server says
        there is no such database, resolved by name and tried once more. A name is looked up
        every time (never cached: a rename or a second database of that name elsewhere would
        make a cached id silently wrong), so a loop should pass the ``Database`` (or its id)."""
        if isinstance(db, Database):
            return await self._request(method, _db_path(db.id) + tail, body, params)
        try:
            return await self._request(method, _db_path(db) + tail, body, params)
        except errors.NotFound as exc:
            if not _database_missing(exc):
                raise
            real = await self._resolve(db)
            if real is None or real == db:
                raise
        return await self._request(method, _db_path(real) + tail, body, params)

    async def _resolve(self, name: str) -> str | None:
        ids = [d.id for d in await self.list_databases() if d.name == name]
        if len(ids) > 1:
            raise errors.AmbiguousName(
                409, "ambiguous_name",
                f"{len(ids)} databases are named {name!r}: address one by its id",
                {"error": "ambiguous_name", "name": name, "ids": ids})
        return ids[0] if ids else None

    # -- system -------------------------------------------------------------------------------
    async def health(self) -> Health:
        """``GET /health`` (no credential needed)."""
        return await self._get("/health", Health)

    async def status(self) -> Status:
        """``GET /status``: mode, role, version, uptime; the rest in ``details``."""
        raw = orjson.loads(await self._request("GET", "/status"))
        typed = {k: v for k, v in raw.items() if k in _STATUS_FIELDS}
        try:
            return msgspec.convert({**typed, "details": raw}, Status)
        except msgspec.ValidationError as exc:
            raise errors.TransportError(f"unexpected /status answer: {exc}") from None

    async def login(self, username: str, password: str) -> str:
        """Log in (``POST /v1/auth/login``) and use the token for every later call; returns it.
        Not in the embedded mode, which has its own credential."""
        if self._path is not None:
            raise errors.JadeClientError("the embedded mode needs no login")
        raw = await self._request("POST", "/v1/auth/login",
                                  {"username": username, "password": password})
        token = str(orjson.loads(raw)["token"])
        self._api_key = token
        session = await self._open()
        session.headers["Authorization"] = f"Bearer {token}"
        return token

    # -- databases ----------------------------------------------------------------------------
    async def create_database(self, name: str, dimension: int, *, metric: str = "cosine",
                              index_type: str = "hnsw", description: str = "",
                              index_parameters: Mapping[str, int] | None = None) -> Database:
        """Create a database (``POST /v1/databases``) and return it as the server now
        describes it. ``metric``: cosine, euclidean or dot; ``index_type``: hnsw or flat (IVF
        and LSH are served by HNSW); ``index_parameters``: M, efConstruction, efSearch."""
        body: dict[str, Any] = {"name": name, "vectorDimension": dimension, "metric": metric,
                                "indexType": index_type, "description": description}
        if index_parameters:
            body["indexParameters"] = dict(index_parameters)
        created = orjson.loads(await self._request("POST", "/v1/databases", body))
        return await self.get_database(str(created["databaseId"]))

    async def list_databases(self) -> list[Database]:
        """Every database the caller may read, oldest first (all pages)."""
        out: list[Database] = []
        while True:
            page = await self._get("/v1/databases", DatabasePage, limit=_PAGE, offset=len(out))
            out.extend(page.databases)
            if not page.databases or len(out) >= page.total:
                return out

    async def get_database(self, db: DbRef) -> Database:
        """A database by id or name; ``NotFound`` when there is none."""
        return _decode(await self._db(db, "GET"), Database)

    async def delete_database(self, db: DbRef) -> None:
        """Delete a database (by id or name) and all its vectors."""
        if not isinstance(db, Database):
            db = await self.get_database(db)  # a name is resolved before anything is deleted
        await self._request("DELETE", _db_path(db.id))

    # -- vectors ------------------------------------------------------------------------------
    async def upsert(self, db: DbRef, id: str, values: VectorLike,
                     metadata: Mapping[str, JSON] | None = None) -> None:
        """Store one vector (``POST .../vectors``): a new id or a replacement of its values
        and metadata. Durable when this returns."""
        await self._db(db, "POST", "/vectors", _item(id, values, metadata))

    async def upsert_batch(self, db: DbRef, ids: Sequence[str], vectors: Any,
                           metadatas: Sequence[Mapping[str, JSON] | None] | None = None, *,
                           batch_size: int = 1000) -> int:
        """Store many vectors: ``ids[i]`` gets ``vectors[i]`` (a list of lists or a 2-D numpy
        array, sent as base64 float32) and ``metadatas[i]``. Sent ``batch_size`` at a time;
        each such request is one record of the log, all of it stored or none. Returns the
        number stored."""
        if len(ids) != len(vectors) or (metadatas is not None and len(metadatas) != len(ids)):
            raise ValueError("ids, vectors and metadatas must have the same length")
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        done = 0
        for start in range(0, len(ids), batch_size):
            end = min(start + batch_size, len(ids))
            items = [_item(ids[i], vectors[i], metadatas[i] if metadatas is not None else None)
                     for i in range(start, end)]
            await self._db(db, "POST", "/vectors/batch", {"vectors": items})
            done = end
        return done

    async def get(self, db: DbRef, id: str) -> Vector:
        """A stored vector; ``NotFound`` when there is none."""
        return _decode(await self._db(db, "GET", "/vectors/" + _seg(id)), Vector)

    async def get_many(self, db: DbRef, ids: Sequence[str]) -> list[Vector]:
        """The stored vectors among ``ids`` (unknown ids are left out), in the server's order."""
        raw = await self._db(db, "POST", "/vectors/batch-get", {"ids": list(ids)})
        return _decode(raw, VectorList).vectors

    async def delete(self, db: DbRef, id: str) -> None:
        """Delete a vector; ``NotFound`` when there is none."""
        await self._db(db, "DELETE", "/vectors/" + _seg(id))

    # -- search -------------------------------------------------------------------------------
    async def search(self, db: DbRef, vector: VectorLike, *, top_k: int = 10,
                     filters: Mapping[str, Any] | None = None, threshold: float | None = None,
                     include_metadata: bool = False, include_values: bool = False,
                     ef_search: int | None = None) -> list[Hit]:
        """The ``top_k`` nearest vectors, best first (``POST .../search``), among those whose
        metadata match ``filters`` (API.md §7.2) and score at least ``threshold``."""
        body: dict[str, Any] = {"queryVector": _as_list(vector), "topK": top_k,
                                "includeMetadata": include_metadata,
                                "includeValues": include_values}
        if filters is not None:
            body["filters"] = dict(filters)
        if threshold is not None:
            body["threshold"] = threshold
        if ef_search is not None:
            body["efSearch"] = ef_search
        return _decode(await self._db(db, "POST", "/search", body), SearchAnswer).results

    async def search_batch(self, db: DbRef, vectors: Any, *, top_k: int = 10,
                           include_metadata: bool = False,
                           ef_search: int | None = None) -> list[list[Hit]]:
        """One result list per query vector (``POST .../search/batch``; a 2-D numpy array is
        sent as base64 float32)."""
        body: dict[str, Any] = {"topK": top_k, "includeMetadata": include_metadata}
        if _is_array(vectors):
            body["queriesB64"] = _b64(vectors)
        else:
            body["queries"] = [_as_list(v) for v in vectors]
        if ef_search is not None:
            body["efSearch"] = ef_search
        answer = _decode(await self._db(db, "POST", "/search/batch", body), BatchAnswer)
        return [a.results for a in answer.results]

    async def hybrid_search(self, db: DbRef, *, text: str | None = None,
                            vector: VectorLike | None = None, top_k: int = 10,
                            fusion: str = "rrf", alpha: float | None = None,
                            filters: Mapping[str, Any] | None = None,
                            include_metadata: bool = False,
                            include_values: bool = False) -> list[HybridHit]:
        """Vector and BM25 rankings fused (``POST .../search/hybrid``): ``text``, ``vector`` or
        both; ``fusion`` rrf, linear, weighted or weighted_linear (``alpha``: the vector
        side's weight). Text needs the database's BM25 index (``build_text_index``)."""
        body: dict[str, Any] = {"topK": top_k, "fusionMethod": fusion,
                                "includeMetadata": include_metadata,
                                "includeValues": include_values}
        if text is not None:
            body["queryText"] = text
        if vector is not None:
            body["queryVector"] = _as_list(vector)
        if alpha is not None:
            body["alpha"] = alpha
        if filters is not None:
            body["filters"] = dict(filters)
        return _decode(await self._db(db, "POST", "/search/hybrid", body), HybridAnswer).results

    async def build_text_index(self, db: DbRef, text_field: str = "text") -> dict[str, JSON]:
        """Build the database's BM25 index over the metadata field ``text_field``
        (``POST .../bm25-index/build``); later writes keep it current. Returns the server's
        answer."""
        raw = await self._db(db, "POST", "/bm25-index/build", {"textField": text_field})
        out: dict[str, JSON] = orjson.loads(raw)
        return out


# -- helpers ----------------------------------------------------------------------------------
def _decode(raw: bytes, kind: type[T]) -> T:
    try:
        return msgspec.json.decode(raw, type=kind)
    except msgspec.DecodeError as exc:  # a server (or proxy) answering something else
        raise errors.TransportError(f"unexpected answer ({exc}): {raw[:200]!r}") from None


def _seg(value: str) -> str:
    """One path segment, percent-encoded (a vector id may hold '/', '?', spaces...)."""
    return quote(value, safe="")


def _db_path(db_id: str) -> str:
    return "/v1/databases/" + _seg(db_id)


def _database_missing(exc: errors.NotFound) -> bool:
    """Whether a 404 says the database (not a vector, not a route) does not exist."""
    return "database_id" in exc.body or exc.message == "Database not found"


def _is_array(v: object) -> bool:
    return hasattr(v, "__array__") and hasattr(v, "dtype")


def _b64(v: Any) -> str:
    """Base64 of the rows as little-endian float32 (the API's ``valuesB64``/``queriesB64``)."""
    import numpy as np

    return base64.b64encode(np.ascontiguousarray(v, dtype="<f4").tobytes()).decode()


def _as_list(v: VectorLike) -> list[float]:
    if _is_array(v):
        out: list[float] = getattr(v, "tolist")()  # noqa: B009 (numpy, not imported here)
        return out
    return list(v)


def _item(id: str, values: VectorLike, metadata: Mapping[str, JSON] | None) -> dict[str, Any]:
    item: dict[str, Any] = {"id": id}
    if _is_array(values):
        item["valuesB64"] = _b64(values)
    else:
        item["values"] = list(values)
    if metadata is not None:
        item["metadata"] = dict(metadata)
    return item


__all__ = ["AsyncClient", "DbRef"]
