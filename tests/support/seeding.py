"""Many order views fast: written straight into Redis, in the layout the `order_views`
projection writes, for tests that need tens of thousands of orders in seconds.

The keys and their content come from the projection itself (`OrderViews.plan_run`), so this
is the projector's output without the event store, the queues or the version checks: use it
only on a prefix nothing else writes to.
"""

from __future__ import annotations

import random
import uuid
from collections import defaultdict
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from redis.asyncio import Redis

from common.contracts.envelopes import EventMetadata, RecordedEvent
from common.domain import stream_id
from common.readmodel.keys import Keys
from common.readmodel.projection import ViewChange
from orders.contracts import (
    OrderCancelled,
    OrderCreated,
    OrderEvent,
    OrderLine,
    OrderShipped,
    ShippingAddress,
)
from orders.projection import STREAM_TYPE, OrderViews

T0 = datetime(2024, 1, 1, tzinfo=UTC)
CITIES = ("London", "Paris", "Berlin", "Madrid", "Rome", "Vienna")
COUNTRIES = ("GB", "FR", "DE")
GENERATION = 1
COMMAND_OF = {
    "OrderCreated": "CreateOrder",
    "OrderShipped": "ShipOrder",
    "OrderCancelled": "CancelOrder",
}


def _recorded(
    order_id: uuid.UUID, version: int, payload: OrderEvent, at: datetime
) -> RecordedEvent:
    command_id = uuid.uuid4()
    return RecordedEvent(
        event_id=uuid.uuid4(),
        position=0,
        stream_id=stream_id(STREAM_TYPE, order_id),
        version=version,
        type=payload.type,
        data=payload.model_dump(mode="json", exclude={"type"}),
        metadata=EventMetadata(
            command_id=command_id,
            command_type=COMMAND_OF[payload.type],
            correlation_id=command_id,
            causation_id=command_id,
            occurred_at=at,
        ),
        recorded_at=at,
    )


def order_changes(orders: int, customers: int, seed: int = 12) -> Iterator[ViewChange]:
    """The views of `orders` orders (of `customers` customers, in the cities of `CITIES` and
    countries of `COUNTRIES` in turn, one or
    two lines of `sku-0`..`sku-49`; a third of them shipped, a sixth cancelled), as the
    projection would write them."""
    rng = random.Random(seed)
    projection = OrderViews()
    for n in range(orders):
        order_id = uuid.UUID(int=rng.getrandbits(128), version=4)
        at = T0 + timedelta(seconds=n)
        lines = [
            OrderLine(
                product_id=f"sku-{rng.randrange(50)}",
                quantity=rng.randint(1, 3),
                price=Decimal(rng.randint(100, 99_999)) / 100,
            )
            for _ in range(rng.randint(1, 2))
        ]
        events: list[OrderEvent] = [
            OrderCreated(
                order_id=order_id,
                customer_id=f"cust-{n % customers}",
                items=lines,
                shipping_address=ShippingAddress(
                    recipient=f"Person {n}",
                    street=f"{n} High Street",
                    city=CITIES[n % len(CITIES)],
                    postal_code=f"{10000 + n % 90000}",
                    country=COUNTRIES[n % len(COUNTRIES)],
                ),
            )
        ]
        if n % 3 == 1:
            events.append(OrderShipped())
        elif n % 6 == 2:
            events.append(OrderCancelled(reason="changed my mind"))
        recorded = [(_recorded(order_id, v, e, at), e) for v, e in enumerate(events, start=1)]
        yield projection.plan_run(None, recorded)


async def write_views(
    redis: Redis, keys: Keys, changes: Sequence[ViewChange], batch: int = 2000
) -> None:
    """Write each change (of an order new to the views) and make generation `GENERATION` the
    one queries read; pipelined, each sorted set's additions of a batch in one ZADD."""
    projection = keys.projection(OrderViews.keys_name())
    view_keys = projection.views(GENERATION)
    for start in range(0, len(changes), batch):
        added: dict[str, dict[str, float]] = defaultdict(dict)
        async with redis.pipeline(transaction=False) as pipe:
            for change in changes[start : start + batch]:
                pipe.hset(view_keys.key(change.view_key), mapping=dict(change.fields))
                if change.history_key is not None:
                    pipe.rpush(view_keys.key(change.history_key), *change.history)
                for suffix, score, member in change.zadd:
                    added[suffix][member] = float(score)
            for suffix, members in added.items():
                pipe.zadd(view_keys.key(suffix), members)
            await pipe.execute()
    await redis.set(projection.generation, GENERATION)
