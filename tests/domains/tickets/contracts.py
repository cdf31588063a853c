"""The tickets domain's commands and events."""

from __future__ import annotations

from typing import Any, Literal
from uuid import UUID

from common.contracts.base import Contract, Text
from common.contracts.commands import CommandBase

STREAM_TYPE = "Ticket"


class TicketCommand(CommandBase):
    ticket_id: UUID


class OpenTicket(TicketCommand):
    type: Literal["OpenTicket"] = "OpenTicket"
    title: Text
    priority: Literal["low", "normal", "high"] = "normal"


class CloseTicket(TicketCommand):
    type: Literal["CloseTicket"] = "CloseTicket"
    resolution: Text


class TicketOpened(Contract):
    """Version 2: version 1 had no `priority` (see `upcast_opened_v1`)."""

    type: Literal["TicketOpened"] = "TicketOpened"
    title: Text
    priority: Literal["low", "normal", "high"]


class TicketClosed(Contract):
    type: Literal["TicketClosed"] = "TicketClosed"
    resolution: Text


COMMANDS = (OpenTicket, CloseTicket)
EVENTS = (TicketOpened, TicketClosed)
EVENT_VERSIONS = {"TicketOpened": 2}


def upcast_opened_v1(data: dict[str, Any]) -> dict[str, Any]:
    """Tickets opened before priorities existed were all of normal priority."""
    return {**data, "priority": "normal"}
