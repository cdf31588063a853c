"""The orders domain's commands and events.

Commands travel gateway -> RabbitMQ -> command worker; events are stored in the event store and
fanned out to projectors. Both are plain data: no behaviour, no infrastructure.
"""

from __future__ import annotations

from typing import Annotated, Literal
from uuid import UUID

from pydantic import Field

from common.contracts.base import Contract, Money, Quantity, Slug, Text
from common.contracts.commands import CommandBase


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


class OrderCommand(CommandBase):
    """A command on one order."""

    order_id: UUID


class CreateOrder(OrderCommand):
    type: Literal["CreateOrder"] = "CreateOrder"
    customer_id: Slug
    items: Annotated[list[OrderLine], Field(min_length=1, max_length=100)]
    shipping_address: ShippingAddress


class AddItem(OrderCommand):
    type: Literal["AddItem"] = "AddItem"
    item: OrderLine


class ShipOrder(OrderCommand):
    type: Literal["ShipOrder"] = "ShipOrder"


class CancelOrder(OrderCommand):
    type: Literal["CancelOrder"] = "CancelOrder"
    reason: Text


Command = CreateOrder | AddItem | ShipOrder | CancelOrder
COMMANDS = (CreateOrder, AddItem, ShipOrder, CancelOrder)


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


OrderEvent = OrderCreated | ItemAdded | OrderShipped | OrderCancelled
EVENTS = (OrderCreated, ItemAdded, OrderShipped, OrderCancelled)
