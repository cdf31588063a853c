"""Turning a validated request into a queued command: identity, publish, status, answer.

`command_fields` settles who the command is (new ids, or ids derived from the idempotency key)
and `dispatch` is the one exit of every command route. Behaviour for all commands, such as
waiting for the outcome on `Prefer: wait`, belongs in `dispatch`.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

from pydantic import BaseModel
from starlette.requests import Request
from starlette.responses import Response

from common.contracts.commands import CommandBase
from common.domain import Aggregate
from common.messaging.connection import BrokerUnavailable
from common.messaging.publishing import ConfirmTimeout
from common.observability import metrics
from common.readmodel.commands import ID_REUSED_REASON, CommandStatus, mark_accepted
from common.readmodel.notifications import CommandProgress
from gateway import idempotency
from gateway.auth import client_of
from gateway.idempotency import CommandIds
from gateway.middleware import request_correlation_id
from gateway.problems import Problem, ProblemType, unavailable
from gateway.responses import accepted_response, json_response, status_json
from gateway.runtime import REDIS_ERRORS, Runtime, runtime_of, settings_of
from gateway.waiting import WaitersFull, prefer_wait, waiter_of

log = logging.getLogger(__name__)


_ACCEPTED: dict[str, Any] = {}
"""The `accepted` counter of each command type, looked up once (`labels` takes a lock)."""


def _count_accepted(command_type: str) -> None:
    counter = _ACCEPTED.get(command_type)
    if counter is None:
        counter = _ACCEPTED[command_type] = metrics.COMMANDS.labels(command_type, "accepted")
    counter.inc()


async def command_fields(
    request: Request,
    aggregate: Aggregate[Any],
    *,
    path: str,
    canonical_body: bytes,
    aggregate_id: UUID | None = None,
) -> dict[str, Any]:
    """Ids, correlation and fingerprint of the command a request asks for, as keyword
    arguments of the command's model (the aggregate's id under its `id_field`).

    `path` and `canonical_body` must be canonical (parsed ids, re-serialised model), so that
    a retry spelled differently still has the same fingerprint. Without `aggregate_id`, the
    request creates an aggregate and its id comes from the idempotency key or is new.
    """
    key = idempotency.parse_key(request.headers.get(idempotency.HEADER))
    print_ = idempotency.fingerprint(request.method, path, canonical_body)
    if key is not None:
        key = idempotency.scoped(key, client_of(request))
    if key is None:
        ids = CommandIds(uuid.uuid4(), aggregate_id or uuid.uuid4())
    else:
        new_id = aggregate_id or idempotency.aggregate_id_for(key, aggregate.stream_type)
        ids = CommandIds(idempotency.command_id_for(key), new_id)
        runtime = runtime_of(request)
        await idempotency.claim(runtime.redis_batch, runtime.keys, key, ids, print_)
    return {
        "command_id": ids.command_id,
        aggregate.id_field: ids.aggregate_id,
        "correlation_id": request_correlation_id(request),
        "issued_at": datetime.now(UTC),
        "fingerprint": print_,
    }


async def submit(
    request: Request,
    aggregate: Aggregate[Any],
    command: Callable[[dict[str, Any]], CommandBase],
    *,
    path: str,
    body: BaseModel,
    aggregate_id: UUID | None = None,
) -> Response:
    """What a command route does once it has parsed its input: settle the command's identity
    (`command_fields`, from the canonical `path` and `body`), build the command from those
    fields, and `dispatch` it."""
    fields = await command_fields(
        request,
        aggregate,
        path=path,
        canonical_body=body.model_dump_json().encode(),
        aggregate_id=aggregate_id,
    )
    return await dispatch(request, runtime_of(request), command(fields))


def max_body_bytes(request: Request) -> int:
    """The largest request body the gateway accepts (`MAX_BODY_BYTES`)."""
    return settings_of(request).max_body_bytes


async def dispatch(request: Request, runtime: Runtime, command: CommandBase) -> Response:
    """Queue `command` and answer 202, or 503 if RabbitMQ did not confirm it; with
    `Prefer: wait=N`, answer with the outcome once it is visible in the views (see
    `outcome_response`), or 202 when N seconds (capped by MAX_WAIT_S) pass first, or at once
    (without `Preference-Applied`) when MAX_WAITERS waits are pending already.

    The single exit of every command route.
    """
    wait_s = prefer_wait(request.headers.get("prefer"))
    command_id = command.command_id
    aggregate = runtime.registry.aggregate_of_command[command.type]
    stream = aggregate.stream_of(command)
    try:
        await runtime.publisher.publish(command, stream)
    except BrokerUnavailable as exc:
        log.warning(
            "command not queued: %s",
            exc,
            extra={"command_id": str(command_id), "type": command.type},
        )
        raise not_queued(exc) from exc
    try:
        await runtime.redis_batch.run(
            lambda pipe: mark_accepted(
                pipe,
                runtime.keys,
                command_id,
                command.type,
                stream,
                fingerprint=command.fingerprint,
                ttl_s=runtime.settings.command_status_ttl_s,
            )
        )
    except REDIS_ERRORS as exc:
        # The command is safely queued; only its status lags until a worker records it.
        log.warning(
            "command queued but its status was not recorded: %r",
            exc,
            extra={"command_id": str(command_id)},
        )
    _count_accepted(command.type)
    log.info(
        "command accepted",
        extra={"command_id": str(command_id), "type": command.type, "stream_id": stream},
    )
    if not wait_s:
        return accepted_response(command, aggregate)
    waiter = await waiter_of(request)
    bound = min(wait_s, runtime.settings.max_wait_s)
    try:
        progress = await waiter.wait_for_command(command_id, bound)
    except WaitersFull:
        return accepted_response(command, aggregate)
    except REDIS_ERRORS as exc:
        log.warning("could not wait for %s: %r", command_id, exc)
        progress = None
    response = outcome_response(command, aggregate, progress)
    response.headers["preference-applied"] = f"wait={bound:g}"
    return response


def not_queued(exc: BrokerUnavailable) -> Problem:
    """The 503 for a publish that failed: nothing accepted, or (on a confirm timeout) an
    outcome nobody knows, which only a retry with the same Idempotency-Key settles safely."""
    if isinstance(exc, ConfirmTimeout):
        return unavailable(
            "RabbitMQ did not confirm the command in time: it may or may not have been"
            " accepted, the outcome is unknown. A retry with the same Idempotency-Key is safe"
            " (it runs the command at most once); without one, a retry may run it twice."
        )
    return unavailable(
        "The command could not be queued and was not accepted; retry later"
        " (with the same Idempotency-Key, if one was sent)."
    )


def outcome_response(
    command: CommandBase, aggregate: Aggregate[Any], progress: CommandProgress | None
) -> Response:
    """201 + Location for a visible create, 200 + the status for any other visible success,
    422 for a reused idempotency key the worker refused, 409 problem+json with the reason for
    any other rejection or failure, else the plain 202."""
    if progress is None or not progress.settled:
        return accepted_response(command, aggregate)
    stream = aggregate.stream_of(command)
    if (progress.type or command.type, progress.stream_id or stream) != (command.type, stream):
        # A status of another request with this command id (one written before statuses kept
        # fingerprints): the key was reused, and that request's outcome is not this one's.
        return _key_reused(command)
    if progress.status == CommandStatus.SUCCEEDED:
        status = status_json(progress, aggregate, command.type)
        if command.type in aggregate.creates and aggregate.location is not None:
            response = json_response(status, 201)
            response.headers["location"] = aggregate.location(
                str(getattr(command, aggregate.id_field))
            )
            return response
        return json_response(status)
    rejected = progress.status == CommandStatus.REJECTED
    if rejected and progress.reason == ID_REUSED_REASON:
        return _key_reused(command)
    return Problem(
        409,
        progress.reason or progress.status,
        type_=ProblemType.COMMAND_REJECTED if rejected else ProblemType.COMMAND_FAILED,
        title="Command rejected" if rejected else "Command failed",
        headers={"location": f"/commands/{command.command_id}"},
    ).response()


def _key_reused(command: CommandBase) -> Response:
    problem = idempotency.key_reused()
    problem.headers["location"] = f"/commands/{command.command_id}"
    return problem.response()
