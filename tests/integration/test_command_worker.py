"""The command side on the real services: command messages in, events in PostgreSQL and on
orders.events out, rejections, redeliveries, poison messages."""

from __future__ import annotations

import json
import uuid
from decimal import Decimal
from typing import Any

import aio_pika
import asyncpg
import orjson
import pytest
import redis.asyncio as aioredis

from common.domain import stream_id
from common.messaging.messages import command_message
from common.messaging.topology import Topology, dlq_name
from common.readmodel.keys import Keys
from common.settings import Settings
from harness.load import envelope
from harness.processes import Processes
from orders.contracts import (
    AddItem,
    CancelOrder,
    Command,
    CreateOrder,
    OrderLine,
    ShipOrder,
)
from tests.support.amqp import channel, depth, eventually, take, take_events, tap_events
from tests.support.bodies import ADDRESS
from tests.support.domains import topology_of
from tests.support.statuses import stored_status

pytestmark = pytest.mark.integration


def create(order_id: uuid.UUID, *lines: tuple[str, int, str]) -> CreateOrder:
    return CreateOrder(
        customer_id="cust-1",
        items=[OrderLine(product_id=p, quantity=q, price=Decimal(pr)) for p, q, pr in lines],
        shipping_address=ADDRESS,
        **envelope(order_id),
    )


def order_stream(order_id: uuid.UUID) -> str:
    return stream_id("Order", order_id)


@pytest.fixture
def topology(isolated_settings: Settings) -> Topology:
    return topology_of(isolated_settings)


async def send(ch: aio_pika.abc.AbstractChannel, topology: Topology, *commands: Command) -> None:
    exchange = await ch.get_exchange(topology.commands_exchange)
    for command in commands:
        await exchange.publish(
            command_message(command, order_stream(command.order_id)),
            routing_key=topology.commands_queue,
        )


async def command_row(pool: asyncpg.Pool, command_id: uuid.UUID) -> asyncpg.Record | None:
    return await pool.fetchrow("SELECT * FROM commands WHERE command_id = $1", command_id)


async def test_commands_become_ordered_events_on_the_fanout(
    isolated_settings: Settings,
    processes: Processes,
    pg: asyncpg.Pool,
    topology: Topology,
) -> None:
    async with channel(isolated_settings.amqp_url) as ch:
        tap = await tap_events(ch)
        processes.start("command_worker")
        order_id = uuid.uuid4()
        first = create(order_id, ("apple", 2, "0.10"), ("pear", 1, "1.25"))
        await send(ch, topology, first)
        [created] = await take(tap, 1)
        await send(
            ch,
            topology,
            AddItem(
                item=OrderLine(product_id="apple", quantity=1, price=Decimal("0.10")),
                **envelope(order_id),
            ),
            ShipOrder(**envelope(order_id)),
        )
        # Committed together, they may come in one message (a batch): counted as events.
        later = await take_events(tap, 2)

    bodies = [orjson.loads(created.body), *later]
    assert [b["type"] for b in bodies] == ["OrderCreated", "ItemAdded", "OrderShipped"]
    assert [b["version"] for b in bodies] == [1, 2, 3]
    positions = [b["position"] for b in bodies]
    assert positions == sorted(positions)
    assert created.message_id == bodies[0]["event_id"]
    assert created.type == "OrderCreated"
    assert created.content_type == "application/json"
    assert created.correlation_id == str(first.correlation_id)
    assert created.headers["stream_id"] == order_stream(order_id)
    assert created.headers["version"] == 1
    assert created.headers["position"] == positions[0]
    assert created.headers["causation_id"] == str(first.command_id)
    assert bodies[0]["data"]["items"][0] == {"product_id": "apple", "quantity": 2, "price": "0.10"}

    rows = await pg.fetch(
        "SELECT version, type FROM events WHERE stream_id = $1 ORDER BY version",
        order_stream(order_id),
    )
    assert [(r["version"], r["type"]) for r in rows] == [
        (1, "OrderCreated"),
        (2, "ItemAdded"),
        (3, "OrderShipped"),
    ]
    record = await command_row(pg, first.command_id)
    assert record is not None
    assert (record["status"], record["version"]) == ("succeeded", 1)


async def test_rejections_append_nothing_and_say_why(
    isolated_settings: Settings,
    processes: Processes,
    pg: asyncpg.Pool,
    redis_client: aioredis.Redis,
    topology: Topology,
) -> None:
    keys = Keys(isolated_settings.redis_key_prefix)
    processes.start("command_worker")
    unknown = uuid.uuid4()
    order_id = uuid.uuid4()
    ship_unknown = ShipOrder(**envelope(unknown))
    create_it = create(order_id, ("a", 1, "5.00"))
    cancel = CancelOrder(reason="customer asked", **envelope(order_id))
    add_after_cancel = AddItem(
        item=OrderLine(product_id="b", quantity=1, price=Decimal("1.00")), **envelope(order_id)
    )
    async with channel(isolated_settings.amqp_url) as ch:
        await send(ch, topology, ship_unknown, create_it)
        await eventually(lambda: command_row(pg, create_it.command_id), what="create recorded")
        await send(ch, topology, cancel)
        await eventually(lambda: command_row(pg, cancel.command_id), what="cancel recorded")
        await send(ch, topology, add_after_cancel)
        await eventually(lambda: command_row(pg, add_after_cancel.command_id), what="add recorded")

    rejected = await command_row(pg, ship_unknown.command_id)
    assert rejected is not None
    assert (rejected["status"], rejected["reason"]) == ("rejected", "order not found")
    late = await command_row(pg, add_after_cancel.command_id)
    assert late is not None
    assert (late["status"], late["reason"], late["version"]) == (
        "rejected",
        "order is cancelled",
        2,
    )
    count = "SELECT count(*) FROM events WHERE stream_id = $1"
    assert await pg.fetchval(count, order_stream(unknown)) == 0
    assert await pg.fetchval(count, order_stream(order_id)) == 2

    async def status_of(command: Command) -> dict[str, Any]:
        return await stored_status(redis_client, keys, command.command_id)

    status = await eventually(lambda: status_of(add_after_cancel), what="status in redis")
    assert status["status"] == "rejected"
    assert status["reason"] == "order is cancelled"
    assert (await status_of(cancel))["status"] == "succeeded"


async def test_a_redelivered_command_takes_effect_once(
    isolated_settings: Settings,
    processes: Processes,
    pg: asyncpg.Pool,
    topology: Topology,
) -> None:
    order_id = uuid.uuid4()
    create_it = create(order_id, ("a", 1, "1.00"))
    add = AddItem(
        item=OrderLine(product_id="a", quantity=1, price=Decimal("1.00")), **envelope(order_id)
    )
    async with channel(isolated_settings.amqp_url) as ch:
        await send(ch, topology, create_it)
        processes.start("command_worker")
        await eventually(lambda: command_row(pg, create_it.command_id), what="create")
        await send(ch, topology, add, add, create_it, add)
        marker = ShipOrder(**envelope(order_id))
        await send(ch, topology, marker)
        await eventually(lambda: command_row(pg, marker.command_id), what="marker")

        async def drained() -> bool:
            return await depth(ch, topology.commands_queue) == 0

        await eventually(drained, what="queue drained")

    rows = await pg.fetch(
        "SELECT version, type, metadata FROM events WHERE stream_id = $1 ORDER BY version",
        order_stream(order_id),
    )
    assert [r["type"] for r in rows] == ["OrderCreated", "ItemAdded", "OrderShipped"]
    assert [r["version"] for r in rows] == [1, 2, 3]
    command_ids = [json.loads(r["metadata"])["command_id"] for r in rows]
    assert len(set(command_ids)) == 3


async def test_poison_messages_are_dead_lettered_with_a_reason(
    isolated_settings: Settings,
    processes: Processes,
    pg: asyncpg.Pool,
    topology: Topology,
) -> None:
    processes.start("command_worker")
    order_id = uuid.uuid4()
    good = create(order_id, ("a", 1, "1.00"))
    poison = [
        b"not json at all",
        b'{"type": "LaunchMissiles"}',
        orjson.dumps({**orjson.loads(good.model_dump_json()), "command_id": "nope"}),
        orjson.dumps({**orjson.loads(good.model_dump_json()), "items": []}),
        b"[" * 5000 + b"]" * 5000,
    ]
    async with channel(isolated_settings.amqp_url) as ch:
        exchange = await ch.get_exchange(topology.commands_exchange)
        for body in poison:
            await exchange.publish(
                aio_pika.Message(body, message_id=str(uuid.uuid4())),
                routing_key=topology.commands_queue,
            )
        await send(ch, topology, good)
        await eventually(lambda: command_row(pg, good.command_id), what="good command handled")
        dlq = await ch.declare_queue(dlq_name(topology.commands_queue), passive=True)
        dead = await take(dlq, len(poison))
    assert sorted(m.body for m in dead) == sorted(poison)
    for message in dead:
        assert message.headers["x-failure-kind"] == "poison"
        assert str(message.headers["x-failure-reason"]).startswith("invalid command")
        assert message.headers["x-original-queue"] == topology.commands_queue
