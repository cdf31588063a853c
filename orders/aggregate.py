"""The Order aggregate: pure domain logic, no I/O.

`evolve` folds stored events into state; `decide` turns a command and the current state into new
events or a `Rejection`. A second domain copies this file's shape and nothing else changes.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from decimal import Decimal
from enum import StrEnum

from common.domain import Rejection
from orders.contracts import (
    AddItem,
    CancelOrder,
    Command,
    CreateOrder,
    ItemAdded,
    OrderCancelled,
    OrderCreated,
    OrderEvent,
    OrderLine,
    OrderShipped,
    ShipOrder,
)


class OrderStatus(StrEnum):
    """Life cycle of an order: created, then shipped or cancelled, never back."""

    CREATED = "created"
    SHIPPED = "shipped"
    CANCELLED = "cancelled"


@dataclass(frozen=True, slots=True)
class Order:
    """State of one order, rebuilt from its events. `version` is the number of events seen."""

    version: int = 0
    status: OrderStatus | None = None
    lines: dict[str, OrderLine] = field(default_factory=dict)

    @property
    def exists(self) -> bool:
        return self.status is not None

    @property
    def total_amount(self) -> Decimal:
        return sum((line.price * line.quantity for line in self.lines.values()), Decimal("0.00"))

    @property
    def item_count(self) -> int:
        return sum(line.quantity for line in self.lines.values())


def fold(state: Order, events: Iterable[OrderEvent]) -> Order:
    """State after `events`, in time linear in their number: the lines are copied once, then
    changed in place, so loading a long stream never copies them per event. `state` itself is
    never changed; `evolve` is `fold` of one event."""
    version, status = state.version, state.status
    lines = dict(state.lines)
    for event in events:
        match event:
            case OrderCreated(items=items):
                status = OrderStatus.CREATED
                lines = {}
                for line in items:
                    _add_line(lines, line)
            case ItemAdded(item=item):
                _add_line(lines, item)
            case OrderShipped():
                status = OrderStatus.SHIPPED
            case OrderCancelled():
                status = OrderStatus.CANCELLED
            case _:  # pragma: no cover
                raise TypeError(f"unknown event {event!r}")
        version += 1
    return Order(version=version, status=status, lines=lines)


def evolve(state: Order, event: OrderEvent) -> Order:
    """State after one event."""
    return fold(state, (event,))


def _add_line(lines: dict[str, OrderLine], line: OrderLine) -> None:
    """Add `line` to `lines` in place: a product already present gets its quantity raised."""
    current = lines.get(line.product_id)
    if current is None:
        lines[line.product_id] = line
    else:
        lines[line.product_id] = current.model_copy(
            update={"quantity": current.quantity + line.quantity}
        )


DEFAULT_MAX_LINES = 200
"""The lines limit when the domain's settings name none (`orders.settings`)."""
DEFAULT_MAX_EVENTS = 1000
"""The events limit when the domain's settings name none."""


def decide(
    state: Order,
    command: Command,
    max_lines: int = DEFAULT_MAX_LINES,
    max_events: int = DEFAULT_MAX_EVENTS,
) -> list[OrderEvent]:
    """The events `command` produces on `state`, or raise `Rejection`. An order holds at most
    `max_lines` distinct products, and items are added while one event is left below
    `max_events`, so an order at its limit can still be shipped or cancelled."""
    if isinstance(command, CreateOrder):
        if state.exists:
            raise Rejection("order already exists")
        if len({line.product_id for line in command.items}) > max_lines:
            raise Rejection(f"an order holds at most {max_lines} lines")
        return [
            OrderCreated(
                order_id=command.order_id,
                customer_id=command.customer_id,
                items=command.items,
                shipping_address=command.shipping_address,
            )
        ]
    if not state.exists:
        raise Rejection("order not found")
    if state.status is not OrderStatus.CREATED:
        raise Rejection(f"order is {state.status}")
    match command:
        case AddItem(item=item):
            if item.product_id not in state.lines and len(state.lines) >= max_lines:
                raise Rejection(f"the order has reached its limit of {max_lines} lines")
            if state.version >= max_events - 1:
                raise Rejection(
                    f"the order has reached its limit of {max_events} events;"
                    " it can still be shipped or cancelled"
                )
            return [ItemAdded(item=item)]
        case ShipOrder():
            return [OrderShipped()]
        case CancelOrder(reason=reason):
            if not reason.strip():
                raise Rejection("a cancel needs a reason")
            return [OrderCancelled(reason=reason)]
    raise TypeError(f"unknown command {command!r}")  # pragma: no cover
