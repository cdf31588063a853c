"""Read-your-writes: wait until a command's outcome is visible or a view reaches a version.

One pub/sub connection per gateway, subscribed to the channels of
`common/readmodel/notifications.py` (the commands channel, and the versions channel of each
projection an aggregate is visible in) while anyone waits: from the first wait until
`linger_s` pass without one. Every projected event publishes on two channels, so a gateway
nobody asks to wait would otherwise spend a good part of its CPU reading and dropping them.

A wait registers a future *before* it reads the current state: a change after the read
arrives as a message, a change before it is in the read, so nothing slips between the two.
Each (re)subscription makes every pending wait read the state again (messages published while
unsubscribed are lost), so a wait that starts the subscription is as safe as any. No polling.

Waits are bounded: past `max_waiters` pending ones, a wait raises `WaitersFull` before it
registers anything, and the route answers at once with what it has.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import Iterator
from typing import Any, cast
from uuid import UUID

import orjson
from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from starlette.requests import Request

from common.domain import Registry
from common.observability import metrics
from common.readmodel.commands import read_status
from common.readmodel.keys import Keys
from common.readmodel.notifications import CommandProgress
from common.readmodel.reading import ProjectionReader, ViewsUnavailable

log = logging.getLogger(__name__)

MAX_BACKOFF_S = 2.0
LINGER_S = 30.0
"""How long the subscription outlives the last wait."""
IDLE_CHECK_S = 1.0


class WaitersFull(Exception):
    """`max_waiters` waits are pending: answer at once instead of waiting."""


class Waiter:
    """Futures keyed by command id and by (projection, stream, version), resolved from
    pub/sub."""

    def __init__(
        self,
        redis: Redis,
        keys: Keys,
        registry: Registry,
        *,
        linger_s: float = LINGER_S,
        max_waiters: int | None = None,
    ) -> None:
        self._redis = redis
        self._max_waiters = max_waiters
        self._linger_s = linger_s
        self._last_wait = 0.0
        self._closed = False
        self._keys = keys
        self._registry = registry
        visible = sorted({a.visible_in for a in registry.aggregates.values()})
        self._readers = {
            name: ProjectionReader(redis, keys.projection(registry.projections[name].keys_name()))
            for name in visible
        }
        self._commands: dict[str, set[asyncio.Future[CommandProgress]]] = {}
        self._versions: dict[str, set[tuple[int, asyncio.Future[int]]]] = {}
        """Keyed by `projection name + " " + stream id`."""
        self._projection_of_channel = {
            keys.projection(registry.projections[name].keys_name()).versions_channel: name
            for name in visible
        }
        self._channels = (keys.command_outcomes_channel, *self._projection_of_channel)
        self._reader: asyncio.Task[None] | None = None
        self.subscribed = asyncio.Event()
        """Set while both channels are subscribed; waits still work (by reading) when not."""

    async def close(self) -> None:
        self._closed = True
        reader, self._reader = self._reader, None
        if reader is not None:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader

    def _admit(self) -> None:
        """Raise `WaitersFull` (and count it) when `max_waiters` waits are pending (None:
        no bound)."""
        if self._max_waiters is not None and self.pending >= self._max_waiters:
            metrics.WAITS_REFUSED.inc()
            raise WaitersFull(f"{self.pending} waits pending")

    def _wanted(self) -> None:
        """Someone waits: keep the subscription, or start it."""
        self._last_wait = asyncio.get_running_loop().time()
        if self._reader is None and not self._closed:
            self._reader = asyncio.create_task(self._read_while_wanted(), name="waiter")

    # --- waits ----------------------------------------------------------------------------

    async def wait_for_command(self, command_id: UUID, timeout_s: float) -> CommandProgress | None:
        """The command's progress once it is settled (rejected, failed, or succeeded and
        visible to queries), or whatever is known when `timeout_s` runs out (check `.settled`);
        None if the command is unknown. Safe to call before or after the command is published.
        Raises `WaitersFull` at once when `max_waiters` waits are pending.
        """
        self._admit()
        key = str(command_id)
        future: asyncio.Future[CommandProgress] = asyncio.get_running_loop().create_future()
        with _registered(self._commands, key, future):
            self._wanted()
            progress = await self._read_command(key)
            if (progress is not None and progress.settled) or timeout_s <= 0:
                return progress
            with contextlib.suppress(TimeoutError):
                return await asyncio.wait_for(future, timeout_s)
        return await self._read_command(key)

    async def wait_for_version(
        self, projection: str, stream_id: str, version: int, timeout_s: float
    ) -> bool:
        """Whether the stream's view in `projection` (one some aggregate is visible in)
        reached `version` within `timeout_s`. Raises `WaitersFull` at once when `max_waiters`
        waits are pending."""
        self._admit()
        key = f"{projection} {stream_id}"
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        with _registered(self._versions, key, (version, future)):
            self._wanted()
            if await self._view_version(key) >= version:
                return True
            if timeout_s <= 0:
                return False
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(future, timeout_s)
                return True
        return False

    @property
    def pending(self) -> int:
        return sum(len(v) for v in self._commands.values()) + sum(
            len(v) for v in self._versions.values()
        )

    async def _read_command(self, command_id: str) -> CommandProgress | None:
        stored = await read_status(self._redis, self._keys, command_id)
        return CommandProgress.from_status(command_id, stored)

    async def _view_version(self, key: str) -> int:
        projection, _, stream_id = key.partition(" ")
        view_key = self._registry.projections[projection].view_key(stream_id)
        try:
            return await self._readers[projection].version(view_key)
        except ViewsUnavailable:
            return 0

    # --- the subscription -----------------------------------------------------------------

    async def _read_while_wanted(self) -> None:
        """Read notifications until nobody has waited for `linger_s`, reconnecting as needed."""
        me = asyncio.current_task()
        loop = asyncio.get_running_loop()
        pubsub: PubSub | None = None
        backoff = 0.05
        try:
            while True:
                try:
                    if pubsub is None:
                        pubsub = self._redis.pubsub()
                        await pubsub.subscribe(*self._channels)
                    message = await pubsub.get_message(timeout=IDLE_CHECK_S)
                    if message is not None:
                        backoff = 0.05
                        await self._on_message(message)
                    # Checked after every message too: with events flowing, a read never idles.
                    if not self.pending and loop.time() - self._last_wait > self._linger_s:
                        # Decided with no await in between: a wait from here on starts anew.
                        self._reader = None
                        return
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    log.warning("read-your-writes subscription lost: %r", exc)
                    self.subscribed.clear()
                    if pubsub is not None:
                        await _close(pubsub)
                        pubsub = None
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, MAX_BACKOFF_S)
        finally:
            if self._reader is None or self._reader is me:
                self.subscribed.clear()
            if pubsub is not None:
                await _close(pubsub)

    async def _on_message(self, message: dict[str, Any]) -> None:
        kind = message["type"]
        if kind == "subscribe":
            if int(message["data"]) == len(self._channels):
                self.subscribed.set()
                await self._recheck_all()
            return
        if kind != "message":
            return
        channel = message["channel"].decode()
        if channel == self._channels[0]:
            if self._commands:
                self._on_command(orjson.loads(message["data"]))
        elif self._versions:
            body = orjson.loads(message["data"])
            if "generation" in body:
                await self._recheck_all()
            else:
                projection = self._projection_of_channel.get(channel, "")
                self._on_version(f"{projection} {body['stream_id']}", int(body["version"]))

    def _on_command(self, body: dict[str, Any]) -> None:
        futures = self._commands.get(str(body.get("command_id")))
        if not futures:
            return
        progress = CommandProgress.from_message(body)
        if progress.settled:
            for future in futures:
                if not future.done():
                    future.set_result(progress)

    def _on_version(self, key: str, version: int) -> None:
        for wanted, future in self._versions.get(key, ()):
            if wanted <= version and not future.done():
                future.set_result(version)

    async def _recheck_all(self) -> None:
        """Read the state of every pending wait again (after a (re)subscription)."""
        for command_id in list(self._commands):
            progress = await self._read_command(command_id)
            if progress is not None and progress.settled:
                for future in self._commands.get(command_id, ()):
                    if not future.done():
                        future.set_result(progress)
        for key in list(self._versions):
            self._on_version(key, await self._view_version(key))


async def _close(pubsub: PubSub) -> None:
    with contextlib.suppress(Exception):
        await pubsub.aclose()  # type: ignore[no-untyped-call]


@contextlib.contextmanager
def _registered(registry: dict[str, set[Any]], key: str, entry: Any) -> Iterator[None]:
    registry.setdefault(key, set()).add(entry)
    try:
        yield
    finally:
        entries = registry.get(key)
        if entries is not None:
            entries.discard(entry)
            if not entries:
                del registry[key]


async def waiter_of(request: Request) -> Waiter:
    """The app's waiter: `app.state.waiter` when the lifespan made one, else one made on
    first use (the lifespan should own it, to close it at shutdown).

    A waiter is correct before its subscription is confirmed: waits read the state, and the
    confirmation makes every pending wait read it again."""
    state = request.app.state
    waiter = getattr(state, "waiter", None)
    if waiter is None:
        runtime = state.runtime
        waiter = Waiter(
            runtime.redis,
            runtime.keys,
            runtime.registry,
            max_waiters=runtime.settings.max_waiters,
        )
        state.waiter = waiter
    return cast(Waiter, waiter)


def prefer_wait(header: str | None) -> float | None:
    """The seconds of `Prefer: wait=<seconds>` (RFC 7240), None when absent or malformed."""
    if not header:
        return None
    for preference in header.split(","):
        name, _, value = preference.strip().partition("=")
        if name.strip().lower() == "wait":
            try:
                seconds = float(value.strip().strip('"'))
            except ValueError:
                return None
            return seconds if seconds >= 0 and math.isfinite(seconds) else None
    return None
