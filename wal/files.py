"""File durability helpers shared by the log archive, snapshots and index checkpoints."""

from __future__ import annotations

import os


def fsync_path(path: str) -> None:
    """fsync a file or a directory (a directory fsync makes a rename in it durable)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
