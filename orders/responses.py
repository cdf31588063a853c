"""The models that document the order queries' answers in the OpenAPI schema.

Answers are serialised from Redis directly; these models only describe them.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field

from orders.view import ViewStatus

MONEY = r"^[0-9]+\.[0-9]{2}$"
"""Money in answers: a string with exactly two decimals."""


class OrderLineView(BaseModel):
    """One product on an order, as the views show it."""

    model_config = ConfigDict(extra="forbid")

    product_id: str
    quantity: int
    price: Annotated[str, Field(pattern=MONEY)]


class ShippingAddressView(BaseModel):
    model_config = ConfigDict(extra="forbid")

    recipient: str
    street: str
    city: str
    postal_code: str
    country: str


class Order(BaseModel):
    """An order as the views show it: `GET /orders/{order_id}`, and each item of a page."""

    model_config = ConfigDict(extra="forbid")

    order_id: UUID
    customer_id: str
    status: ViewStatus
    total_amount: Annotated[str, Field(pattern=MONEY)]
    item_count: int
    items: list[OrderLineView]
    shipping_address: ShippingAddressView
    created_at: datetime
    updated_at: datetime
    shipped_at: datetime | None
    cancelled_at: datetime | None
    cancel_reason: str | None
    version: int
    """How many events the view has applied."""


class OrderPage(BaseModel):
    """One page of orders (customer orders, search)."""

    model_config = ConfigDict(extra="forbid")

    items: list[Order]
    total: int
    page: int
    page_size: int
    total_pages: int


class HistoryEvent(BaseModel):
    model_config = ConfigDict(extra="forbid")

    position: int
    """Place in the global log."""
    version: int
    """Place in the order's stream."""
    type: str
    data: dict[str, Any]
    time: datetime
    command_id: UUID


class OrderHistory(BaseModel):
    """One page of an order's events in version order: `GET /orders/{order_id}/history`."""

    model_config = ConfigDict(extra="forbid")

    order_id: UUID
    events: list[HistoryEvent]
    next: str | None
    """The URL of the next page; null on the last one."""


class ProductSalesView(BaseModel):
    """What one product sold on shipped orders: `GET /products/{product_id}/sales`."""

    model_config = ConfigDict(extra="forbid")

    product_id: str
    units: int
    revenue: Annotated[str, Field(pattern=MONEY)]
    orders: int
    """Shipped orders containing the product."""


class TopProducts(BaseModel):
    """The best-selling products: `GET /products/top`."""

    model_config = ConfigDict(extra="forbid")

    by: str
    items: list[ProductSalesView]
