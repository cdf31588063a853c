"""The HTTP request bodies of the command routes, validated strictly at the edge.

They reuse the contracts' field types, so a request that passes here cannot fail as a command:
money is parsed from the JSON text straight into `Decimal`, quantities must be JSON integers,
and unknown fields are an error.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from common.contracts.base import Contract, Slug, Text
from orders.contracts import OrderLine, ShippingAddress


class CreateOrderRequest(Contract):
    """Body of `POST /orders`; the gateway assigns the order id."""

    customer_id: Slug
    items: Annotated[list[OrderLine], Field(min_length=1, max_length=100)]
    shipping_address: ShippingAddress


class AddItemRequest(OrderLine):
    """Body of `POST /orders/{order_id}/items`: one order line."""


class ShipOrderRequest(Contract):
    """Body of `POST /orders/{order_id}/ship`: nothing, or an empty JSON object."""


class CancelOrderRequest(Contract):
    """The `reason` query parameter of `DELETE /orders/{order_id}`."""

    reason: Text
