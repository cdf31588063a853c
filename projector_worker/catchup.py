"""Applying one live event, catching its order up from the event store when events are missing.

An event whose predecessor is not in the views yet (redelivered out of order, or a rebuild's
generation that has not reached this order) is never applied out of order: the order's stream is
read from the event store and its missing events applied first, each with the same version-checked
script, so racing projectors and duplicates are harmless.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from enum import StrEnum

from common.contracts.envelopes import RecordedEvent
from common.contracts.orders import OrderEvent
from common.eventstore.store import EventStore
from common.messaging.outcomes import RetryLater
from common.observability import metrics
from common.readmodel.order_view import OrderView
from projector_worker.projection import ProjectionError, ViewChange, parse_payload, plan
from projector_worker.redis_views import ApplyResult, Generations, ViewWriter

log = logging.getLogger(__name__)

MAX_ROUNDS = 20
"""Generation changes tolerated while applying one event before giving it back for a retry."""


class Outcome(StrEnum):
    APPLIED = "applied"
    DUPLICATE = "duplicate"
    CAUGHT_UP = "caught-up"
    """Missing predecessors were fetched from the event store and applied, then this event."""


class ViewCache:
    """The latest view this process wrote per order (least recently used dropped first).

    A view at a given version is a pure function of the stream, so a cached view is never
    wrong, only possibly behind; the script's version check decides what is written."""

    def __init__(self, capacity: int) -> None:
        self._capacity = capacity
        self._views: OrderedDict[str, OrderView] = OrderedDict()

    def at(self, order_id: str, version: int) -> OrderView | None:
        view = self._views.get(order_id)
        if view is None or view.version != version:
            return None
        self._views.move_to_end(order_id)
        return view

    def put(self, view: OrderView) -> None:
        self._views[view.order_id] = view
        self._views.move_to_end(view.order_id)
        if len(self._views) > self._capacity:
            self._views.popitem(last=False)


class _Known(StrEnum):
    """What `_before` can tell without a view to continue from."""

    DUPLICATE = "duplicate"


class _Gap:
    """The event cannot apply yet; the lowest generation holds `lowest_version`."""

    def __init__(self, lowest_version: int) -> None:
        self.lowest_version = lowest_version


class LiveApplier:
    """Applies delivered events to every generation being written."""

    def __init__(
        self,
        writer: ViewWriter,
        store: EventStore,
        on_empty: Callable[[], Awaitable[None]],
        cache_size: int = 100_000,
    ) -> None:
        self._writer = writer
        self._store = store
        self._on_empty = on_empty
        self._generations: Generations | None = None
        self.cache = ViewCache(cache_size)

    async def _current(self) -> Generations:
        if self._generations is None:
            self._generations = await self._writer.generations()
        return self._generations

    def forget_generations(self) -> None:
        self._generations = None

    async def apply(self, event: RecordedEvent, payload: OrderEvent) -> Outcome:
        """Apply `event`; raises `ProjectionError` for an event that can never apply."""
        for _round in range(MAX_ROUNDS):
            generations = await self._current()
            if generations.empty:
                await self._on_empty()
                self.forget_generations()
                continue
            before = await self._before(event, generations)
            if before is _Known.DUPLICATE:
                return Outcome.DUPLICATE
            if isinstance(before, _Gap):
                await self._catch_up(event, before.lowest_version)
                return Outcome.CAUGHT_UP
            change = plan(before, event, payload)
            result = await self._writer.apply_live(event, change, generations)
            if result.empty or result.stale:
                self.forget_generations()
                continue
            if result.applied:
                metrics.EVENTS_PROJECTED.inc()
            if result.gap:
                await self._catch_up(event, result.lowest_version)
                return Outcome.CAUGHT_UP
            self.cache.put(change.view)
            return Outcome.APPLIED if result.applied else Outcome.DUPLICATE
        raise RetryLater("the view generations kept changing")

    async def _before(
        self, event: RecordedEvent, generations: Generations
    ) -> OrderView | _Known | _Gap | None:
        """The view at `event.version - 1`, or whether the event is known or cannot apply yet."""
        if event.version == 1:
            return None
        cached = self.cache.at(event.stream_id, event.version - 1)
        if cached is not None:
            return cached
        views = await self._writer.read_views(event.stream_id, generations.targets)
        versions = [view.version if view is not None else 0 for view in views.values()]
        if all(version >= event.version for version in versions):
            return _Known.DUPLICATE
        for view in views.values():
            if view is not None and view.version == event.version - 1:
                return view
        return _Gap(min(versions))

    async def _catch_up(self, event: RecordedEvent, lowest_version: int) -> None:
        """Apply the order's stream from the event store up to and including `event`; every
        generation written to is known to hold at least `lowest_version` events."""
        stream = await self._store.read_stream(event.stream_id)
        if len(stream) < event.version or stream[event.version - 1].event_id != event.event_id:
            raise ProjectionError(
                f"event {event.event_id} ({event.stream_id}@{event.version}) "
                "is not in the event store"
            )
        changes: list[tuple[RecordedEvent, ViewChange]] = []
        view: OrderView | None = None
        for stored in stream[: event.version]:
            change = plan(view, stored, parse_payload(stored))
            changes.append((stored, change))
            view = change.view
        log.info(
            "catching up %s to version %d from the event store",
            event.stream_id,
            event.version,
            extra={"order_id": event.stream_id},
        )
        start = min(lowest_version, event.version - 1)
        for _round in range(MAX_ROUNDS):
            restart = await self._apply_from(changes, start)
            if restart is None:
                if view is not None:
                    self.cache.put(view)
                return
            start = restart
        raise RetryLater(f"could not catch up {event.stream_id}")

    async def _apply_from(
        self, changes: list[tuple[RecordedEvent, ViewChange]], start: int
    ) -> int | None:
        """Apply `changes[start:]` in order; the index to restart from if a generation changed
        or fell behind meanwhile, else None."""
        for index in range(start, len(changes)):
            stored, change = changes[index]
            generations = await self._current()
            if generations.empty:
                await self._on_empty()
                self.forget_generations()
                return 0
            result: ApplyResult = await self._writer.apply_live(stored, change, generations)
            if result.empty or result.stale:
                self.forget_generations()
                return 0
            if result.gap:
                return result.lowest_version
            if result.applied:
                metrics.EVENTS_PROJECTED.inc()
        return None
