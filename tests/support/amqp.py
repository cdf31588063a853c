"""Reading what the system published, the way an operator's tap queue would."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import orjson
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage, AbstractQueue

from common.messaging.messages import EVENT_BATCH, command_message
from common.messaging.nodes import connect_any
from common.messaging.topology import Topology, declare_topology
from common.settings import Settings
from orders.contracts import Command
from tests.support.domains import registry_of, topology_of


@asynccontextmanager
async def channel(
    amqp_url: str, retry_base_delay_ms: int = 50, topology: Topology | None = None
) -> AsyncIterator[AbstractChannel]:
    """A channel on a connection with the topology declared (by default, the one of the
    environment's settings: every projection of the loaded domains)."""
    connection = await connect_any(amqp_url)
    try:
        ch = await connection.channel()
        await declare_topology(ch, topology or topology_of(), retry_base_delay_ms)
        yield ch
    finally:
        await connection.close()


async def tap_events(ch: AbstractChannel, topology: Topology | None = None) -> AbstractQueue:
    """An exclusive queue bound to the events exchange: sees every event published from now
    on."""
    queue = await ch.declare_queue("", exclusive=True)
    await queue.bind((topology or topology_of()).events_exchange)
    return queue


Item = TypeVar("Item")


async def _gather(
    queue: AbstractQueue,
    count: int,
    timeout: float,
    items_of: Callable[[AbstractIncomingMessage], list[Item]],
    what: str,
) -> list[Item]:
    """Exactly `count` items of the messages taken (acked) from `queue`, or fail after
    `timeout` with what arrived."""
    items: list[Item] = []
    deadline = time.monotonic() + timeout
    while len(items) < count:
        message = await queue.get(fail=False, no_ack=True)
        if message is not None:
            items += items_of(message)
            continue
        if time.monotonic() > deadline:
            raise AssertionError(f"expected {count} {what}, got {len(items)}")
        await asyncio.sleep(0.02)
    assert len(items) == count, f"expected {count} {what}, got {len(items)}"
    return items


async def take(
    queue: AbstractQueue, count: int, timeout: float = 20
) -> list[AbstractIncomingMessage]:
    """Exactly `count` messages (acked), or fail after `timeout` with what arrived."""
    return await _gather(queue, count, timeout, lambda message: [message], "messages")


def events_in(message: AbstractIncomingMessage) -> list[dict[str, Any]]:
    """The events a relay message holds, as JSON: one, or a batch's (`event-batch`)."""
    body = orjson.loads(message.body)
    return body if message.type == EVENT_BATCH else [body]


async def take_events(
    queue: AbstractQueue, count: int, timeout: float = 20
) -> list[dict[str, Any]]:
    """Exactly `count` events from relay messages (batches unpacked), or fail after
    `timeout` with what arrived."""
    return await _gather(queue, count, timeout, events_in, "events")


async def depth(ch: AbstractChannel, name: str) -> int:
    queue = await ch.declare_queue(name, passive=True)
    return int(queue.declaration_result.message_count or 0)


async def queue_counts(settings: Settings, *queues: str) -> list[int]:
    """The messages waiting in each of `queues` (that no consumer holds)."""
    async with channel(settings.amqp_url) as ch:
        return [await depth(ch, name) for name in queues]


async def publish_commands(settings: Settings, commands: list[Command]) -> None:
    """Publish `commands` to the commands queue as the gateway would (no confirm waited for
    beyond the channel's)."""
    registry = registry_of(settings)
    topology = topology_of(settings)
    async with channel(settings.amqp_url) as ch:
        exchange = await ch.get_exchange(topology.commands_exchange)
        for command in commands:
            stream = registry.aggregate_of_command[command.type].stream_of(command)
            await exchange.publish(
                command_message(command, stream), routing_key=topology.commands_queue
            )


async def eventually(condition, timeout: float = 20, what: str = "condition", every: float = 0.02):  # type: ignore[no-untyped-def]
    """Await `condition()` (sync or async) until truthy, or fail after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(every)
