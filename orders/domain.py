"""The orders domain as the hosts see it: its aggregate, projections and routes."""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from typing import Any

from pydantic import BaseModel

from common.domain import Aggregate, Domain
from orders import aggregate, contracts
from orders.projection import STREAM_TYPE, OrderViews
from orders.sales import ProductSales
from orders.settings import OrdersSettings


def _routes() -> Sequence[Any]:
    # The HTTP layer is the gateway's business: imported only when the gateway asks.
    from orders.routes import routers

    return routers()


def _schemas() -> Sequence[type[BaseModel]]:
    from orders import requests, responses

    return [
        requests.CreateOrderRequest,
        requests.AddItemRequest,
        requests.ShipOrderRequest,
        responses.Order,
        responses.OrderPage,
        responses.OrderHistory,
        responses.ProductSalesView,
        responses.TopProducts,
    ]


_LIMITS = OrdersSettings()

ORDER = Aggregate(
    stream_type=STREAM_TYPE,
    id_field="order_id",
    commands=contracts.COMMANDS,
    events=contracts.EVENTS,
    initial=aggregate.Order(),
    decide=partial(aggregate.decide, max_lines=_LIMITS.max_lines, max_events=_LIMITS.max_events),
    evolve=aggregate.evolve,
    fold=aggregate.fold,
    visible_in=OrderViews.name,
    creates=frozenset({"CreateOrder"}),
    location=lambda order_id: f"/orders/{order_id}",
    max_events=_LIMITS.max_events,
    closing=frozenset({"ShipOrder", "CancelOrder"}),
)

DOMAIN = Domain(
    name="orders",
    aggregates=(ORDER,),
    projections=(OrderViews(), ProductSales()),
    routes=_routes,
    schemas=_schemas,
)
