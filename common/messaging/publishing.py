"""Publishing with publisher confirms and mandatory routing: a message is sent or it is an error."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any

import aio_pika
import aiormq
from aio_pika.abc import AbstractChannel

from common.messaging.connection import BrokerUnavailable

log = logging.getLogger(__name__)

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
    """Publishes on one confirm-mode channel; every call returns only after the broker's ack.

    A nack or a confirm that does not come retires the channel, and the next call opens a
    fresh one on the same connection. A channel opened while a quorum queue was electing a new
    leader (right after its node was lost) can stay stuck on the old one, nacking or never
    confirming, while a new channel publishes at once: the `rabbit-node-kill-9` drill's relay
    published nothing more until this was done."""

    def __init__(
        self,
        channel: AbstractChannel,
        timeout_s: float,
        connection: aio_pika.abc.AbstractConnection | None = None,
    ) -> None:
        self._channel = channel
        self._timeout_s = timeout_s
        self._connection = connection
        self._renewing = asyncio.Lock()

    @classmethod
    async def open(
        cls, connection: aio_pika.abc.AbstractConnection, timeout_s: float
    ) -> ConfirmedPublisher:
        return cls(await _confirm_channel(connection), timeout_s, connection)

    @property
    def is_open(self) -> bool:
        """The channel is open, or a fresh one can be opened on the connection."""
        if not self._channel.is_closed:
            return True
        return self._connection is not None and not self._connection.is_closed

    async def publish(self, exchange: str, routing_key: str, message: aio_pika.Message) -> None:
        """Publish one message; raise `BrokerUnavailable` unless it was confirmed and routed
        (`ConfirmTimeout` when the confirm did not come in time)."""
        await self.publish_many(exchange, [(routing_key, message)])

    async def publish_many(
        self, exchange: str, messages: Sequence[tuple[str, aio_pika.Message]]
    ) -> None:
        """Publish in order, waiting for all confirms together (one round trip's latency)."""
        channel = await self._usable_channel()
        try:
            target = await channel.get_exchange(exchange, ensure=False)
            confirms = asyncio.gather(
                *(
                    target.publish(message, routing_key, mandatory=True)
                    for routing_key, message in messages
                )
            )
            confirms.add_done_callback(_retrieved)
            await asyncio.wait_for(confirms, self._timeout_s)
        except aio_pika.exceptions.PublishError as exc:
            raise BrokerUnavailable(f"unroutable message: {exc}") from exc
        except TimeoutError as exc:
            await self._retire(channel)
            raise ConfirmTimeout(f"no confirm within {self._timeout_s:g} s") from exc
        except PUBLISH_ERRORS as exc:
            await self._retire(channel)
            raise BrokerUnavailable(f"publish failed: {exc!r}") from exc

    async def _usable_channel(self) -> AbstractChannel:
        if not self._channel.is_closed:
            return self._channel
        connection = self._connection
        if connection is None or connection.is_closed:
            raise BrokerUnavailable("channel closed")
        async with self._renewing:
            if self._channel.is_closed:
                try:
                    self._channel = await asyncio.wait_for(
                        _confirm_channel(connection), self._timeout_s
                    )
                # aio-pika raises RuntimeError for a connection going away unnoticed.
                except (*PUBLISH_ERRORS, RuntimeError) as exc:
                    raise BrokerUnavailable(f"cannot open a channel: {exc!r}") from exc
        return self._channel

    async def _retire(self, channel: AbstractChannel) -> None:
        """Close `channel` after a nack or a missing confirm (see the class docstring); other
        publishes in flight on it fail too, as they would have."""
        if channel is self._channel and not channel.is_closed:
            log.warning("publisher channel retired after a nack or a missing confirm")
            try:
                await asyncio.wait_for(channel.close(), self._timeout_s)
            except (*PUBLISH_ERRORS, RuntimeError):
                pass

    async def close(self) -> None:
        self._connection = None
        if not self._channel.is_closed:
            await self._channel.close()


def _retrieved(confirms: asyncio.Future[Any]) -> None:
    """Mark the outcome of a gather of confirms as seen: after a timeout cancelled it, its
    exception is nobody's to raise (asyncio would log each one as an error)."""
    if not confirms.cancelled():
        confirms.exception()


async def _confirm_channel(connection: aio_pika.abc.AbstractConnection) -> AbstractChannel:
    return await connection.channel(publisher_confirms=True, on_return_raises=True)
