"""The Python SDK of JadeVectorDB in Python (the ``jadevectordb-server`` distribution):
``Client`` (blocking) and ``AsyncClient`` for a server (``url=``) or a data directory opened in
this process (``path=``: the embedded mode), typed answers (``models``) and typed errors
(``errors``). See docs/SDK.md.

    from jadevectordb_server import Client

    with Client(path="./data") as client:          # or Client("http://host:8080", api_key=...)
        db = client.create_database("docs", dimension=384)
        client.upsert(db, "a", [0.1] * 384, {"lang": "en"})
        hits = client.search(db, [0.1] * 384, top_k=5, filters={"lang": "en"})

Importing this package loads neither the server nor numpy; the embedded mode loads the server
when a client opens a ``path``."""

from jade import __version__
from jadevectordb_server import errors
from jadevectordb_server._async import AsyncClient
from jadevectordb_server._sync import Client
from jadevectordb_server.errors import (
    AmbiguousName,
    ApiError,
    BadRequest,
    DataDirLocked,
    DimensionMismatch,
    JadeClientError,
    NotFound,
    TransportError,
)
from jadevectordb_server.models import Database, Health, Hit, HybridHit, Status, Vector

__all__ = [
    "AmbiguousName",
    "ApiError",
    "AsyncClient",
    "BadRequest",
    "Client",
    "DataDirLocked",
    "Database",
    "DimensionMismatch",
    "Health",
    "Hit",
    "HybridHit",
    "JadeClientError",
    "NotFound",
    "Status",
    "TransportError",
    "Vector",
    "__version__",
    "errors",
]
