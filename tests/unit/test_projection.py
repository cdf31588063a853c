"""The orders projection as pure functions: events in, views and index changes out."""

from __future__ import annotations

import random
import uuid
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import orjson
import pytest

from common.contracts.envelopes import EventMetadata, RecordedEvent
from common.domain import UnknownEvent, load_domains, stream_id
from common.readmodel.projection import ProjectionError, ViewChange, history_event_json
from orders.contracts import (
    ItemAdded,
    OrderCancelled,
    OrderCreated,
    OrderLine,
    OrderShipped,
    ShippingAddress,
)
from orders.layout import BY_CREATED, BY_TOTAL
from orders.projection import OrderViews, index_entries, search_tokens
from orders.view import (
    OrderView,
    ViewStatus,
    api_json,
    query_terms,
    text_tokens,
)

ORDER = uuid.UUID("0b9a4d0e-9d7e-4a53-9a51-3c1f3c6d7e01")
STREAM = stream_id("Order", ORDER)
PROJECTION = OrderViews()
REGISTRY = load_domains("orders")
T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
ADDRESS = ShippingAddress(
    recipient="Ada Lovelace",
    street="12 Main-Street",
    city="London",
    postal_code="NW1 2DB",
    country="GB",
)


def line(product: str, quantity: int, price: str) -> OrderLine:
    return OrderLine(product_id=product, quantity=quantity, price=Decimal(price))


def recorded(payload: Any, version: int, *, order: uuid.UUID = ORDER) -> RecordedEvent:
    data = payload.model_dump(mode="json", exclude={"type"})
    moment = T0 + timedelta(minutes=version)
    return RecordedEvent(
        event_id=uuid.uuid4(),
        position=100 + version,
        stream_id=stream_id("Order", order),
        version=version,
        type=payload.type,
        data=data,
        metadata=EventMetadata(
            command_id=uuid.uuid4(),
            correlation_id=uuid.uuid4(),
            causation_id=uuid.uuid4(),
            occurred_at=moment,
        ),
        recorded_at=moment,
    )


def created(*lines: OrderLine, customer: str = "cust-1") -> RecordedEvent:
    return recorded(
        OrderCreated(
            order_id=ORDER, customer_id=customer, items=list(lines), shipping_address=ADDRESS
        ),
        1,
    )


def parse_payload(event: RecordedEvent) -> Any:
    return REGISTRY.parse_event(event)


def step(before: OrderView | None, event: RecordedEvent) -> ViewChange:
    return PROJECTION.plan(before, event, parse_payload(event))


def run(*events: RecordedEvent) -> OrderView:
    view: OrderView | None = None
    for event in events:
        view = step(view, event).view
    assert view is not None
    return view


def test_created_order_has_exact_totals_and_merged_lines() -> None:
    view = run(created(line("p-1", 2, "10.10"), line("p-2", 1, "0.05"), line("p-1", 1, "10.10")))
    assert view.status is ViewStatus.CREATED
    assert [(x.product_id, x.quantity) for x in view.lines] == [("p-1", 3), ("p-2", 1)]
    assert view.total_amount == Decimal("30.35")
    assert view.item_count == 4
    assert view.version == 1
    assert view.created_at == view.updated_at == T0 + timedelta(minutes=1)


def test_money_is_exact_where_floats_are_not() -> None:
    view = run(created(*(line(f"p-{i}", 1, "0.10") for i in range(3))))
    assert view.to_api()["total_amount"] == "0.30"


def test_adding_a_product_already_on_the_order_adds_to_its_quantity() -> None:
    first = created(line("p-1", 1, "2.50"))
    added = recorded(ItemAdded(item=line("p-1", 4, "2.50")), 2)
    other = recorded(ItemAdded(item=line("p-9", 1, "1.00")), 3)
    view = run(first, added, other)
    assert [(x.product_id, x.quantity) for x in view.lines] == [("p-1", 5), ("p-9", 1)]
    assert view.to_api()["total_amount"] == "13.50"
    assert view.item_count == 6
    assert view.version == 3
    assert view.updated_at == T0 + timedelta(minutes=3)


def test_shipping_and_cancelling_set_status_and_times() -> None:
    first = created(line("p-1", 1, "1.00"))
    shipped = run(first, recorded(OrderShipped(), 2))
    assert shipped.status is ViewStatus.SHIPPED
    assert shipped.shipped_at == T0 + timedelta(minutes=2)
    cancelled = run(first, recorded(OrderCancelled(reason="changed my mind"), 2))
    assert cancelled.status is ViewStatus.CANCELLED
    assert cancelled.cancel_reason == "changed my mind"
    assert cancelled.cancelled_at == T0 + timedelta(minutes=2)
    assert cancelled.shipped_at is None


def test_the_hash_round_trips() -> None:
    view = run(
        created(line("p-1", 2, "19.99")),
        recorded(ItemAdded(item=line("p-2", 1, "5.00")), 2),
        recorded(OrderCancelled(reason="late"), 3),
    )
    raw = {k.encode(): v.encode() for k, v in view.to_hash().items()}
    assert OrderView.from_hash(raw) == view


def test_the_hash_keeps_every_value_short_and_its_lines_in_order_whatever_the_field_order() -> None:
    """Values of at most 64 bytes keep the hash a listpack in Redis; a hashtable (a long
    address line) returns its fields in any order, and the lines still come out in theirs."""
    adds = [recorded(ItemAdded(item=line(f"sku-{n}", n, "1000000000.00")), n) for n in range(2, 13)]
    view = run(created(line("p-1", 100_000, "999999999.99")), *adds)
    fields = view.to_hash()
    assert max(len(value.encode()) for value in fields.values()) <= 64
    raw = {k.encode(): v.encode() for k, v in reversed(fields.items())}
    assert [line.product_id for line in OrderView.from_hash(raw).lines] == [
        "p-1",
        *(f"sku-{n}" for n in range(2, 13)),
    ]
    assert orjson.loads(api_json(raw)) == view.to_api()


def test_api_shape() -> None:
    body = run(created(line("p-1", 2, "19.99"))).to_api()
    assert body == {
        "order_id": str(ORDER),
        "customer_id": "cust-1",
        "status": "created",
        "total_amount": "39.98",
        "item_count": 2,
        "items": [{"product_id": "p-1", "quantity": 2, "price": "19.99"}],
        "shipping_address": ADDRESS.model_dump(mode="json"),
        "created_at": "2024-05-01T12:01:00+00:00",
        "updated_at": "2024-05-01T12:01:00+00:00",
        "shipped_at": None,
        "cancelled_at": None,
        "cancel_reason": None,
        "version": 1,
    }


@pytest.mark.parametrize(
    "events",
    [
        [created(line("p-1", 2, "19.99"))],
        [
            created(line("p-1", 2, "19.99"), customer="cust.x_1"),
            recorded(ItemAdded(item=line("p-2", 3, "0.05")), 2),
            recorded(OrderShipped(), 3),
        ],
        [
            created(line("p-1", 1, "1.00")),
            recorded(OrderCancelled(reason='said "no" \u00e9\u4e2d\n'), 2),
        ],
    ],
    ids=["created", "shipped", "cancelled"],
)
def test_queries_answer_the_api_shape_straight_from_the_hash(events: list[RecordedEvent]) -> None:
    view = run(*events)
    raw = {k.encode(): v.encode() for k, v in view.to_hash().items()}
    fast = api_json(raw)
    assert fast == orjson.dumps(OrderView.from_hash(raw).to_api())
    assert orjson.loads(fast) == view.to_api()


def apply_sets(sets: dict[str, dict[str, str]], change: ViewChange) -> None:
    """What APPLY does to the sorted sets: removals first, then additions."""
    for suffix, member in change.zrem:
        sets.setdefault(suffix, {}).pop(member, None)
    for suffix, score, member in change.zadd:
        sets.setdefault(suffix, {})[member] = score


def one_by_one(events: list[RecordedEvent], start: int = 0) -> list[ViewChange]:
    changes: list[ViewChange] = []
    view: OrderView | None = None
    for event in events:
        changes.append(step(view, event))
        view = changes[-1].view
    return changes[start:]


@pytest.mark.parametrize("start", [0, 1, 2])
def test_a_run_changes_what_its_events_change_one_by_one(start: int) -> None:
    events = [
        created(line("p-1", 2, "19.99")),
        recorded(ItemAdded(item=line("p-2", 3, "0.05")), 2),
        recorded(ItemAdded(item=line("p-1", 1, "19.99")), 3),
        recorded(OrderCancelled(reason="too slow"), 4),
    ]
    changes = one_by_one(events)
    expected: dict[str, dict[str, str]] = {}
    for change in changes:
        apply_sets(expected, change)
    got: dict[str, dict[str, str]] = {}
    for change in changes[:start]:
        apply_sets(got, change)
    before = changes[start - 1].view if start else None
    run = PROJECTION.plan_run(before, [(e, parse_payload(e)) for e in events[start:]])
    apply_sets(got, run)
    assert {k: v for k, v in got.items() if v} == {k: v for k, v in expected.items() if v}
    assert run.view == changes[-1].view
    assert run.fields == changes[-1].fields
    assert run.history == tuple(entry for c in changes[start:] for entry in c.history)
    assert run.first_version == start + 1
    assert run.version == len(events)


def random_stream(rng: random.Random) -> list[RecordedEvent]:
    products = [f"p-{i}" for i in range(4)] + ["london", "cust-1"]  # some collide with tokens
    events = [created(line(rng.choice(products), rng.randint(1, 3), "1.10"))]
    for version in range(2, rng.randint(2, 9)):
        roll = rng.random()
        if roll < 0.7:
            payload: Any = ItemAdded(item=line(rng.choice(products), 1, f"{rng.randint(1, 99)}.05"))
        elif roll < 0.85:
            payload = OrderShipped()
        else:
            payload = OrderCancelled(reason="changed")
        events.append(recorded(payload, version))
    return events


@pytest.mark.parametrize("seed", range(40))
def test_sorted_sets_always_hold_the_entries_of_the_view(seed: int) -> None:
    """Whatever the split into runs, the sets end up as `index_entries` of the last view."""
    rng = random.Random(seed)
    events = random_stream(rng)
    cut = rng.randrange(len(events))
    changes = one_by_one(events)
    sets: dict[str, dict[str, str]] = {}
    for change in changes[:cut]:
        apply_sets(sets, change)
    before = changes[cut - 1].view if cut else None
    apply_sets(sets, PROJECTION.plan_run(before, [(e, parse_payload(e)) for e in events[cut:]]))
    expected = {
        suffix: {str(ORDER): score} for suffix, score in index_entries(changes[-1].view).items()
    }
    assert {k: v for k, v in sets.items() if v} == expected
    one: dict[str, dict[str, str]] = {}
    for change in changes:
        apply_sets(one, change)
    assert {k: v for k, v in one.items() if v} == expected


def test_a_run_with_an_event_that_cannot_follow_is_refused() -> None:
    first = created(line("p-1", 1, "1.00"))
    with pytest.raises(ProjectionError, match="cannot follow"):
        PROJECTION.plan_run(
            None, [(e, parse_payload(e)) for e in (first, recorded(OrderShipped(), 3))]
        )


def test_creation_indexes_the_order_everywhere() -> None:
    change = step(None, created(line("SKU-1", 1, "3.00"), customer="Cust-7"))
    score = str(change.view.created_score)
    added = {(key, s) for key, s, _member in change.zadd}
    assert (BY_CREATED, score) in added
    assert (BY_TOTAL, "3.00") in added
    assert ("customer:Cust-7", score) in added
    assert ("customer:Cust-7:created", score) in added
    assert ("status:created", score) in added
    for token in ("cust-7", "sku-1", "main-street", "main", "street", "london", "gb"):
        assert (f"token:{token}", score) in added
    assert (f"token:{ORDER}", score) not in added  # found from its view
    assert change.zrem == ()
    assert all(member == str(ORDER) for _key, _score, member in change.zadd)
    assert change.hincrby == change.zincrby == ()


def test_the_view_and_its_history_live_under_the_bare_order_id() -> None:
    change = step(None, created(line("p-1", 1, "1.00")))
    assert change.stream_id == STREAM == f"Order-{ORDER}"
    assert change.view.order_id == str(ORDER)
    assert change.view_key == f"order:{ORDER}"
    assert change.history_key == f"history:{ORDER}"
    assert change.fields == change.view.to_hash()
    assert (change.version, change.first_version) == (1, 1)
    assert PROJECTION.follows(STREAM)
    assert not PROJECTION.follows(str(ORDER))
    assert not PROJECTION.follows(f"Product-{ORDER}")


def test_status_change_moves_the_order_between_status_sets() -> None:
    first = step(None, created(line("p-1", 1, "1.00")))
    change = step(first.view, recorded(OrderShipped(), 2))
    assert set(change.zrem) == {
        ("customer:cust-1:created", str(ORDER)),
        ("status:created", str(ORDER)),
    }
    keys = {key for key, _score, _member in change.zadd}
    assert keys == {"customer:cust-1:shipped", "status:shipped"}
    assert change.index_keys()[:2] == ["customer:cust-1:created", "status:created"]


def test_item_added_reindexes_total_and_new_products_only() -> None:
    first = step(None, created(line("p-1", 1, "1.00")))
    again = step(first.view, recorded(ItemAdded(item=line("p-1", 1, "1.00")), 2))
    assert {k for k, _s, _m in again.zadd} == {BY_TOTAL}
    new = step(first.view, recorded(ItemAdded(item=line("p-2", 1, "1.00")), 2))
    assert {k for k, _s, _m in new.zadd} == {BY_TOTAL, "token:p-2"}


def test_history_entry_carries_what_the_api_returns() -> None:
    event = created(line("p-1", 1, "1.00"))
    [raw] = step(None, event).history
    assert orjson.loads(raw) == [
        101,
        1,
        "OrderCreated",
        event.data,
        1714564860000000,
        event.metadata.command_id.hex,
    ]
    entry = orjson.loads(history_event_json(raw))
    assert entry == {
        "position": 101,
        "version": 1,
        "type": "OrderCreated",
        "data": event.data,
        "time": "2024-05-01T12:01:00+00:00",
        "command_id": str(event.metadata.command_id),
    }


@pytest.mark.parametrize(
    ("occurred_at", "time"),
    [
        (datetime(2024, 5, 1, 12, 1, 0, 7), "2024-05-01T12:01:00.000007+00:00"),
        (
            datetime(2024, 5, 1, 14, 1, 0, 999999, tzinfo=timezone(timedelta(hours=2))),
            "2024-05-01T12:01:00.999999+00:00",
        ),
        (datetime(1969, 12, 31, 23, 59, 59, 1, tzinfo=UTC), "1969-12-31T23:59:59.000001+00:00"),
    ],
)
def test_history_times_keep_every_microsecond(occurred_at: datetime, time: str) -> None:
    event = created(line("p-1", 1, "1.00"))
    event = event.model_copy(
        update={"metadata": event.metadata.model_copy(update={"occurred_at": occurred_at})}
    )
    [raw] = step(None, event).history
    assert orjson.loads(history_event_json(raw))["time"] == time


@pytest.mark.parametrize(
    ("before_events", "event", "message"),
    [
        ([], recorded(OrderShipped(), 1), "before OrderCreated"),
        ([], recorded(OrderShipped(), 2), "cannot follow version 0"),
        (["created"], created(line("p", 1, "1.00")), "cannot follow version 1"),
    ],
)
def test_events_out_of_place_are_refused(
    before_events: list[str], event: RecordedEvent, message: str
) -> None:
    before = run(created(line("p", 1, "1.00"))) if before_events else None
    with pytest.raises(ProjectionError, match=message):
        step(before, event)


def test_invalid_payloads_are_unknown_events() -> None:
    event = created(line("p", 1, "1.00")).model_copy(update={"data": {"order_id": "nope"}})
    with pytest.raises(UnknownEvent, match="invalid OrderCreated payload"):
        parse_payload(event)
    unknown = created(line("p", 1, "1.00")).model_copy(update={"type": "OrderExploded"})
    with pytest.raises(UnknownEvent):
        parse_payload(unknown)
    untyped = created(line("p", 1, "1.00")).model_copy(update={"stream_id": str(ORDER)})
    with pytest.raises(UnknownEvent):
        parse_payload(untyped)


def test_an_order_created_for_another_stream_is_refused() -> None:
    other = created(line("p", 1, "1.00")).model_copy(
        update={"stream_id": stream_id("Order", uuid.uuid4())}
    )
    with pytest.raises(ProjectionError, match="another stream"):
        step(None, other)


def test_payload_may_carry_its_type() -> None:
    event = created(line("p", 1, "1.00"))
    with_type = event.model_copy(update={"data": {**event.data, "type": "OrderCreated"}})
    assert parse_payload(with_type) == parse_payload(event)


def test_tokens_and_query_terms_agree() -> None:
    view = run(created(line("p-1", 1, "1.00")))
    tokens = search_tokens(view)
    indexed = {k.removeprefix("token:") for k in index_entries(view) if k.startswith("token:")}
    assert indexed == tokens
    for query in ("main-street", "Main", "LONDON", "nw1", "ada lovelace", "P-1"):
        assert set(query_terms(query)) <= tokens, query
    # An order is found by its id from its view, not from a token set of its own.
    assert str(ORDER) not in tokens
    assert text_tokens(["  "]) == set()
    assert query_terms("a  A, b") == ["a", "b"]
