"""The envelope of a stored event as it leaves the event store: on the bus and in replays."""

from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import UUID

from pydantic import Field

from common.contracts.base import Contract


class EventMetadata(Contract):
    """Who caused an event and when."""

    command_id: UUID
    command_type: str | None = None
    """The type of the command that caused it (absent on events stored before it was kept)."""
    correlation_id: UUID
    causation_id: UUID
    occurred_at: datetime
    traceparent: str | None = Field(default=None, exclude_if=lambda value: value is None)
    """The W3C trace context of the append that recorded the event, when tracing is on: the
    relay continues the command's trace from it. Left out of the JSON when absent."""
    command_issued_at: datetime | None = None
    """When the gateway accepted that command (absent on events stored before it was kept): the
    projector measures from it how long the command took to become visible."""


class RecordedEvent(Contract):
    """An event as committed: its place in its stream and in the global log."""

    event_id: UUID
    position: int
    stream_id: str
    version: int
    type: str
    schema_version: int = 1
    """The version of `type`'s schema that `data` follows; see `common.domain.Aggregate`."""
    data: dict[str, Any]
    metadata: EventMetadata
    recorded_at: datetime
