"""Registering domains: what the registry accepts, refuses, parses and upcasts."""

from __future__ import annotations

import uuid
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import pytest

from common.contracts.envelopes import EventMetadata, RecordedEvent
from common.domain import (
    Domain,
    Registry,
    Rejection,
    UnknownEvent,
    load_domains,
    split_stream_id,
    stream_id,
)
from orders.contracts import CreateOrder, ShipOrder
from orders.domain import DOMAIN as ORDERS
from orders.domain import ORDER
from tests.domains.tickets.domain import DOMAIN as TICKETS
from tests.domains.tickets.domain import TICKET


def stored(stream: str, event_type: str, version: int, data: dict[str, Any]) -> RecordedEvent:
    moment = datetime(2024, 1, 1, tzinfo=UTC)
    ids = uuid.uuid4()
    return RecordedEvent(
        event_id=uuid.uuid4(),
        position=1,
        stream_id=stream,
        version=1,
        type=event_type,
        schema_version=version,
        data=data,
        metadata=EventMetadata(
            command_id=ids, correlation_id=ids, causation_id=ids, occurred_at=moment
        ),
        recorded_at=moment,
    )


def test_stream_ids_carry_their_type() -> None:
    order_id = uuid.uuid4()
    assert stream_id("Order", order_id) == f"Order-{order_id}"
    assert split_stream_id(f"Order-{order_id}") == ("Order", str(order_id))
    assert split_stream_id("untyped") == ("", "untyped")


def test_two_domains_load_side_by_side() -> None:
    registry = load_domains("orders, tests.domains.tickets")
    assert set(registry.aggregates) == {"Order", "Ticket"}
    assert list(registry.projections) == ["order_views", "product_sales", "ticket_views"]
    assert {"CreateOrder", "OpenTicket", "CloseTicket"} <= registry.command_types
    assert registry.aggregate_of_stream(f"Ticket-{uuid.uuid4()}") is TICKET


@pytest.mark.parametrize(
    ("domains", "message"),
    [
        ([ORDERS, ORDERS], "two aggregates of stream type Order"),
        ([Domain("x", [ORDER])], "visible in 'order_views', which no loaded domain registers"),
        (
            [ORDERS, replace(TICKETS, aggregates=[replace(TICKET, stream_type="Order")])],
            "two aggregates of stream type Order",
        ),
    ],
)
def test_conflicting_registrations_are_refused(domains: list[Domain], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Registry(domains)


def test_a_stream_type_is_one_word() -> None:
    with pytest.raises(ValueError, match="a word without '-'"):
        replace(ORDER, stream_type="Sales-Order")


def test_a_module_without_a_domain_is_refused() -> None:
    with pytest.raises(ValueError, match="has no `DOMAIN`"):
        load_domains("common")


def test_old_events_are_upcast_and_bad_ones_named() -> None:
    registry = load_domains("tests.domains.tickets")
    stream = stream_id("Ticket", uuid.uuid4())
    old = stored(stream, "TicketOpened", 1, {"title": "t"})
    current = registry.upcast(old)
    assert (current.schema_version, current.data) == (2, {"title": "t", "priority": "normal"})
    assert registry.parse_event(old).priority == "normal"
    assert registry.upcast(current) is current

    with pytest.raises(UnknownEvent, match="no upcaster for TicketOpened v0"):
        registry.parse_event(stored(stream, "TicketOpened", 0, {"title": "t"}))
    failing = replace(TICKET, upcasters={("TicketOpened", 1): lambda data: data["missing"]})
    broken = Registry([replace(TICKETS, aggregates=[failing])])
    with pytest.raises(UnknownEvent, match="cannot upcast TicketOpened v1: KeyError"):
        broken.upcast(old)
    with pytest.raises(UnknownEvent, match="no aggregate of stream type 'Invoice'"):
        registry.parse_event(stored(f"Invoice-{uuid.uuid4()}", "InvoiceSent", 1, {}))
    with pytest.raises(UnknownEvent, match="invalid TicketClosed payload"):
        registry.parse_event(stored(stream, "TicketClosed", 1, {}))


def test_the_events_limit_rejects_what_would_append_past_it() -> None:
    limited = replace(ORDER, max_events=3)
    state = limited.initial
    command = CreateOrder.model_validate(
        {
            "command_id": uuid.uuid4(),
            "order_id": uuid.uuid4(),
            "correlation_id": uuid.uuid4(),
            "issued_at": datetime.now(UTC),
            "customer_id": "c",
            "items": [{"product_id": "a", "quantity": 1, "price": "1.00"}],
            "shipping_address": {
                "recipient": "R",
                "street": "S",
                "city": "C",
                "postal_code": "12345",
                "country": "DE",
            },
        }
    )
    assert len(limited.decide_within_limit(state, 2, command)) == 1  # to version 3: allowed
    with pytest.raises(Rejection, match=r"^the order has reached its limit of 3 events$"):
        limited.decide_within_limit(state, 3, command)
    # The domain's own reason comes first, and no limit means none.
    created = limited.evolve(state, limited.decide(state, command)[0])
    with pytest.raises(Rejection, match="order already exists"):
        limited.decide_within_limit(created, 3, command)
    assert len(replace(ORDER, max_events=None).decide_within_limit(state, 10**9, command)) == 1
    # A closing command passes the limit, so a stream at or past it can still be closed.
    ship = ShipOrder.model_validate(
        {
            "command_id": uuid.uuid4(),
            "order_id": command.order_id,
            "correlation_id": uuid.uuid4(),
            "issued_at": datetime.now(UTC),
        }
    )
    assert ORDER.closing == {"ShipOrder", "CancelOrder"}
    assert len(limited.decide_within_limit(created, 20_000, ship)) == 1
    with pytest.raises(ValueError, match="max_events of Order must be at least 1"):
        replace(ORDER, max_events=0)
