"""Reading the order views: one atomic script call per query, O(log N + page size) for every
query that a single sorted set answers. The others work in scratch sets, in proportion to
their smallest input: a search whose input exceeds `ORDERS_SEARCH_MAX_CANDIDATES`, or whose
page lies deeper than `MAX_OFFSET`, is refused (`SearchRefused`) before Redis does that work
(see `docs/read-path.md`)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from enum import StrEnum
from typing import Any
from uuid import UUID

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
from orders.settings import OrdersSettings
from orders.view import ViewStatus, api_json, query_terms

SCRATCH = "scratch:search"
"""Suffix of the search's scratch set; created and deleted inside one script call."""

MAX_TERMS = 8
"""Search terms used from `q`; every term must match."""

MAX_OFFSET = 10_000
"""The deepest a page may reach (`page * page_size`): deeper pages are refused, since a
ranged page costs Redis its offset."""


__all__ = ["MAX_OFFSET", "OrderQueries", "SearchRefused", "ViewsUnavailable"]


class SearchRefused(Exception):
    """A search that would cost Redis more than its limits allow; `fields` name its cause."""

    def __init__(self, fields: Sequence[str], reason: str) -> None:
        super().__init__(reason)
        self.fields = tuple(fields)
        self.reason = reason


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

    def filter_sets(self) -> list[tuple[str, str]]:
        """The sorted sets every hit must be in: each set's suffix, and the order id a term
        names when it is shaped like one ('' otherwise), since an order's own id is no token
        (`projection.search_tokens`): the search finds that order from its view instead."""
        sets = [
            (token_suffix(term), term if _is_order_id(term) else "")
            for term in query_terms(self.q)[:MAX_TERMS]
        ]
        if self.customer_id is not None:
            sets.append((customer_suffix(self.customer_id, self.status), ""))
        elif self.status is not None:
            sets.append((status_suffix(self.status), ""))
        return sets

    def filter_fields(self) -> list[str]:
        """The parameters that choose the filter sets, as the API names them."""
        given = {
            "q": bool(query_terms(self.q)),
            "customer_id": self.customer_id is not None,
            "status": self.status is not None,
        }
        return [name for name, present in given.items() if present]

    def range_fields(self) -> list[str]:
        bounds = {"min_total": self.min_total, "max_total": self.max_total}
        return [name for name, bound in bounds.items() if bound is not None]


def _is_order_id(term: str) -> bool:
    """`term` is an id as orders are named (a UUID in its canonical text; terms are lower-case)."""
    try:
        return str(UUID(term)) == term
    except ValueError:
        return False


def _pairs(flat: Sequence[bytes]) -> dict[bytes, bytes]:
    return dict(zip(flat[::2], flat[1::2], strict=True))


def _views(raw: Sequence[Sequence[bytes]]) -> list[orjson.Fragment]:
    return [orjson.Fragment(api_json(_pairs(fields))) for fields in raw if fields]


class OrderQueries:
    """The queries of the `order_views` projection, over one Redis client."""

    def __init__(self, redis: Redis, keys: Keys, max_candidates: int | None = None) -> None:
        self._reader = ProjectionReader(redis, keys.projection(OrderViews.keys_name()))
        self._search = redis.register_script(read_scripts.SEARCH)
        self.max_candidates = (
            OrdersSettings().search_max_candidates if max_candidates is None else max_candidates
        )

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
        """One page of the matching orders; `SearchRefused` when the page lies beyond
        `MAX_OFFSET` or the search would examine more than `max_candidates` orders."""
        if query.page * query.page_size > MAX_OFFSET:
            raise SearchRefused(
                ["page"],
                f"page * page_size may be at most {MAX_OFFSET}: narrow the search instead "
                "of paging deeper",
            )
        sets = query.filter_sets()
        _, total, raw, candidates = await self._call(
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
            self.max_candidates,
            len(sets),
            *(part for pair in sets for part in pair),
        )
        if candidates:
            raise self._refusal(query, int(candidates))
        return Page(_views(raw), int(total), query.page, query.page_size)

    def _refusal(self, query: SearchQuery, candidates: int) -> SearchRefused:
        limit = self.max_candidates
        if query.filter_fields():
            return SearchRefused(
                query.filter_fields(),
                f"the most selective filter matches {candidates} orders, more than the "
                f"{limit} a search may examine to combine filters, a total range or a sort by "
                "total: refine the search (a customer, a rarer word)",
            )
        return SearchRefused(
            query.range_fields(),
            f"the total range holds {candidates} orders, more than the {limit} a search may "
            "examine sorted by created_at: refine the search (a narrower range, a filter) or "
            "sort by total_amount",
        )
