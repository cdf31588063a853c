"""The Ticket aggregate: pure `decide` and `evolve`."""

from __future__ import annotations

from dataclasses import dataclass

from common.domain import Rejection
from tests.domains.tickets.contracts import (
    CloseTicket,
    OpenTicket,
    TicketClosed,
    TicketCommand,
    TicketOpened,
)


@dataclass(frozen=True, slots=True)
class Ticket:
    status: str | None = None
    """None before it is opened, then `open` or `closed`."""


def evolve(state: Ticket, event: TicketOpened | TicketClosed) -> Ticket:
    match event:
        case TicketOpened():
            return Ticket("open")
        case TicketClosed():
            return Ticket("closed")
    raise TypeError(f"unknown event {event!r}")  # pragma: no cover


def decide(state: Ticket, command: TicketCommand) -> list[TicketOpened | TicketClosed]:
    match command:
        case OpenTicket(title=title, priority=priority):
            if state.status is not None:
                raise Rejection("ticket already exists")
            return [TicketOpened(title=title, priority=priority)]
        case CloseTicket(resolution=resolution):
            if state.status is None:
                raise Rejection("ticket not found")
            if state.status == "closed":
                raise Rejection("ticket is closed")
            return [TicketClosed(resolution=resolution)]
    raise TypeError(f"unknown command {command!r}")  # pragma: no cover
