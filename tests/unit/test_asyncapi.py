"""The AsyncAPI document: valid by the official schema, naming every exchange and queue the
processes declare, and describing every command and event as the code sends them."""

from __future__ import annotations

import copy
import json
import uuid
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, cast

import aio_pika
import pytest
from pydantic import BaseModel

from common.contracts.commands import CommandBase
from common.contracts.envelopes import EventMetadata, RecordedEvent
from common.domain import Registry, load_domains
from common.messaging.asyncapi import PROPERTIES, asyncapi_document, vhost_of
from common.messaging.consuming import (
    ATTEMPT_HEADER,
    FAILED_AT_HEADER,
    KIND_HEADER,
    QUEUE_HEADER,
    REASON_HEADER,
)
from common.messaging.dead_letters import FAILURE_HEADERS
from common.messaging.messages import command_message, event_message, events_message
from common.messaging.topology import Topology, declare_topology
from orders.contracts import CreateOrder, OrderCreated, OrderLine, ShippingAddress
from tests.domains.tickets.contracts import OpenTicket, TicketOpened
from tests.support.asyncapi import (
    RecordingChannel,
    refs,
    resolve,
    schema_errors,
    validator_for,
)

DOMAINS = ["orders", "orders, tests.domains.tickets"]
BASE_DELAY_MS = 250
SCHEMA_REF = "#/components/schemas/{model}"
NOW = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


def registry_of(domains: str) -> Registry:
    return load_domains(domains)


def topology_of(registry: Registry) -> Topology:
    return Topology("shop", tuple(registry.projections))


def document_of(domains: str) -> dict[str, Any]:
    registry = registry_of(domains)
    return asyncapi_document(registry, topology_of(registry), BASE_DELAY_MS, vhost="shop")


@pytest.fixture(scope="module")
def both() -> dict[str, Any]:
    return document_of(DOMAINS[-1])


def channels_of(document: dict[str, Any], kind: str) -> dict[str, dict[str, Any]]:
    """The channels whose AMQP binding `is` `kind` (`queue` or `routingKey`)."""
    return {
        key: channel
        for key, channel in document["channels"].items()
        if channel["bindings"]["amqp"]["is"] == kind
    }


def routing_keys(channel: dict[str, Any]) -> list[str]:
    """The routing keys a route channel stands for (each value of a parameterised one)."""
    address = channel["address"]
    for name, parameter in channel.get("parameters", {}).items():
        return [address.replace(f"{{{name}}}", value) for value in parameter["enum"]]
    return [address]


# --- the official schema ------------------------------------------------------------------------


@pytest.mark.parametrize("domains", DOMAINS)
def test_the_document_follows_the_asyncapi_3_schema(domains: str) -> None:
    document = document_of(domains)
    assert document["asyncapi"] == "3.0.0"
    assert schema_errors(document) == []


def _break_channel_kind(d: dict[str, Any]) -> None:
    next(iter(d["channels"].values()))["bindings"]["amqp"]["is"] = "exchange"


def _break_exchange_type(d: dict[str, Any]) -> None:
    route = next(iter(channels_of(d, "routingKey").values()))
    route["bindings"]["amqp"]["exchange"]["type"] = "quorum"


def _queue_with_an_exchange(d: dict[str, Any]) -> None:
    queue = next(iter(channels_of(d, "queue").values()))
    queue["bindings"]["amqp"]["exchange"] = {"name": "x", "type": "direct"}


def _break_action(d: dict[str, Any]) -> None:
    d["operations"]["gateway.sendCommand"]["action"] = "publish"


def _drop_channel_of_operation(d: dict[str, Any]) -> None:
    del d["operations"]["relay.sendEvent"]["channel"]


def _break_delivery_mode(d: dict[str, Any]) -> None:
    d["operations"]["gateway.sendCommand"]["bindings"]["amqp"]["deliveryMode"] = 3


def _unknown_message_field(d: dict[str, Any]) -> None:
    next(iter(d["components"]["messages"].values()))["routingKey"] = "nope"


def _wrong_version(d: dict[str, Any]) -> None:
    d["asyncapi"] = "2.6.0"


@pytest.mark.parametrize(
    "breaks",
    [
        _break_channel_kind,
        _break_exchange_type,
        _queue_with_an_exchange,
        _break_action,
        _drop_channel_of_operation,
        _break_delivery_mode,
        _unknown_message_field,
        _wrong_version,
    ],
)
def test_the_schema_refuses_a_broken_copy(both: dict[str, Any], breaks: Any) -> None:
    broken = copy.deepcopy(both)
    breaks(broken)
    assert schema_errors(broken), f"{breaks.__name__} passed the schema"


def test_every_ref_resolves(both: dict[str, Any]) -> None:
    found = list(refs(both))
    assert len(found) > 100
    for ref in found:
        resolve(both, ref)  # KeyError names the dangling one


def test_a_dangling_ref_is_noticed(both: dict[str, Any]) -> None:
    with pytest.raises(KeyError):
        resolve(both, "#/components/messages/Order.NoSuchCommand")


# --- the topology ------------------------------------------------------------------------------


@pytest.mark.parametrize("domains", DOMAINS)
async def test_every_declared_exchange_queue_and_binding_is_described(domains: str) -> None:
    registry = registry_of(domains)
    channel = RecordingChannel()
    await declare_topology(cast(Any, channel), topology_of(registry), BASE_DELAY_MS)
    document = asyncapi_document(registry, topology_of(registry), BASE_DELAY_MS, vhost="shop")

    described_queues = {
        amqp["queue"]["name"]: (
            amqp["queue"]["durable"],
            amqp["x-arguments"],
            [(amqp["x-binding"]["exchange"], amqp["x-binding"]["routingKey"])],
        )
        for amqp in (c["bindings"]["amqp"] for c in channels_of(document, "queue").values())
    }
    declared_queues = {
        name: (durable, arguments, channel.bindings[name])
        for name, (durable, arguments) in channel.queues.items()
    }
    assert described_queues == declared_queues

    described_exchanges = {
        amqp["exchange"]["name"]: (amqp["exchange"]["type"], amqp["exchange"]["durable"])
        for amqp in (c["bindings"]["amqp"] for c in channels_of(document, "routingKey").values())
    }
    assert described_exchanges.pop("") == ("default", True)
    assert described_exchanges == channel.exchanges

    # Work queues, a dead-letter queue and six delay queues each: nothing left out.
    work = 1 + len(registry.projections)
    assert len(channel.queues) == work * 8
    for queue in channels_of(document, "queue").values():
        assert queue["bindings"]["amqp"]["queue"]["vhost"] == "shop"


def test_every_route_reaches_a_declared_queue(both: dict[str, Any]) -> None:
    bound = {
        (amqp["x-binding"]["exchange"], amqp["x-binding"]["routingKey"]): amqp["queue"]["name"]
        for amqp in (c["bindings"]["amqp"] for c in channels_of(both, "queue").values())
    }
    queues = {c["bindings"]["amqp"]["queue"]["name"] for c in channels_of(both, "queue").values()}
    for key, route in channels_of(both, "routingKey").items():
        exchange = route["bindings"]["amqp"]["exchange"]
        for routing_key in routing_keys(route):
            if exchange["type"] == "default":
                assert routing_key in queues, key
            else:
                fanout = exchange["type"] == "fanout"
                assert (exchange["name"], "" if fanout else routing_key) in bound, key


def test_the_delay_queues_are_the_retry_routes_values(both: dict[str, Any]) -> None:
    retry = both["channels"]["route.shop.retry.shop.commands.delay"]
    assert routing_keys(retry) == [
        f"shop.commands.delay.{BASE_DELAY_MS * 2**tier}ms" for tier in range(6)
    ]
    for routing_key in routing_keys(retry):
        delay = both["channels"][f"queue.{routing_key}"]["bindings"]["amqp"]
        assert delay["x-arguments"]["x-dead-letter-routing-key"] == "shop.commands"


# --- operations --------------------------------------------------------------------------------


def operation(document: dict[str, Any], operation_id: str) -> tuple[str, dict[str, Any]]:
    """The action of an operation and the AMQP binding of its channel."""
    found = document["operations"][operation_id]
    channel = resolve(document, found["channel"]["$ref"])
    return found["action"], channel["bindings"]["amqp"]


def test_each_process_sends_and_receives_where_the_code_does(both: dict[str, Any]) -> None:
    action, amqp = operation(both, "gateway.sendCommand")
    assert (action, amqp["exchange"]["name"]) == ("send", "shop.commands")
    action, amqp = operation(both, "command_worker.receiveCommand")
    assert (action, amqp["queue"]["name"]) == ("receive", "shop.commands")
    action, amqp = operation(both, "relay.sendEvent")
    assert (action, amqp["exchange"]) == ("send", {**amqp["exchange"], "type": "fanout"})
    assert amqp["exchange"]["name"] == "shop.events"
    for name in ("order_views", "product_sales", "ticket_views"):
        action, amqp = operation(both, f"projector_worker.receiveEvent.{name}")
        assert (action, amqp["queue"]["name"]) == ("receive", f"shop.projection.{name}")
    for work, consumer in [
        ("shop.commands", "command_worker"),
        ("shop.projection.ticket_views", "projector_worker"),
    ]:
        assert operation(both, f"{consumer}.retry.{work}")[1]["exchange"]["name"] == "shop.retry"
        dead = operation(both, f"{consumer}.deadLetter.{work}")[1]
        assert dead["exchange"]["name"] == "shop.dead-letter"
        assert operation(both, f"dlq.read.{work}")[1]["queue"]["name"] == f"{work}.dlq"
        assert operation(both, f"dlq.replay.{work}")[1]["exchange"]["type"] == "default"


def test_every_operation_names_a_process_and_messages_of_its_channel(
    both: dict[str, Any],
) -> None:
    processes = {tag["name"] for tag in both["info"]["tags"]}
    for operation_id, found in both["operations"].items():
        assert found["tags"][0]["name"] in processes, operation_id
        channel = found["channel"]["$ref"]
        assert found["messages"], operation_id
        for message in found["messages"]:
            assert message["$ref"].startswith(f"{channel}/messages/"), operation_id
        publishes = found["action"] == "send"
        assert found["bindings"]["amqp"].get("mandatory", False) is publishes, operation_id


# --- messages ----------------------------------------------------------------------------------


def own_schema(model: type[BaseModel]) -> dict[str, Any]:
    schema = model.model_json_schema(ref_template=SCHEMA_REF)
    schema.pop("$defs", None)
    return schema


def test_every_command_and_event_has_its_models_schema(both: dict[str, Any]) -> None:
    registry = registry_of(DOMAINS[-1])
    messages = both["components"]["messages"]
    for aggregate in registry.aggregates.values():
        for command in aggregate.commands:
            name = command.model_fields["type"].default
            message = messages[f"{aggregate.stream_type}.{name}"]
            assert message["name"] == name == message["bindings"]["amqp"]["messageType"]
            assert resolve(both, message["payload"]["$ref"]) == own_schema(command)
        for event in aggregate.events:
            name = event.model_fields["type"].default
            message = messages[f"{aggregate.stream_type}.{name}"]
            assert message["name"] == name == message["bindings"]["amqp"]["messageType"]
            envelope, specific = message["payload"]["allOf"]
            assert resolve(both, envelope["$ref"]) == own_schema(RecordedEvent)
            assert resolve(both, specific["properties"]["data"]["$ref"]) == own_schema(event)
            version = specific["properties"]["schema_version"]["const"]
            assert version == aggregate.event_version(name)
    assert messages["Ticket.TicketOpened"]["headers"]["properties"]["schema_version"]["const"] == 2


def test_commands_reach_only_the_command_queues(both: dict[str, Any]) -> None:
    commands = both["channels"]["queue.shop.commands"]["messages"]
    events = both["channels"]["queue.shop.projection.order_views"]["messages"]
    assert "Order.CreateOrder" in commands
    assert "Ticket.TicketOpened" in events
    assert not set(commands) & set(events)
    assert both["channels"]["queue.shop.commands.dlq"]["messages"] == commands
    assert both["channels"]["queue.shop.commands.delay.250ms"]["messages"] == commands


def sample_commands() -> list[tuple[str, CommandBase]]:
    ids = {"command_id": uuid.uuid4(), "correlation_id": uuid.uuid4(), "issued_at": NOW}
    order = CreateOrder(
        **ids,
        order_id=uuid.uuid4(),
        customer_id="c-1",
        items=[OrderLine(product_id="p-1", quantity=2, price=Decimal("1.50"))],
        shipping_address=ShippingAddress(
            recipient="Ada", street="1 Road", city="London", postal_code="N1 1AA", country="GB"
        ),
    )
    ticket = OpenTicket(**ids, ticket_id=uuid.uuid4(), title="Printer", priority="high")
    return [(f"Order-{order.order_id}", order), (f"Ticket-{ticket.ticket_id}", ticket)]


def recorded(stream: str, event: BaseModel, schema_version: int) -> RecordedEvent:
    return RecordedEvent(
        event_id=uuid.uuid4(),
        position=7,
        stream_id=stream,
        version=1,
        type=str(getattr(event, "type")),  # noqa: B009 (any event model)
        schema_version=schema_version,
        data=event.model_dump(mode="json", exclude={"type"}),
        metadata=EventMetadata(
            command_id=uuid.uuid4(),
            command_type="Create",
            correlation_id=uuid.uuid4(),
            causation_id=uuid.uuid4(),
            occurred_at=NOW,
        ),
        recorded_at=NOW,
    )


def sample_events() -> list[tuple[str, RecordedEvent]]:
    order = OrderCreated(
        order_id=uuid.uuid4(),
        customer_id="c-1",
        items=[OrderLine(product_id="p-1", quantity=2, price=Decimal("1.50"))],
        shipping_address=ShippingAddress(
            recipient="Ada", street="1 Road", city="London", postal_code="N1 1AA", country="GB"
        ),
    )
    ticket = TicketOpened(title="Printer", priority="low")
    return [
        ("Order.OrderCreated", recorded(f"Order-{uuid.uuid4()}", order, 1)),
        ("Ticket.TicketOpened", recorded(f"Ticket-{uuid.uuid4()}", ticket, 2)),
    ]


def wire_messages() -> list[tuple[str, aio_pika.Message]]:
    """The messages the gateway and the relay build, by their message id in the document."""
    commands = [
        (f"{stream.partition('-')[0]}.{command.type}", command_message(command, stream))
        for stream, command in sample_commands()
    ]
    events = [(key, event_message(event)) for key, event in sample_events()]
    return commands + events


def assert_described(document: dict[str, Any], key: str, message: aio_pika.Message) -> None:
    pointer = f"#/components/messages/{key}"
    validator_for(document, f"{pointer}/headers").validate(message.headers)
    validator_for(document, f"{pointer}/payload").validate(json.loads(message.body))


def test_the_messages_the_code_builds_match_their_description(both: dict[str, Any]) -> None:
    for key, message in wire_messages():
        assert_described(both, key, message)
        described = both["components"]["messages"][key]
        assert message.type == described["bindings"]["amqp"]["messageType"]
        assert message.content_type == described["contentType"]
        # Every header the code sets is named, and every required one is set.
        headers = described["headers"]
        assert set(message.headers) == set(headers["properties"]) == set(headers["required"])
        properties = {
            name
            for name in (*PROPERTIES, "priority", "expiration", "reply_to", "user_id")
            if getattr(message, name, None) not in (None, 0)
        }
        assert properties == set(PROPERTIES)


def test_a_batch_the_relay_builds_matches_its_description(both: dict[str, Any]) -> None:
    events = [event for _, event in sample_events()]
    message = events_message(events)
    assert_described(both, "EventBatch", message)
    described = both["components"]["messages"]["EventBatch"]
    assert message.type == described["bindings"]["amqp"]["messageType"]
    assert set(message.headers) == set(described["headers"]["required"])
    pointer = "#/components/messages/EventBatch/payload"
    assert not validator_for(both, pointer).is_valid([json.loads(event_message(events[0]).body)])
    broken = json.loads(message.body)
    broken[1]["data"] = {}
    assert not validator_for(both, pointer).is_valid(broken)
    # Wherever events travel (the events route, each projection's queue), batches do too.
    carrying = [
        {m["$ref"].rsplit("/", 1)[-1] for m in operation.get("messages", [])}
        for operation in both["operations"].values()
    ]
    carrying = [refs for refs in carrying if "Order.OrderCreated" in refs]
    assert len(carrying) >= 3  # the relay's send, each projection's receive, failures
    assert all("EventBatch" in refs for refs in carrying)


def test_a_message_of_another_type_does_not_match(both: dict[str, Any]) -> None:
    (_, order), (_, ticket) = sample_events()
    pointer = "#/components/messages/Ticket.TicketOpened"
    assert not validator_for(both, f"{pointer}/payload").is_valid(
        json.loads(event_message(order).body)
    )
    wrong_version = event_message(ticket.model_copy(update={"schema_version": 1}))
    assert not validator_for(both, f"{pointer}/headers").is_valid(wrong_version.headers)


def test_a_traced_message_matches_and_a_malformed_trace_context_does_not(
    both: dict[str, Any],
) -> None:
    key, message = wire_messages()[0]
    headers = validator_for(both, f"#/components/messages/{key}/headers")
    traced = {**message.headers, "traceparent": "00-" + "a" * 32 + "-" + "b" * 16 + "-01"}
    assert headers.is_valid(traced)
    assert not headers.is_valid({**traced, "traceparent": "00-not-a-trace"})


def test_failure_headers_are_the_ones_a_replay_strips(both: dict[str, Any]) -> None:
    described = both["components"]["schemas"]["FailureHeaders"]["properties"]
    assert set(described) == FAILURE_HEADERS
    key, message = wire_messages()[0]
    dead = dict(message.headers)
    dead |= {
        ATTEMPT_HEADER: 3,
        REASON_HEADER: "TimeoutError: no answer",
        KIND_HEADER: "exhausted",
        QUEUE_HEADER: "shop.commands",
        FAILED_AT_HEADER: NOW.isoformat(),
    }
    headers = validator_for(both, f"#/components/messages/{key}/headers")
    assert headers.is_valid(dead)
    assert not headers.is_valid({**dead, KIND_HEADER: "bored"})
    assert not headers.is_valid({**dead, ATTEMPT_HEADER: "three"})


@pytest.mark.parametrize(
    ("url", "vhost"),
    [
        ("amqp://guest:guest@127.0.0.1:5672/", "/"),
        ("amqp://guest:guest@127.0.0.1:5672", "/"),
        ("amqp://guest:guest@127.0.0.1:5672/%2F", "/"),
        ("amqp://u:p@rabbit/test-1a2b", "test-1a2b"),
    ],
)
def test_the_vhost_comes_from_the_url(url: str, vhost: str) -> None:
    assert vhost_of(url) == vhost
