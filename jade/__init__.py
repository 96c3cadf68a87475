"""JadeVectorDB server: config, commands and apply, engine, stores, indexes, HTTP API."""

__version__ = "0.1.0"
