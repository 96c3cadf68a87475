"""The follower: stream the primary's log, verify and apply it with the same ``apply``, serve reads.

One long-lived HTTP stream (``/v1/replication/stream``) carries records after our last LSN; each
batch is appended through ``jade.engine.commit.Replicated``, which verifies LSN continuity,
epoch and the checksum chain before anything is applied, then acknowledged. Heartbeats carry
the primary's last LSN and time, from which lag is computed (received = durable = applied here:
the store is applied in the same transaction as the log append, the indexes right after it).

- Cut or refused connection: reconnect with exponential back-off (0.2 s doubling to 10 s, with
  jitter, from 0.2 s again once a stream worked); a restarted replica resumes from its own LSN.
- Acks are throttled while records flow and sent on the next heartbeat otherwise, so the
  primary's view (and its truncation) follows us even when idle. Lag is computed when read; a
  primary silent for more than SILENCE_SECONDS counts as lag in seconds.
- Too far behind (the primary truncated what we need) or diverged (our record at our last LSN is
  not the primary's, e.g. after a promotion elsewhere): we refuse to apply, say why, and re-seed
  from a snapshot the primary streams (to disk, files moved in by rename under a marker: a
  re-seed interrupted by kill -9 starts over), then continue.
- A primary with a lower epoch than ours is fenced: we never apply its records.
- ``promote()``: stop following, raise the epoch with a ``system.promote`` record, serve writes.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import shutil
import tarfile
import time
from typing import Any

import aiohttp
from aiohttp import web

from jade.backup import snapshot
from jade.core.decide import Command
from jade.engine import Engine
from jade.engine.commit import Replicated
from jade.http.keys import AUTH, ENGINE, METRICS, PROMOTE, REPLICA_STATUS
from jade.metrics import Metrics
from jade.settings import Settings
from wal.codec import decode
from wal.files import fsync_path
from wal.log import LogError
from wal.stream import FrameError, length, parse

log = logging.getLogger(__name__)


SILENCE_SECONDS = 3.0
RESEED_MARKER = ".reseed-in-progress"


class Reseed(Exception):
    """The follower must bootstrap from a snapshot; the message says why."""


class Fenced(Exception):
    """The primary is behind us in epoch: never apply its records."""


class Follower:
    def __init__(self, app: web.Application, settings: Settings) -> None:
        self.app = app
        self.engine: Engine = app[ENGINE]
        self.metrics: Metrics = app[METRICS]
        self.settings = settings
        self.primary = settings.primary_url.rstrip("/")
        self.replica_id = settings.replica_id or f"{os.uname().nodename}:{settings.port}"
        self.state = "starting"
        self.primary_lsn = 0
        self.primary_ts = 0
        self.received_lsn = 0
        self.last_error = ""
        self.reconnects = 0
        self.reseeds = 0
        self.connected_since: float | None = None
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._swapping: asyncio.Future[None] | None = None
        self._last_ack = 0.0
        self._acked_lsn = -1
        self.last_contact = time.monotonic()  # of the last frame from the primary (or start)
        # computed when scraped, so a silent stream shows as growing lag rather than a frozen 0
        m = self.metrics
        m.replication_lag_records.set_function(lambda: self.lag()[0])
        m.replication_lag_seconds.set_function(lambda: self.lag()[1])
        m.replication_applied_lsn.set_function(
            lambda: self.engine.log.last_lsn if self.engine.env is not None else 0)

    # -- life cycle ---------------------------------------------------------------------------
    def start(self) -> None:
        self._task = asyncio.create_task(self.run(), name="follower")

    async def stop(self) -> None:
        self._stop.set()
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        if self._swapping is not None and not self._swapping.done():
            # a swap of data files cannot be cancelled half-way: let it finish (the engine is
            # closed and reopened in it), so that shutdown or promotion find an open engine
            try:
                await self._swapping
            except Exception:  # noqa: BLE001 - reported by _bootstrap's caller
                pass

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    async def retarget(self, url: str) -> None:
        """Follow ``url`` from now on (a new primary elected through the coordinator), without
        a restart: the stream to the old one ends, the one to ``url`` resumes from our LSN."""
        await self.stop()
        self.primary = url.rstrip("/")
        self._stop = asyncio.Event()
        self.state = "starting"
        self.primary_lsn = self.primary_ts = 0
        self.last_error = ""
        self.last_contact = time.monotonic()
        self.start()

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.settings.replication_key}"}

    async def run(self) -> None:
        delay = 0.2
        async with aiohttp.ClientSession() as session:
            while not self._stop.is_set():
                try:
                    await self._follow(session)
                    delay = 0.2
                except Reseed as exc:
                    self.state = "reseeding"
                    self.last_error = f"re-seeding: {exc}"
                    log.warning("replica refuses to apply: %s; re-seeding from a snapshot", exc)
                    try:
                        await self._bootstrap(session)
                        delay = 0.2
                        continue
                    except Exception as exc2:  # keep trying: the primary may be restarting
                        self.last_error = f"re-seed failed: {type(exc2).__name__}: {exc2}"
                        log.warning("re-seed failed: %s", self.last_error)
                except Fenced as exc:
                    self.state = "fenced"
                    self.last_error = str(exc)
                    log.error("replica fenced: %s", exc)
                    delay = 10.0
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # network cuts, primary restarts, bad frames
                    if self.connected_since is not None:
                        delay = 0.2  # the stream worked: back off from scratch after a cut
                    self.state = "disconnected"
                    self.last_error = f"{type(exc).__name__}: {exc}"
                    log.info(
                        "replication stream lost (%s); reconnecting in %.1fs",
                        self.last_error,
                        delay,
                    )
                self.connected_since = None
                self.reconnects += 1
                self.metrics.replication_reconnects.inc()
                try:
                    await asyncio.wait_for(self._stop.wait(), delay * (0.5 + random.random()))
                except TimeoutError:
                    pass
                delay = min(10.0, delay * 2)

    # -- streaming ----------------------------------------------------------------------------
    async def _follow(self, session: aiohttp.ClientSession) -> None:
        if os.path.exists(os.path.join(self.settings.data_dir, RESEED_MARKER)):
            raise Reseed("a previous re-seed was interrupted; its data cannot be trusted")
        wal = self.engine.log
        params = {
            "after": str(wal.last_lsn),
            "checksum": wal.last_checksum.hex(),
            "replica_id": self.replica_id,
        }
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=5, sock_read=15)
        async with session.get(
            self.primary + "/v1/replication/stream",
            params=params,
            headers=self._headers(),
            timeout=timeout,
        ) as resp:
            if resp.status != 200:
                text = (await resp.text())[:300]
                raise ConnectionError(f"primary answered {resp.status}: {text}")
            self.state = "streaming"
            self.connected_since = time.time()
            self._acked_lsn = -1  # tell this (maybe restarted) primary where we are soon
            while True:
                header = await resp.content.readexactly(4)
                data = await resp.content.readexactly(length(header))
                await self._handle(session, parse(data))

    async def _handle(self, session: aiohttp.ClientSession, f: dict[str, Any]) -> None:
        wal = self.engine.log
        t = f["t"]
        self.last_contact = time.monotonic()
        if t == "hello":
            if int(f["epoch"]) < wal.epoch:
                raise Fenced(f"primary epoch {f['epoch']} < ours {wal.epoch}: it was superseded")
            self._saw_primary(int(f["primary_lsn"]), int(f["primary_ts"]))
        elif t == "hb":
            if int(f["epoch"]) < wal.epoch:
                raise Fenced(f"primary epoch {f['epoch']} < ours {wal.epoch}")
            self._saw_primary(int(f["last_lsn"]), int(f["last_ts"]))
            if wal.last_lsn > self._acked_lsn:  # the last batch's ack may have been throttled
                await self._ack(session, force=True)
        elif t == "reseed":
            raise Reseed(str(f.get("reason", "the primary asked for it")))
        elif t == "recs":
            try:
                recs = [decode(raw) for raw in f["records"]]
            except ValueError as exc:
                raise FrameError(f"bad record in stream: {exc}") from None
            if not recs:
                return
            self.received_lsn = recs[-1].lsn
            self._saw_primary(
                max(self.primary_lsn, recs[-1].lsn), max(self.primary_ts, recs[-1].ts)
            )
            assert self.engine.writer is not None
            await self.engine.index_room(wait=-1)  # the graphs behind: the stream waits
            try:
                await self.engine.writer.submit_async(Replicated(recs))
            except LogError as exc:  # continuity, epoch or chain: never apply garbage
                raise Reseed(f"records from the primary do not follow ours ({exc})") from None
            # committed (fsync) above; a primary waiting for us (synchronous replication)
            # marks the frame ``ack``: acknowledge it now, not throttled
            await self._ack(session, force=bool(f.get("ack")))
        else:
            raise FrameError(f"unknown frame type {t!r}")

    def _saw_primary(self, lsn: int, ts: int) -> None:
        self.primary_lsn = max(self.primary_lsn, lsn)
        self.primary_ts = max(self.primary_ts, ts)

    def lag(self) -> tuple[int, float]:
        """(records, seconds) behind the primary as far as we know. A primary silent for longer
        than SILENCE_SECONDS (heartbeats come every second) may have written anything since:
        the silence counts as lag in seconds."""
        if self.engine.role != "replica":
            return 0, 0.0
        wal = self.engine.log
        behind = max(0, self.primary_lsn - wal.last_lsn)
        seconds = max(0.0, (self.primary_ts - wal.last_ts) / 1e9) if behind else 0.0
        silent = time.monotonic() - self.last_contact
        if silent > SILENCE_SECONDS:
            seconds = max(seconds, silent)
        return behind, seconds

    async def _ack(self, session: aiohttp.ClientSession, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last_ack < 0.2:
            return
        self._last_ack = now
        lsn = self.engine.log.last_lsn
        try:
            async with session.post(
                self.primary + "/v1/replication/ack",
                params={"replica_id": self.replica_id},
                json={"received_lsn": self.received_lsn, "applied_lsn": lsn},
                headers=self._headers(),
                timeout=aiohttp.ClientTimeout(total=5),
            ) as resp:
                await resp.read()
                if resp.status == 200:
                    self._acked_lsn = lsn
        except (TimeoutError, aiohttp.ClientError) as exc:
            log.debug("ack failed: %s", exc)

    # -- bootstrap ------------------------------------------------------------------------------
    async def _bootstrap(self, session: aiohttp.ClientSession) -> None:
        """Replace our data with a snapshot streamed by the primary, then continue from it.
        The archive goes to disk (not memory); its files are moved into place by rename, under
        a marker that makes an interrupted swap (kill -9) start over rather than open a mix."""
        s = self.settings
        work = os.path.join(s.data_dir, ".reseed")
        await asyncio.to_thread(shutil.rmtree, work, True)
        os.makedirs(work)
        archive = os.path.join(work, "snapshot.tar")
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=5, sock_read=120)
        async with session.get(
            self.primary + "/v1/replication/snapshot", headers=self._headers(), timeout=timeout
        ) as resp:
            if resp.status != 200:
                raise ConnectionError(f"snapshot download answered {resp.status}")
            with open(archive, "wb") as fh:
                async for chunk in resp.content.iter_chunked(1 << 20):
                    fh.write(chunk)
        await asyncio.to_thread(_extract, archive, work)
        names = [n for n in os.listdir(work) if n.startswith("snap-")]
        if len(names) != 1:
            raise ConnectionError("the streamed archive holds no snapshot")
        snap = os.path.join(work, names[0])
        problems = await asyncio.to_thread(snapshot.verify, snap)
        if problems:
            raise ConnectionError("streamed snapshot is damaged: " + "; ".join(problems))
        self._swapping = asyncio.ensure_future(asyncio.to_thread(self._swap, snap))
        await asyncio.shield(self._swapping)
        self.reseeds += 1
        self.app[AUTH].clear_cache()
        log.info("re-seeded from snapshot %s at LSN %d", names[0], self.engine.log.last_lsn)
        await asyncio.to_thread(shutil.rmtree, work, True)

    def _swap(self, snap: str) -> None:
        s = self.settings
        e = self.engine
        marker = os.path.join(s.data_dir, RESEED_MARKER)
        with open(marker, "w") as fh:
            fh.write(snap)
            fh.flush()
            os.fsync(fh.fileno())
        e.close(checkpoint=False)
        for path, name in ((s.db_path, snapshot.DATA_FILE), (s.auth_db_path, snapshot.AUTH_FILE)):
            lock = path + "-lock"
            if os.path.exists(lock):
                os.remove(lock)
            os.replace(os.path.join(snap, name), path)  # same file system: atomic
        shutil.rmtree(s.index_dir, ignore_errors=True)
        if os.path.isdir(os.path.join(snap, "indexes")):
            os.replace(os.path.join(snap, "indexes"), s.index_dir)
        fsync_path(s.data_dir)
        e.open()
        os.remove(marker)

    # -- promotion -------------------------------------------------------------------------------
    async def promote(self, epoch: int | None = None) -> dict[str, Any]:
        """Stop following and write a ``system.promote`` record with ``epoch`` (default: ours
        plus one; the coordinator passes the epoch it registered for this election)."""
        await self.stop()
        self.engine.role = "primary"
        self.state = "promoted"
        epoch = epoch or self.engine.log.epoch + 1
        recs = await self.engine.submit(
            Command("system.promote", {"epoch": epoch, "previous_primary": self.primary}, "system")
        )
        log.warning("promoted to primary at LSN %d with epoch %d", recs[-1].lsn, epoch)
        return {"epoch": epoch, "lsn": recs[-1].lsn}

    def status(self) -> dict[str, Any]:
        records, seconds = self.lag()
        wal = self.engine.log
        return {
            "state": self.state,
            "primary": self.primary,
            "replica_id": self.replica_id,
            "epoch": wal.epoch,
            "primary_lsn": self.primary_lsn,
            "received_lsn": self.received_lsn,
            "durable_lsn": wal.last_lsn,
            "applied_lsn": wal.last_lsn,
            "lag_records": records,
            "lag_seconds": round(seconds, 3),
            "last_contact_seconds_ago": round(time.monotonic() - self.last_contact, 3),
            "reconnects": self.reconnects,
            "reseeds": self.reseeds,
            "last_error": self.last_error,
            "connected_since": self.connected_since,
        }


def _extract(archive: str, dest: str) -> None:
    with tarfile.open(archive, mode="r:") as tar:
        tar.extractall(dest, filter="data")


def attach(app: web.Application, settings: Settings, *, start: bool = True) -> Follower:
    """Make ``app`` a replica of ``settings.primary_url`` (before the app starts). ``start``
    False: the follower waits for ``retarget`` (the coordinator names the primary)."""
    if not settings.replication_key:
        raise ValueError(
            "a replica needs JADEVECTORDB_REPLICATION_KEY (an API key of a user "
            "with the replicator role)"
        )
    app[ENGINE].role = "replica"
    follower = Follower(app, settings)
    app[REPLICA_STATUS] = follower.status
    app[PROMOTE] = follower.promote

    async def ctx(app: web.Application) -> Any:
        if start:
            follower.start()
        yield
        await follower.stop()

    app.cleanup_ctx.append(ctx)
    return follower
