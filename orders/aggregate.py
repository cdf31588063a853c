"""The Order aggregate: pure domain logic, no I/O.

`evolve` folds stored events into state; `decide` turns a command and the current state into new
events or a `Rejection`. A second domain copies this file's shape and nothing else changes.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
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


def add_line(lines: dict[str, OrderLine], line: OrderLine) -> dict[str, OrderLine]:
    """Lines after adding `line`: a product already present gets its quantity raised."""
    merged = dict(lines)
    current = merged.get(line.product_id)
    if current is None:
        merged[line.product_id] = line
    else:
        merged[line.product_id] = current.model_copy(
            update={"quantity": current.quantity + line.quantity}
        )
    return merged


def evolve(state: Order, event: OrderEvent) -> Order:
    """State after one event."""
    match event:
        case OrderCreated(items=items):
            lines: dict[str, OrderLine] = {}
            for line in items:
                lines = add_line(lines, line)
            return Order(version=state.version + 1, status=OrderStatus.CREATED, lines=lines)
        case ItemAdded(item=item):
            return replace(state, version=state.version + 1, lines=add_line(state.lines, item))
        case OrderShipped():
            return replace(state, version=state.version + 1, status=OrderStatus.SHIPPED)
        case OrderCancelled():
            return replace(state, version=state.version + 1, status=OrderStatus.CANCELLED)
    raise TypeError(f"unknown event {event!r}")  # pragma: no cover


DEFAULT_MAX_LINES = 200
"""The lines limit when the domain's settings name none (`orders.settings`)."""


def decide(state: Order, command: Command, max_lines: int = DEFAULT_MAX_LINES) -> list[OrderEvent]:
    """The events `command` produces on `state`, or raise `Rejection`. An order holds at most
    `max_lines` distinct products."""
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
            return [ItemAdded(item=item)]
        case ShipOrder():
            return [OrderShipped()]
        case CancelOrder(reason=reason):
            if not reason.strip():
                raise Rejection("a cancel needs a reason")
            return [OrderCancelled(reason=reason)]
    raise TypeError(f"unknown command {command!r}")  # pragma: no cover
