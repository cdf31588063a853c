"""The `product_sales` projection, pure: what each product sold on shipped orders.

Counters across orders, unlike a per-order view. Each order keeps a small view of its own (its
lines and status); what the order adds to the shared counters follows from that view alone
(`counters`, `ranks`): nothing before it is shipped, everything once it is. The host applies the
difference between the view before and after each event in the same script call that checks the
view's version, so each shipped order counts exactly once per generation, whatever is redelivered,
replayed or applied by several projectors at once. A cancelled order never ships, so it never
counts.

| suffix                | type | content                                                    |
|-----------------------|------|------------------------------------------------------------|
| `order:{order_id}`    | hash | the order's `version`, `status` and `lines` (JSON)         |
| `product:{product_id}`| hash | `units`, `revenue_cents`, `orders` over shipped orders     |
| `top:revenue`         | zset | product ids scored by minus their revenue in cents         |
| `top:units`           | zset | product ids scored by minus their units                    |

The rankings hold negative scores so that an ascending range lists the highest first and
breaks ties by product id, ascending.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from decimal import Decimal
from enum import StrEnum
from typing import Any

import orjson

from common.contracts.envelopes import RecordedEvent
from common.domain import split_stream_id
from common.readmodel.projection import Projection, ProjectionError
from orders.contracts import ItemAdded, OrderCancelled, OrderCreated, OrderLine, OrderShipped
from orders.projection import STREAM_TYPE

UNITS = "units"
REVENUE_CENTS = "revenue_cents"
ORDERS = "orders"


class Ranking(StrEnum):
    """What `GET /products/top` ranks by."""

    REVENUE = "revenue"
    UNITS = "units"


def product_suffix(product_id: str) -> str:
    return f"product:{product_id}"


def ranking_suffix(by: Ranking) -> str:
    return f"top:{by.value}"


def cents(price: Decimal) -> int:
    """An amount with at most two decimals as whole cents, exactly."""
    return int(price * 100)


class SaleStatus(StrEnum):
    OPEN = "open"
    SHIPPED = "shipped"
    CANCELLED = "cancelled"


@dataclass(frozen=True, slots=True)
class OrderSales:
    """One order as this projection needs it: per product, units and unit price in cents."""

    version: int
    status: SaleStatus
    lines: tuple[tuple[str, int, int], ...]
    """(product id, units, unit price in cents), in the order products were first added."""


def _merge(
    lines: tuple[tuple[str, int, int], ...], added: list[OrderLine]
) -> tuple[tuple[str, int, int], ...]:
    """As the Order aggregate merges lines: a product already present keeps its price and gets
    the quantity added."""
    merged = list(lines)
    for line in added:
        for index, (product_id, units, price) in enumerate(merged):
            if product_id == line.product_id:
                merged[index] = (product_id, units + line.quantity, price)
                break
        else:
            merged.append((line.product_id, line.quantity, cents(line.price)))
    return tuple(merged)


class ProductSales(Projection[OrderSales]):
    """Units, revenue and orders per product, counted when an order ships."""

    name = "product_sales"
    categories = frozenset({STREAM_TYPE})

    def evolve(self, before: OrderSales | None, event: RecordedEvent, payload: Any) -> OrderSales:
        if isinstance(payload, OrderCreated):
            if before is not None:
                raise ProjectionError("OrderCreated on an existing order")
            return OrderSales(event.version, SaleStatus.OPEN, _merge((), payload.items))
        if before is None:
            raise ProjectionError(f"{event.type} before OrderCreated")
        if isinstance(payload, ItemAdded):
            lines = _merge(before.lines, [payload.item])
            return replace(before, version=event.version, lines=lines)
        if isinstance(payload, OrderShipped):
            return replace(before, version=event.version, status=SaleStatus.SHIPPED)
        if isinstance(payload, OrderCancelled):
            return replace(before, version=event.version, status=SaleStatus.CANCELLED)
        raise ProjectionError(f"unknown event type {event.type}")

    def to_hash(self, view: OrderSales) -> dict[str, str]:
        return {
            "version": str(view.version),
            "status": view.status.value,
            "lines": orjson.dumps(view.lines).decode(),
        }

    def from_hash(self, raw: Mapping[bytes, bytes]) -> OrderSales:
        lines = orjson.loads(raw[b"lines"])
        return OrderSales(
            int(raw[b"version"]),
            SaleStatus(raw[b"status"].decode()),
            tuple((str(p), int(u), int(c)) for p, u, c in lines),
        )

    def version_of(self, view: OrderSales) -> int:
        return view.version

    def view_key(self, stream_id: str) -> str:
        return f"order:{split_stream_id(stream_id)[1]}"

    def counters(self, view: OrderSales) -> dict[tuple[str, str], int]:
        if view.status is not SaleStatus.SHIPPED:
            return {}
        counted: dict[tuple[str, str], int] = {}
        for product_id, units, price in view.lines:
            key = product_suffix(product_id)
            counted[(key, UNITS)] = units
            counted[(key, REVENUE_CENTS)] = units * price
            counted[(key, ORDERS)] = 1
        return counted

    def ranks(self, view: OrderSales) -> dict[tuple[str, str], int]:
        if view.status is not SaleStatus.SHIPPED:
            return {}
        ranked: dict[tuple[str, str], int] = {}
        for product_id, units, price in view.lines:
            ranked[(ranking_suffix(Ranking.REVENUE), product_id)] = -units * price
            ranked[(ranking_suffix(Ranking.UNITS), product_id)] = -units
        return ranked
