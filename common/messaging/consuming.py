"""The consumer runtime: bounded prefetch, ack after the work is durable, delayed retries,
dead letters with reasons, and a drain on shutdown.

A handler returns normally (ack), raises `RejectMessage` (dead-letter now) or `RetryLater`
(backoff through a delay queue). Any other exception counts as transient: a bug must not be
mistaken for a poison message, but it still ends in the dead-letter queue once the attempts run
out, so nothing loops for ever. An outage is not the message's failure: when a probe finds a
dependency out (`common.dependencies`), the consumer pauses, holds the message and handles it
again once the dependency answers, spending no attempt.

Acks are coalesced: the messages that finish within one turn of the event loop (a batch of
commands, the events of one Redis round trip) are acknowledged by one `basic.ack` with
`multiple` set, up to the highest delivery tag below which every message is finished. A
message finished behind one still in flight is acked on its own, so a slow message never holds
the prefetch window hostage. Acks still go out only after the work is durable.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from enum import Enum, auto
from functools import partial

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage, AbstractQueue, FieldValue

from common.dependencies import Dependencies
from common.messaging.outcomes import FailureKind, RejectMessage, RetryLater
from common.messaging.publishing import ConfirmedPublisher
from common.messaging.topology import (
    Topology,
    dlq_name,
    retry_delay_for,
    retry_queue_name,
)
from common.observability import metrics, tracing
from common.observability.logging import correlation_id, redact

log = logging.getLogger(__name__)

Handler = Callable[[AbstractIncomingMessage], Awaitable[None]]

ATTEMPT_HEADER = "x-attempt"
REASON_HEADER = "x-failure-reason"
KIND_HEADER = "x-failure-kind"
QUEUE_HEADER = "x-original-queue"
FAILED_AT_HEADER = "x-failed-at"
MAX_REASON_CHARS = 1000


def failure_reason(reason: str) -> str:
    """The `x-failure-reason` header of `reason`: redacted as logs are (anyone who can read a
    dead-letter queue sees it), and at most `MAX_REASON_CHARS` long."""
    return redact(reason)[:MAX_REASON_CHARS]


def attempt_of(message: AbstractIncomingMessage) -> int:
    """1 for a first delivery; counts our own delayed retries, not broker redeliveries."""
    raw = (message.headers or {}).get(ATTEMPT_HEADER, 1)
    return raw if isinstance(raw, int) and raw > 0 else 1


def copy_message(message: AbstractIncomingMessage, **extra_headers: FieldValue) -> aio_pika.Message:
    """A persistent copy of `message` with the same properties and extra headers."""
    headers = dict(message.headers or {})
    headers.update(extra_headers)
    return aio_pika.Message(
        body=message.body,
        headers=headers,
        content_type=message.content_type,
        content_encoding=message.content_encoding,
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        priority=message.priority,
        correlation_id=message.correlation_id,
        message_id=message.message_id,
        timestamp=message.timestamp,
        type=message.type,
        app_id=message.app_id,
    )


class _Held(Enum):
    """What became of a failed message while a dependency was checked."""

    NO_OUTAGE = auto()
    """Every dependency answers: the failure is the message's own."""
    AGAIN = auto()
    """Held through an outage that is now over: handle it again."""
    LEFT = auto()
    """The consumer stopped during the outage: leave it unacknowledged."""


class AckCoalescer:
    """Acknowledges the finished messages of one channel, many per frame where it can.

    Delivery tags on a channel run 1, 2, 3...; `multiple=True` acks every outstanding tag up to
    the one given. So a multiple ack only goes up to the highest tag H such that every tag up
    to H is accounted for here (finished now, or settled before); a message still in flight, or
    one never seen, stops it. A finished message past such a gap is acked alone. A nacked
    message counts as settled only once its nack is sent, so no multiple ack can overtake it
    (a channel's frames are processed in order)."""

    def __init__(self, queue_name: str) -> None:
        self._frames = metrics.ACK_FRAMES.labels(queue_name)
        self._floor = 0
        """Every tag up to here is settled."""
        self._settled_above: set[int] = set()
        self._finished: dict[int, AbstractIncomingMessage] = {}
        self._flush_scheduled = False
        self._flushing: asyncio.Task[None] | None = None

    def settled(self, message: AbstractIncomingMessage) -> None:
        """`message` was settled elsewhere (a nack): nothing to ack for it."""
        if message.delivery_tag is not None:
            self._settled_above.add(message.delivery_tag)

    def finished(self, message: AbstractIncomingMessage) -> None:
        """Ack `message` at the end of this turn of the loop, with whatever else finished."""
        if message.delivery_tag is None:
            return
        self._finished[message.delivery_tag] = message
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._schedule_flush)

    def _schedule_flush(self) -> None:
        self._flush_scheduled = False
        self._flushing = asyncio.create_task(self._flush(self._flushing), name="ack-flush")

    async def _flush(self, previous: asyncio.Task[None] | None) -> None:
        if previous is not None:
            await asyncio.gather(previous, return_exceptions=True)  # acks leave in order
        finished, self._finished = self._finished, {}
        if not finished:
            return
        top = self._floor
        while top + 1 in finished or top + 1 in self._settled_above:
            top += 1
        covered = [tag for tag in finished if tag <= top]
        alone = sorted(tag for tag in finished if tag > top)
        self._settled_above = {tag for tag in self._settled_above if tag > top}
        self._settled_above.update(alone)
        self._floor = top
        try:
            if covered:
                await finished[max(covered)].ack(multiple=len(covered) > 1)
                self._frames.inc()
            for tag in alone:
                await finished[tag].ack()
                self._frames.inc()
        except Exception as exc:
            # The channel is gone: the broker requeues whatever was not acked, and handlers
            # are idempotent.
            log.warning("could not ack %d messages: %r", len(finished), exc)

    async def drain(self) -> None:
        """Send every pending ack now (before the channel closes)."""
        if self._flush_scheduled:
            self._schedule_flush()
        if self._flushing is not None:
            await asyncio.gather(self._flushing, return_exceptions=True)


async def _close_quietly(connection: aio_pika.abc.AbstractConnection) -> None:
    """Close `connection`; one already going away may fail to, which changes nothing."""
    try:
        await connection.close()
    except Exception as exc:
        log.debug("closing the connection failed: %r", exc)


class QueueConsumer:
    """Consumes one work queue with one handler; one instance per connection session."""

    def __init__(
        self,
        queue_name: str,
        handler: Handler,
        *,
        topology: Topology,
        prefetch: int,
        max_attempts: int,
        retry_base_delay_ms: int,
        dependencies: Dependencies | None = None,
    ) -> None:
        self.queue_name = queue_name
        self._dependencies = dependencies
        self._topology = topology
        self._handler = handler
        self._prefetch = prefetch
        self._max_attempts = max_attempts
        self._retry_base_delay_ms = retry_base_delay_ms
        self._channel: AbstractChannel | None = None
        self._queue: AbstractQueue | None = None
        self._consumer_tag: str | None = None
        self._consuming = asyncio.Lock()
        """Serialises consume and cancel (a pause and a resume must not interleave)."""
        self._publisher: ConfirmedPublisher | None = None
        self._in_flight = 0
        self._stopping = False
        self._stopped = asyncio.Event()
        """Set with `_stopping`: held messages stop waiting for an outage to end."""
        self._reconnecting: asyncio.Future[None] | None = None
        self._acks = AckCoalescer(queue_name)
        self._idle = asyncio.Event()
        self._idle.set()
        metrics.init_queue_series(queue_name, [kind.value for kind in FailureKind])
        self._handling_seconds = metrics.HANDLING_SECONDS.labels(queue_name)

    async def start(self, connection: aio_pika.abc.AbstractConnection, timeout_s: float) -> None:
        self._publisher = await ConfirmedPublisher.open(connection, timeout_s)
        self._channel = await connection.channel()
        self._channel.close_callbacks.add(partial(self._on_channel_closed, connection))
        await self._channel.set_qos(prefetch_count=self._prefetch)
        self._queue = await self._channel.get_queue(self.queue_name, ensure=True)
        if self._dependencies is None:
            self._consumer_tag = await self._queue.consume(self._on_message)
            return
        self._dependencies.add(self)
        if self._dependencies.up:
            await self.resume()
        # else: the dependencies resume this consumer with the others once the outage ends.

    async def pause(self) -> None:
        """Stop taking messages (`basic.cancel`); those already delivered stay held here."""
        async with self._consuming:
            if self._queue is None or self._consumer_tag is None:
                return
            tag, self._consumer_tag = self._consumer_tag, None
            try:
                await self._queue.cancel(tag)
            except Exception as exc:
                # The channel is gone: its session ends and the next one starts paused.
                log.debug("could not pause %s: %r", self.queue_name, exc)
            else:
                log.info("paused consuming %s", self.queue_name)

    async def resume(self) -> None:
        """Take messages again after `pause` (nothing to do while consuming or stopping)."""
        async with self._consuming:
            if self._queue is None or self._consumer_tag is not None or self._stopping:
                return
            try:
                self._consumer_tag = await self._queue.consume(self._on_message)
            except Exception as exc:
                log.warning("could not resume consuming %s: %r", self.queue_name, exc)
                return
            log.info("consuming %s", self.queue_name)

    def _on_channel_closed(
        self, connection: aio_pika.abc.AbstractConnection, _channel: object, exc: object = None
    ) -> None:
        """The broker closed the consuming channel (a channel error) while the connection
        lives on: close the connection too, so its supervisor opens a new session with a new
        consumer, instead of the process staying up without consuming. Either way this
        consumer is done: the next session's takes its place in the outage pauses."""
        if self._dependencies is not None:
            self._dependencies.remove(self)
        stopping, self._stopping = self._stopping, True
        self._stopped.set()  # held messages go back to the queue with the channel
        if stopping or connection.is_closed:
            return
        log.warning("the channel consuming %s closed (%r); reconnecting", self.queue_name, exc)
        self._reconnecting = asyncio.ensure_future(_close_quietly(connection))

    async def stop(self, timeout_s: float) -> None:
        """Stop taking messages, give in-flight ones `timeout_s` to finish, then close."""
        self._stopping = True
        self._stopped.set()
        if self._dependencies is not None:
            self._dependencies.remove(self)
        async with self._consuming:
            if self._queue is not None and self._consumer_tag is not None:
                try:
                    await self._queue.cancel(self._consumer_tag)
                except Exception:
                    log.debug("cancel failed (connection gone?)", exc_info=True)
                self._consumer_tag = None
        try:
            await asyncio.wait_for(self._idle.wait(), timeout_s)
        except TimeoutError:
            log.warning("shutdown timeout with %d messages in flight", self._in_flight)
        await self._acks.drain()
        for closable in (self._publisher, self._channel):
            if closable is not None:
                try:
                    await closable.close()
                except Exception:
                    log.debug("close failed", exc_info=True)

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        self._in_flight += 1
        self._idle.clear()
        started = time.perf_counter()
        # Every line logged for this message, retries and dead letters included, carries it.
        token = correlation_id.set(message.correlation_id)
        try:
            if tracing.enabled():
                with tracing.consuming(self.queue_name, message.headers):
                    await self._handle(message)
            else:
                await self._handle(message)
        finally:
            correlation_id.reset(token)
            self._handling_seconds.observe(time.perf_counter() - started)
            self._in_flight -= 1
            if self._in_flight == 0:
                self._idle.set()

    async def _handle(self, message: AbstractIncomingMessage) -> None:
        while True:
            attempt_started = time.monotonic()
            try:
                await self._handler(message)
            except RejectMessage as exc:
                await self._dead_letter(message, FailureKind.POISON, exc.reason)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                planned = isinstance(exc, RetryLater)
                reason = str(exc) if planned else f"{type(exc).__name__}: {exc}"
                held = await self._hold_through_outage(message, reason, attempt_started)
                if held is _Held.AGAIN:
                    continue
                if held is _Held.LEFT:
                    return  # unacked: closing the channel gives it back to the queue
                if not planned:
                    log.exception("handler failed on %s", message.message_id)
                await self._retry(message, reason)
            else:
                self._acks.finished(message)
            return

    async def _hold_through_outage(
        self, message: AbstractIncomingMessage, reason: str, attempt_started: float
    ) -> _Held:
        """Whether a dependency is out, or was during the attempt that failed; if it is, hold
        `message` (the consumer is paused) until every dependency answers again, or until the
        consumer stops."""
        if self._dependencies is None or self._stopping:
            return _Held.NO_OUTAGE
        out = await self._dependencies.outage()
        if out is None:
            if self._dependencies.recovered_since(attempt_started):
                return _Held.AGAIN  # it failed in an outage that ended meanwhile
            return _Held.NO_OUTAGE
        log.debug(
            "holding %s until %s answers (%s)",
            message.message_id,
            out,
            reason,
            extra={"dependency": out},
        )
        up = asyncio.ensure_future(self._dependencies.wait_up())
        stopping = asyncio.ensure_future(self._stopped.wait())
        try:
            await asyncio.wait({up, stopping}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            up.cancel()
            stopping.cancel()
        return _Held.LEFT if self._stopping else _Held.AGAIN

    async def _retry(self, message: AbstractIncomingMessage, reason: str) -> None:
        attempt = attempt_of(message)
        if attempt >= self._max_attempts:
            await self._dead_letter(
                message, FailureKind.EXHAUSTED, f"{reason} (after {attempt} attempts)"
            )
            return
        delay_ms = retry_delay_for(self._retry_base_delay_ms, attempt)
        metrics.RETRIES.labels(self.queue_name).inc()
        log.warning(
            "retrying %s in %d ms (attempt %d): %s", message.message_id, delay_ms, attempt, reason
        )
        retry_headers: dict[str, FieldValue] = {
            ATTEMPT_HEADER: attempt + 1,
            REASON_HEADER: failure_reason(reason),
        }
        await self._forward(
            message,
            self._topology.retry_exchange,
            retry_queue_name(self.queue_name, delay_ms),
            copy_message(message, **retry_headers),
        )

    async def _dead_letter(
        self, message: AbstractIncomingMessage, kind: FailureKind, reason: str
    ) -> None:
        metrics.DEAD_LETTERS.labels(self.queue_name, kind.value).inc()
        log.error("dead-lettering %s (%s): %s", message.message_id, kind.value, reason)
        copy = copy_message(message, **self._failure(kind, reason))
        await self._forward(
            message, self._topology.dead_letter_exchange, dlq_name(self.queue_name), copy
        )

    async def dead_letter_part(
        self, message: AbstractIncomingMessage, part: aio_pika.Message, reason: str
    ) -> None:
        """Dead-letter `part`: one item of `message` that can never be handled (an event of a
        batch), as a message of its own, while the handler goes on with the rest and `message`
        is acked as usual. Raises unless the dead-letter queue confirmed it (the whole message
        is then retried, and the item dead-lettered again)."""
        metrics.DEAD_LETTERS.labels(self.queue_name, FailureKind.POISON.value).inc()
        log.error(
            "dead-lettering %s of %s (%s): %s",
            part.message_id,
            message.message_id,
            FailureKind.POISON.value,
            reason,
        )
        part.headers.update(self._failure(FailureKind.POISON, reason))
        assert self._publisher is not None
        await self._publisher.publish(
            self._topology.dead_letter_exchange, dlq_name(self.queue_name), part
        )

    def _failure(self, kind: FailureKind, reason: str) -> dict[str, FieldValue]:
        """The headers of a dead letter: why, what kind of failure, from which queue, when."""
        return {
            REASON_HEADER: failure_reason(reason),
            KIND_HEADER: kind.value,
            QUEUE_HEADER: self.queue_name,
            FAILED_AT_HEADER: datetime.now(UTC).isoformat(),
        }

    async def _forward(
        self,
        message: AbstractIncomingMessage,
        exchange: str,
        routing_key: str,
        copy: aio_pika.Message,
    ) -> None:
        """Publish `copy` with a confirm, then ack the original; if the publish fails, the
        original is returned to the queue (the broker's delivery limit bounds that loop)."""
        assert self._publisher is not None
        try:
            await self._publisher.publish(exchange, routing_key, copy)
        except Exception:
            log.exception("could not forward %s to %s", message.message_id, routing_key)
            await message.nack(requeue=True)
            # Only now: until the nack is on its way, a multiple ack must not pass this tag.
            self._acks.settled(message)
            return
        self._acks.finished(message)
