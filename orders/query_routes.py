"""The orders domain's queries over HTTP: order views and searches, from Redis only.

Included after the command routes. `/orders/search` is declared before `/orders/{order_id}`
so the template does not swallow it.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable
from decimal import Decimal
from typing import Annotated, Any, TypeVar
from uuid import UUID

import orjson
from fastapi import APIRouter, Path, Query, Request
from pydantic import Field, TypeAdapter, ValidationError
from starlette.responses import Response

from common.domain import stream_id
from common.readmodel.projection import history_event_json
from gateway import reads
from gateway.openapi import (
    header_parameter,
    json_response_doc,
    path_parameter,
    problem_response,
    query_parameter,
)
from gateway.problems import Problem, ProblemType, too_broad, validation_problem
from gateway.responses import JSON, json_response
from gateway.routing import RawRoute, path_uuid
from gateway.runtime import settings_of
from gateway.waiting import WaitersFull, prefer_wait, waiter_of
from orders.projection import STREAM_TYPE, OrderViews
from orders.queries import (
    MAX_OFFSET,
    OrderQueries,
    Page,
    SearchQuery,
    SearchRefused,
    SortBy,
    SortOrder,
)
from orders.responses import Order, OrderHistory, OrderPage
from orders.view import ViewStatus

log = logging.getLogger(__name__)

router = APIRouter(tags=["queries"])

STALE_HEADER = "X-Stale"
SLUG = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"

T = TypeVar("T")

OrderId = Annotated[UUID, Path(description="The order's id.")]
CustomerId = Annotated[str, Path(description="The customer's id.", pattern=SLUG)]
PageNumber = Annotated[int, Query(ge=1, description="1-based page number.")]
PageSize = Annotated[int, Query(ge=1, le=100, description="Orders per page (1-100).")]
Amount = Annotated[Decimal, Query(ge=0, max_digits=12, decimal_places=2)]

_ERRORS: dict[int | str, dict[str, Any]] = {
    422: problem_response("An invalid parameter; `errors` names it."),
    503: problem_response("Redis is unavailable or the views are being rebuilt."),
}
_TOO_DEEP = f"a page beyond {MAX_OFFSET} orders deep"
_CUSTOMER_ERRORS: dict[int | str, dict[str, Any]] = {
    **_ERRORS,
    422: problem_response(
        f"An invalid parameter, or {_TOO_DEEP} (`urn:orders:problem:query-too-broad`); "
        "`errors` names it."
    ),
}
_SEARCH_ERRORS: dict[int | str, dict[str, Any]] = {
    **_ERRORS,
    422: problem_response(
        "An invalid parameter, or a search too costly to answer "
        f"(`urn:orders:problem:query-too-broad`: {_TOO_DEEP}, or more candidates than "
        "`ORDERS_SEARCH_MAX_CANDIDATES` to combine); `errors` names the cause."
    ),
}


def queries_of(request: Request, *, primary: bool = False) -> OrderQueries:
    return reads.queries_of(request, OrderQueries, primary=primary)


def searches_of(request: Request) -> OrderQueries:
    """Searches read the primary: combining filters writes a scratch set, which a read-only
    replica refuses."""
    return queries_of(request, primary=True)


async def _read(call: Awaitable[T]) -> T:
    return await reads.read(call, "the order views")


async def _page(call: Awaitable[Page]) -> Response:
    try:
        result = await _read(call)
    except SearchRefused as refused:
        raise too_broad([{"field": f, "message": refused.reason} for f in refused.fields]) from None
    return json_response(result.to_json())


def _not_found(order_id: UUID) -> Problem:
    return Problem(404, f"No order {order_id} is known.", type_=ProblemType.NOT_FOUND)


@router.get(
    "/orders/search",
    summary="Search orders",
    response_class=Response,
    responses={
        200: json_response_doc(OrderPage, "One page of matching orders."),
        **_SEARCH_ERRORS,
    },
)
async def search_orders(
    request: Request,
    q: Annotated[
        str,
        Query(
            max_length=200,
            description="Words that must all match: order id, customer id, product ids, "
            "shipping address words.",
        ),
    ] = "",
    status: Annotated[ViewStatus | None, Query()] = None,
    customer_id: Annotated[str | None, Query(pattern=SLUG)] = None,
    min_total: Amount | None = None,
    max_total: Amount | None = None,
    sort_by: SortBy = SortBy.CREATED_AT,
    sort_order: SortOrder = SortOrder.DESC,
    page: PageNumber = 1,
    page_size: PageSize = 20,
) -> Response:
    if min_total is not None and max_total is not None and min_total > max_total:
        raise validation_problem([{"field": "max_total", "message": "must not be below min_total"}])
    query = SearchQuery(
        q=q,
        status=status,
        customer_id=customer_id,
        min_total=min_total,
        max_total=max_total,
        sort_by=sort_by,
        sort_order=sort_order,
        page=page,
        page_size=page_size,
    )
    return await _page(searches_of(request).search(query))


_MIN_VERSION: TypeAdapter[int] = TypeAdapter(Annotated[int, Field(ge=1)])


async def get_order(request: Request) -> Response:
    """The hottest read: a lean route (no dependency solving), parsing its own parameters."""
    order_id = path_uuid(request, "order_id")
    raw_min = request.query_params.get("min_version")
    min_version: int | None = None
    if raw_min is not None:
        try:
            min_version = _MIN_VERSION.validate_python(raw_min)
        except ValidationError:
            raise validation_problem(
                [{"field": "min_version", "message": "must be a whole number of at least 1"}]
            ) from None
    headers: dict[str, str] = {}
    if min_version is not None:
        limit = settings_of(request).max_wait_s
        asked = prefer_wait(request.headers.get("prefer"))
        timeout = min(limit, asked) if asked is not None else limit
        waiter = await waiter_of(request)
        stream = stream_id(STREAM_TYPE, order_id)
        # With MAX_WAITERS waits pending, answer at once with what the view shows.
        with contextlib.suppress(WaitersFull):
            await _read(waiter.wait_for_version(OrderViews.name, stream, min_version, timeout))
    view = await _read(queries_of(request).order(str(order_id)))
    if min_version is not None and (view is None or view.version < min_version):
        # A replica may be behind the primary the wait watched: the primary answers then.
        primary = queries_of(request, primary=True)
        if primary is not queries_of(request):
            view = await _read(primary.order(str(order_id)))
    # Stale is what the answer shows, not how the wait went: the view may have got there
    # between the end of the wait and the read.
    if min_version is not None and (view is None or view.version < min_version):
        headers[STALE_HEADER] = "true"
    if view is None:
        raise Problem(
            404, f"No order {order_id} is known.", type_=ProblemType.NOT_FOUND, headers=headers
        )
    return Response(view.body, headers=headers, media_type=JSON)


router.add_api_route(
    "/orders/{order_id}",
    get_order,
    methods=["GET"],
    summary="One order's view",
    response_class=Response,
    responses={
        200: json_response_doc(Order, "The order; `X-Stale: true` if `min_version` not reached."),
        404: problem_response("No such order (yet: see `X-Stale`)."),
        **_ERRORS,
    },
    route_class_override=RawRoute,
    openapi_extra={
        "parameters": [
            path_parameter("order_id", "The order's id."),
            {
                **query_parameter(
                    "min_version",
                    "Wait (up to the server's limit, or `Prefer: wait=<seconds>` if lower) "
                    "until the view reaches this version; if it does not, the answer carries "
                    "`X-Stale: true`.",
                    {"type": "integer", "minimum": 1},
                ),
                "required": False,
            },
            header_parameter("Prefer", "`wait=<seconds>` bounds a `min_version` wait."),
        ]
    },
)


HISTORY_PAGE = 100
"""Events on a history page unless `limit` says otherwise."""
MAX_HISTORY_PAGE = 1000
MAX_VERSION = 2**31 - 1
"""Above any stream's version: a larger `after_version` is a mistake, not a request."""


@router.get(
    "/orders/{order_id}/history",
    summary="One order's events, in version order, a page at a time",
    response_class=Response,
    responses={
        200: json_response_doc(
            OrderHistory, "The events after `after_version`; `next` links the next page."
        ),
        404: problem_response("No such order."),
        **_ERRORS,
    },
)
async def order_history(
    request: Request,
    order_id: OrderId,
    after_version: Annotated[
        int,
        Query(ge=0, le=MAX_VERSION, description="Start after this version (0: from the first)."),
    ] = 0,
    limit: Annotated[
        int,
        Query(ge=1, le=MAX_HISTORY_PAGE, description=f"Events per page (1-{MAX_HISTORY_PAGE})."),
    ] = HISTORY_PAGE,
) -> Response:
    # One entry more than the page tells whether another page follows.
    entries = await _read(queries_of(request).history(str(order_id), after_version, limit + 1))
    if entries is None:
        raise _not_found(order_id)
    page = entries[:limit]
    next_page = None
    if len(entries) > limit:
        next_version = after_version + len(page)
        next_page = f"/orders/{order_id}/history?after_version={next_version}&limit={limit}"
    body = b'{"order_id":"%s","events":[%s],"next":%s}' % (
        str(order_id).encode(),
        b",".join(history_event_json(entry) for entry in page),
        orjson.dumps(next_page),
    )
    return Response(body, media_type=JSON)


@router.get(
    "/customers/{customer_id}/orders",
    summary="A customer's orders, newest first",
    response_class=Response,
    responses={
        200: json_response_doc(OrderPage, "One page of the customer's orders."),
        **_CUSTOMER_ERRORS,
    },
)
async def customer_orders(
    request: Request,
    customer_id: CustomerId,
    status: Annotated[ViewStatus | None, Query()] = None,
    page: PageNumber = 1,
    page_size: PageSize = 20,
) -> Response:
    return await _page(searches_of(request).customer_orders(customer_id, status, page, page_size))
