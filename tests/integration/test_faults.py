"""The fault subset of `make chaos` that runs in `make test`: kill -9 under load, poison in every
work queue, many concurrent changes to one order across workers, and a transaction left open
elsewhere on the database server.

The service restarts (RabbitMQ, PostgreSQL, Redis) are not here: they would disturb every other
run on the machine. `make chaos` runs them, and everything below, with a larger load.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import aio_pika
import asyncpg
import httpx
import orjson
import pytest
import redis.asyncio as aioredis

from common.domain import stream_id
from common.messaging.messages import command_message
from common.messaging.topology import Topology, dlq_name
from common.readmodel.keys import Keys
from common.settings import Settings
from harness.isolation import Endpoints
from harness.load import ADDRESS, LoadShape
from harness.processes import Processes
from orders.contracts import CreateOrder, OrderLine, ShippingAddress
from orders.layout import order_suffix
from orders.projection import OrderViews
from tests.chaos.scenarios import BY_NAME, run_scenario
from tests.support.amqp import channel, eventually, take
from tests.support.domains import topology_of

pytestmark = [pytest.mark.integration, pytest.mark.faults, pytest.mark.timeout(240)]

SHAPE = LoadShape(orders=40, additions=8)
"""About 370 commands: enough for the fault to land while both workers are busy."""
HUGE = 4 * 1024 * 1024
"""A body of 4 MiB, well under RabbitMQ's default max message size of 128 MiB."""


# --- kill -9 under load -------------------------------------------------------------------------


@pytest.mark.parametrize("scenario", ["kill-9-command-worker", "kill-9-projector"])
async def test_kill_9_under_load_loses_nothing_and_views_equal_a_replay(
    scenario: str,
    isolated_settings: Settings,
    processes: Processes,
    services: Endpoints,
) -> None:
    outcome = await run_scenario(
        BY_NAME[scenario], isolated_settings, processes, services, SHAPE, say=lambda _: None
    )
    row, verdict = outcome.row, outcome.verdict
    assert row.accepted >= SHAPE.commands
    assert (row.lost, row.duplicated, row.views_wrong, row.dead_letters) == (0, 0, 0, 0)
    assert verdict.views.keys_compared > SHAPE.orders
    assert row.problems == []
    assert row.recovery_s is not None


# --- poison messages ----------------------------------------------------------------------------


def _command(**changes: Any) -> dict[str, Any]:
    body = orjson.loads(_valid_create().model_dump_json())
    body.update(changes)
    return dict(body)


def _valid_create() -> CreateOrder:
    return CreateOrder(
        command_id=uuid.uuid4(),
        order_id=uuid.uuid4(),
        correlation_id=uuid.uuid4(),
        issued_at=datetime.now(UTC),
        customer_id="poison-check",
        items=[OrderLine(product_id="sku-1", quantity=1, price=Decimal("1.00"))],
        shipping_address=ShippingAddress(**ADDRESS),
    )


def _without(body: dict[str, Any], *fields: str) -> dict[str, Any]:
    return {k: v for k, v in body.items() if k not in fields}


COMMAND_POISON: dict[str, tuple[bytes, str]] = {
    "invalid JSON": (b'{"type": "CreateOrder", "command_id": ', "Invalid JSON"),
    "unknown type": (orjson.dumps(_command(type="LaunchMissiles")), "LaunchMissiles"),
    "missing fields": (
        orjson.dumps(_without(_command(), "order_id", "items")),
        "Field required",
    ),
    "wrong types": (
        orjson.dumps(_command(command_id=42, items=[{"product_id": "a", "quantity": "two"}])),
        "command_id",
    ),
    "NUL in a text": (
        orjson.dumps(_command(shipping_address={**ADDRESS, "city": "a\x00b"})),
        "NUL",
    ),
    "NUL in the fingerprint": (orjson.dumps(_command(fingerprint="ab\x00")), "fingerprint"),
    "deep nesting": (b"[" * 100_000 + b"]" * 100_000, "recursion"),
    "huge body": (orjson.dumps(_command(customer_id="x" * HUGE)), "customer_id"),
}


def _event(**changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "event_id": str(uuid.uuid4()),
        "position": 1,
        "stream_id": stream_id("Order", uuid.uuid4()),
        "version": 1,
        "type": "ItemAdded",
        "data": {"item": {"product_id": "sku-1", "quantity": 1, "price": "1.00"}},
        "metadata": {
            "command_id": str(uuid.uuid4()),
            "correlation_id": str(uuid.uuid4()),
            "causation_id": str(uuid.uuid4()),
            "occurred_at": datetime.now(UTC).isoformat(),
        },
        "recorded_at": datetime.now(UTC).isoformat(),
    }
    body.update(changes)
    return body


EVENT_POISON: dict[str, tuple[bytes, str]] = {
    "invalid JSON": (b'{"event_id": "', "Invalid JSON"),
    "unknown type": (orjson.dumps(_event(type="OrderTeleported", data={})), "OrderTeleported"),
    "missing fields": (orjson.dumps(_without(_event(), "stream_id", "position")), "stream_id"),
    "wrong types": (orjson.dumps(_event(version="three")), "version"),
    "wrong payload types": (
        orjson.dumps(_event(data={"item": {"product_id": "a", "quantity": "lots"}})),
        "quantity",
    ),
    "deep nesting": (b"{" + b'"a":{' * 50_000 + b"}" * 50_001, "recursion"),
    "huge body": (orjson.dumps(_event(data={"padding": "x" * HUGE})), "padding"),
}


async def _send(ch: aio_pika.abc.AbstractChannel, topology: Topology, command: CreateOrder) -> None:
    commands = await ch.get_exchange(topology.commands_exchange)
    await commands.publish(
        command_message(command, stream_id("Order", command.order_id)),
        routing_key=topology.commands_queue,
    )


async def _order_visible(redis: aioredis.Redis, keys: Keys, order_id: uuid.UUID) -> bool:
    views = keys.projection(OrderViews.keys_name())
    generation = await redis.get(views.generation)
    if generation is None:
        return False
    return bool(await redis.exists(views.views(int(generation)).key(order_suffix(str(order_id)))))


@pytest.mark.parametrize("work", ["commands", "order_views projection"])
async def test_poison_in_each_work_queue_is_dead_lettered_with_its_reason(
    work: str,
    isolated_settings: Settings,
    processes: Processes,
    pg: asyncpg.Pool,
    redis_client: aioredis.Redis,
) -> None:
    processes.start("command_worker")
    processes.start("projector_worker")
    topology = topology_of(isolated_settings)
    if work == "commands":
        queue, poison = topology.commands_queue, COMMAND_POISON
    else:
        queue, poison = topology.projection_queue(OrderViews.name), EVENT_POISON
    valid = _valid_create()
    async with channel(isolated_settings.amqp_url) as ch:
        for kind, (body, _) in poison.items():
            # Straight into the work queue, through the default exchange.
            await ch.default_exchange.publish(
                aio_pika.Message(body, message_id=kind, type="poison"), routing_key=queue
            )
        await _send(ch, topology, valid)

        keys = Keys(isolated_settings.redis_key_prefix)
        await eventually(
            lambda: _order_visible(redis_client, keys, valid.order_id),
            timeout=30,
            what="the valid command after the poison to reach the views",
        )
        status = await pg.fetchval(
            "SELECT status FROM commands WHERE command_id = $1", valid.command_id
        )
        assert status == "succeeded"
        dead = await take(await ch.get_queue(dlq_name(queue)), len(poison), timeout=30)

    by_kind = {m.message_id: m for m in dead}
    assert set(by_kind) == set(poison)
    for kind, (body, clue) in poison.items():
        message = by_kind[kind]
        headers = message.headers
        assert message.body == body, kind
        assert headers["x-failure-kind"] == "poison", kind
        assert headers["x-original-queue"] == queue, kind
        reason = str(headers["x-failure-reason"])
        assert clue in reason, (kind, reason)
        assert len(reason) <= 1000, kind


# --- concurrency --------------------------------------------------------------------------------

ADDITIONS = 50


async def test_50_concurrent_item_additions_across_3_workers_apply_exactly_once(
    processes: Processes, pg: asyncpg.Pool
) -> None:
    workers = [processes.start("command_worker") for _ in range(3)]
    processes.start("projector_worker")
    gateway = processes.start("gateway")
    async with httpx.AsyncClient(base_url=gateway.base_url, timeout=30) as client:
        created = await client.post(
            "/orders",
            json={
                "customer_id": "hot-order",
                "items": [{"product_id": "base", "quantity": 1, "price": "1.00"}],
                "shipping_address": ADDRESS,
            },
            headers={"Prefer": "wait=10"},
        )
        assert created.status_code == 201, created.text
        order_id = created.json()["order_id"]

        def addition(n: int) -> Callable[[], Any]:
            return lambda: client.post(
                f"/orders/{order_id}/items",
                json={"product_id": f"sku-{n}", "quantity": n + 1, "price": "0.10"},
            )

        answers = await asyncio.gather(*(addition(n)() for n in range(ADDITIONS)))
        assert [a.status_code for a in answers] == [202] * ADDITIONS
        command_ids = [uuid.UUID(a.json()["command_id"]) for a in answers]

        async def recorded() -> bool:
            n = await pg.fetchval(
                "SELECT count(*) FROM commands WHERE command_id = ANY($1::uuid[])", command_ids
            )
            return bool(n == ADDITIONS)

        await eventually(recorded, timeout=60, what="every addition recorded")
        statuses = await pg.fetch(
            "SELECT status, reason FROM commands WHERE command_id = ANY($1::uuid[])", command_ids
        )
        assert Counter(r["status"] for r in statuses) == {"succeeded": ADDITIONS}, statuses

        rows = await pg.fetch(
            "SELECT version, type, metadata->>'command_id' AS command_id FROM events"
            " WHERE stream_id = $1 ORDER BY version",
            stream_id("Order", order_id),
        )
        assert [r["version"] for r in rows] == list(range(1, ADDITIONS + 2))
        assert Counter(uuid.UUID(r["command_id"]) for r in rows[1:]) == Counter(command_ids)

        view = await client.get(f"/orders/{order_id}", params={"min_version": ADDITIONS + 1})
        assert view.status_code == 200, view.text
        assert "x-stale" not in view.headers
        body = view.json()
        assert body["version"] == ADDITIONS + 1
        quantities = {line["product_id"]: line["quantity"] for line in body["items"]}
        assert quantities == {"base": 1, **{f"sku-{n}": n + 1 for n in range(ADDITIONS)}}
        assert body["item_count"] == 1 + sum(n + 1 for n in range(ADDITIONS))
        expected_total = Decimal("1.00") + sum(Decimal("0.10") * (n + 1) for n in range(ADDITIONS))
        assert Decimal(body["total_amount"]) == expected_total

    handled_by = [w for w in workers if order_id in w.log_path.read_text(errors="replace")]
    assert len(handled_by) >= 2, "the additions should have been spread over the workers"


# --- a transaction left open elsewhere on the server -------------------------------------------


async def test_a_transaction_left_open_in_another_database_stops_nothing(
    isolated_settings: Settings,
    services: Endpoints,
    processes: Processes,
    pg: asyncpg.Pool,
    redis_client: aioredis.Redis,
) -> None:
    """The relay and the rebuild wait for transactions that could still commit a lower
    position; one open in another database of the same server cannot, and must not stop them
    (it did: the projector never got ready and the relay published nothing)."""
    elsewhere = await asyncpg.connect(services.database_url("postgres"))
    try:
        async with elsewhere.transaction():
            await elsewhere.fetchval("SELECT pg_current_xact_id()")
            processes.start("command_worker")
            processes.start("projector_worker")
            valid = _valid_create()
            async with channel(isolated_settings.amqp_url) as ch:
                await _send(ch, topology_of(isolated_settings), valid)
            keys = Keys(isolated_settings.redis_key_prefix)
            await eventually(
                lambda: _order_visible(redis_client, keys, valid.order_id),
                timeout=20,
                what="the order in the views while another database holds a transaction",
            )
    finally:
        await elsewhere.close()
