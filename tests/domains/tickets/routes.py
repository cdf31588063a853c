"""The tickets domain's HTTP routes, built from the gateway's generic helpers."""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import APIRouter, Request
from starlette.responses import Response

from common.contracts.base import Contract, Text
from common.domain import stream_id
from common.readmodel.keys import Keys
from common.readmodel.projection import history_event_json
from common.readmodel.reading import ProjectionReader
from gateway import reads
from gateway.bodies import read_json
from gateway.commands_api import command_endpoint
from gateway.openapi import json_body, path_parameter
from gateway.problems import Problem, ProblemType
from gateway.responses import JSON
from gateway.routing import path_uuid
from gateway.submission import max_body_bytes, submit
from tests.domains.tickets.contracts import STREAM_TYPE, CloseTicket, OpenTicket
from tests.domains.tickets.domain import TICKET
from tests.domains.tickets.projection import TicketViews

router = APIRouter(tags=["tickets"])
_TICKET_ID = path_parameter("ticket_id", "The ticket's id, as returned by `POST /tickets`.")


class OpenTicketRequest(Contract):
    title: Text


class CloseTicketRequest(Contract):
    resolution: Text


@command_endpoint(
    router,
    "POST",
    "/tickets",
    aggregate=TICKET,
    summary="Open a ticket",
    body=json_body(OpenTicketRequest),
)
async def open_ticket(request: Request) -> Response:
    body = await read_json(request, OpenTicketRequest, max_body_bytes(request))
    return await submit(
        request,
        TICKET,
        lambda fields: OpenTicket(**fields, title=body.title),
        path="/tickets",
        body=body,
    )


@command_endpoint(
    router,
    "POST",
    "/tickets/{ticket_id}/close",
    aggregate=TICKET,
    summary="Close a ticket",
    body=json_body(CloseTicketRequest),
    parameters=[_TICKET_ID],
)
async def close_ticket(request: Request) -> Response:
    ticket_id = path_uuid(request, "ticket_id")
    body = await read_json(request, CloseTicketRequest, max_body_bytes(request))
    return await submit(
        request,
        TICKET,
        lambda fields: CloseTicket(**fields, resolution=body.resolution),
        path=f"/tickets/{ticket_id}/close",
        body=body,
        aggregate_id=ticket_id,
    )


class TicketQueries:
    def __init__(self, redis: Any, keys: Keys) -> None:
        self.reader = ProjectionReader(redis, keys.projection(TicketViews.keys_name()))


_VIEWS = TicketViews()


def _not_found(ticket_id: object) -> Problem:
    return Problem(404, f"No ticket {ticket_id} is known.", type_=ProblemType.NOT_FOUND)


@router.get("/tickets/{ticket_id}", summary="One ticket", response_class=Response)
async def get_ticket(request: Request) -> Response:
    ticket_id = path_uuid(request, "ticket_id")
    view_key = _VIEWS.view_key(stream_id(STREAM_TYPE, ticket_id))
    queries = reads.queries_of(request, TicketQueries)
    fields = await reads.read(queries.reader.view(view_key), "the ticket views")
    if not fields:
        raise _not_found(ticket_id)
    view: dict[str, Any] = {k.decode(): v.decode() for k, v in fields.items()}
    view["version"] = int(view["version"])
    return Response(orjson.dumps(view), media_type=JSON)


@router.get("/tickets/{ticket_id}/history", summary="A ticket's events", response_class=Response)
async def ticket_history(request: Request) -> Response:
    ticket_id = path_uuid(request, "ticket_id")
    stream = stream_id(STREAM_TYPE, ticket_id)
    queries = reads.queries_of(request, TicketQueries)
    entries = await reads.read(
        queries.reader.history(_VIEWS.view_key(stream), _VIEWS.history_key(stream)),
        "the ticket views",
    )
    if entries is None:
        raise _not_found(ticket_id)
    events = b",".join(history_event_json(entry) for entry in entries)
    return Response(b"[" + events + b"]", media_type=JSON)
