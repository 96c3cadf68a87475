"""The count of requests being handled (``InFlight``): the middleware counts each request in and
out, and a graceful stop (``tools/serve.py``) waits until they are ``drained``."""

from __future__ import annotations

import asyncio


class InFlight:
    """Counts the requests being handled, so shutdown can wait for them. Requests to
    ``long_lived`` paths (streams that never "finish") are not counted."""

    def __init__(self, long_lived: frozenset[str] = frozenset()) -> None:
        self.count = 0
        self.long_lived = long_lived
        self._idle = asyncio.Event()
        self._idle.set()

    def enter(self) -> None:
        self.count += 1
        self._idle.clear()

    def leave(self) -> None:
        self.count -= 1
        if self.count == 0:
            self._idle.set()

    async def drained(self, timeout: float) -> bool:
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
            return True
        except TimeoutError:
            return False
