"""The orders domain's command routes: each turns a request into one command and queues it,
with the behaviour every command route shares (see `gateway/commands_api.py`)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from pydantic import ValidationError
from starlette.responses import Response

from gateway.bodies import read_json, read_optional_json
from gateway.commands_api import command_endpoint
from gateway.openapi import json_body, path_parameter, query_parameter
from gateway.problems import problem_from_validation_error
from gateway.routing import path_uuid
from gateway.submission import max_body_bytes, submit
from orders.contracts import AddItem, CancelOrder, CreateOrder, ShipOrder
from orders.domain import ORDER
from orders.requests import (
    AddItemRequest,
    CancelOrderRequest,
    CreateOrderRequest,
    ShipOrderRequest,
)

router = APIRouter(tags=["commands"])

_ORDER_ID = path_parameter("order_id", "The order's id, as returned by `POST /orders`.")


# --- routes -----------------------------------------------------------------------------------


@command_endpoint(
    router,
    "POST",
    "/orders",
    aggregate=ORDER,
    summary="Create an order",
    body=json_body(CreateOrderRequest),
)
async def create_order(request: Request) -> Response:
    body = await read_json(request, CreateOrderRequest, max_body_bytes(request))
    return await submit(
        request,
        ORDER,
        lambda fields: CreateOrder(
            **fields,
            customer_id=body.customer_id,
            items=body.items,
            shipping_address=body.shipping_address,
        ),
        path="/orders",
        body=body,
    )


@command_endpoint(
    router,
    "POST",
    "/orders/{order_id}/items",
    aggregate=ORDER,
    summary="Add an item to an order",
    body=json_body(AddItemRequest),
    parameters=[_ORDER_ID],
)
async def add_item(request: Request) -> Response:
    order_id = path_uuid(request, "order_id")
    body = await read_json(request, AddItemRequest, max_body_bytes(request))
    return await submit(
        request,
        ORDER,
        lambda fields: AddItem(**fields, item=body),
        path=f"/orders/{order_id}/items",
        body=body,
        aggregate_id=order_id,
    )


@command_endpoint(
    router,
    "POST",
    "/orders/{order_id}/ship",
    aggregate=ORDER,
    summary="Ship an order",
    body=json_body(ShipOrderRequest, required=False),
    parameters=[_ORDER_ID],
)
async def ship_order(request: Request) -> Response:
    order_id = path_uuid(request, "order_id")
    body = await read_optional_json(request, ShipOrderRequest, max_body_bytes(request))
    return await submit(
        request,
        ORDER,
        lambda fields: ShipOrder(**fields),
        path=f"/orders/{order_id}/ship",
        body=body,
        aggregate_id=order_id,
    )


@command_endpoint(
    router,
    "DELETE",
    "/orders/{order_id}",
    aggregate=ORDER,
    summary="Cancel an order",
    parameters=[
        _ORDER_ID,
        query_parameter(
            "reason",
            "Why the order is cancelled (1-200 characters).",
            CancelOrderRequest.model_json_schema()["properties"]["reason"],
        ),
    ],
)
async def cancel_order(request: Request) -> Response:
    order_id = path_uuid(request, "order_id")
    try:
        reason = request.query_params.get("reason")
        query = CancelOrderRequest.model_validate({} if reason is None else {"reason": reason})
    except ValidationError as exc:
        raise problem_from_validation_error(exc) from None
    return await submit(
        request,
        ORDER,
        lambda fields: CancelOrder(**fields, reason=query.reason),
        path=f"/orders/{order_id}",
        body=query,
        aggregate_id=order_id,
    )
