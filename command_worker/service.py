"""Wiring of one command-worker process: event store, Redis, RabbitMQ consumer, relay, health."""

from __future__ import annotations

import asyncio
import contextlib
import logging

import aio_pika
from redis.asyncio import Redis

from command_worker.handler import CommandHandler
from command_worker.relay import Relay
from common.dependencies import Dependencies
from common.domain import Registry
from common.eventstore.database import create_pool, prepare_database
from common.eventstore.store import EventStore
from common.messaging.connection import BrokerUnavailable, SupervisedConnection
from common.messaging.consuming import QueueConsumer
from common.messaging.depths import QueueDepths
from common.messaging.publishing import ConfirmedPublisher
from common.messaging.topology import Topology, declare_topology, dlq_name
from common.observability import metrics
from common.observability.server import HealthServer
from common.process import install_stop_signals, settle_heap
from common.readmodel.connection import connect_redis
from common.readmodel.keys import Keys
from common.settings import Settings

log = logging.getLogger(__name__)


def open_redis(settings: Settings) -> Redis:
    """The command worker's Redis client: every call bounded by `REDIS_TIMEOUT_S`."""
    return connect_redis(
        settings.redis_url,
        socket_connect_timeout=min(5.0, settings.redis_timeout_s),
        socket_timeout=settings.redis_timeout_s,
    )


class CommandWorker:
    """One process: consumes the commands queue and runs a (leader-elected) relay."""

    def __init__(self, settings: Settings, registry: Registry) -> None:
        self.settings = settings
        self.registry = registry
        self.topology = Topology(settings.app_prefix, tuple(registry.projections))
        self._consumer: QueueConsumer | None = None
        self._relay_publisher: ConfirmedPublisher | None = None
        self._connection = SupervisedConnection(
            settings.amqp_url, name="command_worker", on_connected=self._on_connected
        )

    async def _on_connected(self, connection: aio_pika.abc.AbstractConnection) -> None:
        channel = await connection.channel()
        await declare_topology(channel, self.topology, self.settings.retry_base_delay_ms)
        await channel.close()
        self._relay_publisher = await ConfirmedPublisher.open(
            connection, self.settings.relay_publish_timeout_s
        )
        consumer = QueueConsumer(
            self.topology.commands_queue,
            self._handler,
            topology=self.topology,
            prefetch=self.settings.command_prefetch,
            max_attempts=self.settings.max_delivery_attempts,
            retry_base_delay_ms=self.settings.retry_base_delay_ms,
            dependencies=self._dependencies,
        )
        await consumer.start(connection, self.settings.publish_timeout_s)
        self._consumer = consumer

    def _publisher(self) -> ConfirmedPublisher:
        publisher = self._relay_publisher
        if publisher is None or not publisher.is_open:
            raise BrokerUnavailable("relay has no open channel")
        return publisher

    async def _ready(self) -> dict[str, bool]:
        return {"rabbitmq": self._connection.ready.is_set(), **await self._dependencies.answering()}

    async def run(self) -> int:
        settings = self.settings
        metrics.register(metrics.COMMAND_WORKER)
        metrics.init_command_series(self.registry.command_types)
        stop = asyncio.Event()
        install_stop_signals(stop)
        await prepare_database(settings.database_url)
        self._pool = await create_pool(
            settings.database_url, settings.db_pool_size, settings.db_statement_timeout_s
        )
        self._redis = open_redis(settings)
        self._dependencies = Dependencies(
            {"postgres": lambda: self._pool.fetchval("SELECT 1"), "redis": self._redis.ping}
        )
        self._handler = CommandHandler(
            self.registry,
            EventStore(self._pool),
            self._redis,
            Keys(settings.redis_key_prefix),
            settings.conflict_retries,
            status_ttl_s=settings.command_status_ttl_s,
        )
        health = None
        if settings.metrics_port is not None:
            health = HealthServer(settings.metrics_port, self._ready, settings.metrics_host)
            await health.start()
        relay = Relay(
            settings.database_url,
            self._publisher,
            exchange=self.topology.events_exchange,
            upcast=self.registry.upcast,
            batch_size=settings.relay_batch_size,
            statement_timeout_s=settings.db_statement_timeout_s,
        )
        await self._connection.start()
        relay.start()
        commands = self.topology.commands_queue
        depths = asyncio.create_task(
            QueueDepths(self._connection, [commands, dlq_name(commands)]).run(),
            name="queue-depths",
        )
        settle_heap()
        log.info("command worker started")
        await stop.wait()
        log.info("command worker stopping")
        if self._consumer is not None:
            await self._consumer.stop(settings.shutdown_timeout_s)
        await relay.stop()
        depths.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await depths
        await self._dependencies.close()
        await self._connection.close()
        if health is not None:
            await health.close()
        await self._redis.aclose()
        await self._pool.close()
        log.info("command worker stopped")
        return 0
