"""A second domain, written as docs/extending.md says, runs next to orders through the real
gateway, command worker and projector, with no change to the generic packages."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from common.domain import load_domains
from common.messaging.topology import Topology
from common.settings import Settings
from harness.processes import Processes
from tests.support.amqp import channel, depth, eventually
from tests.support.bodies import ORDER
from tests.support.scrape import scrape

pytestmark = pytest.mark.integration

DOMAINS = {"DOMAINS": "orders,tests.domains.tickets"}
WAIT = {"Prefer": "wait=10"}


@pytest.fixture
async def client(processes: Processes) -> AsyncIterator[httpx.AsyncClient]:
    processes.start("command_worker", extra_env=DOMAINS)
    processes.start("projector_worker", extra_env=DOMAINS)
    gateway = processes.start("gateway", extra_env=DOMAINS)
    async with httpx.AsyncClient(base_url=gateway.base_url, timeout=30) as http:
        yield http


async def test_tickets_are_opened_closed_and_queried_next_to_orders(
    client: httpx.AsyncClient, processes: Processes, isolated_settings: Settings
) -> None:
    opened = await client.post("/tickets", json={"title": "printer on fire"}, headers=WAIT)
    assert opened.status_code == 201, opened.text
    ticket_id = opened.json()["ticket_id"]
    assert opened.headers["location"] == f"/tickets/{ticket_id}"
    assert opened.json()["type"] == "OpenTicket"

    view = await client.get(f"/tickets/{ticket_id}")
    assert view.status_code == 200
    assert view.json() == {
        "ticket_id": ticket_id,
        "version": 1,
        "title": "printer on fire",
        "priority": "normal",
        "status": "open",
        "resolution": "",
    }

    closed = await client.post(
        f"/tickets/{ticket_id}/close", json={"resolution": "extinguished"}, headers=WAIT
    )
    assert closed.status_code == 200, closed.text
    assert closed.json()["version"] == 2
    again = await client.post(
        f"/tickets/{ticket_id}/close", json={"resolution": "twice"}, headers=WAIT
    )
    assert again.status_code == 409
    assert again.json()["detail"] == "ticket is closed"

    status = await client.get(f"/commands/{closed.json()['command_id']}")
    assert status.json() == {
        "command_id": closed.json()["command_id"],
        "type": "CloseTicket",
        "ticket_id": ticket_id,
        "status": "succeeded",
        "reason": None,
        "version": 2,
    }
    assert (await client.get(f"/tickets/{ticket_id}")).json()["status"] == "closed"
    assert (await client.post("/tickets", json={"title": ""})).status_code == 422
    assert (await client.get("/tickets/not-a-uuid")).status_code == 422

    # Orders work as before, in the same processes.
    order = await client.post("/orders", json=ORDER, headers=WAIT)
    assert order.status_code == 201, order.text
    assert (await client.get(order.headers["location"])).json()["version"] == 1
    assert "/tickets" in (await client.get("/openapi.json")).json()["paths"]

    # The ticket projection has its own queue, declared with every other one; the order
    # projections ack and count the ticket events instead of dead-lettering them.
    registry = load_domains(DOMAINS["DOMAINS"])
    topology = Topology(isolated_settings.app_prefix, tuple(registry.projections))
    assert f"{isolated_settings.app_prefix}.projection.ticket_views" in topology.work_queues
    [projector] = [p for p in processes.procs if p.module == "projector_worker"]

    async def ignored_and_caught_up() -> bool:
        found = await scrape(projector.base_url)
        ignored = {
            name: found.total("orders_events_ignored_total", projection=name)
            for name in registry.projections
        }
        lags = [
            found.total("orders_projection_lag_positions", projection=name)
            for name in registry.projections
        ]
        expected = {"order_views": 2, "product_sales": 2, "ticket_views": 1}
        return ignored == expected and lags == [0, 0, 0]

    # Each projection's lag reaches 0, although it passed events without writing them.
    await eventually(ignored_and_caught_up, timeout=30, what="projections ignoring, caught up")
    async with channel(isolated_settings.amqp_url, topology=topology) as ch:
        for queue in topology.work_queues:
            assert await depth(ch, f"{queue}.dlq") == 0
