"""What the command routes answer, and the models that document it in the OpenAPI schema.

Responses are serialised with orjson directly; the models only describe them.
"""

from __future__ import annotations

from typing import Any
from uuid import UUID

import orjson
from pydantic import BaseModel
from starlette.responses import Response

from common.contracts.orders import Command
from common.readmodel.commands import CommandStatus

JSON = "application/json"


class AcceptedCommand(BaseModel):
    """The command is queued durably; follow `Location` for its outcome."""

    command_id: UUID
    order_id: UUID


class CommandStatusView(BaseModel):
    """Where a command is: `accepted` by the gateway, then an outcome from the workers."""

    command_id: UUID
    type: str
    order_id: UUID
    status: CommandStatus
    reason: str | None
    version: int | None
    """The order's version after the command, once it succeeded."""


class FieldError(BaseModel):
    field: str
    """Dotted path of the invalid input: `items.0.price`, `order_id`, `Idempotency-Key`."""
    message: str


class ProblemDetails(BaseModel):
    """An error, as `application/problem+json` (RFC 9457)."""

    type: str
    title: str
    status: int
    detail: str
    errors: list[FieldError] | None = None


def accepted_response(command: Command) -> Response:
    """202 with the ids and `Location: /commands/{command_id}`."""
    command_id = str(command.command_id)
    body = orjson.dumps({"command_id": command_id, "order_id": str(command.order_id)})
    response = Response(body, 202, media_type=JSON)
    response.raw_headers.append((b"location", f"/commands/{command_id}".encode()))
    return response


def json_response(content: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(content), status, media_type=JSON)
