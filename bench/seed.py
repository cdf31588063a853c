"""Direct access to the run's stores: seeding events, copying views, raw Redis writes.

Everything here runs in the benchmark's own process, against the run's database and prefix.
"""

from __future__ import annotations

import random
import time
import uuid
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, cast

import asyncpg
from redis.asyncio import Redis
from redis.typing import EncodableT

from common.contracts.envelopes import EventMetadata
from common.contracts.orders import (
    ItemAdded,
    OrderCreated,
    OrderEvent,
    OrderLine,
    OrderShipped,
    ShippingAddress,
)
from common.eventstore.database import create_pool, prepare_database
from common.eventstore.store import CommandOutcome, EventStore, NewEvent
from common.readmodel.keys import Keys

EVENTS_PER_ORDER = 5
"""A seeded order: created, three lines added, shipped."""

COMMAND_OF = {"OrderCreated": "CreateOrder", "ItemAdded": "AddItem", "OrderShipped": "ShipOrder"}

ADDRESS = ShippingAddress(
    recipient="Bench Buyer",
    street="1 Queue Lane",
    city="Rabbitburg",
    postal_code="10115",
    country="DE",
)


def _line(rng: random.Random) -> OrderLine:
    return OrderLine(
        product_id=f"sku-{rng.randrange(200)}",
        quantity=rng.randint(1, 4),
        price=Decimal(rng.randint(100, 9999)) / 100,
    )


def order_events(order_id: uuid.UUID, rng: random.Random, customers: int) -> list[OrderEvent]:
    return [
        OrderCreated(
            order_id=order_id,
            customer_id=f"cust-{rng.randrange(customers)}",
            items=[_line(rng)],
            shipping_address=ADDRESS,
        ),
        ItemAdded(item=_line(rng)),
        ItemAdded(item=_line(rng)),
        ItemAdded(item=_line(rng)),
        OrderShipped(),
    ]


def seeded_outcomes(orders: int, seed: int, customers: int) -> list[CommandOutcome]:
    """One command per event, as the command worker would have recorded them."""
    rng = random.Random(seed)
    outcomes = []
    for _ in range(orders):
        order_id = uuid.uuid4()
        for version, event in enumerate(order_events(order_id, rng, customers), start=1):
            command_id = uuid.uuid4()
            metadata = EventMetadata(
                command_id=command_id,
                correlation_id=uuid.uuid4(),
                causation_id=command_id,
                occurred_at=datetime.now(UTC),
            )
            outcomes.append(
                CommandOutcome(
                    command_id=command_id,
                    command_type=COMMAND_OF[event.type],
                    stream_id=str(order_id),
                    status="succeeded",
                    reason=None,
                    version=version,
                    fingerprint=None,
                    events=[
                        NewEvent(
                            event_id=uuid.uuid4(),
                            type=event.type,
                            data=event.model_dump(mode="json", exclude={"type"}),
                            metadata=metadata,
                        )
                    ],
                )
            )
    return outcomes


async def event_count(database_url: str) -> int:
    conn = await asyncpg.connect(database_url)
    try:
        return int(await conn.fetchval("SELECT count(*) FROM events"))
    finally:
        await conn.close()


async def append_times(database_url: str, since_epoch: float) -> dict[str, float]:
    """When each command's events were appended, by command id, in seconds since the epoch.
    PostgreSQL's clock is this machine's, so these compare with the generator's times."""
    conn = await asyncpg.connect(database_url)
    try:
        rows = await conn.fetch(
            "SELECT metadata->>'command_id' AS command_id,"
            " extract(epoch FROM min(recorded_at))::float8 AS at"
            " FROM events WHERE recorded_at >= to_timestamp($1) GROUP BY 1",
            since_epoch,
        )
    finally:
        await conn.close()
    return {row["command_id"]: row["at"] for row in rows}


async def seed_events(database_url: str, events: int, seed: int, customers: int) -> int:
    """Append about `events` more events (whole orders), 500 commands per transaction."""
    await prepare_database(database_url)
    orders = max(events // EVENTS_PER_ORDER, 0)
    if orders == 0:
        return 0
    outcomes = seeded_outcomes(orders, seed, customers)
    pool = await create_pool(database_url, 2)
    store = EventStore(pool)
    try:
        for start in range(0, len(outcomes), 500):
            async with pool.acquire() as conn, conn.transaction():
                await store.append_batch(conn, outcomes[start : start + 500])
    finally:
        await pool.close()
    return len(outcomes)


async def projection_lag(database_url: str, redis: Redis, keys: Keys) -> int:
    """Positions between the event store's head and the live views' checkpoint."""
    conn = await asyncpg.connect(database_url)
    try:
        head = int(await conn.fetchval("SELECT coalesce(max(position), 0) FROM events"))
    finally:
        await conn.close()
    live = await redis.get(keys.generation)
    if live is None:
        return head
    checkpoint = await redis.get(keys.views(int(live)).checkpoint)
    return max(head - int(checkpoint or 0), 0)


async def wait_caught_up(
    database_url: str, redis_url: str, prefix: str, timeout_s: float
) -> tuple[bool, int]:
    """Wait until the projectors applied every stored event; (caught up, lag left)."""
    import asyncio

    redis = Redis.from_url(redis_url)
    keys = Keys(prefix)
    deadline = time.monotonic() + timeout_s
    try:
        while True:
            lag = await projection_lag(database_url, redis, keys)
            if lag == 0:
                return True, 0
            if time.monotonic() > deadline:
                return False, lag
            await asyncio.sleep(0.2)
    finally:
        await redis.aclose()


async def copy_views_to_floor(redis_url: str, prefix: str, order_ids: list[str]) -> list[str]:
    """Copy the live views of `order_ids` to the floor app's keys; the ids copied."""
    from bench.floor_app import floor_key

    redis = Redis.from_url(redis_url)
    keys = Keys(prefix)
    try:
        live = await redis.get(keys.generation)
        if live is None:
            return []
        view_keys = keys.views(int(live))
        async with redis.pipeline(transaction=False) as pipe:
            for order_id in order_ids:
                pipe.hgetall(view_keys.order(order_id))
            views = await pipe.execute()
        copied = []
        async with redis.pipeline(transaction=False) as pipe:
            for order_id, view in zip(order_ids, views, strict=True):
                if view:
                    pipe.hset(floor_key(prefix, order_id), mapping=view)
                    copied.append(order_id)
            await pipe.execute()
        return copied
    finally:
        await redis.aclose()


async def raw_redis_writes(
    redis_url: str, prefix: str, events: int, batch: int, sample_view: dict[bytes, bytes] | None
) -> dict[str, Any]:
    """The raw write floor: per event one HSET of a view-sized hash and one ZADD, pipelined
    `batch` events per round trip, as fast as one client goes."""
    redis = Redis.from_url(redis_url)
    fields: dict[EncodableT, EncodableT] = (
        {k.decode(): v.decode() for k, v in sample_view.items()}
        if sample_view
        else {
            "order_id": str(uuid.uuid4()),
            "customer_id": "cust-1",
            "status": "created",
            "total_amount": "123.45",
            "item_count": "3",
            "items": '[{"product_id":"sku-1","quantity":2,"price":"9.99"}]' * 3,
            "shipping_address": ADDRESS.model_dump_json(),
            "created_at": datetime.now(UTC).isoformat(),
            "updated_at": datetime.now(UTC).isoformat(),
            "shipped_at": "",
            "cancelled_at": "",
            "cancel_reason": "",
            "version": "3",
        }
    )
    base = f"{prefix}raw:"
    try:
        started = time.perf_counter()
        for start in range(0, events, batch):
            async with redis.pipeline(transaction=False) as pipe:
                for i in range(start, min(start + batch, events)):
                    pipe.hset(f"{base}order:{i}", mapping=fields)
                    pipe.zadd(f"{base}customer:{i % 500}", {str(i): float(i)})
                await pipe.execute()
        seconds = time.perf_counter() - started
    finally:
        await redis.aclose()
    return {"events": events, "seconds": seconds, "events_per_s": events / seconds}


async def sample_view(redis_url: str, prefix: str, order_id: str) -> dict[bytes, bytes] | None:
    redis = Redis.from_url(redis_url)
    keys = Keys(prefix)
    try:
        live = await redis.get(keys.generation)
        if live is None:
            return None
        raw = cast(dict[bytes, bytes], await redis.hgetall(keys.views(int(live)).order(order_id)))
        return raw or None
    finally:
        await redis.aclose()
