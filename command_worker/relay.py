"""The relay: publishes committed events from the event store to `orders.events`.

No dual write: handlers only commit to PostgreSQL; this loop tails the log and publishes at
least once, in global-position order, remembering its progress in the `checkpoints` table
(after confirmed batches, at most once a second, and within a second of catching up). A
crash between publish and checkpoint republishes what followed it; projectors drop the
duplicates by stream version.

It only reads below the gap-safe horizon (`EventStore.read_horizon`), so an event whose
transaction commits after one with a higher position is never skipped. One relay per database
is active at a time: each command worker runs one, and they elect a leader with a session
advisory lock that PostgreSQL frees when the leader's connection dies.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

import asyncpg

from common.eventstore.database import connect
from common.eventstore.store import EventStore
from common.messaging.connection import BrokerUnavailable
from common.messaging.messages import event_message
from common.messaging.publishing import ConfirmedPublisher
from common.messaging.topology import EVENTS_EXCHANGE
from common.observability import metrics

log = logging.getLogger(__name__)

RELAY_LOCK = 0x7265_6C61_79  # "relay"
CHECKPOINT = "relay:orders.events"
APPENDED_CHANNEL = "events_appended"
STOP_GRACE_S = 5.0
"""How long a stopping relay may take to publish and checkpoint the batch in flight."""
CHECKPOINT_EVERY_S = 1.0
"""The checkpoint is written at most this often, and this long at the latest after the relay
caught up: a crash republishes at most this much, which projectors drop as duplicates."""


class Relay:
    """Leader-elected publisher of the event log."""

    def __init__(
        self,
        database_url: str,
        publisher: Callable[[], ConfirmedPublisher],
        *,
        batch_size: int,
        idle_poll_s: float = 1.0,
    ) -> None:
        self._database_url = database_url
        self._publisher = publisher
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
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._stopping.clear()
        self._task = asyncio.create_task(self.run(), name="relay")

    async def stop(self, grace_s: float = STOP_GRACE_S) -> None:
        """Stop relaying: the batch in flight is published and checkpointed first (for up to
        `grace_s`; then it is cancelled and republished by the next leader). The advisory lock
        goes with the connection, to the next leader."""
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
        conn = await connect(self._database_url)
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
            await asyncio.shield(self._save_on_leaving(conn))
            await asyncio.shield(conn.close())

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
        checkpoint = await EventStore.get_checkpoint(conn, CHECKPOINT)
        # Every position up to `scanned` is final and published (rolled-back ones included),
        # so the lag is measured from it, not from the last event's position.
        scanned = checkpoint
        self.published_up_to = self._saved = checkpoint
        saved_at = time.monotonic()
        broker_down = False
        backoff = 0.1
        caught_up = False
        while not self._stopping.is_set():
            if caught_up:
                # Nothing was committed since the last read: wait for a commit (or the idle
                # poll), writing the checkpoint once it is due.
                wait_s = self._idle_poll_s
                if checkpoint > self._saved:
                    due_in = saved_at + CHECKPOINT_EVERY_S - time.monotonic()
                    if due_in <= 0:
                        await EventStore.set_checkpoint(conn, CHECKPOINT, checkpoint)
                        self._saved, saved_at = checkpoint, time.monotonic()
                    else:
                        wait_s = min(wait_s, due_in)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._appended.wait(), wait_s)
                if self._stopping.is_set():
                    return
            heard = self._notified
            self._appended.clear()
            horizon = await EventStore.read_horizon(conn)
            metrics.RELAY_LAG.set(max(horizon.last_position - scanned, 0))
            caught_up = horizon.last_position <= scanned
            if caught_up:
                continue
            await EventStore.wait_until_final(conn, horizon, wake=self._appended)
            try:
                while True:
                    events = await EventStore.read_range(
                        conn, checkpoint, horizon.last_position, self._batch_size
                    )
                    if not events:
                        break
                    await self._publisher().publish_many(
                        EVENTS_EXCHANGE, [("", event_message(event)) for event in events]
                    )
                    checkpoint = events[-1].position
                    if time.monotonic() - saved_at >= CHECKPOINT_EVERY_S:
                        await EventStore.set_checkpoint(conn, CHECKPOINT, checkpoint)
                        self._saved, saved_at = checkpoint, time.monotonic()
                    self.published_up_to = checkpoint
                    metrics.EVENTS_RELAYED.inc(len(events))
                    if self._stopping.is_set():
                        return
                    if len(events) < self._batch_size:
                        break  # a short read ends the range: no empty read to confirm it
            except BrokerUnavailable as exc:
                # Keep the lead and the lag gauge current while RabbitMQ is away; a restarted
                # session would only hand the lock around the command workers.
                if not broker_down:
                    log.warning("relay waiting for RabbitMQ: %s", exc)
                    broker_down = True
                await self._pause(backoff)
                backoff = min(backoff * 2, 2.0)
                continue
            if broker_down:
                log.info("relay publishing again")
                broker_down, backoff = False, 0.1
            scanned = horizon.last_position
            # A commit heard since the horizon was read may lie above it; none: caught up.
            caught_up = self._notified == heard
