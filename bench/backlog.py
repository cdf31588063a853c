"""A pre-filled commands queue: the bench's command mix as command messages, as the gateway
publishes them, for a command worker to drain on its own (`python -m bench --ceilings`)."""

from __future__ import annotations

import random
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from decimal import Decimal

import aio_pika

from bench.mix import Mix, OrderBook
from bench.seed import ADDRESS
from common.domain import stream_id
from common.messaging.messages import command_message
from common.messaging.publishing import ConfirmedPublisher
from common.messaging.topology import Topology, declare_topology
from orders.contracts import (
    AddItem,
    CancelOrder,
    CreateOrder,
    OrderCommand,
    OrderLine,
    ShipOrder,
)
from orders.domain import ORDER

PUBLISH_CHUNK = 500
"""Commands published per round of confirms."""


def _line(rng: random.Random) -> OrderLine:
    return OrderLine(
        product_id=f"sku-{rng.randrange(200)}",
        quantity=rng.randint(1, 4),
        price=Decimal(rng.randint(100, 9999)) / 100,
    )


def _uuid(rng: random.Random) -> uuid.UUID:
    return uuid.UUID(int=rng.getrandbits(128), version=4)


def command_backlog(
    count: int, seed: int, customers: int = 500, mix: Mix | None = None
) -> list[OrderCommand]:
    """`count` valid order commands in queue order, drawn like the bench's load
    (`bench.mix`): creates of 1-3 lines, item additions, ships and cancels, each follow-up to
    an open order after that order's earlier commands, so one worker taking them in order
    succeeds with every one."""
    rng = random.Random(seed)
    book = OrderBook(mix or Mix(), rng)
    issued_at = datetime.now(UTC)
    commands: list[OrderCommand] = []
    for _ in range(count):
        kind, target = book.next()
        order_id = uuid.UUID(target) if target is not None else _uuid(rng)
        common = {
            "command_id": _uuid(rng),
            "correlation_id": _uuid(rng),
            "issued_at": issued_at,
            "order_id": order_id,
        }
        command: OrderCommand
        if kind == "create":
            lines = rng.randint(1, 3)
            command = CreateOrder(
                **common,
                customer_id=f"cust-{rng.randrange(customers)}",
                items=[_line(rng) for _ in range(lines)],
                shipping_address=ADDRESS,
            )
            book.visible(kind, str(order_id), lines)
            commands.append(command)
            continue
        if kind == "add":
            command = AddItem(**common, item=_line(rng))
        elif kind == "ship":
            command = ShipOrder(**common)
        else:
            command = CancelOrder(**common, reason="changed my mind")
        book.visible(kind, str(order_id))
        commands.append(command)
    return commands


def kinds(commands: Sequence[OrderCommand]) -> dict[str, int]:
    """How many commands of each type."""
    counts: dict[str, int] = {}
    for command in commands:
        counts[command.type] = counts.get(command.type, 0) + 1
    return dict(sorted(counts.items()))


async def fill_commands_queue(
    amqp_url: str, topology: Topology, retry_base_delay_ms: int, commands: Sequence[OrderCommand]
) -> None:
    """Declare the topology and publish `commands` to the commands exchange as the gateway
    does (persistent, mandatory, confirmed), in order."""
    connection = await aio_pika.connect(amqp_url)
    try:
        channel = await connection.channel()
        await declare_topology(channel, topology, retry_base_delay_ms)
        await channel.close()
        publisher = await ConfirmedPublisher.open(connection, timeout_s=60.0)
        for start in range(0, len(commands), PUBLISH_CHUNK):
            chunk = commands[start : start + PUBLISH_CHUNK]
            messages = [
                (
                    topology.commands_queue,
                    command_message(command, stream_id(ORDER.stream_type, command.order_id)),
                )
                for command in chunk
            ]
            await publisher.publish_many(topology.commands_exchange, messages)
        await publisher.close()
    finally:
        await connection.close()
