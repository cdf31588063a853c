"""How commands and events look on the wire: JSON bodies with self-describing properties, so
"Get messages" in the management console reads clearly."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

import aio_pika

from common.contracts.commands import CommandBase
from common.contracts.envelopes import RecordedEvent

JSON = "application/json"
EVENT_BATCH = "event-batch"
"""The `type` of a message holding several events (`events_message`)."""


def command_message(
    command: CommandBase, stream_id: str, app_id: str = "gateway"
) -> aio_pika.Message:
    return aio_pika.Message(
        body=command.model_dump_json().encode(),
        content_type=JSON,
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        message_id=str(command.command_id),
        correlation_id=str(command.correlation_id),
        type=command.type,
        timestamp=command.issued_at,
        app_id=app_id,
        headers={
            "schema_version": command.schema_version,
            "stream_id": stream_id,
        },
    )


def event_message(event: RecordedEvent, app_id: str = "relay") -> aio_pika.Message:
    return aio_pika.Message(
        body=event.model_dump_json().encode(),
        content_type=JSON,
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        message_id=str(event.event_id),
        correlation_id=str(event.metadata.correlation_id),
        type=event.type,
        timestamp=datetime.now(UTC),
        app_id=app_id,
        headers={
            "schema_version": event.schema_version,
            "stream_id": event.stream_id,
            "version": event.version,
            "position": event.position,
            "correlation_id": str(event.metadata.correlation_id),
            "causation_id": str(event.metadata.causation_id),
            "command_id": str(event.metadata.command_id),
        },
    )


def events_message(events: Sequence[RecordedEvent], app_id: str = "relay") -> aio_pika.Message:
    """Committed events in one message: one event as `event_message`; several as a JSON array
    of them in log order, typed `event-batch`, its headers saying what it holds (`count`, the
    first and last positions, each distinct stream), so the console still reads clearly.

    The broker and each projection then handle one message, one delivery and one ack for the
    whole batch instead of one per event."""
    if len(events) == 1:
        return event_message(events[0], app_id)
    first, last = events[0], events[-1]
    return aio_pika.Message(
        body=b"[" + b",".join(event.model_dump_json().encode() for event in events) + b"]",
        content_type=JSON,
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        message_id=f"positions-{first.position}-{last.position}",
        type=EVENT_BATCH,
        timestamp=datetime.now(UTC),
        app_id=app_id,
        headers={
            "count": len(events),
            "first_position": first.position,
            "last_position": last.position,
            "stream_ids": list(dict.fromkeys(event.stream_id for event in events)),
        },
    )
