"""The projector process: consumes `orders.projector` and keeps the order views in Redis."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

import aio_pika
import asyncpg
from aio_pika.abc import AbstractIncomingMessage
from pydantic import ValidationError

from common.contracts.envelopes import RecordedEvent
from common.eventstore.database import create_pool, prepare_database
from common.eventstore.store import EventStore
from common.messaging.connection import SupervisedConnection
from common.messaging.consuming import QueueConsumer
from common.messaging.outcomes import RejectMessage
from common.messaging.topology import PROJECTOR_QUEUE, declare_topology
from common.observability import metrics
from common.observability.logging import correlation_id
from common.observability.server import HealthServer
from common.process import settle_heap
from common.readmodel.keys import Keys
from common.settings import Settings
from projector_worker.catchup import LiveApplier, Outcome
from projector_worker.projection import ProjectionError, parse_payload
from projector_worker.rebuild import ensure_views
from projector_worker.redis_views import ViewWriter, open_redis

log = logging.getLogger(__name__)

LAG_EVERY_S = 2.0
VIEWS_CHECK_S = 1.0
"""How often a projector checks that Redis still holds the views: an emptied Redis must get
them back even when no event comes along to notice it."""
VIEW_CACHE_SIZE = 20_000
"""Views kept to continue from without reading Redis: enough for the orders that are active,
small enough that a full garbage collection stays short."""
_OUTCOME_MESSAGES = {
    Outcome.APPLIED: "event applied to the views",
    Outcome.DUPLICATE: "event already in the views",
    Outcome.CAUGHT_UP: "event applied after catching up from the event store",
}


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


class Projector:
    """One projector process: views first (rebuilt if Redis is empty), then live events."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.keys = Keys(settings.redis_key_prefix)
        self.redis = open_redis(settings)
        self.writer = ViewWriter(self.redis, self.keys)
        self.locks = KeyedLocks()
        self.views_ready = asyncio.Event()
        self.connection = SupervisedConnection(
            settings.amqp_url, name="projector", on_connected=self._on_connected
        )
        self._consumer: QueueConsumer | None = None
        self._applier: LiveApplier | None = None
        self._ensuring: asyncio.Task[None] | None = None
        self._pool: asyncpg.Pool | None = None

    async def run(self, stop: asyncio.Event) -> None:
        settings = self.settings
        metrics.register(metrics.PROJECTOR)
        health = None
        if settings.metrics_port is not None:
            health = HealthServer(settings.metrics_port, self.readiness)
            await health.start()
        await prepare_database(settings.database_url)
        pool = await create_pool(settings.database_url, settings.db_pool_size)
        self._pool = pool
        self._applier = LiveApplier(
            self.writer, EventStore(pool), self._views_missing, cache_size=VIEW_CACHE_SIZE
        )
        lag = asyncio.create_task(self._track_lag(), name="projection-lag")
        watch = asyncio.create_task(self._watch_views(), name="views-watch")
        try:
            if await self._views_before_consuming(stop):
                await self.connection.start()
                settle_heap()
                await stop.wait()
                log.info("stopping: draining in-flight events")
                if self._consumer is not None:
                    await self._consumer.stop(settings.shutdown_timeout_s)
        finally:
            lag.cancel()
            watch.cancel()
            await self.connection.close()
            if health is not None:
                await health.close()
            await pool.close()
            await self.writer.close()
            await self.redis.aclose()
        log.info("stopped")

    async def _views_before_consuming(self, stop: asyncio.Event) -> bool:
        """Views first: rebuild (or wait for another projector's rebuild) when Redis is empty,
        retrying while Redis or PostgreSQL are unreachable. False when stopped meanwhile."""
        backoff = 0.2
        while not stop.is_set():
            ensuring = asyncio.ensure_future(self._views_missing())
            stopping = asyncio.ensure_future(stop.wait())
            await asyncio.wait({ensuring, stopping}, return_when=asyncio.FIRST_COMPLETED)
            stopping.cancel()
            if not ensuring.done():
                if self._ensuring is not None:
                    self._ensuring.cancel()
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

    async def readiness(self) -> dict[str, bool]:
        try:
            redis_ok = bool(await self.redis.ping())
        except Exception:
            redis_ok = False
        return {
            "rabbitmq": self.connection.ready.is_set() and self._consumer is not None,
            "redis": redis_ok,
            "views": self.views_ready.is_set(),
        }

    async def _on_connected(self, connection: aio_pika.abc.AbstractConnection) -> None:
        channel = await connection.channel()
        try:
            await declare_topology(channel, self.settings.retry_base_delay_ms)
        finally:
            await channel.close()
        consumer = QueueConsumer(
            PROJECTOR_QUEUE,
            self.handle,
            prefetch=self.settings.projector_prefetch,
            max_attempts=self.settings.max_delivery_attempts,
            retry_base_delay_ms=self.settings.retry_base_delay_ms,
        )
        await consumer.start(connection, self.settings.publish_timeout_s)
        self._consumer = consumer

    async def handle(self, message: AbstractIncomingMessage) -> None:
        """Apply one event; poison goes to the dead-letter queue, anything else is retried."""
        try:
            event = RecordedEvent.model_validate_json(message.body)
        except ValidationError as exc:
            raise RejectMessage(f"not a recorded event: {exc}") from exc
        token = correlation_id.set(str(event.metadata.correlation_id))
        try:
            payload = parse_payload(event)
            assert self._applier is not None
            async with self.locks.hold(event.stream_id):
                outcome = await self._applier.apply(event, payload)
            log.info(
                _OUTCOME_MESSAGES[outcome],
                extra={
                    "order_id": event.stream_id,
                    "version": event.version,
                    "position": event.position,
                    "event_type": event.type,
                    "command_id": str(event.metadata.command_id),
                },
            )
        except ProjectionError as exc:
            raise RejectMessage(str(exc)) from exc
        finally:
            correlation_id.reset(token)

    async def _views_missing(self) -> None:
        """Make sure queries have views; one run at a time, shared by every waiting handler."""
        if self._ensuring is None or self._ensuring.done():
            self.views_ready.clear()
            self._ensuring = asyncio.create_task(self._ensure(), name="ensure-views")
        await asyncio.shield(self._ensuring)

    async def _ensure(self) -> None:
        assert self._pool is not None
        await ensure_views(self.writer, self._pool)
        self.views_ready.set()

    async def _watch_views(self) -> None:
        while True:
            await asyncio.sleep(VIEWS_CHECK_S)
            try:
                if (await self.writer.generations()).empty:
                    log.warning("no views in Redis (emptied or restarted): rebuilding them")
                    await self._views_missing()
            except Exception as exc:
                log.debug("could not check the views: %r", exc)

    async def _track_lag(self) -> None:
        """Every LAG_EVERY_S, how far the live views are behind the event store. Sampled, not
        set per event, so the lag keeps growing when nothing is applied at all."""
        while True:
            try:
                live = (await self.writer.generations()).live
                if live is not None and self._pool is not None:
                    checkpoint = await self.writer.checkpoint(live)
                    backlog = await EventStore(self._pool).backlog_after(checkpoint)
                    metrics.PROJECTION_LAG_POSITIONS.set(backlog.positions)
                    metrics.PROJECTION_LAG_SECONDS.set(backlog.oldest_age_s)
            except Exception as exc:
                log.debug("could not measure the projection lag: %r", exc)
            await asyncio.sleep(LAG_EVERY_S)
