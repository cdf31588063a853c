"""The consumer runtime on a real broker: delayed retries, dead letters, replay, reconnects."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from urllib.parse import quote

import aio_pika
import pytest
from aio_pika.abc import AbstractIncomingMessage

from common.messaging.connection import SupervisedConnection
from common.messaging.consuming import QueueConsumer, attempt_of
from common.messaging.dead_letters import list_dead_letters, replay_dead_letters
from common.messaging.outcomes import RetryLater
from common.messaging.topology import declare_topology, dlq_name
from common.settings import Settings
from harness.isolation import Endpoints
from tests.support.amqp import channel, depth, eventually
from tests.support.domains import topology_of

pytestmark = pytest.mark.integration

Handler = Callable[[AbstractIncomingMessage], Awaitable[None]]


class Consuming(SupervisedConnection):
    """A supervised connection that remembers the consumer of each of its sessions."""

    consumers: list[QueueConsumer]


@asynccontextmanager
async def consuming(settings: Settings, handler: Handler) -> AsyncIterator[Consuming]:
    consumers: list[QueueConsumer] = []
    topology = topology_of(settings)

    async def on_connected(connection: aio_pika.abc.AbstractConnection) -> None:
        ch = await connection.channel()
        await declare_topology(ch, topology, settings.retry_base_delay_ms)
        await ch.close()
        consumer = QueueConsumer(
            topology.commands_queue,
            handler,
            topology=topology,
            prefetch=10,
            max_attempts=3,
            retry_base_delay_ms=settings.retry_base_delay_ms,
        )
        await consumer.start(connection, 5.0)
        consumers.append(consumer)

    connection = Consuming(
        settings.amqp_url, name=f"test-{uuid.uuid4().hex[:6]}", on_connected=on_connected
    )
    connection.consumers = consumers
    await connection.start(wait_s=10)
    try:
        yield connection
    finally:
        if consumers:
            await consumers[-1].stop(5)
        await connection.close()


async def publish(settings: Settings, body: bytes) -> str:
    message_id = str(uuid.uuid4())
    topology = topology_of(settings)
    async with channel(settings.amqp_url) as ch:
        exchange = await ch.get_exchange(topology.commands_exchange)
        await exchange.publish(
            aio_pika.Message(body, message_id=message_id, type="Test"),
            routing_key=topology.commands_queue,
        )
    return message_id


async def test_transient_failures_are_retried_through_delay_queues(
    isolated_settings: Settings,
) -> None:
    attempts: list[int] = []
    done = asyncio.Event()

    async def flaky(message: AbstractIncomingMessage) -> None:
        attempts.append(attempt_of(message))
        if len(attempts) < 3:
            raise ConnectionError("database unreachable")
        done.set()

    async with consuming(isolated_settings, flaky):
        await publish(isolated_settings, b"{}")
        await asyncio.wait_for(done.wait(), 20)
    assert attempts == [1, 2, 3]


async def test_exhausted_retries_end_in_the_dead_letter_queue_and_replay(
    isolated_settings: Settings,
) -> None:
    seen: list[str | None] = []
    healthy = asyncio.Event()
    topology = topology_of(isolated_settings)
    queue = topology.commands_queue

    async def failing(message: AbstractIncomingMessage) -> None:
        seen.append(message.message_id)
        if not healthy.is_set():
            raise RetryLater("redis timed out")

    async with consuming(isolated_settings, failing):
        message_id = await publish(isolated_settings, b'{"n": 1}')
        async with channel(isolated_settings.amqp_url) as ch:

            async def dead_lettered() -> bool:
                return await depth(ch, dlq_name(queue)) == 1

            await eventually(dead_lettered, what="message in the DLQ")
        assert seen == [message_id] * 3

        [letter] = await list_dead_letters(isolated_settings, topology, queue, 10)
        assert letter.message_id == message_id
        assert letter.kind == "exhausted"
        assert "redis timed out (after 3 attempts)" in letter.reason

        healthy.set()
        assert await replay_dead_letters(isolated_settings, topology, queue, 10) == 1
        await eventually(lambda: len(seen) == 4, what="replayed message handled")
        async with channel(isolated_settings.amqp_url) as ch:
            assert await depth(ch, dlq_name(queue)) == 0


async def close_connections_from_the_console(
    settings: Settings, services: Endpoints, _connection: Consuming
) -> None:
    """What an operator does with "Force close" in the management console."""
    vhost = settings.amqp_url.rsplit("/", 1)[1]

    def connections() -> list[dict[str, object]]:
        return [c for c in services.management("GET", "/connections") if c["vhost"] == vhost]

    await eventually(connections, what="connection listed by the management API")
    for conn in connections():
        services.management("DELETE", f"/connections/{quote(str(conn['name']), safe='')}")


async def fail_the_consuming_channel(
    _settings: Settings, _services: Endpoints, connection: Consuming
) -> None:
    """A channel error closes only the consuming channel; the connection lives on. (An ack of
    a tag never delivered is one: the broker answers 406 and closes the channel.)"""
    consuming_channel = connection.consumers[-1]._channel
    assert consuming_channel is not None
    underlying = await consuming_channel.get_underlay_channel()
    await underlying.basic_ack(delivery_tag=10_000)


@pytest.mark.parametrize(
    "break_session", [close_connections_from_the_console, fail_the_consuming_channel]
)
async def test_consumers_come_back_after_the_broker_drops_them(
    isolated_settings: Settings,
    services: Endpoints,
    break_session: Callable[[Settings, Endpoints, Consuming], Awaitable[None]],
) -> None:
    handled: list[bytes] = []

    async def record(message: AbstractIncomingMessage) -> None:
        handled.append(message.body)

    async with consuming(isolated_settings, record) as connection:
        await publish(isolated_settings, b"before")
        await eventually(lambda: handled == [b"before"], what="first message")
        sessions = connection.sessions
        await break_session(isolated_settings, services, connection)
        await eventually(lambda: connection.sessions > sessions, what="a new session")
        await publish(isolated_settings, b"after")
        await eventually(lambda: handled == [b"before", b"after"], what="message after it")
        async with channel(isolated_settings.amqp_url) as ch:
            queue = await ch.declare_queue(
                topology_of(isolated_settings).commands_queue, passive=True
            )
            assert queue.declaration_result.consumer_count == 1


async def test_unhandled_message_is_not_lost_when_the_consumer_dies(
    isolated_settings: Settings,
) -> None:
    """A message in flight when the connection drops is redelivered, not dropped."""
    started = asyncio.Event()
    release = asyncio.Event()
    bodies: list[bytes] = []

    async def slow(message: AbstractIncomingMessage) -> None:
        bodies.append(message.body)
        started.set()
        await release.wait()

    async with consuming(isolated_settings, slow) as connection:
        await publish(isolated_settings, b"in flight")
        await asyncio.wait_for(started.wait(), 10)
        await connection.connection.close()
        release.set()
        await eventually(lambda: len(bodies) == 2, what="redelivery")
    assert bodies == [b"in flight", b"in flight"]
    async with channel(isolated_settings.amqp_url) as ch:
        assert await depth(ch, topology_of(isolated_settings).commands_queue) == 0
