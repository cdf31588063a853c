"""Every exchange and queue of the system, declared idempotently by whichever process starts.

Names all start with the application prefix (`APP_PREFIX`, default `orders`), so they group
together in the management console:

- `<app>.commands` (direct exchange) -> `<app>.commands` (quorum queue), read by command workers.
- `<app>.events` (fanout exchange) -> `<app>.projection.<name>` (quorum queue), one per
  projection, read by the projectors running it.
- `<app>.dead-letter` (direct exchange) -> `<queue>.dlq` for each work queue.
- `<app>.retry` (direct exchange) -> `<queue>.retry.<delay>ms` delay queues whose TTL dead-letters
  the message back to its work queue, giving exponential backoff without a hot requeue loop.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractExchange


@dataclass(frozen=True, slots=True)
class Topology:
    """The names of one deployment's exchanges and queues."""

    prefix: str = "orders"
    projections: Sequence[str] = ()
    """The names of the projections, each with its own queue."""

    @property
    def commands_exchange(self) -> str:
        return f"{self.prefix}.commands"

    @property
    def commands_queue(self) -> str:
        return f"{self.prefix}.commands"

    @property
    def events_exchange(self) -> str:
        return f"{self.prefix}.events"

    @property
    def dead_letter_exchange(self) -> str:
        return f"{self.prefix}.dead-letter"

    @property
    def retry_exchange(self) -> str:
        return f"{self.prefix}.retry"

    def projection_queue(self, name: str) -> str:
        return f"{self.prefix}.projection.{name}"

    @property
    def work_queues(self) -> tuple[str, ...]:
        return (self.commands_queue, *(self.projection_queue(p) for p in self.projections))


RETRY_TIERS = 6
"""Delay queues per work queue: base delay x 1, 2, 4, ... 32."""

DELIVERY_LIMIT = 20
"""Broker-side cap on redeliveries of one message (a consumer crashing on it, say)."""


def dlq_name(queue: str) -> str:
    return f"{queue}.dlq"


def retry_delays_ms(base_delay_ms: int) -> list[int]:
    """The delay of each retry tier: base, 2 x base, 4 x base, ..."""
    return [base_delay_ms * (2**tier) for tier in range(RETRY_TIERS)]


def retry_queue_name(queue: str, delay_ms: int) -> str:
    """Delay queues carry their TTL in the name, so two settings never clash on one queue."""
    return f"{queue}.retry.{delay_ms}ms"


def retry_delay_for(base_delay_ms: int, attempt: int) -> int:
    """Delay before retry number `attempt` (1-based): doubling, capped at the last tier."""
    return retry_delays_ms(base_delay_ms)[min(max(attempt, 1), RETRY_TIERS) - 1]


@dataclass(frozen=True, slots=True)
class Exchanges:
    commands: AbstractExchange
    events: AbstractExchange
    dead_letter: AbstractExchange
    retry: AbstractExchange


async def declare_topology(
    channel: AbstractChannel, topology: Topology, retry_base_delay_ms: int
) -> Exchanges:
    """Declare (or confirm) every exchange, queue and binding. Safe to run concurrently."""
    direct, fanout = aio_pika.ExchangeType.DIRECT, aio_pika.ExchangeType.FANOUT
    names = topology
    commands = await channel.declare_exchange(names.commands_exchange, direct, durable=True)
    events = await channel.declare_exchange(names.events_exchange, fanout, durable=True)
    dead_letter = await channel.declare_exchange(names.dead_letter_exchange, direct, durable=True)
    retry = await channel.declare_exchange(names.retry_exchange, direct, durable=True)

    sources = [(names.commands_queue, commands, names.commands_queue)]
    sources += [(names.projection_queue(p), events, "") for p in names.projections]
    for queue_name, source, routing_key in sources:
        dlq = await channel.declare_queue(
            dlq_name(queue_name), durable=True, arguments={"x-queue-type": "quorum"}
        )
        await dlq.bind(dead_letter, routing_key=dlq_name(queue_name))
        queue = await channel.declare_queue(
            queue_name,
            durable=True,
            arguments={
                "x-queue-type": "quorum",
                "x-dead-letter-exchange": names.dead_letter_exchange,
                "x-dead-letter-routing-key": dlq_name(queue_name),
                "x-delivery-limit": DELIVERY_LIMIT,
            },
        )
        await queue.bind(source, routing_key=routing_key)
        for delay_ms in retry_delays_ms(retry_base_delay_ms):
            name = retry_queue_name(queue_name, delay_ms)
            delay_queue = await channel.declare_queue(
                name,
                durable=True,
                arguments={
                    "x-message-ttl": delay_ms,
                    "x-dead-letter-exchange": "",
                    "x-dead-letter-routing-key": queue_name,
                },
            )
            await delay_queue.bind(retry, routing_key=name)
    return Exchanges(commands=commands, events=events, dead_letter=dead_letter, retry=retry)
