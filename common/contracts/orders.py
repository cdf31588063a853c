"""The orders domain's commands and events.

Commands travel gateway -> RabbitMQ -> command worker; events are stored in the event store and
fanned out to projectors. Both are plain data: no behaviour, no infrastructure.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Annotated, Literal
from uuid import UUID

from pydantic import Field, StringConstraints, TypeAdapter

from common.contracts.base import Contract, Money, Quantity, Slug, Text


class OrderLine(Contract):
    """One product on an order."""

    product_id: Slug
    quantity: Quantity
    price: Money


class ShippingAddress(Contract):
    """Where an order goes."""

    recipient: Text
    street: Text
    city: Text
    postal_code: Annotated[str, Field(pattern=r"^[A-Za-z0-9 -]{2,12}$")]
    country: Annotated[str, Field(pattern=r"^[A-Z]{2}$")]


# --- commands ---------------------------------------------------------------------------------


class CommandBase(Contract):
    """What every command message carries besides its own fields."""

    command_id: UUID
    order_id: UUID
    correlation_id: UUID
    causation_id: UUID | None = None
    schema_version: Literal[1] = 1
    issued_at: datetime
    fingerprint: Annotated[str, StringConstraints(pattern=r"^[!-~]{1,128}$")] | None = None
    """Hash of the request that produced the command, to refuse a reused idempotency key."""


class CreateOrder(CommandBase):
    type: Literal["CreateOrder"] = "CreateOrder"
    customer_id: Slug
    items: Annotated[list[OrderLine], Field(min_length=1, max_length=100)]
    shipping_address: ShippingAddress


class AddItem(CommandBase):
    type: Literal["AddItem"] = "AddItem"
    item: OrderLine


class ShipOrder(CommandBase):
    type: Literal["ShipOrder"] = "ShipOrder"


class CancelOrder(CommandBase):
    type: Literal["CancelOrder"] = "CancelOrder"
    reason: Text


Command = Annotated[CreateOrder | AddItem | ShipOrder | CancelOrder, Field(discriminator="type")]
COMMAND_ADAPTER: TypeAdapter[Command] = TypeAdapter(Command)
COMMAND_TYPES = frozenset({"CreateOrder", "AddItem", "ShipOrder", "CancelOrder"})


# --- events -----------------------------------------------------------------------------------


class OrderCreated(Contract):
    type: Literal["OrderCreated"] = "OrderCreated"
    order_id: UUID
    customer_id: Slug
    items: list[OrderLine]
    shipping_address: ShippingAddress


class ItemAdded(Contract):
    type: Literal["ItemAdded"] = "ItemAdded"
    item: OrderLine


class OrderShipped(Contract):
    type: Literal["OrderShipped"] = "OrderShipped"


class OrderCancelled(Contract):
    type: Literal["OrderCancelled"] = "OrderCancelled"
    reason: Text


OrderEvent = Annotated[
    OrderCreated | ItemAdded | OrderShipped | OrderCancelled, Field(discriminator="type")
]
ORDER_EVENT_ADAPTER: TypeAdapter[OrderEvent] = TypeAdapter(OrderEvent)


def line_total(line: OrderLine) -> Decimal:
    """quantity x price, exact."""
    return line.price * line.quantity
