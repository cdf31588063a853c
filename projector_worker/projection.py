"""The orders projection, pure: from an event and the view before it, the view after it and every
index change, as data. No I/O here; `redis_views.py` turns a `ViewChange` into one script call.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace

import orjson
from pydantic import ValidationError

from common.contracts.base import money_str
from common.contracts.envelopes import RecordedEvent
from common.contracts.orders import (
    ORDER_EVENT_ADAPTER,
    ItemAdded,
    OrderCancelled,
    OrderCreated,
    OrderEvent,
    OrderLine,
    OrderShipped,
)
from common.readmodel.layout import (
    BY_CREATED,
    BY_TOTAL,
    customer_suffix,
    history_suffix,
    order_suffix,
    status_suffix,
    token_suffix,
)
from common.readmodel.order_view import (
    OrderView,
    ViewLine,
    ViewStatus,
    identifier_tokens,
    text_tokens,
    utc,
)

COMMAND_OF_EVENT = {
    "OrderCreated": "CreateOrder",
    "ItemAdded": "AddItem",
    "OrderShipped": "ShipOrder",
    "OrderCancelled": "CancelOrder",
}
"""The command type that produces each event type, to fill a command's status hash."""


class ProjectionError(Exception):
    """The event cannot follow the view it is applied to: a poison event or a corrupt view."""


def parse_payload(event: RecordedEvent) -> OrderEvent:
    """The typed payload of a recorded event; `ProjectionError` when it is not an order event."""
    try:
        return ORDER_EVENT_ADAPTER.validate_python({**event.data, "type": event.type})
    except ValidationError as exc:
        raise ProjectionError(f"invalid {event.type} payload: {exc}") from exc


@dataclass(frozen=True, slots=True)
class ViewChange:
    """Everything one event changes in one generation, keys named by their suffix."""

    view: OrderView
    history_entry: bytes
    zadd: tuple[tuple[str, str, str], ...]
    """(key suffix, score, member)"""
    zrem: tuple[tuple[str, str], ...]
    """(key suffix, member); applied before `zadd`."""

    @property
    def order_key(self) -> str:
        return order_suffix(self.view.order_id)

    @property
    def history_key(self) -> str:
        return history_suffix(self.view.order_id)

    def index_keys(self) -> list[str]:
        """The sorted-set suffixes this change touches, each once, in a stable order."""
        seen: dict[str, None] = {}
        for suffix, _member in self.zrem:
            seen.setdefault(suffix, None)
        for suffix, _score, _member in self.zadd:
            seen.setdefault(suffix, None)
        return list(seen)


@dataclass(frozen=True, slots=True)
class RunChange:
    """The changes of consecutive events of one order as one: the last view, every history
    entry in order, and the net effect on the sorted sets."""

    change: ViewChange
    """The last view, with the net `zadd` and `zrem` of the run."""
    history: tuple[bytes, ...]
    first_version: int


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
    moment = utc(event.metadata.occurred_at)
    if isinstance(payload, OrderCreated):
        if before is not None:
            raise ProjectionError("OrderCreated on an existing order")
        if str(payload.order_id) != event.stream_id:
            raise ProjectionError("OrderCreated for another stream")
        return OrderView(
            order_id=event.stream_id,
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


def history_entry(event: RecordedEvent) -> bytes:
    """One line of an order's history, as returned by `GET /orders/{id}/history`."""
    return orjson.dumps(
        {
            "position": event.position,
            "version": event.version,
            "type": event.type,
            "data": event.data,
            "time": utc(event.metadata.occurred_at).isoformat(),
            "command_id": str(event.metadata.command_id),
        }
    )


def search_tokens(view: OrderView) -> set[str]:
    """The tokens an order is found by: its id, its customer, its products, its address."""
    return _identity_tokens(view) | _product_tokens(view)


def _identity_tokens(view: OrderView) -> set[str]:
    """The tokens of what an order is created with and keeps: id, customer, address."""
    tokens = identifier_tokens([view.order_id, view.customer_id])
    return tokens | text_tokens(value for _field, value in view.shipping_address)


def _product_tokens(view: OrderView) -> set[str]:
    return identifier_tokens(line.product_id for line in view.lines)


def index_entries(view: OrderView) -> dict[str, str]:
    """Every sorted set an order is in, by key suffix, with its score there (the order id is
    always the member). The sets follow from the view alone, so the change to them between
    two views is the difference of their entries (`index_change`)."""
    return {**_creation_entries(view), **_state_entries(view)}


def _creation_entries(view: OrderView) -> dict[str, str]:
    """The entries of what an order is created with and keeps: its id, customer, address."""
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
) -> tuple[tuple[tuple[str, str, str], ...], tuple[tuple[str, str], ...]]:
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


def plan(before: OrderView | None, event: RecordedEvent, payload: OrderEvent) -> ViewChange:
    """The view after `event` and the index changes that go with it."""
    after = evolve(before, event, payload)
    zadd, zrem = index_change(before, after)
    return ViewChange(after, history_entry(event), zadd, zrem)


def plan_run(
    before: OrderView | None, events: Sequence[tuple[RecordedEvent, OrderEvent]]
) -> RunChange:
    """The changes of consecutive events of one order as one call's worth: each event
    evolves the view, and the sorted sets change once, from `before` to the last view.
    Applying it equals applying the events one by one; `ProjectionError` as `plan`."""
    view = before
    history: list[bytes] = []
    for event, payload in events:
        view = evolve(view, event, payload)
        history.append(history_entry(event))
    if view is None:
        raise ProjectionError("an empty run")
    zadd, zrem = index_change(before, view)
    change = ViewChange(view, history[-1], zadd, zrem)
    return RunChange(change, tuple(history), events[0][0].version)


def replay(events: Iterable[tuple[RecordedEvent, OrderEvent]]) -> OrderView | None:
    """The view after a whole stream (for tests and checks)."""
    view: OrderView | None = None
    for event, payload in events:
        view = evolve(view, event, payload)
    return view
