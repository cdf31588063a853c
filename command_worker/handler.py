"""Handling command messages: load, decide, append with an expected version, report.

Order of effects, each idempotent so a redelivery at any point is harmless:
1. the outcome is committed to PostgreSQL (events + command row, or the command row alone);
2. the outcome is written to the Redis command status;
3. the message is acked (by the consumer runtime, when this returns).
"""

from __future__ import annotations

import asyncio
import logging
import random
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime

import pydantic
from aio_pika.abc import AbstractIncomingMessage
from redis.asyncio import Redis

from command_worker.batching import Batcher
from command_worker.order import Order, Rejection, decide, evolve
from common.contracts.envelopes import EventMetadata
from common.contracts.orders import COMMAND_ADAPTER, ORDER_EVENT_ADAPTER, Command, OrderEvent
from common.eventstore.store import (
    CommandOutcome,
    DuplicateCommand,
    EventStore,
    NewEvent,
    WrongExpectedVersion,
)
from common.messaging.consuming import attempt_of
from common.messaging.outcomes import RejectMessage
from common.observability import metrics
from common.observability.logging import correlation_id
from common.readmodel import commands as command_status
from common.readmodel.commands import CommandStatus
from common.readmodel.keys import Keys

log = logging.getLogger(__name__)

_BATCH_CONFLICTS = metrics.VERSION_CONFLICTS.labels("batch")
_COMMAND_CONFLICTS = metrics.VERSION_CONFLICTS.labels("command")


@dataclass(frozen=True, slots=True)
class Outcome:
    status: CommandStatus
    version: int
    reason: str | None = None


def parse_command(message: AbstractIncomingMessage) -> Command:
    """The command in `message`, or `RejectMessage` with a readable reason."""
    try:
        return COMMAND_ADAPTER.validate_json(message.body)
    except pydantic.ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'body'}: {err['msg']}"
            for err in exc.errors()[:5]
        )
        raise RejectMessage(f"invalid command: {problems}") from exc


def load_order(stored: list[tuple[str, dict[str, object]]]) -> Order:
    state = Order()
    for event_type, data in stored:
        state = evolve(state, ORDER_EVENT_ADAPTER.validate_python({"type": event_type, **data}))
    return state


def new_events_of(command: Command, events: list[OrderEvent]) -> list[NewEvent]:
    """Domain events as rows for the store, stamped with who caused them."""
    metadata = EventMetadata(
        command_id=command.command_id,
        correlation_id=command.correlation_id,
        causation_id=command.command_id,
        occurred_at=datetime.now(UTC),
    )
    return [
        NewEvent(
            event_id=uuid.uuid4(),
            type=event.type,
            data=event.model_dump(mode="json", exclude={"type"}),
            metadata=metadata,
        )
        for event in events
    ]


class CommandHandler:
    """The message handler of `orders.commands`: parses, then hands the command to a batch."""

    def __init__(
        self,
        store: EventStore,
        redis: Redis,
        keys: Keys,
        conflict_retries: int,
        *,
        max_batch: int = 200,
        max_parallel_batches: int = 1,
    ) -> None:
        self._store = store
        self._redis = redis
        self._keys = keys
        self._conflict_retries = conflict_retries
        self._seen_before: set[uuid.UUID] = set()
        """Commands whose message was delivered before (a redelivery or a retry): the only
        ones a batch looks up in the command ledger before deciding."""
        # One batch at a time: the commands that arrive while it runs form the next one, so a
        # steady stream commits several per transaction instead of one each. (Two at a time
        # measured slower end to end, with more PostgreSQL CPU and a longer latency tail.)
        self._batcher: Batcher[Command, Outcome] = Batcher(
            self.execute_batch,
            key=lambda command: command.order_id,
            max_batch=max_batch,
            max_parallel=max_parallel_batches,
        )

    async def __call__(self, message: AbstractIncomingMessage) -> None:
        command = parse_command(message)
        token = correlation_id.set(str(command.correlation_id))
        seen_before = message.redelivered or attempt_of(message) > 1
        if seen_before:
            self._seen_before.add(command.command_id)
        try:
            outcome = await self._batcher.submit(command)
            log.info(
                "command %s",
                outcome.status.value,
                extra={
                    "command_id": str(command.command_id),
                    "type": command.type,
                    "order_id": str(command.order_id),
                    "version": outcome.version,
                    "reason": outcome.reason,
                },
            )
        finally:
            if seen_before:
                self._seen_before.discard(command.command_id)
            correlation_id.reset(token)

    async def execute_batch(self, commands: list[Command]) -> list[Outcome]:
        """Decide every command on one load of their streams and commit all outcomes in one
        transaction. If another writer got in between, fall back to one command at a time,
        each with its own bounded conflict retries.

        Only commands delivered before are looked up in the ledger first; any other command
        the ledger already holds (published twice) fails the transaction on the ledger's key,
        and the fallback then settles each command by itself, duplicates included."""
        try:
            outcomes = await self._try_batch(commands)
        except (WrongExpectedVersion, DuplicateCommand):
            _BATCH_CONFLICTS.inc()
            outcomes = [await self.execute(command) for command in commands]
        await command_status.record_outcomes(
            self._redis,
            self._keys,
            [
                command_status.Outcome(
                    c.command_id, c.type, str(c.order_id), o.status, o.reason, o.version
                )
                for c, o in zip(commands, outcomes, strict=True)
            ],
        )
        now = datetime.now(UTC)
        for command, outcome in zip(commands, outcomes, strict=True):
            metrics.COMMANDS.labels(command.type, outcome.status.value).inc()
            latency = (now - command.issued_at).total_seconds()
            metrics.COMMAND_LATENCY.labels(command.type).observe(max(latency, 0.0))
        return outcomes

    async def _try_batch(self, commands: list[Command]) -> list[Outcome]:
        async with self._store.pool.acquire() as conn:
            suspects = [c.command_id for c in commands if c.command_id in self._seen_before]
            known = await self._store.get_commands(conn, suspects) if suspects else {}
            streams = await self._store.load_streams(
                conn, list(dict.fromkeys(str(c.order_id) for c in commands))
            )
            states = {
                stream_id: load_order([(e.type, e.data) for e in events])
                for stream_id, events in streams.items()
            }
            outcomes: dict[uuid.UUID, Outcome] = {
                command_id: Outcome(CommandStatus(r.status), r.version, r.reason)
                for command_id, r in known.items()
            }
            rows: list[CommandOutcome] = []
            for command in commands:
                if command.command_id in outcomes:
                    continue  # handled before, or twice in this batch
                stream_id = str(command.order_id)
                state = states[stream_id]
                try:
                    new_events = decide(state, command)
                except Rejection as rejection:
                    outcome = Outcome(CommandStatus.REJECTED, state.version, rejection.reason)
                    rows.append(self._row(command, outcome))
                else:
                    for event in new_events:
                        state = evolve(state, event)
                    states[stream_id] = state
                    outcome = Outcome(CommandStatus.SUCCEEDED, state.version)
                    rows.append(self._row(command, outcome, new_events))
                outcomes[command.command_id] = outcome
            if rows:
                await self._store.append_batch(conn, rows)
        metrics.EVENTS_APPENDED.inc(sum(len(r.events) for r in rows))
        return [outcomes[c.command_id] for c in commands]

    @staticmethod
    def _row(
        command: Command, outcome: Outcome, events: list[OrderEvent] | None = None
    ) -> CommandOutcome:
        return CommandOutcome(
            command_id=command.command_id,
            command_type=command.type,
            stream_id=str(command.order_id),
            status=outcome.status.value,
            reason=outcome.reason,
            version=outcome.version,
            fingerprint=command.fingerprint,
            events=new_events_of(command, events or []),
        )

    async def execute(self, command: Command) -> Outcome:
        """Run `command` to a recorded outcome, retrying on expected-version conflicts."""
        stream_id = str(command.order_id)
        for attempt in range(self._conflict_retries + 1):
            stored = await self._store.load_stream(stream_id)
            state = load_order([(e.type, e.data) for e in stored])
            try:
                new_events = decide(state, command)
            except Rejection as rejection:
                return await self._record(command, CommandStatus.REJECTED, rejection.reason, state)
            try:
                await self._store.append_to_stream(
                    stream_id,
                    new_events_of(command, new_events),
                    expected_version=state.version,
                    command_id=command.command_id,
                    command_type=command.type,
                    fingerprint=command.fingerprint,
                )
            except WrongExpectedVersion:
                _COMMAND_CONFLICTS.inc()
                await asyncio.sleep(random.uniform(0, 0.005 * (attempt + 1)))
                continue
            except DuplicateCommand:
                return await self._recorded(command)
            metrics.EVENTS_APPENDED.inc(len(new_events))
            return Outcome(CommandStatus.SUCCEEDED, state.version + len(new_events))
        reason = f"gave up after {self._conflict_retries + 1} concurrent-update conflicts"
        return await self._record(command, CommandStatus.FAILED, reason, state)

    async def _record(
        self, command: Command, status: CommandStatus, reason: str, state: Order
    ) -> Outcome:
        record = await self._store.record_outcome(
            command_id=command.command_id,
            command_type=command.type,
            stream_id=str(command.order_id),
            status=status.value,
            reason=reason,
            version=state.version,
            fingerprint=command.fingerprint,
        )
        return Outcome(CommandStatus(record.status), record.version, record.reason)

    async def _recorded(self, command: Command) -> Outcome:
        record = await self._store.get_command(command.command_id)
        assert record is not None, "a duplicate command has a record"
        return Outcome(CommandStatus(record.status), record.version, record.reason)
