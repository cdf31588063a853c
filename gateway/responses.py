"""What the generic command routes answer, and the models that document it in the OpenAPI
schema.

Responses are serialised with orjson directly; the models only describe them.
"""

from __future__ import annotations

import functools
from typing import Any
from uuid import UUID

import orjson
from pydantic import BaseModel, ConfigDict, create_model
from starlette.responses import Response

from common.contracts.commands import CommandBase
from common.domain import Aggregate, split_stream_id
from common.readmodel.commands import CommandStatus
from common.readmodel.notifications import CommandProgress

JSON = "application/json"


class AcceptedCommand(BaseModel):
    """The command is queued durably; follow `Location` for its outcome."""

    model_config = ConfigDict(extra="forbid")

    command_id: UUID


class CommandStatusView(BaseModel):
    """Where a command is: `accepted` by the gateway, then an outcome from the workers."""

    model_config = ConfigDict(extra="forbid")

    command_id: UUID
    type: str
    status: CommandStatus
    reason: str | None
    version: int | None
    """The aggregate's version after the command, once it succeeded."""


@functools.cache
def _with_id(base: type[BaseModel], name: str, id_field: str) -> type[BaseModel]:
    return create_model(name, __base__=base, **{id_field: (UUID, ...)})  # type: ignore[call-overload, no-any-return]


def accepted_model(aggregate: Aggregate[Any]) -> type[BaseModel]:
    """The 202 body of a command on `aggregate`: `AcceptedCommand` and its id field."""
    name = f"Accepted{aggregate.stream_type}Command"
    return _with_id(AcceptedCommand, name, aggregate.id_field)


def status_model(aggregate: Aggregate[Any]) -> type[BaseModel]:
    """The status of a command on `aggregate`: `CommandStatusView` and its id field."""
    name = f"{aggregate.stream_type}CommandStatus"
    return _with_id(CommandStatusView, name, aggregate.id_field)


class FieldError(BaseModel):
    field: str
    """Dotted path of the invalid input: `items.0.price`, `title`, `Idempotency-Key`."""
    message: str


class ProblemDetails(BaseModel):
    """An error, as `application/problem+json` (RFC 9457)."""

    type: str
    title: str
    status: int
    detail: str
    errors: list[FieldError] | None = None


def accepted_response(command: CommandBase, aggregate: Aggregate[Any]) -> Response:
    """202 with the ids and `Location: /commands/{command_id}`."""
    command_id = str(command.command_id)
    aggregate_id = str(getattr(command, aggregate.id_field))
    body = orjson.dumps({"command_id": command_id, aggregate.id_field: aggregate_id})
    response = Response(body, 202, media_type=JSON)
    response.raw_headers.append((b"location", f"/commands/{command_id}".encode()))
    return response


def json_response(content: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(content), status, media_type=JSON)


def status_json(
    progress: CommandProgress, aggregate: Aggregate[Any] | None, command_type: str | None = None
) -> dict[str, Any]:
    """A command's status as the API shows it: the aggregate's id under its id field, and
    `projected` once known."""
    fields = progress.to_json()
    stream = fields.pop("stream_id") or ""
    shown: dict[str, Any] = {
        "command_id": fields["command_id"],
        "type": command_type or fields["type"],
    }
    id_field = aggregate.id_field if aggregate is not None else "stream_id"
    shown[id_field] = split_stream_id(stream)[1] if aggregate is not None else stream
    shown.update((k, v) for k, v in fields.items() if k not in ("command_id", "type"))
    return shown
