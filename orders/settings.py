"""The orders domain's own settings: the limits of one order and of one search. Environment
variables carry the `ORDERS_` prefix (`ORDERS_MAX_LINES`); every process reads them when it
loads the domain."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class OrdersSettings(BaseSettings):
    """Limits that bound what one order costs to load, fold, project and answer, and what one
    search costs Redis."""

    model_config = SettingsConfigDict(
        env_prefix="ORDERS_", env_file=None, extra="ignore", frozen=True
    )

    max_lines: int = Field(default=200, ge=1, le=100_000)
    """The most distinct products one order may hold; an `AddItem` of a new product beyond it
    is rejected (a product already on the order only raises its quantity)."""

    max_events: int = Field(default=1000, ge=1, le=1_000_000)
    """The most events one order's stream may hold; items are added while one event is left,
    so an order at its limit can still be shipped or cancelled."""

    search_max_candidates: int = Field(default=10_000, ge=1, le=10_000_000)
    """The most orders a search may examine in scratch sets (its smallest filter set, or the
    orders in its total range); a broader one is answered 422 "refine the search". Searches
    that page one sorted set need no scratch set and are allowed at any size."""
