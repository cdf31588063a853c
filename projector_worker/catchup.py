"""Applying one live event, catching its stream up from the event store when events are missing.

An event whose predecessor is not in the views yet (redelivered out of order, or a rebuild's
generation that has not reached this stream) is never applied out of order: the stream is read
from the event store and its missing events applied first, each with the same version-checked
script, so racing projectors and duplicates are harmless.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from enum import StrEnum
from typing import Any

from common.contracts.envelopes import RecordedEvent
from common.domain import Registry, UnknownEvent
from common.eventstore.store import EventStore
from common.messaging.outcomes import RetryLater
from common.observability import metrics, tracing
from common.readmodel.projection import Projection, ProjectionError, ViewChange
from projector_worker.losses import LossDetector
from projector_worker.redis_views import ApplyResult, Generations, ViewWriter

log = logging.getLogger(__name__)

MAX_ROUNDS = 20
"""Generation changes tolerated while applying one event before giving it back for a retry."""


class Applied(StrEnum):
    """What applying one delivered event did."""

    APPLIED = "applied"
    DUPLICATE = "duplicate"
    CAUGHT_UP = "caught-up"
    """Missing predecessors were fetched from the event store and applied, then this event."""


class ViewCache:
    """The latest view this process wrote per stream (least recently used dropped first).

    A view at a given version is a pure function of the stream, so a cached view is never
    wrong, only possibly behind; the script's version check decides what is written."""

    def __init__(self, projection: Projection[Any], capacity: int) -> None:
        self._version_of = projection.version_of
        self._capacity = capacity
        self._views: OrderedDict[str, Any] = OrderedDict()

    def at(self, stream_id: str, version: int) -> Any | None:
        """The cached view of the stream if it is at `version`."""
        view = self._views.get(stream_id)
        if view is None or self._version_of(view) != version:
            return None
        self._views.move_to_end(stream_id)
        return view

    def get(self, stream_id: str) -> Any | None:
        return self._views.get(stream_id)

    def put(self, stream_id: str, view: Any) -> None:
        self._views[stream_id] = view
        self._views.move_to_end(stream_id)
        if len(self._views) > self._capacity:
            self._views.popitem(last=False)

    def forget(self, stream_id: str) -> None:
        self._views.pop(stream_id, None)


async def plan_stream(
    projection: Projection[Any],
    registry: Registry,
    store: EventStore,
    stream_id: str,
    up_to_version: int | None = None,
) -> tuple[list[tuple[RecordedEvent, ViewChange]], str | None]:
    """The changes of a stream's first `up_to_version` events (all by default), read from the
    event store, each planned on the view before it; and why planning stopped early, if it
    did."""
    stream = await store.read_stream(stream_id)
    changes: list[tuple[RecordedEvent, ViewChange]] = []
    view: Any | None = None
    for stored in stream[:up_to_version]:
        try:
            current = registry.upcast(stored)
            change = projection.plan(view, current, registry.parse_event(current))
        except (UnknownEvent, ProjectionError) as exc:
            return changes, str(exc)
        changes.append((current, change))
        view = change.view
    return changes, None


class _Known(StrEnum):
    """What `_before` can tell without a view to continue from."""

    DUPLICATE = "duplicate"


class _Gap:
    """The event cannot apply yet; the lowest generation holds `lowest_version`."""

    def __init__(self, lowest_version: int) -> None:
        self.lowest_version = lowest_version


class LiveApplier:
    """Applies delivered events to every generation of one projection being written."""

    def __init__(
        self,
        writer: ViewWriter,
        registry: Registry,
        store: EventStore,
        on_empty: Callable[[], Awaitable[None]],
        cache_size: int = 100_000,
        losses: LossDetector | None = None,
    ) -> None:
        self._writer = writer
        self._projection = writer.projection
        self._registry = registry
        self._store = store
        self._on_empty = on_empty
        self._losses = losses
        """Judges every reply, to notice that Redis lost writes."""
        self._generations: Generations | None = None
        self.cache = ViewCache(writer.projection, cache_size)
        self._projected = metrics.EVENTS_PROJECTED.labels(writer.projection.name)

    async def _current(self) -> Generations:
        if self._generations is None:
            self._generations = await self._writer.generations()
        return self._generations

    def forget_generations(self) -> None:
        self._generations = None

    async def _written(self) -> Generations | None:
        """The generations being written; None when Redis had none, once they are back (the
        caller starts its round again)."""
        generations = await self._current()
        if not generations.empty:
            return generations
        await self._on_empty()
        self.forget_generations()
        return None

    async def apply(self, event: RecordedEvent, payload: Any) -> Applied:
        """Apply `event`; raises `ProjectionError` for an event that can never apply."""
        for _round in range(MAX_ROUNDS):
            generations = await self._written()
            if generations is None:
                continue
            before = await self._before(event, generations)
            if before is _Known.DUPLICATE:
                return Applied.DUPLICATE
            if isinstance(before, _Gap):
                await self._catch_up(event, before.lowest_version)
                return Applied.CAUGHT_UP
            change = self._projection.plan(before, event, payload)
            result = await self._write(event, change, generations)
            if result.empty or result.stale:
                self.forget_generations()
                continue
            if result.applied:
                self._projected.inc()
            if result.gap:
                await self._catch_up(event, result.lowest_version)
                return Applied.CAUGHT_UP
            self.cache.put(event.stream_id, change.view)
            return Applied.APPLIED if result.applied else Applied.DUPLICATE
        raise RetryLater("the view generations kept changing")

    async def _before(
        self, event: RecordedEvent, generations: Generations
    ) -> Any | _Known | _Gap | None:
        """The view at `event.version - 1`, or whether the event is known or cannot apply yet."""
        if event.version == 1:
            return None
        cached = self.cache.at(event.stream_id, event.version - 1)
        if cached is not None:
            return cached
        views = await self._writer.read_views(event.stream_id, generations.targets)
        version_of = self._projection.version_of
        versions = [version_of(view) if view is not None else 0 for view in views.values()]
        if all(version >= event.version for version in versions):
            return _Known.DUPLICATE
        for view, version in zip(views.values(), versions, strict=True):
            if view is not None and version == event.version - 1:
                return view
        return _Gap(min(versions))

    async def _write(
        self, event: RecordedEvent, change: ViewChange, generations: Generations
    ) -> ApplyResult:
        if not tracing.enabled():
            return await self._write_views(event, change, generations)
        with tracing.redis_write(self._projection.name, event.stream_id) as span:
            result = await self._write_views(event, change, generations)
            span.set_attribute("cqrs.applied", result.applied)
            return result

    async def _write_views(
        self, event: RecordedEvent, change: ViewChange, generations: Generations
    ) -> ApplyResult:
        if self._losses is None:
            return await self._writer.apply_live(event, change, generations)
        mark = self._losses.mark()
        result = await self._writer.apply_live(event, change, generations)
        self._losses.after_apply(mark, result)
        return result

    async def catch_up_stream(self, stream_id: str, version: int) -> int:
        """Bring the stream up to its last stored event in every generation being written,
        if any of them is below `version`; the events applied. Events that cannot apply are
        logged and left out (their live delivery dead-letters them)."""
        version_of = self._projection.version_of
        for _round in range(MAX_ROUNDS):
            generations = await self._written()
            if generations is None:
                continue
            views = await self._writer.read_views(stream_id, generations.targets)
            lowest = min(version_of(v) if v is not None else 0 for v in views.values())
            if lowest >= version:
                return 0
            changes, failure = await plan_stream(
                self._projection, self._registry, self._store, stream_id
            )
            if failure is not None:
                log.error(
                    "cannot catch up %s past version %d: %s",
                    stream_id,
                    len(changes),
                    failure,
                    extra={"stream_id": stream_id, "projection": self._projection.name},
                )
            if len(changes) <= lowest:
                return 0
            applied = await self._apply_all(changes, lowest)
            self.cache.put(stream_id, changes[-1][1].view)
            return applied
        raise RetryLater("the view generations kept changing")

    async def _catch_up(self, event: RecordedEvent, lowest_version: int) -> None:
        """Apply the stream from the event store up to and including `event`; every
        generation written to is known to hold at least `lowest_version` events."""
        changes, failure = await plan_stream(
            self._projection, self._registry, self._store, event.stream_id, event.version
        )
        if len(changes) < event.version or changes[-1][0].event_id != event.event_id:
            raise ProjectionError(
                failure
                or f"event {event.event_id} ({event.stream_id}@{event.version}) "
                "is not in the event store"
            )
        view = changes[-1][1].view
        log.info(
            "catching up %s to version %d from the event store",
            event.stream_id,
            event.version,
            extra={"stream_id": event.stream_id, "projection": self._projection.name},
        )
        await self._apply_all(changes, min(lowest_version, event.version - 1))
        self.cache.put(event.stream_id, view)

    async def _apply_all(self, changes: list[tuple[RecordedEvent, ViewChange]], start: int) -> int:
        """Apply `changes[start:]` in order, starting over where a generation changed or fell
        behind meanwhile; the events applied."""
        applied = 0
        for _round in range(MAX_ROUNDS):
            restart, count = await self._apply_from(changes, start)
            applied += count
            if restart is None:
                return applied
            start = restart
        raise RetryLater(f"could not catch up {changes[-1][0].stream_id}")

    async def _apply_from(
        self, changes: list[tuple[RecordedEvent, ViewChange]], start: int
    ) -> tuple[int | None, int]:
        """Apply `changes[start:]` in order: the index to restart from if a generation changed
        or fell behind meanwhile (else None), and the events applied."""
        applied = 0
        for index in range(start, len(changes)):
            stored, change = changes[index]
            generations = await self._written()
            if generations is None:
                return 0, applied
            result = await self._write(stored, change, generations)
            if result.empty or result.stale:
                self.forget_generations()
                return 0, applied
            if result.gap:
                return result.lowest_version, applied
            if result.applied:
                self._projected.inc()
                applied += 1
        return None, applied
