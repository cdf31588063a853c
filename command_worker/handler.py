"""Handling command messages: load, decide, append with an expected version, report.

The effects, in this order, each idempotent so a redelivery at any point is harmless:
1. the outcome is committed to PostgreSQL (events + command row, or the command row alone);
2. the outcome is written to the Redis command status;
3. the message is acked (by the consumer runtime, when this returns).
"""

from __future__ import annotations

import asyncio
import logging
import random
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pydantic
from aio_pika.abc import AbstractIncomingMessage
from redis.asyncio import Redis

from command_worker.batching import Batcher
from command_worker.spans import AppendSpans
from common.contracts.commands import CommandBase
from common.contracts.envelopes import EventMetadata
from common.domain import Aggregate, Registry, Rejection
from common.eventstore.store import (
    CommandOutcome,
    CommandRecord,
    DuplicateCommand,
    EventStore,
    NewEvent,
    StoredEvent,
    WrongExpectedVersion,
)
from common.messaging.consuming import attempt_of
from common.messaging.outcomes import RejectMessage
from common.observability import metrics, tracing
from common.observability.logging import correlation_id
from common.readmodel.commands import (
    ID_REUSED_REASON,
    STATUS_TTL_S,
    CommandResult,
    CommandStatus,
    record_results,
)
from common.readmodel.keys import Keys

log = logging.getLogger(__name__)

_BATCH_CONFLICTS = metrics.VERSION_CONFLICTS.labels("batch")
_COMMAND_CONFLICTS = metrics.VERSION_CONFLICTS.labels("command")


@dataclass(frozen=True, slots=True)
class Handled:
    """What became of one command: its status and the stream's version after it."""

    status: CommandStatus
    version: int
    reason: str | None = None


@dataclass(slots=True)
class Loaded:
    """An aggregate's state and version, folded from its stream."""

    state: Any
    version: int


def reuses_id(first_fingerprint: str | None, command: CommandBase) -> bool:
    """`command` has the id of a different request: both carry fingerprints and they differ
    (an idempotency key reused after Redis forgot it)."""
    return (
        first_fingerprint is not None
        and command.fingerprint is not None
        and first_fingerprint != command.fingerprint
    )


def outcome_of_recorded(record: CommandRecord, command: CommandBase, version: int) -> Handled:
    """What a command whose id the ledger already holds comes to: the recorded outcome for a
    redelivery, or a refusal if the id was recorded for a different request. The refusal is
    recorded nowhere in the ledger (the id is taken); `version` is its stream's version."""
    if reuses_id(record.fingerprint, command):
        return Handled(CommandStatus.REJECTED, version, ID_REUSED_REASON)
    return Handled(CommandStatus(record.status), record.version, record.reason)


def again_in_batch(
    first: CommandBase, outcome: Handled, command: CommandBase, version: int
) -> Handled:
    """The outcome of `command`, whose id `first`, earlier in the same batch, has: the same,
    or a refusal if it is a different request."""
    if reuses_id(first.fingerprint, command):
        return Handled(CommandStatus.REJECTED, version, ID_REUSED_REASON)
    return outcome


def parse_command(registry: Registry, message: AbstractIncomingMessage) -> CommandBase:
    """The command in `message`, or `RejectMessage` with a readable reason."""
    try:
        return registry.parse_command(message.body)
    except pydantic.ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'body'}: {err['msg']}"
            for err in exc.errors()[:5]
        )
        raise RejectMessage(f"invalid command: {problems}") from exc


def load(
    registry: Registry, aggregate: Aggregate[Any], stream: str, stored: list[StoredEvent]
) -> Loaded:
    """Fold a stream's stored events (upcast to their current versions) into its state."""
    payloads = (
        registry.parse_stored(stream, event.type, event.schema_version, event.data)
        for event in stored
    )
    return Loaded(aggregate.fold_events(aggregate.initial, payloads), len(stored))


def new_events_of(
    aggregate: Aggregate[Any],
    command: CommandBase,
    events: Sequence[pydantic.BaseModel],
    traceparent: str | None = None,
) -> list[NewEvent]:
    """Domain events as rows for the store, stamped with who caused them (and, when tracing,
    the span of their append, which the relay's publish continues)."""
    metadata = EventMetadata(
        command_id=command.command_id,
        command_type=command.type,
        correlation_id=command.correlation_id,
        causation_id=command.command_id,
        occurred_at=datetime.now(UTC),
        traceparent=traceparent,
        command_issued_at=command.issued_at,
    )
    return [
        NewEvent(
            event_id=uuid.uuid4(),
            type=event_type,
            schema_version=aggregate.event_version(event_type),
            data=event.model_dump(mode="json", exclude={"type"}),
            metadata=metadata,
        )
        for event in events
        for event_type in (str(getattr(event, "type")),)  # noqa: B009 (any model with a type)
    ]


class CommandHandler:
    """The message handler of the commands queue: parses, then hands the command to a batch."""

    def __init__(
        self,
        registry: Registry,
        store: EventStore,
        redis: Redis,
        keys: Keys,
        conflict_retries: int,
        *,
        max_batch: int = 200,
        max_parallel_batches: int = 1,
        status_ttl_s: int = STATUS_TTL_S,
    ) -> None:
        self._registry = registry
        self._status_ttl_s = status_ttl_s
        self._store = store
        self._redis = redis
        self._keys = keys
        self._conflict_retries = conflict_retries
        self._appends = AppendSpans()
        self._seen_before: set[uuid.UUID] = set()
        """Commands whose message was delivered before (a redelivery or a retry): the only
        ones a batch looks up in the command ledger before deciding."""
        # One batch at a time: the commands that arrive while it runs form the next one, so a
        # steady stream commits several per transaction instead of one each. (Two at a time
        # measured slower end to end, with more PostgreSQL CPU and a longer latency tail.)
        self._batcher: Batcher[CommandBase, Handled] = Batcher(
            self.execute_batch,
            key=self._stream_of,
            max_batch=max_batch,
            max_parallel=max_parallel_batches,
        )

    def _aggregate(self, command: CommandBase) -> Aggregate[Any]:
        return self._registry.aggregate_of_command[command.type]

    def _stream_of(self, command: CommandBase) -> str:
        return self._aggregate(command).stream_of(command)

    async def __call__(self, message: AbstractIncomingMessage) -> None:
        command = parse_command(self._registry, message)
        token = correlation_id.set(str(command.correlation_id))
        seen_before = message.redelivered or attempt_of(message) > 1
        if seen_before:
            self._seen_before.add(command.command_id)
        self._appends.consuming(command)
        try:
            outcome = await self._batcher.submit(command)
            log.info(
                "command %s",
                outcome.status.value,
                extra={
                    "command_id": str(command.command_id),
                    "type": command.type,
                    "stream_id": self._stream_of(command),
                    "version": outcome.version,
                    "reason": outcome.reason,
                },
            )
        finally:
            if seen_before:
                self._seen_before.discard(command.command_id)
            self._appends.done(command)
            correlation_id.reset(token)

    async def execute_batch(self, commands: list[CommandBase]) -> list[Handled]:
        """`_execute_batch`, in a span linked to each command's when tracing."""
        if not tracing.enabled():
            return await self._execute_batch(commands)
        with self._appends.batch(commands):
            return await self._execute_batch(commands)

    async def _execute_batch(self, commands: list[CommandBase]) -> list[Handled]:
        """Decide every command on one load of their streams and commit all outcomes in one
        transaction. If another writer got in between, fall back to one command at a time,
        each with its own bounded conflict retries.

        Only commands delivered before are looked up in the ledger first; any other command
        the ledger already holds (published twice) fails the transaction on the ledger's key.
        The batch is then tried once more with all its ids looked up in one query, so one
        duplicate does not make the whole batch run one command at a time."""
        try:
            try:
                outcomes = await self._try_batch(commands)
            except DuplicateCommand:
                outcomes = await self._try_batch(commands, look_up_all=True)
        except (WrongExpectedVersion, DuplicateCommand):
            _BATCH_CONFLICTS.inc()
            outcomes = [await self.execute(command) for command in commands]
        await record_results(
            self._redis,
            self._keys,
            [
                CommandResult(
                    c.command_id,
                    c.type,
                    self._stream_of(c),
                    o.status,
                    o.reason,
                    o.version,
                    c.fingerprint,
                )
                for c, o in zip(commands, outcomes, strict=True)
            ],
            ttl_s=self._status_ttl_s,
        )
        now = datetime.now(UTC)
        for command, outcome in zip(commands, outcomes, strict=True):
            metrics.COMMANDS.labels(command.type, outcome.status.value).inc()
            latency = (now - command.issued_at).total_seconds()
            metrics.COMMAND_LATENCY.labels(command.type).observe(max(latency, 0.0))
        return outcomes

    async def _try_batch(
        self, commands: list[CommandBase], *, look_up_all: bool = False
    ) -> list[Handled]:
        async with self._store.pool.acquire() as conn:
            suspects = [
                c.command_id for c in commands if look_up_all or c.command_id in self._seen_before
            ]
            known = await self._store.get_commands(conn, suspects) if suspects else {}
            streams = await self._store.load_streams(
                conn, list(dict.fromkeys(self._stream_of(c) for c in commands))
            )
            states = {
                stream: load(self._registry, self._aggregate_of_stream(stream), stream, events)
                for stream, events in streams.items()
            }
            outcomes: list[Handled] = []
            decided: dict[uuid.UUID, int] = {}
            """The index of the first command with each id this batch decides."""
            rows: list[CommandOutcome] = []
            for command in commands:
                aggregate = self._aggregate(command)
                stream = aggregate.stream_of(command)
                loaded = states[stream]
                record = known.get(command.command_id)
                if record is not None:
                    outcomes.append(outcome_of_recorded(record, command, loaded.version))
                    continue
                first = decided.get(command.command_id)
                if first is not None:  # twice in this batch
                    outcomes.append(
                        again_in_batch(commands[first], outcomes[first], command, loaded.version)
                    )
                    continue
                try:
                    new_events = aggregate.decide_within_limit(
                        loaded.state, loaded.version, command
                    )
                except Rejection as rejection:
                    outcome = Handled(CommandStatus.REJECTED, loaded.version, rejection.reason)
                    rows.append(self._row(aggregate, command, outcome))
                else:
                    state = aggregate.fold_events(loaded.state, new_events)
                    states[stream] = Loaded(state, loaded.version + len(new_events))
                    outcome = Handled(CommandStatus.SUCCEEDED, loaded.version + len(new_events))
                    rows.append(self._row(aggregate, command, outcome, new_events))
                decided[command.command_id] = len(outcomes)
                outcomes.append(outcome)
            if rows:
                try:
                    await self._store.append_batch(conn, rows)
                except BaseException as exc:
                    self._appends.end(rows, exc)
                    raise
                self._appends.end(rows)
        metrics.EVENTS_APPENDED.inc(sum(len(r.events) for r in rows))
        return outcomes

    def _aggregate_of_stream(self, stream: str) -> Aggregate[Any]:
        aggregate = self._registry.aggregate_of_stream(stream)
        assert aggregate is not None, "a command's stream belongs to its aggregate"
        return aggregate

    def _row(
        self,
        aggregate: Aggregate[Any],
        command: CommandBase,
        outcome: Handled,
        events: Sequence[pydantic.BaseModel] = (),
    ) -> CommandOutcome:
        traceparent = self._appends.start(command, aggregate.stream_of(command))
        return CommandOutcome(
            command_id=command.command_id,
            command_type=command.type,
            stream_id=aggregate.stream_of(command),
            status=outcome.status.value,
            reason=outcome.reason,
            version=outcome.version,
            fingerprint=command.fingerprint,
            events=new_events_of(aggregate, command, events, traceparent),
        )

    async def execute(self, command: CommandBase) -> Handled:
        """Run `command` to a recorded outcome, retrying on expected-version conflicts."""
        aggregate = self._aggregate(command)
        stream = aggregate.stream_of(command)
        for attempt in range(self._conflict_retries + 1):
            stored = await self._store.load_stream(stream)
            loaded = load(self._registry, aggregate, stream, stored)
            try:
                new_events = aggregate.decide_within_limit(loaded.state, loaded.version, command)
            except Rejection as rejection:
                return await self._record(
                    command, stream, CommandStatus.REJECTED, rejection.reason, loaded.version
                )
            try:
                with self._appends.one(command, stream) as traceparent:
                    await self._store.append_to_stream(
                        stream,
                        new_events_of(aggregate, command, new_events, traceparent),
                        expected_version=loaded.version,
                        command_id=command.command_id,
                        command_type=command.type,
                        fingerprint=command.fingerprint,
                    )
            except WrongExpectedVersion:
                _COMMAND_CONFLICTS.inc()
                await asyncio.sleep(random.uniform(0, 0.005 * (attempt + 1)))
                continue
            except DuplicateCommand:
                return await self._recorded(command, loaded.version)
            metrics.EVENTS_APPENDED.inc(len(new_events))
            return Handled(CommandStatus.SUCCEEDED, loaded.version + len(new_events))
        reason = f"gave up after {self._conflict_retries + 1} concurrent-update conflicts"
        return await self._record(command, stream, CommandStatus.FAILED, reason, loaded.version)

    async def _record(
        self, command: CommandBase, stream: str, status: CommandStatus, reason: str, version: int
    ) -> Handled:
        record = await self._store.record_command(
            command_id=command.command_id,
            command_type=command.type,
            stream_id=stream,
            status=status.value,
            reason=reason,
            version=version,
            fingerprint=command.fingerprint,
        )
        return outcome_of_recorded(record, command, version)

    async def _recorded(self, command: CommandBase, version: int) -> Handled:
        record = await self._store.get_command(command.command_id)
        assert record is not None, "a duplicate command has a record"
        return outcome_of_recorded(record, command, version)
