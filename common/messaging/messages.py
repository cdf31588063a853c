"""How commands and events look on the wire: JSON bodies with self-describing properties, so
"Get messages" in the management console reads clearly."""

from __future__ import annotations

from datetime import UTC, datetime

import aio_pika

from common.contracts.commands import CommandBase
from common.contracts.envelopes import RecordedEvent

JSON = "application/json"


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
