"""What a rebuild stands on: the one-rebuilder lock, dropping a generation, and reporting.

See `rebuild.py` for the steps of a rebuild; this module holds the parts that do not replay.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import sys
import time
from dataclasses import dataclass
from typing import TextIO

from redis.asyncio import Redis

from common.readmodel.keys import ProjectionKeys
from projector_worker import scripts

log = logging.getLogger(__name__)


class RebuildAborted(Exception):
    """The rebuild lost its lock or its generation (Redis emptied meanwhile); nothing switched."""


LOCK_TTL_MS = 30_000
RENEW_EVERY_S = 5.0
DELETE_BATCH = 500
SCAN_COUNT = 1000


@dataclass
class RebuildSummary:
    generation: int
    previous: int | None
    projection: str = ""
    events: int = 0
    applied: int = 0
    skipped: int = 0
    ignored: int = 0
    """Events of streams the projection does not follow."""
    commands_restored: int = 0
    keys_deleted: int = 0
    horizon: int = 0
    switched_s: float = 0.0
    """From the start to queries reading the new generation: the replay."""
    seconds: float = 0.0
    """From the start to the end, the old generation's keys deleted."""

    def describe(self) -> str:
        rate = self.events / self.switched_s if self.switched_s > 0 else 0.0
        switched = (
            f"g{self.previous} -> g{self.generation}"
            if self.previous
            else (f"g{self.generation} (Redis was empty)")
        )
        text = (
            f"rebuild of {self.projection} done: {switched}; {self.events} events read up to "
            "position "
            f"{self.horizon}, {self.applied} applied, switched after {self.switched_s:.1f}s"
            f" ({rate:.0f}/s)"
        )
        if self.skipped:
            text += f"; {self.skipped} invalid events skipped"
        if self.ignored:
            text += f"; {self.ignored} events of other streams ignored"
        if self.commands_restored:
            text += f"; {self.commands_restored} command statuses restored"
        if self.previous:
            text += f"; {self.keys_deleted} keys of g{self.previous} deleted"
        return text + f"; done in {self.seconds:.1f}s"


class Progress:
    """Events done, rate and ETA on a text stream, at most once a second."""

    def __init__(self, stream: TextIO | None = sys.stderr, every_s: float = 1.0) -> None:
        self._stream = stream
        self._every_s = every_s
        self._started = time.monotonic()
        self._last = 0.0
        self.done = 0
        self.total = 0
        self.label = "rebuild"

    def advance(self, events: int) -> None:
        self.done += events
        now = time.monotonic()
        if now - self._last >= self._every_s:
            self._last = now
            self.write(self.line(now))

    def line(self, now: float) -> str:
        elapsed = max(now - self._started, 1e-9)
        rate = self.done / elapsed
        text = f"{self.label}: {self.done} events, {rate:.0f}/s"
        if self.total > 0:
            share = min(self.done / self.total, 1.0)
            eta = (self.total - self.done) / rate if rate > 0 else float("inf")
            text += f", ~{share:.0%} of {self.total}, ETA {max(eta, 0):.0f}s"
        return text

    def write(self, text: str) -> None:
        if self._stream is not None:
            print(text, file=self._stream, flush=True)


class RebuildLock:
    """The one-rebuilder lock: a random token under a key with a TTL, renewed in the background
    together with the `rebuilding` marker."""

    def __init__(self, redis: Redis, keys: ProjectionKeys) -> None:
        self._redis = redis
        self._keys = keys
        self.token = secrets.token_hex(16)
        self.generation: int | None = None
        self.lost = False
        self._renewer: asyncio.Task[None] | None = None
        self._renew = redis.register_script(scripts.RENEW)
        self._release = redis.register_script(scripts.RELEASE)

    async def acquire(self) -> bool:
        return bool(
            await self._redis.set(self._keys.rebuild_lock, self.token, nx=True, px=LOCK_TTL_MS)
        )

    def start_renewing(self) -> None:
        self._renewer = asyncio.create_task(self._renew_forever(), name="rebuild-lock")

    async def _renew_forever(self) -> None:
        while True:
            await asyncio.sleep(RENEW_EVERY_S)
            try:
                kept = await self._renew(
                    keys=[self._keys.rebuild_lock, self._keys.rebuilding],
                    args=[self.token, LOCK_TTL_MS, str(self.generation or "")],
                )
            except Exception as exc:
                log.warning("could not renew the rebuild lock: %r", exc)
                continue
            if not kept:
                log.error("the rebuild lock or marker was lost")
                self.lost = True
                return

    async def release(self) -> None:
        if self._renewer is not None:
            self._renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._renewer
            self._renewer = None
        with contextlib.suppress(Exception):
            await self._release(keys=[self._keys.rebuild_lock], args=[self.token])


async def drop_generation(redis: Redis, keys: ProjectionKeys, generation: int) -> int:
    """Delete every key of `generation`, found by SCAN of its base, in batches. Nothing writes
    to it any more (APPLY writes only the generations the pointer and the marker name, checked
    atomically), and SCAN returns every key that exists for its whole run, so none is left."""
    deleted = 0
    batch: list[bytes] = []
    async for key in redis.scan_iter(match=keys.views(generation).pattern, count=SCAN_COUNT):
        batch.append(key)
        if len(batch) >= DELETE_BATCH:
            deleted += int(await redis.unlink(*batch))
            batch = []
    if batch:
        deleted += int(await redis.unlink(*batch))
    await redis.srem(keys.generations, generation)
    return deleted
