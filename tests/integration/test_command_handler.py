"""The command handler against a real event store: conflicts are retried on a fresh load,
concurrent handlers never lose an update."""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import replace
from datetime import UTC, datetime
from decimal import Decimal

import asyncpg
import pytest
import redis.asyncio as aioredis

from command_worker.handler import CommandHandler
from common.contracts.commands import CommandBase
from common.contracts.envelopes import EventMetadata
from common.domain import Registry, stream_id
from common.eventstore.store import EventStore, NewEvent, StoredEvent
from common.readmodel.commands import ID_REUSED_REASON, CommandStatus
from common.readmodel.keys import Keys
from common.settings import Settings
from gateway.idempotency import command_id_for
from harness.load import envelope
from orders.contracts import AddItem, CreateOrder, OrderLine, ShipOrder, ShippingAddress
from orders.domain import DOMAIN, ORDER
from tests.support.domains import registry_of
from tests.support.statuses import forget_status, stored_status

pytestmark = pytest.mark.integration


def add(order_id: uuid.UUID, product: str = "p") -> AddItem:
    return AddItem(
        item=OrderLine(product_id=product, quantity=1, price=Decimal("1.50")), **envelope(order_id)
    )


class InterferingStore(EventStore):
    """A real store that lets another writer append between our load and our append, `times`
    times: a deterministic expected-version conflict."""

    def __init__(self, pool: asyncpg.Pool, times: int) -> None:
        super().__init__(pool)
        self.times = times

    async def load_stream(self, stream_id: str) -> list[StoredEvent]:
        loaded = await super().load_stream(stream_id)
        if self.times > 0 and loaded:
            self.times -= 1
            other = uuid.uuid4()
            await EventStore(self.pool).append_to_stream(
                stream_id,
                [
                    NewEvent(
                        uuid.uuid4(),
                        "ItemAdded",
                        {"item": {"product_id": "intruder", "quantity": 1, "price": "2.00"}},
                        EventMetadata(
                            command_id=other,
                            command_type="AddItem",
                            correlation_id=other,
                            causation_id=other,
                            occurred_at=datetime.now(UTC),
                        ),
                    )
                ],
                len(loaded),
                command_id=other,
                command_type="AddItem",
                fingerprint=None,
            )
        return loaded


async def created_order(handler: CommandHandler) -> uuid.UUID:
    order_id = uuid.uuid4()
    outcome = await handler.execute(
        CreateOrder(
            customer_id="c",
            items=[OrderLine(product_id="a", quantity=1, price=Decimal("1.00"))],
            shipping_address=ShippingAddress(
                recipient="R", street="S", city="C", postal_code="12345", country="DE"
            ),
            **envelope(order_id),
        )
    )
    assert outcome.status is CommandStatus.SUCCEEDED
    return order_id


def order_stream(order_id: uuid.UUID) -> str:
    return stream_id("Order", order_id)


@pytest.fixture
def keys(isolated_settings: Settings) -> Keys:
    return Keys(isolated_settings.redis_key_prefix)


@pytest.fixture
def registry(isolated_settings: Settings) -> Registry:
    return registry_of(isolated_settings)


async def test_a_version_conflict_is_retried_on_a_fresh_load(
    pg: asyncpg.Pool, redis_client: aioredis.Redis, keys: Keys, registry: Registry
) -> None:
    store = InterferingStore(pg, times=0)
    handler = CommandHandler(registry, store, redis_client, keys, conflict_retries=5)
    order_id = await created_order(handler)
    store.times = 2
    outcome = await handler.execute(add(order_id))
    assert outcome.status is CommandStatus.SUCCEEDED
    assert outcome.version == 4  # create, two intruders, ours
    stored = await EventStore(pg).load_stream(order_stream(order_id))
    assert [e.version for e in stored] == [1, 2, 3, 4]


async def test_a_command_fails_after_bounded_conflicts(
    pg: asyncpg.Pool, redis_client: aioredis.Redis, keys: Keys, registry: Registry
) -> None:
    store = InterferingStore(pg, times=0)
    handler = CommandHandler(registry, store, redis_client, keys, conflict_retries=2)
    order_id = await created_order(handler)
    store.times = 3
    command = add(order_id)
    outcome = await handler.execute(command)
    assert outcome.status is CommandStatus.FAILED
    assert "conflicts" in (outcome.reason or "")
    record = await EventStore(pg).get_command(command.command_id)
    assert record is not None
    assert record.status == "failed"
    # Redelivered later, the recorded failure stands: the command never half-applies.
    assert (await handler.execute(command)).status is CommandStatus.FAILED


async def test_concurrent_handlers_apply_every_addition_once(
    pg: asyncpg.Pool, redis_client: aioredis.Redis, keys: Keys, registry: Registry
) -> None:
    handlers = [CommandHandler(registry, EventStore(pg), redis_client, keys, 50) for _ in range(3)]
    order_id = await created_order(handlers[0])
    commands = [add(order_id, f"p{i % 7}") for i in range(50)]
    outcomes = await asyncio.gather(*(handlers[i % 3].execute(c) for i, c in enumerate(commands)))
    assert {o.status for o in outcomes} == {CommandStatus.SUCCEEDED}
    stored = await EventStore(pg).load_stream(order_stream(order_id))
    assert [e.version for e in stored] == list(range(1, 52))
    assert sorted(o.version for o in outcomes) == list(range(2, 52))


async def test_a_batch_decides_in_order_and_records_everything_once(
    pg: asyncpg.Pool, redis_client: aioredis.Redis, keys: Keys, registry: Registry
) -> None:
    handler = CommandHandler(registry, EventStore(pg), redis_client, keys, conflict_retries=5)
    known = await created_order(handler)
    fresh = uuid.uuid4()
    create_fresh = CreateOrder(
        customer_id="c",
        items=[OrderLine(product_id="a", quantity=2, price=Decimal("0.10"))],
        shipping_address=ShippingAddress(
            recipient="R", street="S", city="C", postal_code="12345", country="DE"
        ),
        **envelope(fresh),
    )
    add_fresh = add(fresh)
    ship_unknown = ShipOrder(**envelope(uuid.uuid4()))
    batch: list[CommandBase] = [
        add(known),
        create_fresh,
        add_fresh,
        add_fresh,
        ship_unknown,
        add(known),
    ]
    outcomes = await handler.execute_batch(batch)
    assert [(o.status.value, o.version) for o in outcomes] == [
        ("succeeded", 2),
        ("succeeded", 1),
        ("succeeded", 2),
        ("succeeded", 2),
        ("rejected", 0),
        ("succeeded", 3),
    ]
    assert outcomes[4].reason == "order not found"
    store = EventStore(pg)
    assert [e.version for e in await store.load_stream(order_stream(known))] == [1, 2, 3]
    assert [e.type for e in await store.load_stream(order_stream(fresh))] == [
        "OrderCreated",
        "ItemAdded",
    ]
    # The same batch again changes nothing: every outcome is the recorded one.
    again = await handler.execute_batch(batch)
    assert again == outcomes
    assert len(await store.load_stream(order_stream(known))) == 3
    status = await stored_status(redis_client, keys, ship_unknown.command_id)
    assert status["status"] == "rejected"
    assert status["stream_id"] == order_stream(ship_unknown.order_id)


async def test_a_batch_that_meets_another_writer_falls_back_and_loses_nothing(
    pg: asyncpg.Pool, redis_client: aioredis.Redis, keys: Keys, registry: Registry
) -> None:
    store = InterferingStore(pg, times=0)
    handler = CommandHandler(registry, store, redis_client, keys, conflict_retries=5)
    order_id = await created_order(handler)
    # Another writer appends version 2 after the batch loaded version 1.
    other = CommandHandler(registry, EventStore(pg), redis_client, keys, conflict_retries=5)
    original = store.load_streams

    async def load_then_interfere(conn, stream_ids):  # type: ignore[no-untyped-def]
        loaded = await original(conn, stream_ids)
        await other.execute(add(order_id, "intruder"))
        store.load_streams = original  # type: ignore[method-assign]
        return loaded

    store.load_streams = load_then_interfere  # type: ignore[method-assign]
    outcomes = await handler.execute_batch([add(order_id, "x"), add(order_id, "y")])
    assert [(o.status.value, o.version) for o in outcomes] == [("succeeded", 3), ("succeeded", 4)]
    stored = await EventStore(pg).load_stream(order_stream(order_id))
    assert [e.version for e in stored] == [1, 2, 3, 4]


async def test_a_stream_at_its_events_limit_takes_no_more_on_either_path(
    pg: asyncpg.Pool, redis_client: aioredis.Redis, keys: Keys
) -> None:
    limited = Registry([replace(DOMAIN, aggregates=[replace(ORDER, max_events=3)])])
    handler = CommandHandler(limited, EventStore(pg), redis_client, keys, conflict_retries=5)
    one_by_one = await created_order(handler)
    assert (await handler.execute(add(one_by_one))).version == 2
    assert (await handler.execute(add(one_by_one))).version == 3
    refused = await handler.execute(add(one_by_one))
    assert (refused.status, refused.version) == (CommandStatus.REJECTED, 3)
    assert refused.reason == "the order has reached its limit of 3 events"

    batched = await created_order(handler)
    commands: list[CommandBase] = [add(batched, f"p{i}") for i in range(4)]
    outcomes = await handler.execute_batch(commands)
    assert [(o.status.value, o.version) for o in outcomes] == [
        ("succeeded", 2),
        ("succeeded", 3),
        ("rejected", 3),
        ("rejected", 3),
    ]
    assert outcomes[3].reason == "the order has reached its limit of 3 events"
    store = EventStore(pg)
    for order_id in (one_by_one, batched):
        assert [e.version for e in await store.load_stream(order_stream(order_id))] == [1, 2, 3]
    status = await stored_status(redis_client, keys, commands[2].command_id)
    assert status["status"] == "rejected"
    assert status["reason"] == "the order has reached its limit of 3 events"


async def test_one_duplicate_is_dropped_after_one_lookup_and_the_batch_still_commits_at_once(
    pg: asyncpg.Pool, redis_client: aioredis.Redis, keys: Keys, registry: Registry
) -> None:
    store = EventStore(pg)
    handler = CommandHandler(registry, store, redis_client, keys, conflict_retries=5)
    order_id = await created_order(handler)
    published_twice = add(order_id, "twice")
    [first] = await handler.execute_batch([published_twice])
    lookups: list[list[uuid.UUID]] = []
    original = store.get_commands

    async def counting(conn, command_ids):  # type: ignore[no-untyped-def]
        lookups.append(list(command_ids))
        return await original(conn, command_ids)

    async def one_at_a_time(command: CommandBase) -> None:
        raise AssertionError(f"fell back to one command at a time for {command.command_id}")

    store.get_commands = counting  # type: ignore[method-assign]
    handler.execute = one_at_a_time  # type: ignore[method-assign,assignment]
    batch: list[CommandBase] = [add(order_id, "a"), published_twice, add(order_id, "b")]
    outcomes = await handler.execute_batch(batch)
    assert [(o.status.value, o.version) for o in outcomes] == [
        ("succeeded", 3),
        ("succeeded", first.version),
        ("succeeded", 4),
    ]
    assert lookups == [[c.command_id for c in batch]]
    stored = await store.load_stream(order_stream(order_id))
    assert [e.version for e in stored] == [1, 2, 3, 4]


def keyed(command: CommandBase, command_id: uuid.UUID, fingerprint: str) -> CommandBase:
    """`command` under an id a reused idempotency key gives (`command_id`, name-based, as
    `command_id_for` makes), with its request's fingerprint."""
    return command.model_copy(update={"command_id": command_id, "fingerprint": fingerprint})


@pytest.mark.parametrize("path", ["batch", "redelivered batch", "one at a time"])
async def test_a_reused_command_id_with_another_fingerprint_is_refused_and_changes_nothing(
    pg: asyncpg.Pool, redis_client: aioredis.Redis, keys: Keys, registry: Registry, path: str
) -> None:
    store = EventStore(pg)
    handler = CommandHandler(registry, store, redis_client, keys, conflict_retries=5)
    order_id = await created_order(handler)
    other_order = await created_order(handler)
    reused_id = command_id_for(f"reused-{uuid.uuid4()}")
    first = keyed(add(order_id, "first"), reused_id, "f" * 64)
    [done] = await handler.execute_batch([first])
    assert done.status is CommandStatus.SUCCEEDED
    first_status = await stored_status(redis_client, keys, reused_id)
    assert first_status["fingerprint"] == "f" * 64

    second = keyed(ShipOrder(**envelope(other_order)), reused_id, "e" * 64)
    if path == "one at a time":
        refused = await handler.execute(second)
    else:
        if path == "redelivered batch":
            handler._seen_before.add(reused_id)
        [refused] = await handler.execute_batch([second])
    assert (refused.status, refused.reason) == (CommandStatus.REJECTED, ID_REUSED_REASON)
    assert refused.version == 1
    assert [e.type for e in await store.load_stream(order_stream(other_order))] == ["OrderCreated"]
    record = await store.get_command(reused_id)
    assert record is not None
    assert (record.type, record.status, record.fingerprint) == ("AddItem", "succeeded", "f" * 64)
    # The first request's status is intact: the refusal never overwrites it.
    assert await stored_status(redis_client, keys, reused_id) == first_status

    # A genuine redelivery of the first request still gets its outcome.
    assert await handler.execute_batch([first]) == [done]
    assert await handler.execute(first) == done


async def test_a_refusal_of_a_reused_id_is_the_status_once_redis_forgot_the_first(
    pg: asyncpg.Pool, redis_client: aioredis.Redis, keys: Keys, registry: Registry
) -> None:
    handler = CommandHandler(registry, EventStore(pg), redis_client, keys, conflict_retries=5)
    order_id = await created_order(handler)
    reused_id = command_id_for(f"reused-{uuid.uuid4()}")
    await handler.execute_batch([keyed(add(order_id, "first"), reused_id, "f" * 64)])
    await forget_status(redis_client, keys, reused_id)
    second = keyed(ShipOrder(**envelope(order_id)), reused_id, "e" * 64)
    await handler.execute_batch([second, second])
    status = await stored_status(redis_client, keys, reused_id)
    assert status["status"] == "rejected"
    assert status["reason"] == ID_REUSED_REASON
    assert status["type"] == "ShipOrder"
    assert status["fingerprint"] == "e" * 64
