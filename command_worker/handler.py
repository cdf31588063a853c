"""Handling one command message: load, decide, append with an expected version, report.

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

from command_worker.locks import KeyedLocks
from command_worker.order import Order, Rejection, decide, evolve
from common.contracts.envelopes import EventMetadata
from common.contracts.orders import COMMAND_ADAPTER, ORDER_EVENT_ADAPTER, Command
from common.eventstore.store import DuplicateCommand, EventStore, NewEvent, WrongExpectedVersion
from common.messaging.outcomes import RejectMessage
from common.observability import metrics
from common.observability.logging import correlation_id
from common.readmodel import commands as command_status
from common.readmodel.commands import CommandStatus
from common.readmodel.keys import Keys

log = logging.getLogger(__name__)


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


class CommandHandler:
    """The message handler of `orders.commands`."""

    def __init__(self, store: EventStore, redis: Redis, keys: Keys, conflict_retries: int) -> None:
        self._store = store
        self._redis = redis
        self._keys = keys
        self._conflict_retries = conflict_retries
        self._locks = KeyedLocks()

    async def __call__(self, message: AbstractIncomingMessage) -> None:
        command = parse_command(message)
        token = correlation_id.set(str(command.correlation_id))
        try:
            async with self._locks.hold(command.order_id):
                outcome = await self.execute(command)
            await command_status.record_outcome(
                self._redis,
                self._keys,
                command_id=command.command_id,
                command_type=command.type,
                order_id=str(command.order_id),
                status=outcome.status,
                reason=outcome.reason,
                version=outcome.version,
            )
            metrics.COMMANDS.labels(command.type, outcome.status.value).inc()
            log.info(
                "command %s", outcome.status.value,
                extra={"command_id": str(command.command_id), "type": command.type,
                       "order_id": str(command.order_id), "version": outcome.version,
                       "reason": outcome.reason},
            )
        finally:
            correlation_id.reset(token)

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
            metadata = EventMetadata(
                command_id=command.command_id,
                correlation_id=command.correlation_id,
                causation_id=command.command_id,
                occurred_at=datetime.now(UTC),
            )
            try:
                await self._store.append_to_stream(
                    stream_id,
                    [
                        NewEvent(
                            event_id=uuid.uuid4(),
                            type=event.type,
                            data=event.model_dump(mode="json", exclude={"type"}),
                            metadata=metadata,
                        )
                        for event in new_events
                    ],
                    expected_version=state.version,
                    command_id=command.command_id,
                    command_type=command.type,
                    fingerprint=command.fingerprint,
                )
            except WrongExpectedVersion:
                metrics.VERSION_CONFLICTS.inc()
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
