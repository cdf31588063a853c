"""Replaying stored events into one generation of a projection, a batch at a time.

Each stream's events in a batch that follow its known view without a gap go to Redis as one
APPLY call (`Projection.plan_run`); a stream whose view is behind, or that live projectors
entered midway, is caught up from the event store event by event. Every call is
version-checked, so racing the live projectors is harmless.
"""

from __future__ import annotations

import logging
from typing import Any

from redis.asyncio.client import Pipeline

from common.contracts.envelopes import RecordedEvent
from common.domain import Registry, UnknownEvent
from common.eventstore.store import EventStore
from common.readmodel.projection import ProjectionError
from projector_worker.catchup import ViewCache, plan_stream
from projector_worker.generations import RebuildAborted, RebuildSummary
from projector_worker.redis_views import ViewWriter

log = logging.getLogger(__name__)


class GenerationReplay:
    """Applies batches of stored events to the generation a rebuild fills, remembering the
    latest views it wrote."""

    def __init__(
        self, writer: ViewWriter, registry: Registry, store: EventStore, cache_size: int
    ) -> None:
        self._writer = writer
        self._projection = writer.projection
        self._registry = registry
        self._store = store
        self._redis = writer.redis
        self._keys = writer.keys
        self._views = ViewCache(writer.projection, cache_size)

    async def apply(
        self, events: list[RecordedEvent], summary: RebuildSummary, record: bool
    ) -> None:
        generation = summary.generation
        parsed: list[tuple[RecordedEvent, Any]] = []
        for event in events:
            if not self._projection.follows(event.stream_id):
                summary.ignored += 1
                continue
            try:
                current = self._registry.upcast(event)
                parsed.append((current, self._registry.parse_event(current)))
            except UnknownEvent as exc:
                summary.skipped += 1
                log.error("skipping event %s at %d: %s", event.event_id, event.position, exc)
        await self._load_views(parsed, generation)

        # Each stream's events here that follow its known view without a gap form its run.
        version_of = self._projection.version_of
        runs: dict[str, list[tuple[RecordedEvent, Any]]] = {}
        gaps: dict[str, int] = {}
        for event, payload in parsed:
            stream_id = event.stream_id
            if stream_id in gaps:
                gaps[stream_id] = event.version
                continue
            run = runs.get(stream_id)
            if run is not None:
                known = run[-1][0].version
            else:
                before = self._views.get(stream_id)
                known = version_of(before) if before is not None else 0
            if known >= event.version:
                continue
            if known != event.version - 1:
                gaps[stream_id] = event.version
                continue
            runs.setdefault(stream_id, []).append((event, payload))

        queued: list[tuple[RecordedEvent, int]] = []
        async with self._redis.pipeline(transaction=False) as pipe:
            for run in runs.values():
                queued += await self._queue_run(pipe, run, generation, record, summary, gaps)
            replies = await pipe.execute() if queued else []
        for (event, count), reply in zip(queued, replies, strict=True):
            result = self._writer.result_of(reply, generation)
            if result.empty or result.stale:
                raise RebuildAborted("the views were emptied or the rebuild was replaced")
            if result.gap:
                # Also a run that live projectors entered midway: the catch-up below applies
                # what is missing, event by event.
                gaps[event.stream_id] = max(gaps.get(event.stream_id, 0), event.version)
                self._views.forget(event.stream_id)
            elif result.applied:
                summary.applied += count
        for stream_id, version in gaps.items():
            summary.applied += await self._catch_up_stream(stream_id, version, generation, record)

    async def _queue_run(
        self,
        pipe: Pipeline,
        run: list[tuple[RecordedEvent, Any]],
        generation: int,
        record: bool,
        summary: RebuildSummary,
        gaps: dict[str, int],
    ) -> list[tuple[RecordedEvent, int]]:
        """Queue one stream's run: as one call (`plan_run`), or event by event when command
        statuses are restored (they are recorded per event) or an event cannot apply. An
        event that cannot apply is skipped, and the rest of the run is left to the catch-up."""
        stream_id = run[0][0].stream_id
        before = self._views.get(stream_id)
        last = run[-1][0]
        if not record and len(run) > 1:
            try:
                folded = self._projection.plan_run(before, run)
            except ProjectionError:
                pass  # planned again below, event by event, to skip just the bad one
            else:
                await self._writer.replay_into(
                    pipe, last, folded, generation, record_commands=False
                )
                self._views.put(stream_id, folded.view)
                return [(last, len(run))]
        queued: list[tuple[RecordedEvent, int]] = []
        for event, payload in run:
            try:
                change = self._projection.plan(before, event, payload)
            except ProjectionError as exc:
                summary.skipped += 1
                log.error("skipping event %s at %d: %s", event.event_id, event.position, exc)
                if event is not last:
                    gaps[stream_id] = max(gaps.get(stream_id, 0), last.version)
                break
            await self._writer.replay_into(pipe, event, change, generation, record_commands=record)
            queued.append((event, 1))
            before = change.view
            self._views.put(stream_id, before)
        return queued

    async def _load_views(self, parsed: list[tuple[RecordedEvent, Any]], generation: int) -> None:
        """Read from Redis the views of streams that continue in this batch and are not
        cached."""
        missing: dict[str, None] = {}
        for event, _payload in parsed:
            if event.version > 1 and self._views.get(event.stream_id) is None:
                missing.setdefault(event.stream_id, None)
        if not missing:
            return
        view_keys = self._keys.views(generation)
        async with self._redis.pipeline(transaction=False) as pipe:
            for stream_id in missing:
                pipe.hgetall(view_keys.key(self._projection.view_key(stream_id)))
            raws = await pipe.execute()
        for stream_id, raw in zip(missing, raws, strict=True):
            if raw:
                self._views.put(stream_id, self._projection.from_hash(raw))

    async def _catch_up_stream(
        self, stream_id: str, up_to_version: int, generation: int, record: bool
    ) -> int:
        """Apply a stream's events from the store, in version order, up to `up_to_version`."""
        changes, failure = await plan_stream(
            self._projection, self._registry, self._store, stream_id, up_to_version
        )
        if failure is not None:
            log.error("cannot replay %s past version %d: %s", stream_id, len(changes), failure)
        applied = 0
        async with self._redis.pipeline(transaction=False) as pipe:
            for event, change in changes:
                await self._writer.replay_into(
                    pipe, event, change, generation, record_commands=record
                )
            replies = await pipe.execute()
        for reply in replies:
            result = self._writer.result_of(reply, generation)
            if result.empty or result.stale:
                raise RebuildAborted("the views were emptied or the rebuild was replaced")
            applied += int(result.applied)
        if changes:
            self._views.put(stream_id, changes[-1][1].view)
        return applied
