"""The messages of the AsyncAPI document: one per command and event type of the loaded
aggregates, with the headers the code sets (`common.messaging.messages`) and those a failure adds
(`common.messaging.consuming`, `common.messaging.dead_letters`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from common.contracts.commands import CommandBase
from common.contracts.envelopes import RecordedEvent
from common.domain import Aggregate
from common.messaging.consuming import (
    ATTEMPT_HEADER,
    FAILED_AT_HEADER,
    KIND_HEADER,
    MAX_REASON_CHARS,
    QUEUE_HEADER,
    REASON_HEADER,
)
from common.messaging.dead_letters import BROKER_HEADERS
from common.messaging.messages import EVENT_BATCH, JSON
from common.messaging.outcomes import FailureKind
from common.observability.tracing import TRACEPARENT, TRACEPARENTS, TRACESTATE

AMQP_BINDING_VERSION = "0.3.0"
SCHEMA_REF = "#/components/schemas/{model}"
FAILURE_HEADERS_SCHEMA = "FailureHeaders"
TRACE_HEADERS_SCHEMA = "TraceHeaders"
EVENT_BATCH_MESSAGE = "EventBatch"


@dataclass(frozen=True, slots=True)
class MessageCatalogue:
    """`components/messages` and `components/schemas`, and which messages are commands and
    which events (ids `<stream type>.<type>`: two aggregates may name an event alike)."""

    messages: dict[str, Any]
    schemas: dict[str, Any]
    commands: list[str]
    events: list[str]


def message_catalogue(aggregates: Sequence[Aggregate[Any]]) -> MessageCatalogue:
    refs, schemas = _schemas(aggregates)
    commands = {
        _message_id(aggregate, command): _command_message(aggregate, command, refs)
        for aggregate in aggregates
        for command in aggregate.commands
    }
    events = {
        _message_id(aggregate, event): _event_message(aggregate, event, refs)
        for aggregate in aggregates
        for event in aggregate.events
    }
    batch = {EVENT_BATCH_MESSAGE: _batch_message([m["payload"] for m in events.values()])}
    return MessageCatalogue(
        messages={**commands, **events, **batch},
        schemas={
            **schemas,
            FAILURE_HEADERS_SCHEMA: _failure_headers(),
            TRACE_HEADERS_SCHEMA: _trace_headers(),
        },
        commands=list(commands),
        events=[*events, *batch],
    )


def _schemas(
    aggregates: Sequence[Aggregate[Any]],
) -> tuple[dict[type[BaseModel], dict[str, str]], dict[str, Any]]:
    """`$ref`s to each model's schema, and the schemas by name (names made unique by pydantic
    should two domains use one)."""
    models: list[type[BaseModel]] = [RecordedEvent]
    for aggregate in aggregates:
        models += [*aggregate.commands, *aggregate.events]
    found, definitions = models_json_schema(
        [(model, "validation") for model in models], ref_template=SCHEMA_REF
    )
    refs = {model: dict(found[(model, "validation")]) for model in models}
    return refs, dict(definitions.get("$defs", {}))


def _type_of(model: type[BaseModel]) -> str:
    return str(model.model_fields["type"].default)


def _message_id(aggregate: Aggregate[Any], model: type[BaseModel]) -> str:
    return f"{aggregate.stream_type}.{_type_of(model)}"


def _with_failures(properties: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": properties,
        "required": list(properties),
        "allOf": [
            {"$ref": SCHEMA_REF.format(model=FAILURE_HEADERS_SCHEMA)},
            {"$ref": SCHEMA_REF.format(model=TRACE_HEADERS_SCHEMA)},
        ],
    }


def _batch_message(event_payloads: list[dict[str, Any]]) -> dict[str, Any]:
    stream_id = {"type": "string", "description": "A stream with events in the batch."}
    return {
        "name": EVENT_BATCH,
        "title": "A batch of events",
        "summary": "The events of one read of the log, in log order: the relay sends up to 50 "
        "in one message when several are committed at once (a lone event goes as its own "
        "message). A projection dead-letters an event of a batch that can never apply as a "
        "message of its own, and retries the whole batch on any other failure.",
        "contentType": JSON,
        "headers": {
            "type": "object",
            "properties": {
                "count": {"type": "integer", "minimum": 2, "description": "Events in it."},
                "first_position": {"type": "integer", "minimum": 1},
                "last_position": {"type": "integer", "minimum": 1},
                "stream_ids": {
                    "type": "array",
                    "items": stream_id,
                    "description": "Each stream once, in order of first appearance.",
                },
                TRACEPARENTS: {
                    "type": "array",
                    "items": {"type": "string"},
                    "description": "When tracing is on: each event's `traceparent`, in order "
                    "('' for one without).",
                },
            },
            "required": ["count", "first_position", "last_position", "stream_ids"],
            "allOf": [{"$ref": SCHEMA_REF.format(model=FAILURE_HEADERS_SCHEMA)}],
        },
        "payload": {"type": "array", "minItems": 2, "items": {"anyOf": event_payloads}},
        "bindings": {"amqp": {"messageType": EVENT_BATCH, "bindingVersion": AMQP_BINDING_VERSION}},
    }


def _trace_headers() -> dict[str, Any]:
    return {
        "type": "object",
        "description": "The W3C trace context of the span that sent the message, set only when "
        "tracing is on (OpenTelemetry): a command carries the gateway's publish, an event the "
        "relay's, which continues the trace of the command that caused it.",
        "properties": {
            TRACEPARENT: {
                "type": "string",
                "pattern": "^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$",
                "description": "`version-trace_id-parent_id-flags`.",
            },
            TRACESTATE: {"type": "string", "description": "Vendor-specific trace state."},
        },
    }


def _stream_id(aggregate: Aggregate[Any]) -> dict[str, Any]:
    return {
        "type": "string",
        "pattern": f"^{aggregate.stream_type}-",
        "description": f"The stream: `{aggregate.stream_type}-<{aggregate.id_field}>`.",
    }


def _command_message(
    aggregate: Aggregate[Any], command: type[CommandBase], refs: dict[type[BaseModel], Any]
) -> dict[str, Any]:
    name = _type_of(command)
    version = command.model_fields["schema_version"].default
    return {
        "name": name,
        "title": f"{name} (command)",
        "summary": f"A command on the {aggregate.stream_type} aggregate.",
        "contentType": JSON,
        "headers": _with_failures(
            {
                "schema_version": {
                    "type": "integer",
                    "const": version,
                    "description": "The schema version of the payload.",
                },
                "stream_id": _stream_id(aggregate),
            }
        ),
        "payload": refs[command],
        "correlationId": {"location": "$message.payload#/correlation_id"},
        "bindings": {"amqp": {"messageType": name, "bindingVersion": AMQP_BINDING_VERSION}},
    }


def _event_message(
    aggregate: Aggregate[Any], event: type[BaseModel], refs: dict[type[BaseModel], Any]
) -> dict[str, Any]:
    name = _type_of(event)
    version = aggregate.event_version(name)
    uuid = {"type": "string", "format": "uuid"}
    return {
        "name": name,
        "title": f"{name} (event)",
        "summary": f"An event of a {aggregate.stream_type} stream, as committed.",
        "contentType": JSON,
        "headers": _with_failures(
            {
                "schema_version": {
                    "type": "integer",
                    "const": version,
                    "description": "The schema version of `data`: the relay upcasts older "
                    "events before publishing (one it cannot upcast goes out as stored, and "
                    "projectors dead-letter it).",
                },
                "stream_id": _stream_id(aggregate),
                "version": {"type": "integer", "minimum": 1, "description": "In its stream."},
                "position": {"type": "integer", "minimum": 1, "description": "In the log."},
                "correlation_id": {**uuid, "description": "Of the command that caused it."},
                "causation_id": {**uuid, "description": "The message that caused it."},
                "command_id": {**uuid, "description": "The command that caused it."},
            }
        ),
        "payload": {
            "allOf": [
                refs[RecordedEvent],
                {
                    "type": "object",
                    "properties": {
                        "type": {"const": name},
                        "schema_version": {"const": version},
                        "stream_id": _stream_id(aggregate),
                        "data": refs[event],
                    },
                },
            ]
        },
        "correlationId": {"location": "$message.header#/correlation_id"},
        "bindings": {"amqp": {"messageType": name, "bindingVersion": AMQP_BINDING_VERSION}},
    }


def _failure_headers() -> dict[str, Any]:
    text = {"type": "string"}
    return {
        "type": "object",
        "description": "Headers a failure adds to a copy of the message; a replay from a "
        "dead-letter queue removes them all.",
        "properties": {
            ATTEMPT_HEADER: {
                "type": "integer",
                "minimum": 2,
                "description": "The attempt this copy is for; set on a retry's copy.",
            },
            REASON_HEADER: {
                **text,
                "maxLength": MAX_REASON_CHARS,
                "description": "Why the last attempt failed (redacted); on retries and dead "
                "letters.",
            },
            KIND_HEADER: {
                **text,
                "enum": [kind.value for kind in FailureKind],
                "description": "Why it was dead-lettered: `poison` (can never be handled) or "
                "`exhausted` (failed on every attempt).",
            },
            QUEUE_HEADER: {**text, "description": "The work queue it was dead-lettered from."},
            FAILED_AT_HEADER: {
                **text,
                "format": "date-time",
                "description": "When it was dead-lettered (UTC).",
            },
            BROKER_HEADERS[0]: {
                "type": "array",
                "items": {"type": "object"},
                "description": "Added by RabbitMQ each time it dead-letters the message: a "
                "delay queue's TTL expiring (`expired`), a work queue's delivery limit.",
            },
            **{
                name: {**text, "description": "Added by RabbitMQ with `x-death`."}
                for name in BROKER_HEADERS
                if name.startswith("x-first-death-")
            },
            BROKER_HEADERS[-1]: {
                "type": "integer",
                "description": "Added by a quorum queue to a redelivered message.",
            },
        },
    }
