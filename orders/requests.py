"""The HTTP request bodies of the command routes, validated strictly at the edge.

They reuse the contracts' field types, so a request that passes here cannot fail as a command:
money is a decimal string taken as written into `Decimal`, quantities are whole JSON numbers,
and unknown fields are an error. Their JSON schemas, published in the OpenAPI document, state
all of it: a request that matches them is accepted, one that does not is refused.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from common.contracts.base import Contract, MoneyText, Slug, Text
from orders.contracts import OrderLine, ShippingAddress


class OrderLineRequest(OrderLine):
    """One order line as a client sends it: the price as a string, `"12.50"`."""

    price: MoneyText


class CreateOrderRequest(Contract):
    """Body of `POST /orders`; the gateway assigns the order id."""

    customer_id: Slug
    items: Annotated[list[OrderLineRequest], Field(min_length=1, max_length=100)]
    shipping_address: ShippingAddress


class AddItemRequest(OrderLineRequest):
    """Body of `POST /orders/{order_id}/items`: one order line."""


class ShipOrderRequest(Contract):
    """Body of `POST /orders/{order_id}/ship`: nothing, or an empty JSON object."""


class CancelOrderRequest(Contract):
    """The `reason` query parameter of `DELETE /orders/{order_id}`."""

    reason: Text
