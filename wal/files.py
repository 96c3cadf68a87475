"""File durability helpers shared by the log archive, snapshots and index checkpoints."""

from __future__ import annotations

import hashlib
import os


def fsync_path(path: str) -> None:
    """fsync a file or a directory (a directory fsync makes a rename in it durable)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: str, *chunks: bytes) -> None:
    """Replace ``path`` with ``chunks`` durably: written to ``path + ".tmp"``, fsynced, renamed
    over ``path``, and the directory fsynced, so a crash leaves the old file or the new one. A
    failed write removes its tmp file."""
    tmp = path + ".tmp"
    try:
        with open(tmp, "wb") as fh:
            for chunk in chunks:
                fh.write(chunk)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:  # a full disk: the partial file must not keep the space
            os.remove(tmp)
        except OSError:
            pass
        raise
    fsync_path(os.path.dirname(os.path.abspath(path)))


def sha256_file(path: str, chunk: int = 1 << 20) -> str:
    """The SHA-256 of the file at ``path`` (hex), read ``chunk`` bytes at a time into one
    buffer (hashlib releases the GIL on each)."""
    h = hashlib.sha256()
    buf = bytearray(chunk)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as fh:
        while n := fh.readinto(buf):
            h.update(view[:n])
    return h.hexdigest()
