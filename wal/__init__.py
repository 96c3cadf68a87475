"""The log: record codec, LMDB log store, group-commit writer, subscriptions.

`wal` depends on nothing in `jade`, `replica` or `tools`.
"""
