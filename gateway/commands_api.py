"""The write side over HTTP: each route turns a request into one command and queues it.

Every route follows the same steps: validate (415/413/422), settle the command's identity
(idempotency key or new ids, 422 on a reused key), then `dispatch`: publish with a confirm (503
if RabbitMQ does not confirm), record `accepted` in Redis, answer 202. Nothing is answered 202
before the broker has the command. `GET /commands/{command_id}` reports where it got to.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Annotated, Any
from uuid import UUID

from fastapi import APIRouter, Path, Request
from pydantic import ValidationError
from starlette.responses import Response

from common.contracts.orders import (
    AddItem,
    CancelOrder,
    CreateOrder,
    ShipOrder,
)
from common.readmodel.commands import get_status
from gateway import idempotency
from gateway.bodies import read_json, read_optional_json
from gateway.middleware import CORRELATION_HEADER
from gateway.openapi import (
    header_parameter,
    json_body,
    path_parameter,
    problem_response,
    query_parameter,
    ref,
)
from gateway.problems import (
    Problem,
    ProblemType,
    problem_from_validation_error,
    unavailable,
)
from gateway.requests import (
    AddItemRequest,
    CancelOrderRequest,
    CreateOrderRequest,
    ShipOrderRequest,
)
from gateway.responses import (
    AcceptedCommand,
    CommandStatusView,
    json_response,
)
from gateway.routing import RawEndpoint, RawRoute, path_uuid
from gateway.runtime import runtime_of
from gateway.submission import REDIS_ERRORS, command_fields, dispatch

log = logging.getLogger(__name__)

router = APIRouter(tags=["commands"])

_ORDER_ID = path_parameter("order_id", "The order's id, as returned by `POST /orders`.")


# --- OpenAPI description shared by the command routes ------------------------------------------

_COMMAND_HEADERS = [
    header_parameter(
        idempotency.HEADER,
        "1-200 printable ASCII characters; repeating a request with the same key returns the"
        " same ids and takes effect once. Remembered for 24 hours.",
        {"type": "string", "pattern": idempotency.KEY_PATTERN},
    ),
    header_parameter(CORRELATION_HEADER, "A UUID to follow the command through logs; echoed back."),
]
_COMMAND_RESPONSES: dict[int | str, dict[str, Any]] = {
    202: {
        "description": "Queued; `Location` is the command's status.",
        "content": {"application/json": {"schema": ref(AcceptedCommand)}},
        "headers": {"Location": {"schema": {"type": "string"}}},
    },
    413: problem_response("The body is larger than allowed."),
    415: problem_response("The body is not `application/json`."),
    422: problem_response("Invalid input or reused Idempotency-Key; `errors` names the fields."),
    503: problem_response("RabbitMQ did not take the command; retry after `Retry-After`."),
}


def command_endpoint(
    method: str,
    path: str,
    *,
    summary: str,
    body: dict[str, Any] | None = None,
    parameters: list[dict[str, Any]] | None = None,
) -> Callable[[RawEndpoint], RawEndpoint]:
    """Register a command endpoint: a `RawRoute`, so it parses its own parameters."""
    extra: dict[str, Any] = {"parameters": [*(parameters or []), *_COMMAND_HEADERS], **(body or {})}
    responses = _COMMAND_RESPONSES
    if body is None:
        responses = {code: doc for code, doc in responses.items() if code not in (413, 415)}

    def register(endpoint: RawEndpoint) -> RawEndpoint:
        router.add_api_route(
            path,
            endpoint,
            methods=[method],
            summary=summary,
            status_code=202,
            response_class=Response,
            responses=responses,
            openapi_extra=extra,
            route_class_override=RawRoute,
        )
        return endpoint

    return register


# --- routes -----------------------------------------------------------------------------------


@command_endpoint("POST", "/orders", summary="Create an order", body=json_body(CreateOrderRequest))
async def create_order(request: Request) -> Response:
    runtime = runtime_of(request)
    body = await read_json(request, CreateOrderRequest, runtime.settings.max_body_bytes)
    fields = await command_fields(
        request, runtime, path="/orders", canonical_body=body.model_dump_json().encode()
    )
    command = CreateOrder(
        **fields,
        customer_id=body.customer_id,
        items=body.items,
        shipping_address=body.shipping_address,
    )
    return await dispatch(request, runtime, command)


@command_endpoint(
    "POST",
    "/orders/{order_id}/items",
    summary="Add an item to an order",
    body=json_body(AddItemRequest),
    parameters=[_ORDER_ID],
)
async def add_item(request: Request) -> Response:
    order_id = path_uuid(request, "order_id")
    runtime = runtime_of(request)
    body = await read_json(request, AddItemRequest, runtime.settings.max_body_bytes)
    fields = await command_fields(
        request,
        runtime,
        path=f"/orders/{order_id}/items",
        canonical_body=body.model_dump_json().encode(),
        order_id=order_id,
    )
    return await dispatch(request, runtime, AddItem(**fields, item=body))


@command_endpoint(
    "POST",
    "/orders/{order_id}/ship",
    summary="Ship an order",
    body=json_body(ShipOrderRequest, required=False),
    parameters=[_ORDER_ID],
)
async def ship_order(request: Request) -> Response:
    order_id = path_uuid(request, "order_id")
    runtime = runtime_of(request)
    body = await read_optional_json(request, ShipOrderRequest, runtime.settings.max_body_bytes)
    fields = await command_fields(
        request,
        runtime,
        path=f"/orders/{order_id}/ship",
        canonical_body=body.model_dump_json().encode(),
        order_id=order_id,
    )
    return await dispatch(request, runtime, ShipOrder(**fields))


@command_endpoint(
    "DELETE",
    "/orders/{order_id}",
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
    runtime = runtime_of(request)
    try:
        reason = request.query_params.get("reason")
        query = CancelOrderRequest.model_validate({} if reason is None else {"reason": reason})
    except ValidationError as exc:
        raise problem_from_validation_error(exc) from None
    fields = await command_fields(
        request,
        runtime,
        path=f"/orders/{order_id}",
        canonical_body=query.model_dump_json().encode(),
        order_id=order_id,
    )
    return await dispatch(request, runtime, CancelOrder(**fields, reason=query.reason))


@router.get(
    "/commands/{command_id}",
    summary="A command's status",
    response_class=Response,
    responses={
        200: {"content": {"application/json": {"schema": ref(CommandStatusView)}}},
        404: problem_response("No command with this id is known."),
        422: problem_response("`command_id` is not a UUID."),
        503: problem_response("Redis is unavailable."),
    },
)
async def command_status(
    request: Request,
    command_id: Annotated[UUID, Path(description="From the `Location` of the 202.")],
) -> Response:
    runtime = runtime_of(request)
    try:
        status = await get_status(runtime.redis, runtime.keys, command_id)
    except REDIS_ERRORS as exc:
        raise unavailable("Command statuses cannot be read now.") from exc
    if status is None:
        raise Problem(404, f"No command {command_id} is known.", type_=ProblemType.NOT_FOUND)
    return json_response(status)
