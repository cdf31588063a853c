"""The write side over HTTP: what every command route shares, and `GET /commands/{id}`.

A domain's command routes (declared with `command_endpoint`) each turn a request into one
command and follow the same steps: validate (415/413/422), settle the command's identity
(idempotency key or new ids, 422 on a reused key), then `dispatch`: publish with a confirm (503
if RabbitMQ does not confirm), record `accepted` in Redis, answer 202. Nothing is answered 202
before the broker has the command. `GET /commands/{command_id}` reports where it got to.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Annotated, Any
from uuid import UUID

from fastapi import APIRouter, Path, Request
from starlette.responses import Response

from common.domain import Aggregate
from common.readmodel.commands import read_status
from common.readmodel.notifications import CommandProgress
from gateway import idempotency
from gateway.middleware import CORRELATION_HEADER
from gateway.openapi import (
    header_parameter,
    problem_response,
    ref,
)
from gateway.problems import Problem, ProblemType, unavailable
from gateway.responses import CommandStatusView, accepted_model, json_response, status_json
from gateway.routing import RawEndpoint, RawRoute
from gateway.runtime import REDIS_ERRORS, runtime_of

log = logging.getLogger(__name__)

router = APIRouter(tags=["commands"])

# --- OpenAPI description shared by the command routes ------------------------------------------

_COMMAND_HEADERS = [
    header_parameter(
        idempotency.HEADER,
        "1-200 printable ASCII characters, no space at either end; repeating a request with"
        " the same key returns the same ids and takes effect once. Remembered for 24 hours.",
        {"type": "string", "pattern": idempotency.KEY_PATTERN},
    ),
    header_parameter(CORRELATION_HEADER, "A UUID to follow the command through logs; echoed back."),
]
_COMMAND_RESPONSES: dict[int | str, dict[str, Any]] = {
    413: problem_response("The body is larger than allowed."),
    415: problem_response("The body is not `application/json`."),
    422: problem_response("Invalid input or reused Idempotency-Key; `errors` names the fields."),
    503: problem_response("RabbitMQ did not take the command; retry after `Retry-After`."),
}


def command_endpoint(
    router: APIRouter,
    method: str,
    path: str,
    *,
    aggregate: Aggregate[Any],
    summary: str,
    body: dict[str, Any] | None = None,
    parameters: list[dict[str, Any]] | None = None,
) -> Callable[[RawEndpoint], RawEndpoint]:
    """Register a command endpoint for a command on `aggregate`: a `RawRoute`, so it parses its
    own parameters."""
    extra: dict[str, Any] = {"parameters": [*(parameters or []), *_COMMAND_HEADERS], **(body or {})}
    accepted = {
        "description": "Queued; `Location` is the command's status.",
        "content": {"application/json": {"schema": ref(accepted_model(aggregate))}},
        "headers": {"Location": {"schema": {"type": "string"}}},
    }
    responses = {202: accepted, **_COMMAND_RESPONSES}
    if body is None:
        responses = {code: doc for code, doc in responses.items() if code not in (413, 415)}

    def register(endpoint: RawEndpoint) -> RawEndpoint:
        router.add_api_route(
            path,
            endpoint,
            methods=[method],
            summary=summary,
            status_code=202,
            response_class=Response,
            responses=responses,
            openapi_extra=extra,
            route_class_override=RawRoute,
        )
        return endpoint

    return register


# --- the status of any command ------------------------------------------------------------


@router.get(
    "/commands/{command_id}",
    summary="A command's status",
    response_class=Response,
    responses={
        200: {"content": {"application/json": {"schema": ref(CommandStatusView)}}},
        404: problem_response("No command with this id is known."),
        422: problem_response("`command_id` is not a UUID."),
        503: problem_response("Redis is unavailable."),
    },
)
async def command_status(
    request: Request,
    command_id: Annotated[UUID, Path(description="From the `Location` of the 202.")],
) -> Response:
    runtime = runtime_of(request)
    try:
        stored = await read_status(runtime.redis, runtime.keys, command_id)
    except REDIS_ERRORS as exc:
        raise unavailable("Command statuses cannot be read now.") from exc
    progress = CommandProgress.from_status(str(command_id), stored)
    if progress is None:
        raise Problem(404, f"No command {command_id} is known.", type_=ProblemType.NOT_FOUND)
    aggregate = runtime.registry.aggregate_of_command.get(progress.type or "")
    status = status_json(progress, aggregate)
    del status["projected"]
    return json_response(status)
