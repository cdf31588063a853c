"""The command worker's spans, when tracing is on (`common.observability.tracing`).

A command's trace goes on in its consume span; a batch serves many commands, so its span starts
a trace of its own, linked to each command's consume span. Each command's append is a span of
the command's trace (child of its consume span, linked to the batch), and the events appended
keep it as their `traceparent`, for the relay to continue from.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from uuid import UUID

from opentelemetry import context, trace
from opentelemetry.context import Context
from opentelemetry.trace import Link, Span

from common.contracts.commands import CommandBase
from common.eventstore.store import CommandOutcome
from common.observability import tracing


class AppendSpans:
    """The consume contexts of the commands in flight and their open append spans."""

    def __init__(self) -> None:
        self._consumed: dict[UUID, Context] = {}
        self._open: dict[UUID, Span] = {}

    def consuming(self, command: CommandBase) -> None:
        """`command` is handled in the current context (its consume span)."""
        if tracing.enabled():
            self._consumed[command.command_id] = context.get_current()

    def done(self, command: CommandBase) -> None:
        """`command` is handled: forget its context, and close its append span if a failure
        left it open (the handler's error is recorded on the consume span)."""
        if tracing.enabled():
            self._consumed.pop(command.command_id, None)
            self._end_one(command)

    @contextmanager
    def batch(self, commands: Sequence[CommandBase]) -> Iterator[None]:
        """The span of one batch, current while it runs, linked to its commands' spans."""
        consumed = [
            self._consumed[c.command_id] for c in commands if c.command_id in self._consumed
        ]
        with tracing.tracer().start_as_current_span(
            "command batch",
            links=tracing.links_to(consumed),
            attributes={"cqrs.batch.commands": len(commands)},
        ):
            yield

    def start(self, command: CommandBase, stream_id: str) -> str | None:
        """Open `command`'s append span; its `traceparent` (None when tracing is off)."""
        if not tracing.enabled():
            return None
        batch = trace.get_current_span().get_span_context()
        span = tracing.tracer().start_span(
            f"append {stream_id}",
            context=self._consumed.get(command.command_id),
            links=[Link(batch)] if batch.is_valid else [],
            attributes={
                "cqrs.stream_id": stream_id,
                "cqrs.command_id": str(command.command_id),
                "cqrs.command_type": command.type,
            },
        )
        previous = self._open.pop(command.command_id, None)
        if previous is not None:
            tracing.end(previous)
        self._open[command.command_id] = span
        return tracing.traceparent_of(span)

    def end(self, rows: Sequence[CommandOutcome], error: BaseException | None = None) -> None:
        """Close the append spans of `rows` (committed, or failed with `error`)."""
        if not self._open:
            return
        for row in rows:
            span = self._open.pop(row.command_id, None)
            if span is not None:
                span.set_attribute("cqrs.version", row.version)
                span.set_attribute("cqrs.status", row.status)
                tracing.end(span, error)

    @contextmanager
    def one(self, command: CommandBase, stream_id: str) -> Iterator[str | None]:
        """The append span of `command` appended on its own, around the append."""
        traceparent = self.start(command, stream_id)
        try:
            yield traceparent
        except BaseException as exc:
            self._end_one(command, exc)
            raise
        self._end_one(command)

    def _end_one(self, command: CommandBase, error: BaseException | None = None) -> None:
        span = self._open.pop(command.command_id, None)
        if span is not None:
            tracing.end(span, error)
