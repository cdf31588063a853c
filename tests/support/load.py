"""Command mixes for load and fault tests: many orders, concurrent commands on the same ones."""

from __future__ import annotations

import random
import uuid
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from orders.contracts import (
    AddItem,
    CancelOrder,
    Command,
    CreateOrder,
    OrderLine,
    ShipOrder,
    ShippingAddress,
)

ADDRESS = ShippingAddress(
    recipient="Load Tester",
    street="1 Queue Lane",
    city="Rabbitburg",
    postal_code="10115",
    country="DE",
)


def envelope(order_id: uuid.UUID) -> dict[str, Any]:
    """What every command carries besides its own fields, fresh ids each call."""
    return {
        "command_id": uuid.uuid4(),
        "order_id": order_id,
        "correlation_id": uuid.uuid4(),
        "issued_at": datetime.now(UTC),
    }


def command_mix(
    orders: int, additions_per_order: int, seed: int = 7
) -> tuple[list[Command], list[Command]]:
    """Creates first, then the rest shuffled: item additions, and a ship or cancel for some."""
    rng = random.Random(seed)
    order_ids = [uuid.uuid4() for _ in range(orders)]
    creates: list[Command] = [
        CreateOrder(
            customer_id=f"cust-{i % 17}",
            items=[OrderLine(product_id="sku-0", quantity=1, price=Decimal("9.99"))],
            shipping_address=ADDRESS,
            **envelope(order_id),
        )
        for i, order_id in enumerate(order_ids)
    ]
    rest: list[Command] = []
    for order_id in order_ids:
        for n in range(additions_per_order):
            rest.append(
                AddItem(
                    item=OrderLine(
                        product_id=f"sku-{n % 5}", quantity=1 + n % 3, price=Decimal("0.35")
                    ),
                    **envelope(order_id),
                )
            )
    rng.shuffle(rest)
    for i, order_id in enumerate(order_ids):
        if i % 5 == 0:
            rest.append(ShipOrder(**envelope(order_id)))
        elif i % 7 == 0:
            rest.append(CancelOrder(reason="changed plans", **envelope(order_id)))
    return creates, rest
