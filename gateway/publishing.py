"""Sending commands to RabbitMQ: confirmed, routed, or `BrokerUnavailable`.

Each AMQP session declares the topology and opens one confirm-mode channel that every request
shares; publishes on it are pipelined, so there is no per-request set-up. If only the channel
dies (a channel-level error), the next publish opens a new one on the live connection.
"""

from __future__ import annotations

import asyncio
import logging

import aio_pika
from opentelemetry import trace

from common.contracts.commands import CommandBase
from common.messaging.connection import BrokerUnavailable, SupervisedConnection
from common.messaging.messages import command_message
from common.messaging.publishing import PUBLISH_ERRORS, ConfirmedPublisher
from common.messaging.topology import Topology, declare_topology
from common.observability import tracing

log = logging.getLogger(__name__)


class CommandPublisher:
    """Owns the gateway's AMQP connection and its publisher channel."""

    def __init__(
        self, amqp_url: str, topology: Topology, *, timeout_s: float, retry_base_delay_ms: int
    ) -> None:
        self._topology = topology
        self._timeout_s = timeout_s
        self._retry_base_delay_ms = retry_base_delay_ms
        self._publisher: ConfirmedPublisher | None = None
        self._reopening = asyncio.Lock()
        self.connection = SupervisedConnection(
            amqp_url, name="gateway", on_connected=self._on_connected
        )

    async def start(self, wait_s: float) -> None:
        """Connect in the background; wait up to `wait_s` for the first session."""
        await self.connection.start(wait_s)

    async def close(self) -> None:
        await self.connection.close()
        self._publisher = None

    @property
    def is_ready(self) -> bool:
        return (
            self.connection.ready.is_set()
            and self._publisher is not None
            and self._publisher.is_open
        )

    async def publish(self, command: CommandBase, stream_id: str) -> None:
        """Return once RabbitMQ confirmed the command; raise `BrokerUnavailable` otherwise."""
        publisher = self._publisher
        if publisher is None or not publisher.is_open:
            publisher = await self._reopen()
        topology = self._topology
        message = command_message(command, stream_id)
        if not tracing.enabled():
            await publisher.publish(topology.commands_exchange, topology.commands_queue, message)
            return
        span = tracing.start_publish(
            topology.commands_queue, attributes={"messaging.message.id": str(command.command_id)}
        )
        tracing.inject(message.headers, trace.set_span_in_context(span))
        try:
            await publisher.publish(topology.commands_exchange, topology.commands_queue, message)
        except BaseException as exc:
            tracing.end(span, exc)
            raise
        tracing.end(span)

    async def _on_connected(self, connection: aio_pika.abc.AbstractConnection) -> None:
        channel = await connection.channel()
        try:
            await declare_topology(channel, self._topology, self._retry_base_delay_ms)
        finally:
            await channel.close()
        self._publisher = await ConfirmedPublisher.open(connection, self._timeout_s)

    async def _reopen(self) -> ConfirmedPublisher:
        connection = self.connection.connection  # raises BrokerUnavailable when not connected
        async with self._reopening:
            publisher = self._publisher
            if publisher is not None and publisher.is_open:
                return publisher
            try:
                publisher = await asyncio.wait_for(
                    ConfirmedPublisher.open(connection, self._timeout_s), self._timeout_s
                )
            # aio-pika raises RuntimeError("Connection was not opened") for a connection that
            # is going away before the supervisor noticed: a 503 like the rest, not a 500.
            except (*PUBLISH_ERRORS, RuntimeError) as exc:
                raise BrokerUnavailable(f"cannot open a publisher channel: {exc!r}") from exc
            log.warning("publisher channel reopened")
            self._publisher = publisher
            return publisher
