"""A supervised RabbitMQ connection that rebuilds its whole state after every loss.

Robust connections that replay declarations piecemeal are where "the queues came back but the
consumers did not" comes from. Here a lost connection ends the session: the supervisor connects
anew and runs `on_connected` again, which declares the topology and starts every consumer, so
nothing can be restored half way.

`AMQP_URL` may name every node of a cluster (`common.messaging.nodes`): the supervisor walks
them in a shuffled order, one session on one node at a time, and after a loss or a failed attempt
goes on to the next, so a stopped node costs one reconnect, not a wait for that node.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Awaitable, Callable
from functools import partial

import aio_pika

from common.messaging.nodes import NodeRotation, node_label, node_urls
from common.observability import metrics

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 10.0
"""Bound on opening a connection: a broker that accepts TCP but does not answer (frozen) must
not hold the supervisor for ever. Once open, AMQP heartbeats notice a broker that went quiet."""

OnConnected = Callable[[aio_pika.abc.AbstractConnection], Awaitable[None]]


class BrokerUnavailable(Exception):
    """RabbitMQ could not take a message now; the caller should answer 503 or retry later."""


class SupervisedConnection:
    """Keeps one AMQP connection open to one of the nodes of `url` (one URL or a comma-separated
    list), reconnecting to the next node with capped exponential backoff."""

    def __init__(
        self,
        url: str,
        *,
        name: str,
        on_connected: OnConnected,
        max_backoff_s: float = 5.0,
        rng: random.Random | None = None,
    ) -> None:
        self._nodes = NodeRotation(node_urls(url), rng)
        self._name = name
        self._on_connected = on_connected
        self._max_backoff_s = max_backoff_s
        self._task: asyncio.Task[None] | None = None
        self._connection: aio_pika.abc.AbstractConnection | None = None
        self.ready = asyncio.Event()
        self.sessions = 0
        """How many times a connection was made and set up; tests use it to see a reconnect."""
        self._reconnects = metrics.RECONNECTS.labels(name)
        self.node: str | None = None
        """`host:port` of the node of the current session (None between sessions)."""
        self.nodes_used: list[str] = []
        """The node of every session so far, in order; tests use it to see a move."""

    @property
    def connection(self) -> aio_pika.abc.AbstractConnection:
        if self._connection is None or self._connection.is_closed or not self.ready.is_set():
            raise BrokerUnavailable("not connected to RabbitMQ")
        return self._connection

    async def start(self, wait_s: float | None = None) -> None:
        """Start supervising; with `wait_s`, wait that long for the first session."""
        self._task = asyncio.create_task(self._supervise(), name=f"amqp-{self._name}")
        if wait_s is not None:
            try:
                await asyncio.wait_for(self.ready.wait(), wait_s)
            except TimeoutError:
                log.warning("rabbitmq not ready after %.1fs; retrying in background", wait_s)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._connection is not None and not self._connection.is_closed:
            await self._connection.close()
        self.ready.clear()

    async def _supervise(self) -> None:
        backoff = 0.1
        while True:
            lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            url = self._nodes.current
            node = node_label(url)
            where = {"connection": self._name, "node": node}
            try:
                connection = await aio_pika.connect(
                    url,
                    timeout=CONNECT_TIMEOUT_S,
                    client_properties={"connection_name": self._name},
                )
                connection.close_callbacks.add(partial(_resolve, lost))
                self._connection = connection
                await self._on_connected(connection)
                if self.sessions:
                    self._reconnects.inc()
                self.sessions += 1
                self.node = node
                self.nodes_used.append(node)
                metrics.SESSIONS.labels(self._name, node).inc()
                self.ready.set()
                log.info("rabbitmq connected", extra=where)
                backoff = 0.1
                await lost
                log.warning("rabbitmq connection lost", extra=where)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("rabbitmq connect failed: %r", exc, extra=where)
            finally:
                self.ready.clear()
                self.node = None
            # Another node next: the one just lost or refused is the likeliest to be down.
            self._nodes.advance()
            conn = self._connection
            if conn is not None and not conn.is_closed:
                try:
                    await conn.close()
                except Exception:
                    log.debug("closing a broken connection failed", exc_info=True)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, self._max_backoff_s)


def _resolve(future: asyncio.Future[None], *_: object) -> None:
    if not future.done():
        future.set_result(None)
