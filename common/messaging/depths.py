"""Queue depths for the dashboards, read from RabbitMQ by the workers themselves.

Every `SAMPLE_EVERY_S`, a passive declare of each queue a worker consumes (and of its dead-letter
queue) answers how many messages are ready and how many consumers it has: a handful of frames on
a channel of its own, under the metric names and prefix of the deployment, against any RabbitMQ
(no plugin to enable). Every replica of a worker reports the same queues; dashboards take the
maximum.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence

from aio_pika.abc import AbstractChannel

from common.messaging.connection import SupervisedConnection
from common.observability import metrics

log = logging.getLogger(__name__)

SAMPLE_EVERY_S = 5.0
"""How often the depths are read: as often as the compose stack's Prometheus scrapes."""


class QueueDepths:
    """Samples `queues` over `connection` into `orders_queue_messages` and
    `orders_queue_consumers` until cancelled."""

    def __init__(
        self,
        connection: SupervisedConnection,
        queues: Sequence[str],
        every_s: float = SAMPLE_EVERY_S,
    ) -> None:
        self._connection = connection
        self._queues = tuple(queues)
        self._every_s = every_s
        self._channel: AbstractChannel | None = None

    async def run(self) -> None:
        try:
            while True:
                await self.sample()
                await asyncio.sleep(self._every_s)
        finally:
            await self._close()

    async def sample(self) -> bool:
        """Read every queue's depth once; False if RabbitMQ could not answer (the gauges keep
        their last values: a scrape shows the process is alive, the dependency gauges why)."""
        try:
            channel = await self._open_channel()
            for queue in self._queues:
                declared = await channel.declare_queue(queue, passive=True)
                result = declared.declaration_result
                metrics.QUEUE_MESSAGES.labels(queue).set(result.message_count or 0)
                metrics.QUEUE_CONSUMERS.labels(queue).set(result.consumer_count or 0)
        except Exception as exc:
            # Not connected, or a queue not declared yet, which closes the channel (404): the
            # next sample opens another.
            log.debug("queue depths not sampled: %r", exc)
            await self._close()
            return False
        return True

    async def _open_channel(self) -> AbstractChannel:
        if self._channel is None or self._channel.is_closed:
            self._channel = await self._connection.connection.channel()
        return self._channel

    async def _close(self) -> None:
        channel, self._channel = self._channel, None
        if channel is not None and not channel.is_closed:
            with contextlib.suppress(Exception):
                await channel.close()
