"""How many events a projection applies at once, whatever the messages carry.

The broker's prefetch counts messages, and a message may carry one event or a batch of fifty:
under a backlog, 500 prefetched batches would be 25,000 events parsed and in flight in one
process. The budget bounds the events instead; messages past it wait, still unacked.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator


class EventBudget:
    """At most `capacity` events in flight; a message takes as many as it holds (all of the
    budget at most, so a batch larger than it still runs, alone)."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._free = capacity
        self._changed = asyncio.Condition()

    @property
    def in_flight(self) -> int:
        return self.capacity - self._free

    @contextlib.asynccontextmanager
    async def take(self, events: int) -> AsyncIterator[None]:
        wanted = max(1, min(events, self.capacity))
        async with self._changed:
            await self._changed.wait_for(lambda: self._free >= wanted)
            self._free -= wanted
        try:
            yield
        finally:
            async with self._changed:
                self._free += wanted
                self._changed.notify_all()
