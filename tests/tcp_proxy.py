"""A small TCP proxy on 127.0.0.1 for fault tests: it forwards to one upstream address and can
delay, stall, refuse or cut connections on command.

It runs its own event loop in a daemon thread, so it keeps forwarding (and obeys commands) even
while the test's own loop is busy or blocked. Every command is thread-safe.

    proxy = TcpProxy(upstream_port).start()
    proxy.delay = 0.05          # each forwarded chunk waits 50 ms (both directions)
    proxy.mode = "refuse"       # new connections are closed at once
    proxy.mode = "stall"        # nothing is forwarded (held back, as in a partition) until "pass"
    proxy.mode = "pass"         # back to normal
    proxy.cut()                 # abort every open connection (RST), keep listening
    proxy.cut_after(10_000)     # abort each open connection after 10 kB more downstream bytes
    proxy.close()
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

MODES = ("pass", "refuse", "stall")


class TcpProxy:
    def __init__(self, upstream_port: int, upstream_host: str = "127.0.0.1", port: int = 0):
        self.upstream = (upstream_host, upstream_port)
        self.port = port
        self.delay = 0.0
        self._mode = "pass"
        self.connections = 0  # accepted so far
        self.cuts = 0  # connections aborted by command
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.base_events.Server | None = None
        self._thread: threading.Thread | None = None
        self._pairs: set[_Pair] = set()
        self._lock = threading.Lock()

    # -- life cycle ------------------------------------------------------------------------------
    def start(self) -> TcpProxy:
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            try:
                self._server = loop.run_until_complete(
                    asyncio.start_server(self._accept, "127.0.0.1", self.port)
                )
                self.port = self._server.sockets[0].getsockname()[1]
            except BaseException as exc:  # report to the starter
                failure.append(exc)
                ready.set()
                loop.close()
                return
            ready.set()
            try:
                loop.run_forever()
            finally:
                loop.run_until_complete(self._shutdown())
                loop.close()

        self._thread = threading.Thread(target=run, name=f"tcp-proxy-{self.upstream[1]}",
                                        daemon=True)
        self._thread.start()
        ready.wait(10)
        if failure:
            raise failure[0]
        return self

    def close(self) -> None:
        if self._loop is None or self._thread is None:
            return
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop = None

    def __enter__(self) -> TcpProxy:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.close()

    @property
    def address(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # -- commands ------------------------------------------------------------------------------
    @property
    def mode(self) -> str:
        return self._mode

    @mode.setter
    def mode(self, value: str) -> None:
        if value not in MODES:
            raise ValueError(f"mode must be one of {MODES}")
        self._mode = value

    def cut(self) -> int:
        """Abort every open connection; returns how many were open."""
        return self._call(self._cut_all)

    def cut_after(self, nbytes: int) -> int:
        """Abort each open connection once ``nbytes`` more bytes went downstream (mid-frame)."""

        def arm() -> int:
            with self._lock:
                pairs = list(self._pairs)
            for p in pairs:
                p.cut_budget = nbytes
            return len(pairs)

        return self._call(arm)

    def open_connections(self) -> int:
        with self._lock:
            return len(self._pairs)

    def _call(self, fn: Any) -> Any:
        loop = self._loop
        if loop is None:
            raise RuntimeError("proxy is not running")
        done = threading.Event()
        out: list[Any] = []

        def run() -> None:
            try:
                out.append(fn())
            finally:
                done.set()

        loop.call_soon_threadsafe(run)
        done.wait(10)
        return out[0] if out else None

    def _cut_all(self) -> int:
        with self._lock:
            pairs = list(self._pairs)
        for p in pairs:
            p.abort()
        self.cuts += len(pairs)
        return len(pairs)

    # -- forwarding ----------------------------------------------------------------------------
    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        if self._mode == "refuse":
            _abort(writer)
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            _abort(writer)
            return
        pair = _Pair(self, writer, up_writer)
        with self._lock:
            self._pairs.add(pair)
        try:
            await asyncio.gather(
                pair.pump(reader, up_writer, downstream=False),
                pair.pump(up_reader, writer, downstream=True),
            )
        finally:
            pair.abort()
            with self._lock:
                self._pairs.discard(pair)

    async def _shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
        self._cut_all()
        await asyncio.sleep(0)


class _Pair:
    def __init__(self, proxy: TcpProxy, client: asyncio.StreamWriter,
                 upstream: asyncio.StreamWriter) -> None:
        self.proxy = proxy
        self.client = client
        self.upstream = upstream
        self.cut_budget: int | None = None
        self.closed = False

    def abort(self) -> None:
        if not self.closed:
            self.closed = True
            _abort(self.client)
            _abort(self.upstream)

    async def pump(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter,
                   downstream: bool) -> None:
        try:
            while not self.closed:
                data = await src.read(65536)
                if not data:
                    break
                while self.proxy.mode == "stall" and not self.closed:
                    await asyncio.sleep(0.02)  # held back: the peers see silence
                if self.proxy.delay > 0:
                    await asyncio.sleep(self.proxy.delay)
                if downstream and self.cut_budget is not None:
                    if len(data) >= self.cut_budget:
                        dst.write(data[: self.cut_budget])
                        await dst.drain()
                        self.proxy.cuts += 1
                        self.abort()
                        return
                    self.cut_budget -= len(data)
                if self.closed:
                    return
                dst.write(data)
                await dst.drain()
            if not self.closed and dst.can_write_eof():
                dst.write_eof()
        except (OSError, asyncio.IncompleteReadError, RuntimeError):
            self.abort()


def _abort(writer: asyncio.StreamWriter) -> None:
    transport = writer.transport
    if transport is not None:
        transport.abort()  # RST, not FIN: the peer sees the connection die
