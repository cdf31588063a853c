"""The relay: publishes committed events from the event store to the events exchange, each in
its type's current schema version (upcast by the domain that owns its stream).

No dual write: handlers only commit to PostgreSQL; this loop tails the log and publishes at
least once, in global-position order, remembering its progress in the `checkpoints` table
(after confirmed batches, at most once a second, and within a second of catching up). A
crash between publish and checkpoint republishes what followed it; projectors drop the
duplicates by stream version.

Up to `MAX_IN_FLIGHT` batches are published and awaiting their confirms while the next one is
read and sent: a confirm takes milliseconds (a quorum queue writes to disk first), and waiting
for each before reading on made the relay a queue of its own at modest rates. Only a confirmed
prefix of the log counts as published. If any batch fails, the ones after it are dropped too
and everything from the confirmed prefix on is sent again: duplicates, and events arriving
after their successors, are what projectors already handle (by version, and by catching up).

It only reads below the gap-safe horizon (`EventStore.read_horizon`), so an event whose
transaction commits after one with a higher position is never skipped. The horizon waits for
appenders only, never for other transactions; an appender that keeps the relay waiting past
`HELD_BACK_REPORT_S` is logged by session and shown in `relay_blocked_seconds`. One relay per
database
is active at a time: each command worker runs one, and they elect a leader with a session
advisory lock that PostgreSQL frees when the leader's connection dies.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

import aio_pika
import asyncpg
from aio_pika.abc import FieldValue
from opentelemetry import trace

from command_worker.window import InFlight
from common.contracts.envelopes import RecordedEvent
from common.domain import UnknownEvent
from common.eventstore.database import STATEMENT_TIMEOUT_S, connect
from common.eventstore.store import EventStore, HeldBack
from common.messaging.connection import BrokerUnavailable
from common.messaging.messages import events_message
from common.messaging.publishing import ConfirmedPublisher
from common.observability import metrics, tracing

log = logging.getLogger(__name__)

RELAY_LOCK = 0x7265_6C61_79  # "relay"
CHECKPOINT = "relay:orders.events"
"""The relay's row in `checkpoints` (named when there was one exchange; kept so a running
deployment does not publish its log again)."""
APPENDED_CHANNEL = "events_appended"
STOP_GRACE_S = 5.0
"""How long a stopping relay may take to publish and checkpoint the batches in flight."""
CHECKPOINT_EVERY_S = 1.0
"""The checkpoint is written at most this often, and this long at the latest after the relay
caught up: a crash republishes at most this much, which projectors drop as duplicates."""
HELD_BACK_REPORT_S = 1.0
"""An appender that keeps the relay waiting longer than this is reported: a warning naming its
session and the `relay_blocked_seconds` gauge. Appends last milliseconds; a second is a
transaction left open (a forgotten `psql` session that called an append function)."""
HELD_BACK_LOG_EVERY_S = 60.0
"""While the relay stays held back, the warning is repeated this often (the gauge follows every
second)."""
EVENTS_PER_MESSAGE = 50
"""Events of one read sent in one message (`events_message`): the broker's and the projectors'
cost is per message, so a busy log costs them a fraction per event. Small enough that a
retried or dead-lettered batch is cheap to handle again."""
MAX_IN_FLIGHT = 8
"""Batches published and not yet confirmed: small ones, as at modest rates. Under a backlog,
when batches are full, events in flight are capped at twice the batch size instead, so a busy
queue's confirms are not queued behind thousands of others."""


class Relay:
    """Leader-elected publisher of the event log."""

    def __init__(
        self,
        database_url: str,
        publisher: Callable[[], ConfirmedPublisher],
        *,
        exchange: str,
        upcast: Callable[[RecordedEvent], RecordedEvent] = lambda event: event,
        batch_size: int,
        idle_poll_s: float = 1.0,
        held_back_report_s: float = HELD_BACK_REPORT_S,
        statement_timeout_s: float = STATEMENT_TIMEOUT_S,
    ) -> None:
        self._database_url = database_url
        self._statement_timeout_s = statement_timeout_s
        self._held_back_report_s = held_back_report_s
        self._held_back_logged_at: float | None = None
        """When the last warning about the current wait was logged; None: none logged."""
        self._publisher = publisher
        self._exchange = exchange
        self._upcast = upcast
        self._batch_size = batch_size
        self._idle_poll_s = idle_poll_s
        self._appended = asyncio.Event()
        self._notified = 0
        """Commits heard of (NOTIFY): the relay reads again only after one, or the idle poll."""
        self._stopping = asyncio.Event()
        self.is_leader = False
        self.published_up_to = 0
        self._saved: int | None = None
        """The checkpoint last written, while this relay leads."""
        self._saved_at = 0.0
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._stopping.clear()
        self._task = asyncio.create_task(self.run(), name="relay")

    async def stop(self, grace_s: float = STOP_GRACE_S) -> None:
        """Stop relaying: the batches in flight are confirmed and checkpointed first (for up to
        `grace_s`; then what is unconfirmed is dropped and republished by the next leader). The
        advisory lock goes with the connection, to the next leader."""
        if self._task is None:
            return
        self._stopping.set()
        self._appended.set()
        done, _ = await asyncio.wait({self._task}, timeout=grace_s)
        if not done:
            self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        self._task = None

    async def run(self) -> None:
        """Relay until stopped; any failure restarts the session after a pause."""
        backoff = 0.1
        while not self._stopping.is_set():
            try:
                await self._session()
            except asyncio.CancelledError:
                raise
            except (
                BrokerUnavailable,
                OSError,
                asyncpg.PostgresError,
                asyncpg.InterfaceError,
            ) as exc:
                log.warning("relay paused: %r", exc)
            except Exception:
                log.exception("relay failed")
            self.is_leader = False
            await self._pause(backoff)
            backoff = min(backoff * 2, 2.0)

    async def _pause(self, seconds: float) -> None:
        """Sleep, unless the relay is being stopped."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)

    async def _session(self) -> None:
        conn = await connect(self._database_url, self._statement_timeout_s)
        try:
            # Polling: the lock's release is only visible by asking for it again.
            while not await conn.fetchval("SELECT pg_try_advisory_lock($1)", RELAY_LOCK):
                if self._stopping.is_set():
                    return
                await self._pause(self._idle_poll_s)
            self.is_leader = True
            metrics.RELAY_LEADER.set(1)
            log.info("relay leading")
            # The checkpoint is a hint: one lost in a crash of PostgreSQL only republishes
            # events, which projectors drop as duplicates. Its writes need not wait for a flush.
            await conn.execute("SET synchronous_commit = off")
            await conn.add_listener(APPENDED_CHANNEL, lambda *_: self._heard())
            await self._relay(conn)
        finally:
            self.is_leader = False
            metrics.RELAY_LEADER.set(0)
            self._no_longer_held_back()
            try:
                await asyncio.shield(self._save_on_leaving(conn))
            finally:
                await asyncio.shield(conn.close())  # and with it the lock

    def _heard(self) -> None:
        self._notified += 1
        self._appended.set()

    async def _save_on_leaving(self, conn: asyncpg.Connection) -> None:
        """Write the checkpoint still pending, while the lock is held, so a stop or handover
        republishes nothing; best effort (a dead connection only means some republishing)."""
        saved, self._saved = self._saved, None
        if saved is not None and self.published_up_to > saved:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(
                    EventStore.set_checkpoint(conn, CHECKPOINT, self.published_up_to), 1.0
                )

    async def _relay(self, conn: asyncpg.Connection) -> None:
        self.published_up_to = self._saved = await EventStore.get_checkpoint(conn, CHECKPOINT)
        # `sent`: every event up to it is published, confirmed or not. `scanned`: every
        # position up to it is final and sent (rolled-back ones included), so the lag is
        # measured from it, not from the last event's position.
        sent = scanned = self.published_up_to
        window = InFlight(MAX_IN_FLIGHT, 2 * self._batch_size, self._on_confirmed)
        self._saved_at = time.monotonic()
        heard: int | None = None  # the commits heard at the last read; None: read now
        read_at = 0.0
        broker_down = False
        backoff = 0.1
        try:
            while not self._stopping.is_set():
                try:
                    if window.confirmed() and broker_down:
                        log.info("relay publishing again")
                        broker_down, backoff = False, 0.1
                    await self._checkpoint_if_due(conn)
                    idle_s = read_at + self._idle_poll_s - time.monotonic()
                    if heard == self._notified and idle_s > 0:
                        # Nothing was committed since the last read: wait for a commit, a
                        # confirm, the checkpoint's turn or the idle poll.
                        await self._wait(window, min(idle_s, self._checkpoint_due_in()))
                        continue
                    heard = self._notified
                    self._appended.clear()
                    horizon = await EventStore.read_horizon(conn)
                    read_at = time.monotonic()
                    metrics.RELAY_LAG.set(max(horizon.last_position - scanned, 0))
                    if horizon.last_position <= scanned:
                        continue
                    await EventStore.wait_until_final(
                        conn,
                        horizon,
                        wake=self._appended,
                        held_back=self._held_back,
                        held_back_every_s=self._held_back_report_s,
                    )
                    self._no_longer_held_back()
                    reached = await self._send_range(conn, window, sent, horizon.last_position)
                    if reached is None:
                        break
                    sent = scanned = reached
                except BrokerUnavailable as exc:
                    # Keep the lead and the lag gauge current while RabbitMQ is away; a
                    # restarted session would only hand the lock around the command workers.
                    if not broker_down:
                        log.warning("relay waiting for RabbitMQ: %s", exc)
                        broker_down = True
                    await window.drop()
                    sent = scanned = self.published_up_to
                    heard = None
                    await self._pause(backoff)
                    backoff = min(backoff * 2, 2.0)
            # Stopping: the batches in flight get their confirms (`stop` bounds the wait).
            await window.settle()
        finally:
            await window.drop()

    def _held_back(self, report: HeldBack) -> None:
        metrics.RELAY_BLOCKED.set(report.waited_s)
        now = time.monotonic()
        logged_at = self._held_back_logged_at
        if logged_at is not None and now - logged_at < HELD_BACK_LOG_EVERY_S:
            return
        self._held_back_logged_at = now
        log.warning(
            "relay held back for %.1f s by open appends: %s",
            report.waited_s,
            "; ".join(map(str, report.appenders)) or "(their sessions just ended)",
            extra={
                "held_back_s": round(report.waited_s, 1),
                "pids": [a.pid for a in report.appenders],
            },
        )

    def _no_longer_held_back(self) -> None:
        metrics.RELAY_BLOCKED.set(0)
        if self._held_back_logged_at is not None:
            self._held_back_logged_at = None
            log.info("relay no longer held back")

    async def _send_range(
        self, conn: asyncpg.Connection, window: InFlight, sent: int, up_to: int
    ) -> int | None:
        """Publish the events after `sent` up to the final position `up_to`; `up_to` once
        all are sent, or None when the relay is stopping."""
        while not self._stopping.is_set():
            events = await EventStore.read_range(conn, sent, up_to, self._batch_size)
            if not events:
                return up_to
            await window.room_for(len(events))
            if self._stopping.is_set():
                return None
            batches = [
                [self._current(event) for event in events[start : start + EVENTS_PER_MESSAGE]]
                for start in range(0, len(events), EVENTS_PER_MESSAGE)
            ]
            messages = [("", events_message(batch)) for batch in batches]
            sent = events[-1].position
            publish = self._publisher().publish_many(self._exchange, messages)
            if tracing.enabled():
                publish = traced_publish(publish, self._exchange, batches, messages)
            window.send(publish, sent, len(events))
            await self._checkpoint_if_due(conn)
            if len(events) < self._batch_size:
                return up_to  # a short read ends the range: no empty read to confirm it
        return None

    def _current(self, event: RecordedEvent) -> RecordedEvent:
        """The event in its current schema version; as stored (its version in the header) when
        it cannot be upcast, so one bad event never stops the log: projectors dead-letter it."""
        try:
            return self._upcast(event)
        except UnknownEvent as exc:
            log.error("publishing %s as stored: %s", event.event_id, exc)
            return event

    def _on_confirmed(self, up_to: int, events: int) -> None:
        self.published_up_to = up_to
        metrics.EVENTS_RELAYED.inc(events)

    def _checkpoint_due_in(self) -> float:
        """Seconds until a pending checkpoint is due (infinity with none pending)."""
        if self._saved is None or self.published_up_to <= self._saved:
            return float("inf")
        return self._saved_at + CHECKPOINT_EVERY_S - time.monotonic()

    async def _checkpoint_if_due(self, conn: asyncpg.Connection) -> None:
        if self._checkpoint_due_in() <= 0:
            await EventStore.set_checkpoint(conn, CHECKPOINT, self.published_up_to)
            self._saved, self._saved_at = self.published_up_to, time.monotonic()

    async def _wait(self, window: InFlight, timeout_s: float) -> None:
        """Until a commit is heard, the oldest batch in flight is done, or `timeout_s`."""
        heard = asyncio.ensure_future(self._appended.wait())
        waits: set[asyncio.Future[Any]] = {heard}
        oldest = window.oldest()
        if oldest is not None:
            waits.add(oldest)
        try:
            await asyncio.wait(
                waits, timeout=max(timeout_s, 0.0), return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            heard.cancel()


async def traced_publish(
    publish: Coroutine[Any, Any, None],
    exchange: str,
    batches: Sequence[Sequence[RecordedEvent]],
    messages: Sequence[tuple[str, aio_pika.Message]],
) -> None:
    """`publish`, with a producer span per event that carries its append's trace context, each
    ending once the broker confirmed. A message of one event carries its span in `traceparent`;
    a batch carries one per event in `traceparents`, in the order of its events ('' for one
    without)."""
    spans = []
    for batch, (_key, message) in zip(batches, messages, strict=True):
        parents: list[FieldValue] = []
        for event in batch:
            if event.metadata.traceparent is None:
                parents.append("")
                continue
            span = tracing.start_publish(
                exchange,
                tracing.context_of(event.metadata.traceparent),
                {"messaging.message.id": str(event.event_id), "cqrs.position": event.position},
            )
            spans.append(span)
            carrier: dict[str, Any] = {}
            tracing.inject(carrier, trace.set_span_in_context(span))
            parents.append(carrier.get(tracing.TRACEPARENT, ""))
            if len(batch) == 1:
                message.headers.update(carrier)
        if len(batch) > 1 and any(parents):
            message.headers[tracing.TRACEPARENTS] = parents
    try:
        await publish
    except BaseException as exc:
        for span in spans:
            tracing.end(span, exc)
        raise
    for span in spans:
        tracing.end(span)
