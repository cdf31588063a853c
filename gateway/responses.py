"""What the command routes answer, and the models that document it in the OpenAPI schema.

Responses are serialised with orjson directly; the models only describe them.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any
from uuid import UUID

import orjson
from pydantic import BaseModel, ConfigDict, Field
from starlette.responses import Response

from common.contracts.orders import Command
from common.readmodel.commands import CommandStatus
from common.readmodel.order_view import ViewStatus

JSON = "application/json"
MONEY = r"^[0-9]+\.[0-9]{2}$"
"""Money in answers: a string with exactly two decimals."""


class AcceptedCommand(BaseModel):
    """The command is queued durably; follow `Location` for its outcome."""

    command_id: UUID
    order_id: UUID


class CommandStatusView(BaseModel):
    """Where a command is: `accepted` by the gateway, then an outcome from the workers."""

    command_id: UUID
    type: str
    order_id: UUID
    status: CommandStatus
    reason: str | None
    version: int | None
    """The order's version after the command, once it succeeded."""


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
    """An order's events in version order: `GET /orders/{order_id}/history`."""

    model_config = ConfigDict(extra="forbid")

    order_id: UUID
    events: list[HistoryEvent]


class FieldError(BaseModel):
    field: str
    """Dotted path of the invalid input: `items.0.price`, `order_id`, `Idempotency-Key`."""
    message: str


class ProblemDetails(BaseModel):
    """An error, as `application/problem+json` (RFC 9457)."""

    type: str
    title: str
    status: int
    detail: str
    errors: list[FieldError] | None = None


def accepted_response(command: Command) -> Response:
    """202 with the ids and `Location: /commands/{command_id}`."""
    command_id = str(command.command_id)
    body = orjson.dumps({"command_id": command_id, "order_id": str(command.order_id)})
    response = Response(body, 202, media_type=JSON)
    response.raw_headers.append((b"location", f"/commands/{command_id}".encode()))
    return response


def json_response(content: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(content), status, media_type=JSON)
