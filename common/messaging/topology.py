"""Every exchange and queue of the system, declared idempotently by whichever process starts.

Names all start with the application prefix (`APP_PREFIX`, default `orders`), so they group
together in the management console:

- `<app>.commands` (direct exchange) -> `<app>.commands` (quorum queue), read by command workers.
- `<app>.events` (fanout exchange) -> `<app>.projection.<name>` (quorum queue), one per
  projection, read by the projectors running it.
- `<app>.dead-letter` (direct exchange) -> `<queue>.dlq` for each work queue.
- `<app>.retry` (direct exchange) -> `<queue>.delay.<delay>ms` delay queues whose TTL dead-letters
  the message back to its work queue, giving exponential backoff without a hot requeue loop.

Every queue is a quorum queue, replicated over the nodes of a cluster, and every queue the broker
dead-letters from (work queues past their delivery limit, delay queues at their TTL) does so
`at-least-once`: the message stays in its queue until the target queue confirmed it, so a message
on its way to a DLQ or back to its work queue survives the loss of a node
(https://www.rabbitmq.com/docs/quorum-queues#dead-lettering). That strategy needs
`x-overflow: reject-publish`; these queues have no length limit, so nothing is rejected for it.

Upgrading a deployment of an earlier release: queue arguments cannot change on an existing
queue. Its work queues (declared without the two arguments above) are accepted as they are
(`QueueDeclaration.legacy_arguments`), with a warning; its classic delay queues
(`<queue>.retry.<delay>ms`) are no longer used and are deleted once empty (`retire_legacy`).
See docs/operations.md, "Upgrading to replicated delay queues".
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractExchange

log = logging.getLogger(__name__)


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
    return f"{queue}.delay.{delay_ms}ms"


def legacy_retry_queue_name(queue: str, delay_ms: int) -> str:
    """The classic (unreplicated) delay queue of earlier releases, retired by `retire_legacy`."""
    return f"{queue}.retry.{delay_ms}ms"


REPLICATED_DEAD_LETTERING: Mapping[str, str] = {
    "x-dead-letter-strategy": "at-least-once",
    "x-overflow": "reject-publish",
}
"""Arguments of a quorum queue that dead-letters at least once (the strategy needs the overflow
behaviour; without it the broker falls back to at-most-once)."""


def retry_delay_for(base_delay_ms: int, attempt: int) -> int:
    """Delay before retry number `attempt` (1-based): doubling, capped at the last tier."""
    return retry_delays_ms(base_delay_ms)[min(max(attempt, 1), RETRY_TIERS) - 1]


class QueueRole(StrEnum):
    """What a queue is for."""

    WORK = "work"
    """Read by a worker: the commands queue and one queue per projection."""
    DEAD_LETTER = "dead-letter"
    """`<work queue>.dlq`: messages given up on, read by nobody but a person."""
    DELAY = "delay"
    """`<work queue>.delay.<delay>ms`: read by nobody; its TTL sends a message back to the work
    queue through the default exchange."""


@dataclass(frozen=True, slots=True)
class ExchangeDeclaration:
    name: str
    type: aio_pika.ExchangeType
    durable: bool = True


@dataclass(frozen=True, slots=True)
class QueueDeclaration:
    """One queue, its `queue.declare` arguments and its one binding."""

    name: str
    role: QueueRole
    work_queue: str
    """The work queue it belongs to (itself for a work queue)."""
    exchange: str
    """The exchange it is bound to..."""
    routing_key: str
    """...with this routing key."""
    arguments: Mapping[str, int | str]
    durable: bool = True
    delay_ms: int | None = None
    """A delay queue's TTL."""
    legacy_arguments: Mapping[str, int | str] | None = None
    """The arguments an earlier release declared this queue with: an existing queue that has
    them is used as it is (arguments of an existing queue cannot change)."""


@dataclass(frozen=True, slots=True)
class Declarations:
    """Everything `declare_topology` declares, in its order: what the broker is told and what
    the self-description (`common.messaging.asyncapi`) describes."""

    exchanges: tuple[ExchangeDeclaration, ...]
    queues: tuple[QueueDeclaration, ...]
    retired: tuple[str, ...] = ()
    """Queues of earlier releases no longer used: deleted once empty, never declared."""


def declarations(topology: Topology, retry_base_delay_ms: int) -> Declarations:
    """The exchanges, then for each work queue its dead-letter queue (bound first, so the work
    queue's dead-letter route exists when the work queue does), itself and its delay queues."""
    direct, fanout = aio_pika.ExchangeType.DIRECT, aio_pika.ExchangeType.FANOUT
    exchanges = (
        ExchangeDeclaration(topology.commands_exchange, direct),
        ExchangeDeclaration(topology.events_exchange, fanout),
        ExchangeDeclaration(topology.dead_letter_exchange, direct),
        ExchangeDeclaration(topology.retry_exchange, direct),
    )
    sources = [(topology.commands_queue, topology.commands_exchange, topology.commands_queue)]
    sources += [
        (topology.projection_queue(p), topology.events_exchange, "") for p in topology.projections
    ]
    queues: list[QueueDeclaration] = []
    retired: list[str] = []
    for queue_name, source, routing_key in sources:
        dlq = dlq_name(queue_name)
        queues.append(
            QueueDeclaration(
                name=dlq,
                role=QueueRole.DEAD_LETTER,
                work_queue=queue_name,
                exchange=topology.dead_letter_exchange,
                routing_key=dlq,
                arguments={"x-queue-type": "quorum"},
            )
        )
        work_arguments: dict[str, int | str] = {
            "x-queue-type": "quorum",
            "x-dead-letter-exchange": topology.dead_letter_exchange,
            "x-dead-letter-routing-key": dlq,
            "x-delivery-limit": DELIVERY_LIMIT,
        }
        queues.append(
            QueueDeclaration(
                name=queue_name,
                role=QueueRole.WORK,
                work_queue=queue_name,
                exchange=source,
                routing_key=routing_key,
                arguments={**work_arguments, **REPLICATED_DEAD_LETTERING},
                legacy_arguments=work_arguments,
            )
        )
        for delay_ms in retry_delays_ms(retry_base_delay_ms):
            name = retry_queue_name(queue_name, delay_ms)
            arguments: dict[str, int | str] = {
                "x-queue-type": "quorum",
                "x-message-ttl": delay_ms,
                "x-dead-letter-exchange": "",
                "x-dead-letter-routing-key": queue_name,
                **REPLICATED_DEAD_LETTERING,
            }
            retired.append(legacy_retry_queue_name(queue_name, delay_ms))
            queues.append(
                QueueDeclaration(
                    name=name,
                    role=QueueRole.DELAY,
                    work_queue=queue_name,
                    exchange=topology.retry_exchange,
                    routing_key=name,
                    arguments=arguments,
                    delay_ms=delay_ms,
                )
            )
    return Declarations(exchanges, tuple(queues), tuple(retired))


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
    plan = declarations(topology, retry_base_delay_ms)
    exchanges: dict[str, AbstractExchange] = {}
    for exchange in plan.exchanges:
        exchanges[exchange.name] = await channel.declare_exchange(
            exchange.name, exchange.type, durable=exchange.durable
        )
    for declared in plan.queues:
        queue = await _declare_queue(channel, declared)
        await queue.bind(exchanges[declared.exchange], routing_key=declared.routing_key)
    await retire_legacy(channel, plan.retired)
    return Exchanges(
        commands=exchanges[topology.commands_exchange],
        events=exchanges[topology.events_exchange],
        dead_letter=exchanges[topology.dead_letter_exchange],
        retry=exchanges[topology.retry_exchange],
    )


async def _declare_queue(
    channel: AbstractChannel, declared: QueueDeclaration
) -> aio_pika.abc.AbstractQueue:
    """Declare `declared`; an existing queue with its `legacy_arguments` is used as it is."""
    try:
        return await channel.declare_queue(
            declared.name, durable=declared.durable, arguments=dict(declared.arguments)
        )
    except aio_pika.exceptions.ChannelPreconditionFailed:
        if declared.legacy_arguments is None:
            raise
    # The failed declare closed the channel; the legacy arguments fail just as loudly if the
    # queue has yet other ones.
    await channel.reopen()
    queue = await channel.declare_queue(
        declared.name, durable=declared.durable, arguments=dict(declared.legacy_arguments)
    )
    log.warning(
        "queue %s has the arguments of an earlier release: it dead-letters at most once until"
        " it is migrated (docs/operations.md)",
        declared.name,
        extra={"queue": declared.name},
    )
    return queue


async def retire_legacy(channel: AbstractChannel, names: Sequence[str]) -> list[str]:
    """Delete the queues `names` that exist and are empty (the broker checks emptiness and
    deletes in one step, so no message is lost); the ones still holding messages are left to
    drain (a legacy delay queue's TTL moves each message to its work queue) and returned."""
    kept = []
    for name in names:
        try:
            await channel.queue_delete(name, if_empty=True)
        except aio_pika.exceptions.ChannelPreconditionFailed:
            kept.append(name)
            await channel.reopen()
    if kept:
        log.info("earlier delay queues still draining, deleted at a later start: %s", kept)
    return kept
