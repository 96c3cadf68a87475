"""The auth clock: times in auth records and credentials (expiries, locks, blocks, when a token
was issued) are milliseconds since the epoch."""

from __future__ import annotations

import time


def now_ms() -> int:
    return int(time.time() * 1000)
