"""A publish the broker never confirms is an unknown outcome, not a refusal: the gateway says so."""

from __future__ import annotations

import asyncio
from typing import Any, cast

import aio_pika
import pytest
from aio_pika.abc import AbstractChannel

from common.messaging.connection import BrokerUnavailable
from common.messaging.publishing import ConfirmedPublisher, ConfirmTimeout
from gateway.problems import ProblemType
from gateway.submission import not_queued


class SilentExchange:
    """Takes a message and never confirms it, like a broker that stopped answering."""

    async def publish(self, message: aio_pika.Message, routing_key: str, **_: Any) -> None:
        await asyncio.Event().wait()


class SilentChannel:
    is_closed = False

    async def get_exchange(self, name: str, *, ensure: bool) -> SilentExchange:
        return SilentExchange()


async def test_a_missing_confirm_raises_confirm_timeout() -> None:
    publisher = ConfirmedPublisher(cast(AbstractChannel, SilentChannel()), timeout_s=0.05)
    with pytest.raises(ConfirmTimeout):
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
