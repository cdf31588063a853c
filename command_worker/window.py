"""The relay's window of published batches awaiting their confirms.

Batches are confirmed in the order they were sent; only a confirmed prefix of the log counts as
published. If a batch fails, nothing sent after it counts either: the window reports the
failure at once, and whatever is still in flight is dropped and sent again.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from common.messaging.connection import BrokerUnavailable


@dataclass(slots=True)
class _Sent:
    """A batch published, its confirms awaited by `task`."""

    task: asyncio.Task[None]
    up_to: int
    events: int


class InFlight:
    """At most `max_batches` batches in flight, and (once one is) at most `max_events` events.

    `on_confirmed(up_to, events)` is called for each batch confirmed at the head, in order."""

    def __init__(
        self, max_batches: int, max_events: int, on_confirmed: Callable[[int, int], None]
    ) -> None:
        self._max_batches = max_batches
        self._max_events = max_events
        self._on_confirmed = on_confirmed
        self._sent: deque[_Sent] = deque()

    def __bool__(self) -> bool:
        return bool(self._sent)

    def send(self, publish: Coroutine[Any, Any, None], up_to: int, events: int) -> None:
        """Track a batch being published (its events reach position `up_to`); raises
        `BrokerUnavailable` when this or an earlier batch has already failed."""
        self._sent.append(_Sent(asyncio.create_task(publish), up_to, events))
        self.confirmed()

    async def room_for(self, events: int) -> None:
        """Wait until a batch of `events` may be sent; `BrokerUnavailable` if one failed."""
        while len(self._sent) >= self._max_batches or (
            self._sent and sum(b.events for b in self._sent) + events > self._max_events
        ):
            await asyncio.wait({self._sent[0].task})
            self.confirmed()

    def confirmed(self) -> int:
        """Report the batches confirmed at the head (how many); raise `BrokerUnavailable` if
        the first one done failed. A failed batch stays at the head, so nothing sent after it
        is ever reported."""
        count = 0
        while self._sent and self._sent[0].task.done():
            task = self._sent[0].task
            if task.cancelled():
                raise BrokerUnavailable("publish cancelled")
            failure = task.exception()
            if failure is not None:
                if isinstance(failure, BrokerUnavailable):
                    raise failure
                raise BrokerUnavailable(f"publish failed: {failure!r}") from failure
            batch = self._sent.popleft()
            self._on_confirmed(batch.up_to, batch.events)
            count += 1
        return count

    def oldest(self) -> asyncio.Task[None] | None:
        """The task of the batch whose confirm is due first."""
        return self._sent[0].task if self._sent else None

    async def settle(self) -> None:
        """Wait for every batch in flight to be confirmed or to fail."""
        if self._sent:
            await asyncio.wait([batch.task for batch in self._sent])

    async def drop(self) -> None:
        """Report what was confirmed ahead of any failure, then cancel the rest: its events
        will be sent again."""
        with contextlib.suppress(BrokerUnavailable):
            self.confirmed()
        for batch in self._sent:
            batch.task.cancel()
        await asyncio.gather(*(batch.task for batch in self._sent), return_exceptions=True)
        self._sent.clear()
