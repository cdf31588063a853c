"""The projector process: runs one or more named projections, each consuming its own queue and
keeping its own views, checkpoint, generation and lag."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime
from typing import Any

import aio_pika
import asyncpg
from aio_pika.abc import AbstractIncomingMessage
from pydantic import TypeAdapter, ValidationError
from redis.asyncio import Redis

from common.contracts.envelopes import RecordedEvent
from common.dependencies import Dependencies
from common.domain import Registry, UnknownEvent
from common.eventstore.database import create_pool, prepare_database
from common.eventstore.store import EventStore
from common.messaging.connection import SupervisedConnection
from common.messaging.consuming import QueueConsumer
from common.messaging.depths import QueueDepths
from common.messaging.messages import EVENT_BATCH, event_message
from common.messaging.outcomes import RejectMessage
from common.messaging.topology import Topology, declare_topology, dlq_name
from common.observability import metrics, tracing
from common.observability.logging import correlation_id
from common.observability.server import HealthServer
from common.observability.tracing import TRACEPARENTS
from common.process import settle_heap
from common.readmodel.commands import STATUS_TTL_S
from common.readmodel.keys import Keys
from common.readmodel.projection import Projection, ProjectionError
from common.settings import Settings
from projector_worker.budget import EventBudget
from projector_worker.catchup import Applied, LiveApplier
from projector_worker.losses import LossDetector, Trigger
from projector_worker.rebuild import ensure_views
from projector_worker.recovery import Recovery
from projector_worker.redis_views import ViewWriter, open_redis
from projector_worker.statuses import sweep_expired_statuses

log = logging.getLogger(__name__)

LAG_EVERY_S = 2.0
VIEWS_CHECK_S = 1.0
"""How often a projector checks that Redis still holds the views and has lost none of their
writes: an emptied Redis, or one restored from an older snapshot, must get them back even when
no event comes along to notice it."""
VIEW_CACHE_SIZE = 20_000
"""Views kept per projection to continue from without reading Redis: enough for the streams
that are active, small enough that a full garbage collection stays short."""
_BATCH = TypeAdapter(list[RecordedEvent])
_APPLIED_MESSAGES = {
    Applied.APPLIED: "event applied to the views",
    Applied.DUPLICATE: "event already in the views",
    Applied.CAUGHT_UP: "event applied after catching up from the event store",
}


def writer_for(
    redis: Redis,
    keys: Keys,
    registry: Registry,
    projection: Projection[object],
    *,
    status_ttl_s: int = STATUS_TTL_S,
) -> ViewWriter:
    """The writer of `projection`, recording command statuses (kept `status_ttl_s`) for the
    aggregates visible in it."""
    visible_for = [
        stream_type
        for stream_type, aggregate in registry.aggregates.items()
        if aggregate.visible_in == projection.name
    ]
    return ViewWriter(redis, keys, projection, visible_for, status_ttl_s=status_ttl_s)


class KeyedLocks:
    """One asyncio lock per key, dropped when nobody holds or waits for it."""

    def __init__(self) -> None:
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}

    @contextlib.asynccontextmanager
    async def hold(self, key: str) -> AsyncIterator[None]:
        lock, users = self._locks.get(key, (asyncio.Lock(), 0))
        self._locks[key] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[key]
            if users == 1:
                del self._locks[key]
            else:
                self._locks[key] = (lock, users - 1)

    def __len__(self) -> int:
        return len(self._locks)


class ProjectionRunner:
    """One projection inside a projector process: its views first (rebuilt if Redis has none),
    then its queue's events."""

    def __init__(
        self,
        projector: Projector,
        projection: Projection[object],
    ) -> None:
        self.projector = projector
        self.projection = projection
        self.name = projection.name
        self.writer = writer_for(
            projector.redis,
            projector.keys,
            projector.registry,
            projection,
            status_ttl_s=projector.settings.command_status_ttl_s,
        )
        self.locks = KeyedLocks()
        self.budget = EventBudget(projector.settings.projector_events_in_flight)
        self.views_ready = asyncio.Event()
        self.consumer: QueueConsumer | None = None
        self._applier: LiveApplier | None = None
        self.losses = LossDetector(self.name)
        self.recovery: Recovery | None = None
        self._ensuring: asyncio.Task[None] | None = None
        self._ignored = metrics.EVENTS_IGNORED.labels(self.name)
        self._ignored_up_to = 0
        """The highest position of an event acked without a change; the checkpoints follow it
        (at the lag's pace), so a projection that follows few streams is not shown behind."""
        metrics.init_projection_series(self.name, recovery_triggers=tuple(Trigger))
        metrics.init_visible_series(
            command_type
            for command_type, aggregate in projector.registry.aggregate_of_command.items()
            if aggregate.stream_type in self.writer.visible_for
        )

    @property
    def queue(self) -> str:
        return self.projector.topology.projection_queue(self.name)

    def open(self, pool: asyncpg.Pool) -> None:
        store = EventStore(pool)
        self._applier = LiveApplier(
            self.writer,
            self.projector.registry,
            store,
            self.views_missing,
            cache_size=VIEW_CACHE_SIZE,
            losses=self.losses,
        )
        self.recovery = Recovery(
            self.writer,
            self._applier,
            store,
            self.locks.hold,
            self.losses,
            margin_s=self.projector.settings.recovery_margin_s,
        )

    async def start_consuming(self, connection: aio_pika.abc.AbstractConnection) -> None:
        settings = self.projector.settings
        consumer = QueueConsumer(
            self.queue,
            self.handle,
            topology=self.projector.topology,
            prefetch=settings.projector_prefetch,
            max_attempts=settings.max_delivery_attempts,
            retry_base_delay_ms=settings.retry_base_delay_ms,
            dependencies=self.projector.dependencies,
        )
        await consumer.start(connection, settings.publish_timeout_s)
        self.consumer = consumer

    async def handle(self, message: AbstractIncomingMessage) -> None:
        """Apply the event, or the batch of events, in `message`: poison goes to the dead-letter
        queue, anything else is retried. An event of a stream the projection does not follow is
        acked and counted."""
        if message.type == EVENT_BATCH:
            count = (message.headers or {}).get("count")
            async with self.budget.take(count if isinstance(count, int) else 1):
                await self._handle_batch(message)
            return
        async with self.budget.take(1):
            await self._handle_event(message)

    async def _handle_event(self, message: AbstractIncomingMessage) -> None:
        headers = message.headers or {}
        stream = headers.get("stream_id")
        if self._none_followed(
            [stream] if isinstance(stream, str) else None, headers.get("position")
        ):
            return
        try:
            event = RecordedEvent.model_validate_json(message.body)
        except ValidationError as exc:
            raise RejectMessage(f"not a recorded event: {exc}") from exc
        await self._apply(event)

    async def _handle_batch(self, message: AbstractIncomingMessage) -> None:
        """The events of a batch, each stream's in order and the streams side by side. A poison
        event is dead-lettered alone (a message of its own) and the others applied; any other
        failure retries the whole batch, whose events already applied are then duplicates."""
        headers = message.headers or {}
        streams = headers.get("stream_ids")
        if self._none_followed(
            streams if isinstance(streams, list) else None, headers.get("last_position")
        ):
            return
        try:
            events = _BATCH.validate_json(message.body)
        except ValidationError as exc:
            raise RejectMessage(f"not a batch of recorded events: {exc}") from exc
        parents = headers.get(TRACEPARENTS)
        if not (tracing.enabled() and isinstance(parents, list) and len(parents) == len(events)):
            parents = [None] * len(events)
        by_stream: dict[str, list[tuple[RecordedEvent, object]]] = {}
        for event, parent in zip(events, parents, strict=True):
            by_stream.setdefault(event.stream_id, []).append((event, parent))
        poison: list[tuple[RecordedEvent, str]] = []

        async def apply_stream(stream: list[tuple[RecordedEvent, object]]) -> None:
            for event, parent in stream:
                traced = isinstance(parent, str) and parent
                try:
                    with (
                        tracing.consuming(self.queue, {tracing.TRACEPARENT: parent})
                        if traced
                        else contextlib.nullcontext()
                    ):
                        await self._apply(event)
                except RejectMessage as exc:
                    poison.append((event, exc.reason))

        async with asyncio.TaskGroup() as group:
            for stream in by_stream.values():
                group.create_task(apply_stream(stream))
        assert self.consumer is not None
        for event, reason in poison:
            await self.consumer.dead_letter_part(message, event_message(event), reason)

    def _none_followed(self, streams: list[Any] | None, position: object) -> bool:
        """Whether a message's headers name its streams and none is one this projection
        follows: then it is acked unread, counted as ignored up to `position`."""
        if streams is None or any(
            isinstance(stream, str) and self.projection.follows(stream) for stream in streams
        ):
            return False
        self._ignore(position if isinstance(position, int) else 0)
        return True

    async def _apply(self, event: RecordedEvent) -> None:
        """Apply one event (upcast first) under its stream's lock; `RejectMessage` if it can
        never apply."""
        if not self.projection.follows(event.stream_id):
            self._ignore(event.position)
            return
        try:
            event = self.projector.registry.upcast(event)
        except UnknownEvent as exc:
            raise RejectMessage(str(exc)) from exc
        token = correlation_id.set(str(event.metadata.correlation_id))
        try:
            payload = self.projector.registry.parse_event(event)
            assert self._applier is not None
            async with self.locks.hold(event.stream_id):
                applied = await self._applier.apply(event, payload)
            if applied is not Applied.DUPLICATE:
                self._observe_visible(event)
            log.info(
                _APPLIED_MESSAGES[applied],
                extra={
                    "projection": self.name,
                    "stream_id": event.stream_id,
                    "version": event.version,
                    "position": event.position,
                    "event_type": event.type,
                    "command_id": str(event.metadata.command_id),
                },
            )
        except (ProjectionError, UnknownEvent) as exc:
            raise RejectMessage(str(exc)) from exc
        finally:
            correlation_id.reset(token)

    def _observe_visible(self, event: RecordedEvent) -> None:
        """Accepted -> visible of the command behind `event`, if this projection is the one
        its clients wait for and the event says when the command was accepted."""
        metadata = event.metadata
        if metadata.command_issued_at is None or not self.writer.makes_visible(event.stream_id):
            return
        seconds = (datetime.now(UTC) - metadata.command_issued_at).total_seconds()
        # Clocks of the gateway's and this host may differ by a little.
        metrics.COMMAND_VISIBLE.labels(metadata.command_type or event.type).observe(
            max(seconds, 0.0)
        )

    def _ignore(self, position: int) -> None:
        self._ignored.inc()
        self._ignored_up_to = max(self._ignored_up_to, position)

    async def views_missing(self) -> None:
        """Make sure queries have views; one run at a time, shared by every waiting handler."""
        if self._ensuring is None or self._ensuring.done():
            self.views_ready.clear()
            self._ensuring = asyncio.create_task(self._ensure(), name=f"ensure-{self.name}")
        await asyncio.shield(self._ensuring)

    def cancel_ensuring(self) -> None:
        if self._ensuring is not None:
            self._ensuring.cancel()

    async def _ensure(self) -> None:
        assert self.projector.pool is not None
        assert self.recovery is not None
        await ensure_views(self.writer, self.projector.registry, self.projector.pool)
        self.views_ready.set()
        # Views that were there may have come back older while no projector ran.
        self.recovery.request(None, Trigger.START)

    async def watch_views(self) -> None:
        assert self.recovery is not None
        try:
            while True:
                await asyncio.sleep(VIEWS_CHECK_S)
                try:
                    if (await self.writer.generations()).empty:
                        log.warning(
                            "no views of %s in Redis (emptied or restarted): rebuilding", self.name
                        )
                        await self.views_missing()
                    else:
                        await self.recovery.watch()
                except Exception as exc:
                    log.debug("could not check the views of %s: %r", self.name, exc)
                    # An idle projector learns of an outage here first: its consumers pause
                    # now, not when the next event fails to apply.
                    if self.projector.dependencies is not None:
                        await self.projector.dependencies.outage()
        finally:
            self.recovery.cancel()

    async def track_lag(self) -> None:
        """Every LAG_EVERY_S, how far the live views are behind the event store. Sampled, not
        set per event, so the lag keeps growing when nothing is applied at all."""
        positions = metrics.PROJECTION_LAG_POSITIONS.labels(self.name)
        seconds = metrics.PROJECTION_LAG_SECONDS.labels(self.name)
        advanced = 0
        while True:
            try:
                if self._ignored_up_to > advanced:
                    passed = self._ignored_up_to
                    await self.writer.advance(passed)
                    advanced = passed
                live = (await self.writer.generations()).live
                pool = self.projector.pool
                if live is not None and pool is not None:
                    checkpoint = await self.writer.checkpoint(live)
                    backlog = await EventStore(pool).backlog_after(checkpoint)
                    positions.set(backlog.positions)
                    seconds.set(backlog.oldest_age_s)
            except Exception as exc:
                log.debug("could not measure the lag of %s: %r", self.name, exc)
            await asyncio.sleep(LAG_EVERY_S)


class Projector:
    """One projector process: the projections it runs, sharing one AMQP connection, one Redis
    client and one PostgreSQL pool."""

    def __init__(self, settings: Settings, registry: Registry, names: Sequence[str]) -> None:
        self.settings = settings
        self.registry = registry
        self.topology = Topology(settings.app_prefix, tuple(registry.projections))
        self.keys = Keys(settings.redis_key_prefix)
        self.redis = open_redis(settings)
        self.pool: asyncpg.Pool | None = None
        self.dependencies: Dependencies | None = None
        """Probes of PostgreSQL and Redis; the consumers pause while one does not answer."""
        self.runners = [ProjectionRunner(self, registry.projections[name]) for name in names]
        self.connection = SupervisedConnection(
            settings.amqp_url, name="projector", on_connected=self._on_connected
        )
        self._declared = asyncio.Event()
        """Set once a session declared the queues."""
        self._may_consume = asyncio.Event()
        """Set once every projection has views: sessions then start the consumers."""

    async def run(self, stop: asyncio.Event) -> None:
        settings = self.settings
        metrics.register(metrics.PROJECTOR)
        health = None
        if settings.metrics_port is not None:
            health = HealthServer(settings.metrics_port, self.readiness, settings.metrics_host)
            await health.start()
        await prepare_database(settings.database_url)
        self.pool = await create_pool(
            settings.database_url, settings.db_pool_size, settings.db_statement_timeout_s
        )
        pool = self.pool
        self.dependencies = Dependencies(
            {"postgres": lambda: pool.fetchval("SELECT 1"), "redis": self.redis.ping}
        )
        for runner in self.runners:
            runner.open(self.pool)
        background = [
            asyncio.create_task(task, name=f"{name}-{runner.name}")
            for runner in self.runners
            for name, task in (("lag", runner.track_lag()), ("watch", runner.watch_views()))
        ]
        queues = [runner.queue for runner in self.runners]
        depths = QueueDepths(self.connection, [*queues, *map(dlq_name, queues)])
        background.append(asyncio.create_task(depths.run(), name="queue-depths"))
        sweep = sweep_expired_statuses(self.redis, self.keys, settings.command_status_ttl_s)
        background.append(asyncio.create_task(sweep, name="status-sweep"))
        try:
            # Connected first: a session declares every queue before any rebuild reads the log,
            # so a projection new to the deployment holds every event its first rebuild does
            # not replay. Its consumers start once every projection has views.
            await self.connection.start()
            if await self._views_before_consuming(stop):
                self._may_consume.set()
                settle_heap()
                await stop.wait()
                log.info("stopping: draining in-flight events")
                for runner in self.runners:
                    if runner.consumer is not None:
                        await runner.consumer.stop(settings.shutdown_timeout_s)
        finally:
            for task in background:
                task.cancel()
            await self.dependencies.close()
            await self.connection.close()
            if health is not None:
                await health.close()
            await self.pool.close()
            for runner in self.runners:
                await runner.writer.close()
            await self.redis.aclose()
        log.info("stopped")

    async def _views_before_consuming(self, stop: asyncio.Event) -> bool:
        """Views first: once a session declared the queues, rebuild (or wait for another
        projector's rebuild) each projection whose views Redis lacks, retrying while Redis or
        PostgreSQL are unreachable. False when stopped meanwhile."""
        backoff = 0.2
        while not stop.is_set():
            ensuring: asyncio.Future[list[None]] = asyncio.ensure_future(
                self._declared_then_views()
            )
            stopping: asyncio.Future[Any] = asyncio.ensure_future(stop.wait())
            await asyncio.wait({ensuring, stopping}, return_when=asyncio.FIRST_COMPLETED)
            stopping.cancel()
            if not ensuring.done():
                for runner in self.runners:
                    runner.cancel_ensuring()
                ensuring.cancel()
                with contextlib.suppress(BaseException):
                    await ensuring
                return False
            if ensuring.exception() is None:
                return True
            log.warning("views not ready, retrying: %r", ensuring.exception())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), backoff)
            backoff = min(backoff * 2, 5.0)
        return False

    async def _declared_then_views(self) -> list[None]:
        await self._declared.wait()
        return await asyncio.gather(*(runner.views_missing() for runner in self.runners))

    async def readiness(self) -> dict[str, bool]:
        try:
            redis_ok = bool(await self.redis.ping())
        except Exception:
            redis_ok = False
        return {
            "rabbitmq": self.connection.ready.is_set()
            and all(r.consumer is not None for r in self.runners),
            "redis": redis_ok,
            "views": all(r.views_ready.is_set() for r in self.runners),
        }

    async def _on_connected(self, connection: aio_pika.abc.AbstractConnection) -> None:
        channel = await connection.channel()
        try:
            await declare_topology(channel, self.topology, self.settings.retry_base_delay_ms)
        finally:
            await channel.close()
        self._declared.set()
        await self._may_consume.wait()
        for runner in self.runners:
            await runner.start_consuming(connection)
