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


def fold(first_version: int, changes: Sequence[ViewChange]) -> RunChange:
    """One change for `changes` (events `first_version`, `first_version + 1`, ... of one order):
    applying it equals applying them in order. Each change removes before it adds, and every
    member of an order's sorted sets is the order itself, so the last operation on a (set,
    member) pair decides: a score to add, or a removal."""
    last: dict[tuple[str, str], str | None] = {}
    for change in changes:
        for suffix, member in change.zrem:
            last[(suffix, member)] = None
        for suffix, score, member in change.zadd:
            last[(suffix, member)] = score
    adds = tuple((s, score, m) for (s, m), score in last.items() if score is not None)
    removes = tuple((s, m) for (s, m), score in last.items() if score is None)
    folded = ViewChange(changes[-1].view, changes[-1].history_entry, adds, removes)
    return RunChange(folded, tuple(c.history_entry for c in changes), first_version)


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
    tokens = identifier_tokens(
        [view.order_id, view.customer_id, *(line.product_id for line in view.lines)]
    )
    return tokens | text_tokens(value for _field, value in view.shipping_address)


def plan(before: OrderView | None, event: RecordedEvent, payload: OrderEvent) -> ViewChange:
    """The view after `event` and the index changes that go with it."""
    after = evolve(before, event, payload)
    member = after.order_id
    created = str(after.created_score)
    total = money_str(after.total_amount)
    zadd: list[tuple[str, str, str]] = []
    zrem: list[tuple[str, str]] = []

    if before is None:
        zadd += [
            (BY_CREATED, created, member),
            (customer_suffix(after.customer_id), created, member),
            (customer_suffix(after.customer_id, after.status), created, member),
            (status_suffix(after.status), created, member),
        ]
        zadd += [(token_suffix(t), created, member) for t in sorted(search_tokens(after))]
    else:
        if before.status != after.status:
            zrem += [
                (customer_suffix(after.customer_id, before.status), member),
                (status_suffix(before.status), member),
            ]
            zadd += [
                (customer_suffix(after.customer_id, after.status), created, member),
                (status_suffix(after.status), created, member),
            ]
        new_products = identifier_tokens(line.product_id for line in after.lines) - (
            identifier_tokens(line.product_id for line in before.lines)
        )
        zadd += [(token_suffix(t), created, member) for t in sorted(new_products)]
    if before is None or before.total_amount != after.total_amount:
        zadd.append((BY_TOTAL, total, member))
    return ViewChange(after, history_entry(event), tuple(zadd), tuple(zrem))


def replay(events: Iterable[tuple[RecordedEvent, OrderEvent]]) -> OrderView | None:
    """The view after a whole stream (for tests and checks)."""
    view: OrderView | None = None
    for event, payload in events:
        view = evolve(view, event, payload)
    return view
