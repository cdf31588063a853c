"""The services a worker's handlers need, and what a worker does while one of them is out.

A failed handler cannot tell an outage from a fault of its own message: a timeout from a frozen
PostgreSQL looks like a timeout from a statement this message made slow. So the consumer asks
the probes (`SELECT 1`, `PING`, each bounded by a timeout) whether every dependency answers.

- They all answer: the failure is the message's own, and takes the ordinary retry path.
- One does not: the failure is the outage's. Every consumer of the process stops taking
  messages (`basic.cancel`) and keeps the ones it holds; the probes run again with a backoff
  until every dependency answers; then the held messages are handled again and the consumers
  resume. No attempt is counted and nothing is dead-lettered for it, however long it lasts.

A message held through a long outage stays unacknowledged on its channel. If the connection
drops meanwhile, the broker gives it to another consumer, as with any crash; handlers are
idempotent.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Protocol

from common.observability import metrics

log = logging.getLogger(__name__)

Probe = Callable[[], Awaitable[object]]
"""Answers (returns) when its dependency works; raises or hangs when it does not."""

PROBE_TIMEOUT_S = 2.0
MAX_BACKOFF_S = 5.0


class Pausable(Protocol):
    """A consumer that can stop and resume taking messages."""

    async def pause(self) -> None: ...

    async def resume(self) -> None: ...


class Dependencies:
    """The named probes of one process, and whether its consumers are paused for an outage."""

    def __init__(
        self,
        probes: Mapping[str, Probe],
        *,
        probe_timeout_s: float = PROBE_TIMEOUT_S,
        max_backoff_s: float = MAX_BACKOFF_S,
    ) -> None:
        self._probes = dict(probes)
        self._probe_timeout_s = probe_timeout_s
        self._max_backoff_s = max_backoff_s
        self._up = asyncio.Event()
        self._up.set()
        self._checking: asyncio.Task[str | None] | None = None
        self._recovering: asyncio.Task[None] | None = None
        self._consumers: list[Pausable] = []
        self._out: str | None = None
        self._last_recovery = float("-inf")
        """When (monotonic) the last outage ended."""
        for name in self._probes:
            metrics.DEPENDENCY_UP.labels(name).set(1)
            metrics.OUTAGES.labels(name)

    @property
    def up(self) -> bool:
        return self._up.is_set()

    def add(self, consumer: Pausable) -> None:
        """Pause and resume `consumer` with the others from now on."""
        self._consumers.append(consumer)

    def remove(self, consumer: Pausable) -> None:
        if consumer in self._consumers:
            self._consumers.remove(consumer)

    async def outage(self) -> str | None:
        """None when every dependency answers; else the name of one that does not, and the
        process's consumers are then paused until every one answers again (`wait_up`).
        Concurrent callers share one round of probes."""
        if not self._up.is_set():
            return self._out
        if self._checking is None or self._checking.done():
            self._checking = asyncio.create_task(
                self._probe_all(), name="dependency-probes", context=contextvars.Context()
            )
        out = await asyncio.shield(self._checking)
        if out is not None and self._up.is_set():
            self._begin(out)
        return out

    def recovered_since(self, moment: float) -> bool:
        """Whether an outage ended after `moment` (monotonic): a call that started before then
        may have failed for the outage although every dependency answers now."""
        return self._last_recovery >= moment

    async def wait_up(self) -> None:
        await self._up.wait()

    async def close(self) -> None:
        for task in (self._checking, self._recovering):
            if task is not None:
                task.cancel()
        self._up.set()  # whoever still waits goes on (and finds the process stopping)

    async def answering(self) -> dict[str, bool]:
        """Probe every dependency now: whether each answered within the probe timeout (what a
        readiness check reports)."""
        names = list(self._probes)
        answers = await asyncio.gather(*(self._answers(name) for name in names))
        for name, answered in zip(names, answers, strict=True):
            metrics.DEPENDENCY_UP.labels(name).set(1 if answered else 0)
        return dict(zip(names, answers, strict=True))

    async def _probe_all(self) -> str | None:
        answers = await self.answering()
        return next((name for name, ok in answers.items() if not ok), None)

    async def _answers(self, name: str) -> bool:
        try:
            await asyncio.wait_for(self._probes[name](), self._probe_timeout_s)
        except Exception as exc:
            log.debug("probe of %s failed: %r", name, exc)
            return False
        return True

    def _begin(self, name: str) -> None:
        self._out = name
        self._up.clear()
        metrics.OUTAGES.labels(name).inc()
        log.warning(
            "%s does not answer: pausing %d consumers until it does (held messages are "
            "handled again then; no retry is spent)",
            name,
            len(self._consumers),
            extra={"dependency": name},
        )
        # Not in the context of the message whose failure found the outage: its correlation id
        # must not label the process's lines about it.
        self._recovering = asyncio.create_task(
            self._recover(name), name="dependency-recovery", context=contextvars.Context()
        )

    async def _recover(self, first_out: str) -> None:
        started = time.monotonic()
        paused = list(self._consumers)
        for consumer in paused:
            await consumer.pause()
        backoff = 0.25
        while True:
            await asyncio.sleep(backoff)
            out = await self._probe_all()
            if out is None:
                break
            self._out = out
            backoff = min(backoff * 2, self._max_backoff_s)
        log.warning(
            "%s answers again after %.1f s: resuming",
            first_out,
            time.monotonic() - started,
            extra={"dependency": first_out},
        )
        self._out = None
        self._last_recovery = time.monotonic()
        self._up.set()
        for consumer in self._consumers:
            await consumer.resume()
