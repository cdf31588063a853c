"""A publish the broker refuses with a nack (a quorum queue at its limit with `reject-publish`,
or a node lost before the message was replicated) is `BrokerUnavailable`: the gateway answers
503 to it and the relay publishes again, never a 202 for a message not confirmed."""

from __future__ import annotations

import aio_pika
import pytest

from common.messaging.connection import BrokerUnavailable
from common.messaging.nodes import connect_any
from common.messaging.publishing import ConfirmedPublisher, ConfirmTimeout
from common.settings import Settings

pytestmark = pytest.mark.integration


async def test_a_nacked_publish_is_broker_unavailable_not_a_timeout(
    isolated_settings: Settings,
) -> None:
    connection = await connect_any(isolated_settings.amqp_url)
    try:
        channel = await connection.channel()
        await channel.declare_queue(
            "full",
            durable=True,
            arguments={"x-queue-type": "quorum", "x-overflow": "reject-publish", "x-max-length": 1},
        )
        publisher = await ConfirmedPublisher.open(connection, timeout_s=5)
        refused: list[BrokerUnavailable] = []
        # The limit is checked against the queue as the leader last saw it, so a publish or
        # two past it may still be taken: the nack comes within a few.
        for n in range(10):
            try:
                await publisher.publish("", "full", aio_pika.Message(str(n).encode()))
            except BrokerUnavailable as exc:
                refused.append(exc)
                break
        assert refused, "the broker never refused a publish past the limit"
        assert not isinstance(refused[0], ConfirmTimeout)
        assert "Nack" in str(refused[0])
        # The channel is still usable: one refused message is not an outage.
        await (await channel.get_queue("full")).purge()
        await publisher.publish("", "full", aio_pika.Message(b"after"))
    finally:
        await connection.close()
