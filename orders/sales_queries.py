"""Reading the `product_sales` projection: one atomic script call per query."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from redis.asyncio import Redis

from common.contracts.base import money_str
from common.readmodel.keys import Keys
from common.readmodel.reading import GENERATION_BASE, READ_ONLY, ProjectionReader
from orders.sales import (
    ORDERS,
    REVENUE_CENTS,
    UNITS,
    ProductSales,
    Ranking,
    product_suffix,
    ranking_suffix,
)

TOP = (
    READ_ONLY
    + GENERATION_BASE
    + """
-- ARGV[2] ranking suffix, ARGV[3] how many, ARGV[4] product suffix without the id
local ids = redis.call('ZRANGE', base .. ARGV[2], 0, tonumber(ARGV[3]) - 1)
local sales = {}
for i, id in ipairs(ids) do
  sales[i] = {id, redis.call('HMGET', base .. ARGV[4] .. id, 'units', 'revenue_cents', 'orders')}
end
return {1, sales}
"""
)


@dataclass(frozen=True, slots=True)
class Sales:
    """What one product sold on shipped orders."""

    product_id: str
    units: int
    revenue_cents: int
    orders: int

    def to_json(self) -> dict[str, Any]:
        return {
            "product_id": self.product_id,
            "units": self.units,
            "revenue": money_str(Decimal(self.revenue_cents) / 100),
            "orders": self.orders,
        }


def _sales(product_id: str, fields: Mapping[bytes, bytes]) -> Sales | None:
    if not fields.get(ORDERS.encode()):
        return None
    return Sales(
        product_id,
        int(fields.get(UNITS.encode()) or 0),
        int(fields.get(REVENUE_CENTS.encode()) or 0),
        int(fields[ORDERS.encode()]),
    )


class SalesQueries:
    """The queries of the `product_sales` projection, over one Redis client."""

    def __init__(self, redis: Redis, keys: Keys) -> None:
        self._reader = ProjectionReader(redis, keys.projection(ProductSales.keys_name()))
        self._top = redis.register_script(TOP)

    async def product(self, product_id: str) -> Sales | None:
        """A product's sales; None when it is on no shipped order."""
        return _sales(product_id, await self._reader.view(product_suffix(product_id)))

    async def top(self, by: Ranking, limit: int) -> list[Sales]:
        """The `limit` best-selling products, highest first, ties by product id."""
        _, rows = await self._reader.call(self._top, ranking_suffix(by), limit, product_suffix(""))
        found: list[Sales] = []
        for raw_id, values in rows:
            names = (UNITS.encode(), REVENUE_CENTS.encode(), ORDERS.encode())
            fields = dict(zip(names, values, strict=True))
            sales = _sales(raw_id.decode(), {k: v for k, v in fields.items() if v is not None})
            if sales is not None:
                found.append(sales)
        return found


__all__: Sequence[str] = ["Sales", "SalesQueries"]
