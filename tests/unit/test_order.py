"""The Order aggregate: pure decide/evolve, no services."""

from __future__ import annotations

import time
import uuid
from dataclasses import replace
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pydantic
import pytest

from common.domain import Rejection
from orders.aggregate import Order, OrderStatus, decide, evolve, fold
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
    ShippingAddress,
)
from orders.domain import ORDER
from orders.settings import OrdersSettings

ORDER_ID = uuid.uuid4()
ADDRESS = ShippingAddress(
    recipient="Ada Lovelace",
    street="12 St James's Square",
    city="London",
    postal_code="SW1Y 4JH",
    country="GB",
)


def envelope() -> dict[str, Any]:
    return {
        "command_id": uuid.uuid4(),
        "order_id": ORDER_ID,
        "correlation_id": uuid.uuid4(),
        "issued_at": datetime.now(UTC),
    }


def line(product: str, quantity: int, price: str) -> OrderLine:
    return OrderLine(product_id=product, quantity=quantity, price=Decimal(price))


def create(*lines: OrderLine) -> CreateOrder:
    return CreateOrder(customer_id="c-1", items=list(lines), shipping_address=ADDRESS, **envelope())


def run(state: Order, *commands: Command) -> Order:
    for command in commands:
        for event in decide(state, command):
            state = evolve(state, event)
    return state


def test_create_sums_money_exactly() -> None:
    state = run(Order(), create(line("a", 3, "0.10"), line("b", 1, "19.99")))
    assert state.status is OrderStatus.CREATED
    assert state.version == 1
    assert state.total_amount == Decimal("20.29")
    assert state.item_count == 4


def test_float_trap_does_not_apply() -> None:
    state = run(Order(), create(*(line(f"p{i}", 1, "0.10") for i in range(10))))
    assert state.total_amount == Decimal("1.00")


def test_create_twice_is_rejected() -> None:
    state = run(Order(), create(line("a", 1, "1.00")))
    with pytest.raises(Rejection, match="already exists"):
        decide(state, create(line("a", 1, "1.00")))


def test_adding_a_known_product_raises_its_quantity() -> None:
    state = run(
        Order(),
        create(line("a", 1, "2.50")),
        AddItem(item=line("a", 2, "2.50"), **envelope()),
        AddItem(item=line("b", 1, "1.00"), **envelope()),
    )
    assert state.lines["a"].quantity == 3
    assert state.item_count == 4
    assert state.total_amount == Decimal("8.50")
    assert state.version == 3


@pytest.mark.parametrize(
    "command",
    [
        AddItem(item=line("a", 1, "1.00"), **envelope()),
        ShipOrder(**envelope()),
        CancelOrder(reason="changed my mind", **envelope()),
    ],
)
def test_commands_on_unknown_order_are_rejected(command: Command) -> None:
    with pytest.raises(Rejection) as info:
        decide(Order(), command)
    assert info.value.reason == "order not found"


@pytest.mark.parametrize("final", [ShipOrder(**envelope()), CancelOrder(reason="x", **envelope())])
@pytest.mark.parametrize(
    "after",
    [
        AddItem(item=line("a", 1, "1.00"), **envelope()),
        ShipOrder(**envelope()),
        CancelOrder(reason="too late", **envelope()),
    ],
)
def test_nothing_is_allowed_after_ship_or_cancel(final: Command, after: Command) -> None:
    state = run(Order(), create(line("a", 1, "1.00")), final)
    with pytest.raises(Rejection, match=r"order is (shipped|cancelled)"):
        decide(state, after)


def test_ship_and_cancel_events() -> None:
    created = run(Order(), create(line("a", 1, "1.00")))
    assert decide(created, ShipOrder(**envelope())) == [OrderShipped()]
    assert decide(created, CancelOrder(reason="lost", **envelope())) == [
        OrderCancelled(reason="lost")
    ]
    assert evolve(created, OrderShipped()).status is OrderStatus.SHIPPED


def test_create_event_carries_the_order() -> None:
    command = create(line("a", 2, "3.00"))
    [event] = decide(Order(), command)
    assert isinstance(event, OrderCreated)
    assert event.order_id == ORDER_ID
    assert event.items == command.items


def test_evolve_counts_versions() -> None:
    state = evolve(
        Order(),
        OrderCreated(
            order_id=ORDER_ID,
            customer_id="c",
            items=[line("a", 1, "1.00")],
            shipping_address=ADDRESS,
        ),
    )
    state = evolve(state, ItemAdded(item=line("b", 1, "1.00")))
    assert state.version == 2


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("quantity", 0),
        ("quantity", -1),
        ("quantity", 1.5),
        ("quantity", "2"),
        ("price", "-1.00"),
        ("price", "1.001"),
        ("product_id", ""),
        ("product_id", "ünïcode"),
    ],
)
def test_order_line_rejects_bad_values(field: str, value: object) -> None:
    data: dict[str, object] = {"product_id": "p", "quantity": 1, "price": "1.00"}
    data[field] = value
    with pytest.raises(pydantic.ValidationError) as info:
        OrderLine.model_validate(data)
    assert info.value.errors()[0]["loc"][0] == field


def test_cancel_needs_a_reason() -> None:
    with pytest.raises(pydantic.ValidationError):
        CancelOrder(reason="   ", **envelope())


def test_create_needs_items() -> None:
    with pytest.raises(pydantic.ValidationError):
        create()


def test_a_new_product_beyond_the_lines_limit_is_rejected() -> None:
    state = run(Order(), create(line("a", 1, "1.00"), line("b", 1, "1.00")))
    with pytest.raises(Rejection, match=r"^the order has reached its limit of 2 lines$"):
        decide(state, AddItem(item=line("c", 1, "1.00"), **envelope()), max_lines=2)
    # A product already on the order only raises its quantity.
    assert decide(state, AddItem(item=line("a", 3, "1.00"), **envelope()), max_lines=2) == [
        ItemAdded(item=line("a", 3, "1.00"))
    ]
    assert len(decide(state, AddItem(item=line("c", 1, "1.00"), **envelope()), max_lines=3)) == 1


def test_items_stop_one_event_below_the_events_limit_so_the_order_can_still_end() -> None:
    state = run(
        Order(), create(line("a", 1, "1.00")), AddItem(item=line("a", 1, "1.00"), **envelope())
    )
    assert state.version == 2
    with pytest.raises(Rejection, match=r"^the order has reached its limit of 3 events; it can"):
        decide(state, AddItem(item=line("a", 1, "1.00"), **envelope()), max_events=3)
    assert decide(state, ShipOrder(**envelope()), max_events=3) == [OrderShipped()]
    assert decide(state, CancelOrder(reason="no", **envelope()), max_events=3) == [
        OrderCancelled(reason="no")
    ]
    assert len(decide(state, AddItem(item=line("a", 1, "1.00"), **envelope()), max_events=4)) == 1


def test_a_create_with_more_products_than_the_limit_is_rejected() -> None:
    many = create(line("a", 1, "1.00"), line("b", 1, "1.00"), line("a", 2, "1.00"))
    assert len(decide(Order(), many, max_lines=2)) == 1  # two distinct products
    with pytest.raises(Rejection, match=r"^an order holds at most 1 lines$"):
        decide(Order(), many, max_lines=1)


def test_the_default_lines_limit_is_200() -> None:
    state = run(Order(), create(*(line(f"p{i}", 1, "1.00") for i in range(100))))
    state = run(state, *(AddItem(item=line(f"q{i}", 1, "1.00"), **envelope()) for i in range(100)))
    assert len(state.lines) == 200
    with pytest.raises(Rejection, match="limit of 200 lines"):
        decide(state, AddItem(item=line("one-more", 1, "1.00"), **envelope()))


def test_the_domain_reads_its_limits_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert (OrdersSettings().max_lines, OrdersSettings().max_events) == (200, 1000)
    assert ORDER.max_events == 1000
    monkeypatch.setenv("ORDERS_MAX_LINES", "3")
    monkeypatch.setenv("ORDERS_MAX_EVENTS", "7")
    assert (OrdersSettings().max_lines, OrdersSettings().max_events) == (3, 7)
    monkeypatch.setenv("ORDERS_MAX_EVENTS", "0")
    with pytest.raises(pydantic.ValidationError):
        OrdersSettings()


def history_of(n: int) -> list[OrderEvent]:
    """A create, then `n` additions of new products and of known ones, then a ship."""
    created = OrderCreated(
        order_id=ORDER_ID, customer_id="c", items=[line("a", 1, "1.00")], shipping_address=ADDRESS
    )
    added = [ItemAdded(item=line(f"p{i % (n // 2 + 1)}", 1, "0.50")) for i in range(n)]
    return [created, *added, OrderShipped()]


def test_fold_is_evolve_event_by_event_and_leaves_its_start_alone() -> None:
    events = history_of(40)
    one_by_one = Order()
    for event in events:
        one_by_one = evolve(one_by_one, event)
    assert fold(Order(), events) == one_by_one
    assert one_by_one.version == 42
    start = fold(Order(), events[:10])
    lines_before = dict(start.lines)
    assert fold(start, events[10:]) == one_by_one
    assert start.lines == lines_before  # the earlier state is not changed by folding on
    assert ORDER.fold_events(Order(), events) == replace(ORDER, fold=None).fold_events(
        Order(), events
    )


def test_folding_a_stream_takes_time_linear_in_its_events() -> None:
    def seconds(n: int) -> float:
        events = history_of(n)
        best = float("inf")
        for _ in range(3):
            started = time.perf_counter()
            fold(Order(), events)
            best = min(best, time.perf_counter() - started)
        return best

    # Eight times the events: linear costs about 8 times as much, quadratic (a copy of the
    # lines per event, as before) 64 times.
    ratio = seconds(16_000) / seconds(2_000)
    assert ratio < 20, f"16,000 events took {ratio:.1f} times as long as 2,000"
