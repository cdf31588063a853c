"""The `order_views` projection, pure: an order's view, history and index entries from its
events. No I/O here; the projector host writes what `plan` returns in one script call.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import replace
from typing import Any

from common.contracts.base import money_str
from common.contracts.envelopes import RecordedEvent
from common.domain import split_stream_id
from common.readmodel.projection import Projection, ProjectionError, ZAdd, ZRem
from orders.contracts import (
    ItemAdded,
    OrderCancelled,
    OrderCreated,
    OrderEvent,
    OrderLine,
    OrderShipped,
)
from orders.layout import (
    BY_CREATED,
    BY_TOTAL,
    customer_suffix,
    history_suffix,
    order_suffix,
    status_suffix,
    token_suffix,
)
from orders.view import (
    OrderView,
    ViewLine,
    ViewStatus,
    identifier_tokens,
    text_tokens,
    utc,
)

STREAM_TYPE = "Order"


def _merge(lines: tuple[ViewLine, ...], added: Iterable[OrderLine]) -> tuple[ViewLine, ...]:
    """Lines after adding `added`: a product already present keeps its line and price and
    gets the quantity added (as the Order aggregate does)."""
    merged = list(lines)
    for line in added:
        for index, current in enumerate(merged):
            if current.product_id == line.product_id:
                merged[index] = replace(current, quantity=current.quantity + line.quantity)
                break
        else:
            merged.append(ViewLine(line.product_id, line.quantity, line.price))
    return tuple(merged)


def evolve(before: OrderView | None, event: RecordedEvent, payload: OrderEvent) -> OrderView:
    """The view after `event`; `before` must be the view at `event.version - 1`."""
    expected = before.version if before is not None else 0
    if event.version != expected + 1:
        raise ProjectionError(f"event version {event.version} cannot follow version {expected}")
    order_id = split_stream_id(event.stream_id)[1]
    moment = utc(event.metadata.occurred_at)
    if isinstance(payload, OrderCreated):
        if before is not None:
            raise ProjectionError("OrderCreated on an existing order")
        if str(payload.order_id) != order_id:
            raise ProjectionError("OrderCreated for another stream")
        return OrderView(
            order_id=order_id,
            customer_id=payload.customer_id,
            status=ViewStatus.CREATED,
            lines=_merge((), payload.items),
            shipping_address=tuple(payload.shipping_address.model_dump(mode="json").items()),
            created_at=moment,
            updated_at=moment,
            shipped_at=None,
            cancelled_at=None,
            cancel_reason=None,
            version=event.version,
        )
    if before is None:
        raise ProjectionError(f"{event.type} before OrderCreated")
    if isinstance(payload, ItemAdded):
        return replace(
            before,
            lines=_merge(before.lines, [payload.item]),
            updated_at=moment,
            version=event.version,
        )
    if isinstance(payload, OrderShipped):
        return replace(
            before,
            status=ViewStatus.SHIPPED,
            shipped_at=moment,
            updated_at=moment,
            version=event.version,
        )
    if isinstance(payload, OrderCancelled):
        return replace(
            before,
            status=ViewStatus.CANCELLED,
            cancelled_at=moment,
            cancel_reason=payload.reason,
            updated_at=moment,
            version=event.version,
        )
    raise ProjectionError(f"unknown event type {event.type}")  # pragma: no cover


def search_tokens(view: OrderView) -> set[str]:
    """The tokens an order is found by: its customer, its products, its address. Its own id
    is no token: a set per order holding that order alone cost ~190 B an order, and a search
    finds an order by its id from its view (`queries.SearchQuery.filter_sets`)."""
    return _identity_tokens(view) | _product_tokens(view)


def _identity_tokens(view: OrderView) -> set[str]:
    """The tokens of what an order is created with and keeps: customer, address."""
    tokens = identifier_tokens([view.customer_id])
    return tokens | text_tokens(value for _field, value in view.shipping_address)


def _product_tokens(view: OrderView) -> set[str]:
    return identifier_tokens(line.product_id for line in view.lines)


def index_entries(view: OrderView) -> dict[str, str]:
    """Every sorted set an order is in, by key suffix, with its score there (the order id is
    always the member). The sets follow from the view alone, so the change to them between
    two views is the difference of their entries (`index_change`)."""
    return {**_creation_entries(view), **_state_entries(view)}


def _creation_entries(view: OrderView) -> dict[str, str]:
    """The entries of what an order is created with and keeps: its customer, address."""
    created = str(view.created_score)
    entries = {BY_CREATED: created, customer_suffix(view.customer_id): created}
    for token in sorted(_identity_tokens(view)):
        entries[token_suffix(token)] = created
    return entries


def _state_entries(view: OrderView) -> dict[str, str]:
    """The entries that events after the creation change: status, products and total."""
    created = str(view.created_score)
    entries = {
        customer_suffix(view.customer_id, view.status): created,
        status_suffix(view.status): created,
    }
    for token in sorted(_product_tokens(view)):
        entries[token_suffix(token)] = created
    entries[BY_TOTAL] = money_str(view.total_amount)
    return entries


def index_change(
    before: OrderView | None, after: OrderView
) -> tuple[tuple[ZAdd, ...], tuple[ZRem, ...]]:
    """(`zadd`, `zrem`) taking the sorted sets from `before`'s entries to `after`'s. Only an
    order's creation sets its creation entries (`evolve` never changes id, customer, address
    or creation time), so later changes compare the state entries alone."""
    new = _state_entries(after)
    if before is None:
        old: dict[str, str] = {}
        new = {**_creation_entries(after), **new}
    else:
        old = _state_entries(before)
    member = after.order_id
    zadd = tuple((s, score, member) for s, score in new.items() if old.get(s) != score)
    zrem = tuple((s, member) for s in old if s not in new)
    return zadd, zrem


class OrderViews(Projection[OrderView]):
    """Each order's view and history, and the sorted sets its queries page through."""

    name = "order_views"
    categories = frozenset({STREAM_TYPE})
    keeps_history = True
    layout = 4
    """2: lines and address parts as fields of their own (`view.py`), no `members` set;
    3: no token set for an order's own id; 4: history entries as compact arrays."""

    def evolve(self, before: OrderView | None, event: RecordedEvent, payload: Any) -> OrderView:
        return evolve(before, event, payload)

    def to_hash(self, view: OrderView) -> dict[str, str]:
        return view.to_hash()

    def from_hash(self, raw: Mapping[bytes, bytes]) -> OrderView:
        return OrderView.from_hash(raw)

    def version_of(self, view: OrderView) -> int:
        return view.version

    def view_key(self, stream_id: str) -> str:
        return order_suffix(split_stream_id(stream_id)[1])

    def history_key(self, stream_id: str) -> str:
        return history_suffix(split_stream_id(stream_id)[1])

    def member(self, stream_id: str) -> str:
        return split_stream_id(stream_id)[1]

    def index(self, view: OrderView) -> dict[str, str]:
        return index_entries(view)

    def index_change(
        self, stream_id: str, before: OrderView | None, after: OrderView
    ) -> tuple[tuple[ZAdd, ...], tuple[ZRem, ...]]:
        return index_change(before, after)


def replay(events: Iterable[tuple[RecordedEvent, OrderEvent]]) -> OrderView | None:
    """The view after a whole stream (for tests and checks)."""
    view: OrderView | None = None
    for event, payload in events:
        view = evolve(view, event, payload)
    return view
