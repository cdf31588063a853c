"""The orders domain's HTTP routes, in the order the gateway must try them."""

from __future__ import annotations

from fastapi import APIRouter

from orders import command_routes, query_routes, sales_routes


def routers() -> list[APIRouter]:
    """Commands first (the hot routes), then queries (`/orders/search` before
    `/orders/{order_id}`, see `query_routes`), then sales (`/products/top` before
    `/products/{product_id}/sales`)."""
    return [command_routes.router, query_routes.router, sales_routes.router]
