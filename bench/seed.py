"""Direct access to the run's stores: seeding events, copying views, raw Redis writes.

Everything here runs in the benchmark's own process, against the run's database and prefix.
"""

from __future__ import annotations

import random
import time
import uuid
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, cast

import asyncpg
from redis.asyncio import Redis
from redis.typing import EncodableT

from common.contracts.envelopes import EventMetadata
from common.domain import Registry, load_domains, stream_id
from common.eventstore.database import create_pool, prepare_database
from common.eventstore.store import CommandOutcome, EventStore, NewEvent
from common.readmodel.keys import Keys, ProjectionKeys
from common.readmodel.layout import ViewKeys, glob_escape
from common.readmodel.projection import Projection
from common.settings import get_settings
from orders.contracts import (
    ItemAdded,
    OrderCreated,
    OrderEvent,
    OrderLine,
    OrderShipped,
    ShippingAddress,
)
from orders.domain import ORDER
from orders.layout import customer_suffix, order_suffix
from orders.projection import OrderViews

ORDER_VIEWS = OrderViews.name
"""The projection whose views the queries read and the raw write floor stands for."""

RAW_GENERATION = 0
"""The generation of `order_views` the raw write floor fills: rebuilds number theirs from 1,
so no query, projector or rebuild ever looks at it."""

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
            command_type = COMMAND_OF[event.type]
            metadata = EventMetadata(
                command_id=command_id,
                command_type=command_type,
                correlation_id=uuid.uuid4(),
                causation_id=command_id,
                occurred_at=datetime.now(UTC),
            )
            outcomes.append(
                CommandOutcome(
                    command_id=command_id,
                    command_type=command_type,
                    stream_id=stream_id(ORDER.stream_type, order_id),
                    status="succeeded",
                    reason=None,
                    version=version,
                    fingerprint=None,
                    events=[
                        NewEvent(
                            event_id=uuid.uuid4(),
                            type=event.type,
                            schema_version=ORDER.event_version(event.type),
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


def registry() -> Registry:
    """The domains the run's processes load: they inherit this process's `DOMAINS`."""
    return load_domains(get_settings().domain_names)


def order_views(prefix: str) -> ProjectionKeys:
    return Keys(prefix).projection(OrderViews.keys_name())


async def projection_lag(
    database_url: str, redis: Redis, keys: Keys, projections: Mapping[str, Projection[Any]]
) -> int:
    """The most positions any projection's live views are behind the last event of a stream
    it follows (events of other streams never move its checkpoint)."""
    conn = await asyncpg.connect(database_url)
    try:
        heads = {}
        for name, projection in projections.items():
            # Backwards along the primary key: stops at the first event the projection follows.
            head = await conn.fetchval(
                "SELECT position FROM events WHERE split_part(stream_id, '-', 1) = ANY($1::text[])"
                " ORDER BY position DESC LIMIT 1",
                sorted(projection.categories),
            )
            heads[name] = int(head or 0)
    finally:
        await conn.close()
    lag = 0
    for name, head in heads.items():
        projection_keys = keys.projection(projections[name].keys_name())
        live = await redis.get(projection_keys.generation)
        if live is None:
            lag = max(lag, head)
            continue
        checkpoint = await redis.get(projection_keys.views(int(live)).checkpoint)
        lag = max(lag, head - int(checkpoint or 0))
    return lag


async def wait_caught_up(
    database_url: str,
    redis_url: str,
    prefix: str,
    timeout_s: float,
    only: Sequence[str] = (),
) -> tuple[bool, int]:
    """Wait until every projection (or those in `only`) applied every stored event; (caught
    up, lag left)."""
    import asyncio

    redis = Redis.from_url(redis_url)
    keys = Keys(prefix)
    projections = registry().projections
    if only:
        projections = {name: projections[name] for name in only}
    deadline = time.monotonic() + timeout_s
    try:
        while True:
            lag = await projection_lag(database_url, redis, keys, projections)
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
    keys = order_views(prefix)
    try:
        live = await redis.get(keys.generation)
        if live is None:
            return []
        view_keys = keys.views(int(live))
        async with redis.pipeline(transaction=False) as pipe:
            for order_id in order_ids:
                pipe.hgetall(view_keys.key(order_suffix(order_id)))
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


def raw_floor_keys(prefix: str) -> ViewKeys:
    """Where the raw write floor writes: a generation of `order_views` nothing reads."""
    return order_views(prefix).views(RAW_GENERATION)


async def raw_redis_writes(
    redis_url: str, prefix: str, events: int, batch: int, sample_view: dict[bytes, bytes] | None
) -> dict[str, Any]:
    """The raw write floor: per event one HSET of a view-sized hash and one ZADD, pipelined
    `batch` events per round trip, as fast as one client goes, under the key names the
    `order_views` projection uses (`raw_floor_keys`; the caller deletes them)."""
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
    keys = raw_floor_keys(prefix)
    ids = [str(uuid.UUID(int=i)) for i in range(events)]
    customers = [keys.key(customer_suffix(f"cust-{c}")) for c in range(500)]
    try:
        started = time.perf_counter()
        for start in range(0, events, batch):
            async with redis.pipeline(transaction=False) as pipe:
                for i in range(start, min(start + batch, events)):
                    pipe.hset(keys.key(order_suffix(ids[i])), mapping=fields)
                    pipe.zadd(customers[i % 500], {ids[i]: float(i)})
                await pipe.execute()
        seconds = time.perf_counter() - started
    finally:
        await redis.aclose()
    return {"events": events, "seconds": seconds, "events_per_s": events / seconds}


async def orders_created(database_url: str) -> int:
    conn = await asyncpg.connect(database_url)
    try:
        return int(await conn.fetchval("SELECT count(*) FROM events WHERE type = 'OrderCreated'"))
    finally:
        await conn.close()


async def key_memory(redis_url: str, prefix: str) -> list[tuple[str, int]]:
    """Every key under `prefix` and the bytes `MEMORY USAGE ... SAMPLES 0` gives it: the
    value, the key and its entry in the keyspace, every element counted (not sampled). The run
    shares its Redis index with others, so its keys are found by their prefix (SCAN), not by a
    difference of `used_memory`."""
    redis = Redis.from_url(redis_url)
    try:
        names = [
            key.decode()
            async for key in redis.scan_iter(match=glob_escape(prefix) + "*", count=1000)
        ]
        usage: list[tuple[str, int]] = []
        for start in range(0, len(names), 1000):
            chunk = names[start : start + 1000]
            async with redis.pipeline(transaction=False) as pipe:
                for name in chunk:
                    pipe.memory_usage(name, samples=0)
                sizes = await pipe.execute()
            usage += [(n, int(b)) for n, b in zip(chunk, sizes, strict=True) if b is not None]
        return usage
    finally:
        await redis.aclose()


async def sample_view(redis_url: str, prefix: str, order_id: str) -> dict[bytes, bytes] | None:
    redis = Redis.from_url(redis_url)
    keys = order_views(prefix)
    try:
        live = await redis.get(keys.generation)
        if live is None:
            return None
        view_key = keys.views(int(live)).key(order_suffix(order_id))
        raw = cast(dict[bytes, bytes], await redis.hgetall(view_key))
        return raw or None
    finally:
        await redis.aclose()
