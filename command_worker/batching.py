"""Micro-batching: commands that arrive together share one load, one transaction and one Redis
round trip.

Nothing waits for a batch to fill: a batch is whatever is pending when a slot frees up, so a
lone command goes at once and a burst amortises its round trips. Commands on one stream stay in
arrival order and never run in two batches at once (no self-inflicted version conflicts).
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")


class Batcher(Generic[Item, Result]):
    """Runs `run_batch` over pending items, at most `max_parallel` batches at a time."""

    def __init__(
        self,
        run_batch: Callable[[list[Item]], Awaitable[list[Result]]],
        key: Callable[[Item], Hashable],
        *,
        max_batch: int,
        max_parallel: int,
    ) -> None:
        self._run_batch = run_batch
        self._key = key
        self._max_batch = max_batch
        self._max_parallel = max_parallel
        self._pending: list[tuple[Item, asyncio.Future[Result]]] = []
        self._busy: set[Hashable] = set()
        self._running = 0
        self._kick_scheduled = False
        self._tasks: set[asyncio.Task[None]] = set()

    async def submit(self, item: Item) -> Result:
        future: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
        self._pending.append((item, future))
        if not self._kick_scheduled:
            # Let every delivery of this loop iteration join before the batch is cut.
            self._kick_scheduled = True
            # A batch works for many commands: it must not log with the first one's
            # correlation id, so it starts from an empty context.
            asyncio.get_running_loop().call_soon(self._kick, context=contextvars.Context())
        return await future

    def _kick(self) -> None:
        self._kick_scheduled = False
        while self._running < self._max_parallel:
            batch = self._take()
            if not batch:
                return
            self._running += 1
            task = asyncio.create_task(self._run(batch))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def _take(self) -> list[tuple[Item, asyncio.Future[Result]]]:
        taken: list[tuple[Item, asyncio.Future[Result]]] = []
        left: list[tuple[Item, asyncio.Future[Result]]] = []
        taken_keys: set[Hashable] = set()
        blocked: set[Hashable] = set(self._busy)
        for entry in self._pending:
            key = self._key(entry[0])
            if key in taken_keys or (key not in blocked and len(taken) < self._max_batch):
                taken.append(entry)
                taken_keys.add(key)
            else:
                left.append(entry)
                blocked.add(key)  # keep the stream's later commands behind this one
        self._pending = left
        self._busy |= taken_keys
        return taken

    async def _run(self, batch: list[tuple[Item, asyncio.Future[Result]]]) -> None:
        try:
            results = await self._run_batch([item for item, _ in batch])
        except BaseException as exc:
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            if isinstance(exc, asyncio.CancelledError):
                raise
        else:
            for (_, future), result in zip(batch, results, strict=True):
                if not future.done():
                    future.set_result(result)
        finally:
            for item, _ in batch:
                self._busy.discard(self._key(item))
            self._running -= 1
            self._kick()
