"""Publishing with publisher confirms and mandatory routing: a message is sent or it is an error."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import aio_pika
import aiormq
from aio_pika.abc import AbstractChannel

from common.messaging.connection import BrokerUnavailable

PUBLISH_ERRORS = (
    aio_pika.exceptions.AMQPError,
    aiormq.exceptions.AMQPError,
    aiormq.exceptions.ChannelInvalidStateError,
    ConnectionError,
    TimeoutError,
    asyncio.TimeoutError,
)


class ConfirmTimeout(BrokerUnavailable):
    """The broker did not confirm in time: the message may or may not have been taken, so the
    outcome is unknown (unlike other `BrokerUnavailable`s, where nothing was accepted)."""


class ConfirmedPublisher:
    """Publishes on one confirm-mode channel; every call returns only after the broker's ack."""

    def __init__(self, channel: AbstractChannel, timeout_s: float) -> None:
        self._channel = channel
        self._timeout_s = timeout_s

    @classmethod
    async def open(
        cls, connection: aio_pika.abc.AbstractConnection, timeout_s: float
    ) -> ConfirmedPublisher:
        channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
        return cls(channel, timeout_s)

    @property
    def is_open(self) -> bool:
        return not self._channel.is_closed

    async def publish(self, exchange: str, routing_key: str, message: aio_pika.Message) -> None:
        """Publish one message; raise `BrokerUnavailable` unless it was confirmed and routed
        (`ConfirmTimeout` when the confirm did not come in time)."""
        await self.publish_many(exchange, [(routing_key, message)])

    async def publish_many(
        self, exchange: str, messages: Sequence[tuple[str, aio_pika.Message]]
    ) -> None:
        """Publish in order, waiting for all confirms together (one round trip's latency)."""
        if self._channel.is_closed:
            raise BrokerUnavailable("channel closed")
        try:
            target = await self._channel.get_exchange(exchange, ensure=False)
            await asyncio.wait_for(
                asyncio.gather(
                    *(
                        target.publish(message, routing_key, mandatory=True)
                        for routing_key, message in messages
                    )
                ),
                self._timeout_s,
            )
        except aio_pika.exceptions.PublishError as exc:
            raise BrokerUnavailable(f"unroutable message: {exc}") from exc
        except TimeoutError as exc:
            raise ConfirmTimeout(f"no confirm within {self._timeout_s:g} s") from exc
        except PUBLISH_ERRORS as exc:
            raise BrokerUnavailable(f"publish failed: {exc!r}") from exc

    async def close(self) -> None:
        if not self._channel.is_closed:
            await self._channel.close()
