"""The `product_sales` projection, pure: what each event changes in the shared counters."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest

from common.readmodel.projection import ProjectionError, ViewChange
from orders.contracts import ItemAdded, OrderCancelled, OrderShipped
from orders.sales import OrderSales, ProductSales, SaleStatus
from tests.unit.test_projection import REGISTRY, created, line, recorded

SALES = ProductSales()


def changes(*events: Any) -> list[ViewChange]:
    """Each event's change, planned on the view the one before left."""
    view: OrderSales | None = None
    planned = []
    for event in events:
        change = SALES.plan(view, event, REGISTRY.parse_event(event))
        planned.append(change)
        view = change.view
    return planned


def totals(planned: list[ViewChange]) -> tuple[Counter[tuple[str, str]], Counter[tuple[str, str]]]:
    """The counters and rankings after applying every change in order."""
    counted: Counter[tuple[str, str]] = Counter()
    ranked: Counter[tuple[str, str]] = Counter()
    for change in planned:
        for suffix, name, delta in change.hincrby:
            counted[(suffix, name)] += delta
        for suffix, member, delta in change.zincrby:
            ranked[(suffix, member)] += delta
    return counted, ranked


def test_nothing_counts_until_the_order_ships() -> None:
    planned = changes(
        created(line("a", 2, "1.50"), line("b", 1, "0.99")),
        recorded(ItemAdded(item=line("a", 3, "9.00")), 2),
    )
    assert all(not c.hincrby and not c.zincrby for c in planned)
    assert planned[-1].view == OrderSales(2, SaleStatus.OPEN, (("a", 5, 150), ("b", 1, 99)))


def test_a_shipped_order_counts_each_line_once_at_its_first_price() -> None:
    planned = changes(
        created(line("a", 2, "1.50"), line("b", 1, "0.99")),
        recorded(ItemAdded(item=line("a", 3, "9.00")), 2),
        recorded(OrderShipped(), 3),
    )
    counted, ranked = totals(planned)
    assert counted == {
        ("product:a", "units"): 5,
        ("product:a", "revenue_cents"): 750,
        ("product:a", "orders"): 1,
        ("product:b", "units"): 1,
        ("product:b", "revenue_cents"): 99,
        ("product:b", "orders"): 1,
    }
    assert ranked == {
        ("top:revenue", "a"): -750,
        ("top:units", "a"): -5,
        ("top:revenue", "b"): -99,
        ("top:units", "b"): -1,
    }


def test_a_cancelled_order_never_counts() -> None:
    planned = changes(created(line("a", 2, "1.50")), recorded(OrderCancelled(reason="no"), 2))
    assert totals(planned) == (Counter(), Counter())
    assert planned[-1].view.status is SaleStatus.CANCELLED


def test_a_free_product_still_gets_its_revenue_field_and_ranking() -> None:
    planned = changes(created(line("free", 3, "0.00")), recorded(OrderShipped(), 2))
    assert ("product:free", "revenue_cents", 0) in planned[-1].hincrby
    assert ("top:revenue", "free", 0) in planned[-1].zincrby


def test_a_run_changes_the_counters_as_its_events_one_by_one() -> None:
    events = [
        created(line("a", 2, "1.50")),
        recorded(ItemAdded(item=line("c", 1, "4.00")), 2),
        recorded(OrderShipped(), 3),
    ]
    folded = SALES.plan_run(None, [(e, REGISTRY.parse_event(e)) for e in events])
    stepwise = totals(changes(*events))
    assert totals([folded]) == stepwise
    assert folded.view == changes(*events)[-1].view


def test_the_view_survives_its_hash() -> None:
    view = changes(created(line("a", 2, "1.50"), line("b.x", 1, "3.00")))[-1].view
    raw = {k.encode(): v.encode() for k, v in SALES.to_hash(view).items()}
    assert SALES.from_hash(raw) == view


def test_events_must_follow_the_view() -> None:
    with pytest.raises(ProjectionError):
        changes(recorded(OrderShipped(), 1))
    with pytest.raises(ProjectionError):
        changes(created(line("a", 1, "1.00")), recorded(OrderShipped(), 3))
