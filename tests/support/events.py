"""Events for the read-path integration tests: seeding the event store as the command worker
would, publishing recorded events the way the relay does, waiting on conditions. Reading and
comparing the views lives in `tests/support/views.py`.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import TypeVar

import asyncpg

from common.contracts.envelopes import EventMetadata, RecordedEvent
from common.domain import stream_id
from common.eventstore.store import EventStore, NewEvent
from common.messaging.messages import event_message, events_message
from common.messaging.nodes import connect_any
from common.messaging.publishing import ConfirmedPublisher
from common.messaging.topology import declare_topology
from common.settings import Settings
from orders.contracts import (
    ItemAdded,
    OrderCancelled,
    OrderCreated,
    OrderEvent,
    OrderLine,
    OrderShipped,
    ShippingAddress,
)
from orders.projection import STREAM_TYPE
from tests.support.domains import topology_of

T = TypeVar("T")

T0 = datetime(2024, 1, 1, tzinfo=UTC)
CITIES = ("London", "Paris", "Berlin")
COMMAND_OF = {
    "OrderCreated": "CreateOrder",
    "ItemAdded": "AddItem",
    "OrderShipped": "ShipOrder",
    "OrderCancelled": "CancelOrder",
}


async def until(
    condition: Callable[[], Awaitable[T]], within: float, what: str, every: float = 0.05
) -> T:
    """Await `condition` until it returns something truthy; fail naming `what` at the deadline."""
    deadline = time.monotonic() + within
    while True:
        value = await condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within}s waiting for {what}")
        await asyncio.sleep(every)


def line(product: str, quantity: int, price: str) -> OrderLine:
    return OrderLine(product_id=product, quantity=quantity, price=Decimal(price))


def address(n: int) -> ShippingAddress:
    return ShippingAddress(
        recipient=f"Person {n}",
        street=f"{n} Main-Street",
        city=CITIES[n % len(CITIES)],
        postal_code=f"{10000 + n}",
        country="GB" if n % 2 else "FR",
    )


def order_stream(order_id: uuid.UUID | str) -> str:
    """The stream of an order: `Order-<id>`."""
    return stream_id(STREAM_TYPE, order_id)


class Ledger:
    """Appends events to the store as the command worker would, one command per event.
    `versions` is keyed by order id; the events go to the order's stream `Order-<id>`."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.store = EventStore(pool)
        self.versions: dict[uuid.UUID, int] = {}
        self.clock = 0
        self.last_position = 0

    async def append(self, order_id: uuid.UUID, payload: OrderEvent) -> uuid.UUID:
        """Append one event; returns its command id."""
        self.clock += 1
        command_id = uuid.uuid4()
        version = self.versions.get(order_id, 0)
        command_type = COMMAND_OF[payload.type]
        metadata = EventMetadata(
            command_id=command_id,
            command_type=command_type,
            correlation_id=uuid.uuid4(),
            causation_id=command_id,
            occurred_at=T0 + timedelta(seconds=self.clock),
        )
        positions = await self.store.append_to_stream(
            order_stream(order_id),
            [
                NewEvent(
                    event_id=uuid.uuid4(),
                    type=payload.type,
                    data=payload.model_dump(mode="json", exclude={"type"}),
                    metadata=metadata,
                )
            ],
            version,
            command_id=command_id,
            command_type=command_type,
            fingerprint=None,
        )
        self.versions[order_id] = version + 1
        self.last_position = max(self.last_position, *positions)
        return command_id

    async def create(
        self,
        customer: str,
        lines: Sequence[OrderLine],
        n: int = 0,
        order_id: uuid.UUID | None = None,
    ) -> uuid.UUID:
        order_id = order_id or uuid.uuid4()
        await self.append(
            order_id,
            OrderCreated(
                order_id=order_id,
                customer_id=customer,
                items=list(lines),
                shipping_address=address(n),
            ),
        )
        return order_id

    async def seed(self, orders: int) -> list[uuid.UUID]:
        """`orders` orders over three customers, with added items, shipments and cancels."""
        ids = []
        for n in range(orders):
            order_id = await self.create(
                f"cust-{n % 3}", [line(f"sku-{n % 5}", 1 + n % 3, f"{n + 1}.25")], n
            )
            ids.append(order_id)
            if n % 2 == 0:
                await self.append(order_id, ItemAdded(item=line(f"sku-{n % 5}", 1, f"{n + 1}.25")))
            if n % 4 == 1:
                await self.append(order_id, ItemAdded(item=line("sku-extra", 2, "0.10")))
            if n % 5 == 3:
                await self.append(order_id, OrderShipped())
            elif n % 7 == 6:
                await self.append(order_id, OrderCancelled(reason="customer asked"))
        return ids


async def all_events(pool: asyncpg.Pool, after: int = 0) -> list[RecordedEvent]:
    async with pool.acquire() as conn:
        return await EventStore.read_range(conn, after, 2**62, 1_000_000)


@contextlib.asynccontextmanager
async def event_publisher(
    settings: Settings, *, batched: bool = False
) -> AsyncIterator[Callable[[Sequence[RecordedEvent]], Awaitable[None]]]:
    """A function publishing recorded events to the events exchange as the relay does
    (confirmed): every projection's queue gets them. Each in a message of its own, or with
    `batched` all in one message (`event-batch`)."""
    topology = topology_of(settings)
    connection = await connect_any(settings.amqp_url)
    try:
        channel = await connection.channel()
        await declare_topology(channel, topology, settings.retry_base_delay_ms)
        publisher = await ConfirmedPublisher.open(connection, 10)

        async def send(events: Sequence[RecordedEvent]) -> None:
            if batched:
                await publisher.publish(topology.events_exchange, "", events_message(events))
                return
            for start in range(0, len(events), 200):
                chunk = events[start : start + 200]
                await publisher.publish_many(
                    topology.events_exchange, [("", event_message(e)) for e in chunk]
                )

        yield send
    finally:
        await connection.close()


async def publish(
    settings: Settings, events: Sequence[RecordedEvent], *, batched: bool = False
) -> None:
    async with event_publisher(settings, batched=batched) as send:
        await send(events)
