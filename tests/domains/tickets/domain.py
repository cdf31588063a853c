"""The tickets domain as the hosts see it."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel

from common.domain import Aggregate, Domain
from tests.domains.tickets import aggregate, contracts
from tests.domains.tickets.projection import TicketViews


def _routes() -> Sequence[Any]:
    from tests.domains.tickets.routes import router

    return [router]


def _schemas() -> Sequence[type[BaseModel]]:
    from tests.domains.tickets.routes import CloseTicketRequest, OpenTicketRequest

    return [OpenTicketRequest, CloseTicketRequest]


TICKET = Aggregate(
    stream_type=contracts.STREAM_TYPE,
    id_field="ticket_id",
    commands=contracts.COMMANDS,
    events=contracts.EVENTS,
    initial=aggregate.Ticket(),
    decide=aggregate.decide,
    evolve=aggregate.evolve,
    visible_in=TicketViews.name,
    creates=frozenset({"OpenTicket"}),
    location=lambda ticket_id: f"/tickets/{ticket_id}",
    event_versions=contracts.EVENT_VERSIONS,
    upcasters={("TicketOpened", 1): contracts.upcast_opened_v1},
)

DOMAIN = Domain(
    name="tickets",
    aggregates=(TICKET,),
    projections=(TicketViews(),),
    routes=_routes,
    schemas=_schemas,
)
