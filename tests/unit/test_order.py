"""The Order aggregate: pure decide/evolve, no services."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pydantic
import pytest

from common.domain import Rejection
from orders.aggregate import Order, OrderStatus, decide, evolve
from orders.contracts import (
    AddItem,
    CancelOrder,
    Command,
    CreateOrder,
    ItemAdded,
    OrderCancelled,
    OrderCreated,
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
