"""What the peer's processes exchange: the request body, the command, the event, the view and
the visibility notification."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Annotated
from uuid import UUID

import orjson
from pydantic import BaseModel, ConfigDict, Field, StringConstraints

MoneyText = Annotated[str, StringConstraints(pattern=r"^(?:0|[1-9][0-9]{0,8})(?:\.[0-9]{1,2})?$")]
"""An amount as a decimal string (`"12.50"`): money never goes through a float."""
Slug = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")]
Text = Annotated[str, StringConstraints(min_length=1, max_length=200, strip_whitespace=True)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class OrderLine(Strict):
    product_id: Slug
    quantity: Annotated[int, Field(strict=True, gt=0, le=100_000)]
    price: MoneyText


class ShippingAddress(Strict):
    recipient: Text
    street: Text
    city: Text
    postal_code: Annotated[str, Field(pattern=r"^[A-Za-z0-9 -]{2,12}$")]
    country: Annotated[str, Field(pattern=r"^[A-Z]{2}$")]


class CreateOrder(Strict):
    """The body of `POST /orders`, the same fields as the project's."""

    customer_id: Slug
    items: Annotated[list[OrderLine], Field(min_length=1, max_length=100)]
    shipping_address: ShippingAddress


class Accepted(Strict):
    """The 202's body: the ids the client follows the order by."""

    command_id: UUID
    order_id: UUID


class PlaceOrder(CreateOrder):
    """The command on the commands queue."""

    command_id: UUID
    order_id: UUID
    accepted_at: datetime


class OrderPlaced(PlaceOrder):
    """The event on the fanout exchange, once its row is in PostgreSQL."""

    event_id: int
    total: MoneyText


def total_of(items: list[OrderLine]) -> str:
    return str(sum((Decimal(line.price) * line.quantity for line in items), Decimal(0)))


def visible_message(command_id: str, order_id: str, version: int = 1) -> bytes:
    """What a projector publishes once a command's effect is in the views: the same message as
    the project's projectors, so one subscriber follows both."""
    return orjson.dumps(
        {
            "command_id": command_id,
            "stream_id": order_id,
            "status": "succeeded",
            "version": version,
            "projected": True,
        }
    )


class PeerKeys:
    """The peer's Redis names, under `{prefix}peer:` in the deployment's key prefix."""

    def __init__(self, prefix: str) -> None:
        self.base = f"{prefix}peer:"

    def order(self, order_id: str) -> str:
        return f"{self.base}order:{order_id}"

    def customer_orders(self, customer_id: str) -> str:
        return f"{self.base}customer:{customer_id}:orders"

    @property
    def visible_channel(self) -> str:
        return f"{self.base}notify:commands"
