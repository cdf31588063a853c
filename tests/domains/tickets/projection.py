"""The `ticket_views` projection: one hash per ticket, and its history."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from common.contracts.envelopes import RecordedEvent
from common.domain import split_stream_id
from common.readmodel.projection import Projection, ProjectionError
from tests.domains.tickets.contracts import STREAM_TYPE, TicketClosed, TicketOpened


@dataclass(frozen=True, slots=True)
class TicketView:
    ticket_id: str
    version: int
    title: str
    priority: str
    status: str
    resolution: str


class TicketViews(Projection[TicketView]):
    name = "ticket_views"
    categories = frozenset({STREAM_TYPE})
    keeps_history = True

    def evolve(self, before: TicketView | None, event: RecordedEvent, payload: Any) -> TicketView:
        if isinstance(payload, TicketOpened):
            ticket_id = split_stream_id(event.stream_id)[1]
            return TicketView(ticket_id, event.version, payload.title, payload.priority, "open", "")
        if before is None:
            raise ProjectionError(f"{event.type} before TicketOpened")
        if isinstance(payload, TicketClosed):
            return replace(
                before, version=event.version, status="closed", resolution=payload.resolution
            )
        raise ProjectionError(f"unknown event type {event.type}")

    def to_hash(self, view: TicketView) -> dict[str, str]:
        return {
            "ticket_id": view.ticket_id,
            "version": str(view.version),
            "title": view.title,
            "priority": view.priority,
            "status": view.status,
            "resolution": view.resolution,
        }

    def from_hash(self, raw: Mapping[bytes, bytes]) -> TicketView:
        fields = {k.decode(): v.decode() for k, v in raw.items()}
        return TicketView(
            fields["ticket_id"],
            int(fields["version"]),
            fields["title"],
            fields["priority"],
            fields["status"],
            fields["resolution"],
        )

    def version_of(self, view: TicketView) -> int:
        return view.version

    def index(self, view: TicketView) -> dict[str, str]:
        return {f"status:{view.status}": str(view.version)}
