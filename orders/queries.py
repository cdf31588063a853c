"""Reading the order views: one atomic script call per query, O(log N + page size) for every
query that a single sorted set answers (see `docs/read-path.md` for the costs of the others)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from enum import StrEnum
from typing import Any

import orjson
from redis.asyncio import Redis

from common.contracts.base import money_str
from common.readmodel.keys import Keys
from common.readmodel.reading import ProjectionReader, ViewsUnavailable
from orders import read_scripts
from orders.layout import (
    BY_CREATED,
    BY_TOTAL,
    customer_suffix,
    history_suffix,
    order_suffix,
    status_suffix,
    token_suffix,
)
from orders.projection import OrderViews
from orders.view import ViewStatus, api_json, query_terms

SCRATCH = "scratch:search"
"""Suffix of the search's scratch set; created and deleted inside one script call."""

MAX_TERMS = 8
"""Search terms used from `q`; every term must match."""


__all__ = ["OrderQueries", "ViewsUnavailable"]


class SortBy(StrEnum):
    CREATED_AT = "created_at"
    TOTAL_AMOUNT = "total_amount"


class SortOrder(StrEnum):
    ASC = "asc"
    DESC = "desc"


@dataclass(frozen=True, slots=True)
class OrderJson:
    """One order's view, as the JSON the API answers with (see `order_view.api_json`)."""

    version: int
    body: bytes


@dataclass(frozen=True, slots=True)
class Page:
    items: list[orjson.Fragment]
    """Each order as JSON; serialise the page with orjson."""
    total: int
    page: int
    page_size: int

    def to_json(self) -> dict[str, Any]:
        return {
            "items": self.items,
            "total": self.total,
            "page": self.page,
            "page_size": self.page_size,
            "total_pages": math.ceil(self.total / self.page_size),
        }


@dataclass(frozen=True, slots=True)
class SearchQuery:
    q: str = ""
    status: ViewStatus | None = None
    customer_id: str | None = None
    min_total: Decimal | None = None
    max_total: Decimal | None = None
    sort_by: SortBy = SortBy.CREATED_AT
    sort_order: SortOrder = SortOrder.DESC
    page: int = 1
    page_size: int = 20

    def filter_sets(self) -> list[str]:
        """The suffixes of the sorted sets every hit must be in."""
        sets = [token_suffix(term) for term in query_terms(self.q)[:MAX_TERMS]]
        if self.customer_id is not None:
            sets.append(customer_suffix(self.customer_id, self.status))
        elif self.status is not None:
            sets.append(status_suffix(self.status))
        return sets


def _pairs(flat: Sequence[bytes]) -> dict[bytes, bytes]:
    return dict(zip(flat[::2], flat[1::2], strict=True))


def _views(raw: Sequence[Sequence[bytes]]) -> list[orjson.Fragment]:
    return [orjson.Fragment(api_json(_pairs(fields))) for fields in raw if fields]


class OrderQueries:
    """The queries of the `order_views` projection, over one Redis client."""

    def __init__(self, redis: Redis, keys: Keys) -> None:
        self._reader = ProjectionReader(redis, keys.projection(OrderViews.name))
        self._search = redis.register_script(read_scripts.SEARCH)

    async def _call(self, script: Any, *args: Any) -> list[Any]:
        return await self._reader.call(script, *args)

    async def order(self, order_id: str) -> OrderJson | None:
        """The order view as the API shows it, or None when no such order is projected."""
        pairs = await self._reader.view(order_suffix(order_id))
        if not pairs:
            return None
        return OrderJson(int(pairs[b"version"]), api_json(pairs))

    async def order_version(self, order_id: str) -> int:
        """The order's projected version; 0 when it is not projected."""
        return await self._reader.version(order_suffix(order_id))

    async def history(
        self, order_id: str, after_version: int = 0, limit: int | None = None
    ) -> list[bytes] | None:
        """The order's events after `after_version` as JSON documents in version order, at most
        `limit` of them (all when None), or None for no such order."""
        return await self._reader.history(
            order_suffix(order_id), history_suffix(order_id), after_version, limit
        )

    async def customer_orders(
        self, customer_id: str, status: ViewStatus | None, page: int, page_size: int
    ) -> Page:
        """A customer's orders, newest first."""
        return await self.search(
            SearchQuery(customer_id=customer_id, status=status, page=page, page_size=page_size)
        )

    async def search(self, query: SearchQuery) -> Page:
        sets = query.filter_sets()
        _, total, raw = await self._call(
            self._search,
            order_suffix(""),
            BY_CREATED,
            BY_TOTAL,
            SCRATCH,
            query.sort_by.value,
            query.sort_order.value,
            (query.page - 1) * query.page_size,
            query.page_size,
            money_str(query.min_total) if query.min_total is not None else "-inf",
            money_str(query.max_total) if query.max_total is not None else "+inf",
            len(sets),
            *sets,
        )
        return Page(_views(raw), int(total), query.page, query.page_size)
