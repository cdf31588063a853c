"""What the gateway answers a command: a publish the broker never confirms is an unknown outcome,
not a refusal; an outcome of another request with the same command id is never this one's."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any, cast

import aio_pika
import pytest
from aio_pika.abc import AbstractChannel

from common.messaging.connection import BrokerUnavailable
from common.messaging.publishing import ConfirmedPublisher, ConfirmTimeout
from common.readmodel.commands import ID_REUSED_REASON
from common.readmodel.notifications import CommandProgress
from gateway.problems import ProblemType
from gateway.submission import not_queued, outcome_response
from harness.load import envelope
from orders.contracts import CreateOrder, OrderLine, ShippingAddress
from orders.domain import ORDER


class SilentExchange:
    """Takes a message and never confirms it, like a broker that stopped answering."""

    async def publish(self, message: aio_pika.Message, routing_key: str, **_: Any) -> None:
        await asyncio.Event().wait()


class SilentChannel:
    is_closed = False

    async def get_exchange(self, name: str, *, ensure: bool) -> SilentExchange:
        return SilentExchange()

    async def close(self) -> None:
        self.is_closed = True


async def test_a_missing_confirm_raises_confirm_timeout() -> None:
    channel = SilentChannel()
    publisher = ConfirmedPublisher(cast(AbstractChannel, channel), timeout_s=0.05)
    with pytest.raises(ConfirmTimeout):
        await publisher.publish("commands", "commands", aio_pika.Message(b"{}"))
    # A channel that stopped confirming is retired; without a connection to open another,
    # the next publish is refused at once.
    assert channel.is_closed
    with pytest.raises(BrokerUnavailable, match="channel closed"):
        await publisher.publish("commands", "commands", aio_pika.Message(b"{}"))


def test_a_confirm_timeout_is_503_saying_the_outcome_is_unknown_and_a_keyed_retry_safe() -> None:
    problem = not_queued(ConfirmTimeout("no confirm within 5 s"))
    assert problem.status == 503
    assert problem.type == ProblemType.UNAVAILABLE
    assert "outcome is unknown" in problem.detail
    assert "retry with the same Idempotency-Key is safe" in problem.detail
    assert "not accepted" not in problem.detail


def test_no_connection_is_503_saying_nothing_was_accepted() -> None:
    problem = not_queued(BrokerUnavailable("not connected to RabbitMQ"))
    assert problem.status == 503
    assert "was not accepted" in problem.detail
    assert "unknown" not in problem.detail


def create_order() -> CreateOrder:
    return CreateOrder(
        customer_id="c",
        items=[OrderLine(product_id="a", quantity=1, price=1)],
        shipping_address=ShippingAddress(
            recipient="R", street="S", city="C", postal_code="12345", country="DE"
        ),
        **envelope(uuid.uuid4()),
    )


def progress_of(command: CreateOrder, **changes: Any) -> CommandProgress:
    fields: dict[str, Any] = {
        "command_id": str(command.command_id),
        "status": "succeeded",
        "stream_id": ORDER.stream_of(command),
        "type": command.type,
        "version": 1,
        "projected_version": 1,
    }
    return CommandProgress(**{**fields, **changes})


def test_a_visible_create_is_201() -> None:
    command = create_order()
    assert outcome_response(command, ORDER, progress_of(command)).status_code == 201


@pytest.mark.parametrize(
    "changes",
    [
        {"type": "ShipOrder"},
        {"stream_id": f"Order-{uuid.uuid4()}"},
        {"status": "rejected", "reason": ID_REUSED_REASON, "projected_version": None},
    ],
)
def test_an_outcome_of_another_request_with_the_command_id_is_422(changes: Any) -> None:
    command = create_order()
    response = outcome_response(command, ORDER, progress_of(command, **changes))
    assert response.status_code == 422
    assert b"idempotency-key-reused" in bytes(response.body)
