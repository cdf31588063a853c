"""Events evolve: an event stored in an old schema version is upcast wherever it is read —
loading the aggregate, the relay's message, the projector's catch-up and rebuild, and the
history a query serves."""

from __future__ import annotations

import asyncio
import os
import sys
import uuid
from datetime import UTC, datetime

import httpx
import orjson
import pytest

from common.contracts.envelopes import EventMetadata
from common.domain import load_domains, stream_id
from common.eventstore.database import create_pool, prepare_database
from common.eventstore.store import EventStore, NewEvent
from common.messaging.topology import Topology
from common.settings import Settings
from harness.processes import ROOT, Processes
from tests.conftest import settings_env
from tests.support.amqp import channel, take, tap_events

pytestmark = pytest.mark.integration

DOMAINS = {"DOMAINS": "tests.domains.tickets"}
WAIT = {"Prefer": "wait=10"}


async def store_version_1_ticket(settings: Settings, ticket_id: uuid.UUID) -> None:
    """What a deployment from before priorities wrote: `TicketOpened` v1, no `priority`."""
    await prepare_database(settings.database_url)
    pool = await create_pool(settings.database_url, 1)
    try:
        command_id = uuid.uuid4()
        await EventStore(pool).append_to_stream(
            stream_id("Ticket", ticket_id),
            [
                NewEvent(
                    event_id=uuid.uuid4(),
                    type="TicketOpened",
                    schema_version=1,
                    data={"title": "from the old days"},
                    metadata=EventMetadata(
                        command_id=command_id,
                        command_type="OpenTicket",
                        correlation_id=command_id,
                        causation_id=command_id,
                        occurred_at=datetime.now(UTC),
                    ),
                )
            ],
            expected_version=0,
            command_id=command_id,
            command_type="OpenTicket",
            fingerprint=None,
        )
    finally:
        await pool.close()


async def test_a_version_1_event_is_read_as_version_2_everywhere(
    processes: Processes, isolated_settings: Settings
) -> None:
    ticket_id = uuid.uuid4()
    await store_version_1_ticket(isolated_settings, ticket_id)
    topology = Topology(
        isolated_settings.app_prefix, tuple(load_domains(DOMAINS["DOMAINS"]).projections)
    )

    async with channel(isolated_settings.amqp_url, topology=topology) as ch:
        tap = await tap_events(ch, topology)
        # The relay publishes the stored event in its current shape, saying so in a header.
        processes.start("command_worker", extra_env=DOMAINS)
        [published] = await take(tap, 1)
        assert published.headers["schema_version"] == 2
        body = orjson.loads(published.body)
        assert body["schema_version"] == 2
        assert body["data"] == {"title": "from the old days", "priority": "normal"}

    # The projector starts on an empty Redis: its self-rebuild reads the store.
    processes.start("projector_worker", extra_env=DOMAINS)
    gateway = processes.start("gateway", extra_env=DOMAINS)
    async with httpx.AsyncClient(base_url=gateway.base_url, timeout=30) as http:
        view = await http.get(f"/tickets/{ticket_id}")
        assert view.status_code == 200, view.text
        assert view.json()["priority"] == "normal"

        # Loading the aggregate upcasts too: the ticket exists and can be closed.
        closed = await http.post(
            f"/tickets/{ticket_id}/close", json={"resolution": "done"}, headers=WAIT
        )
        assert closed.status_code == 200, closed.text

        history = (await http.get(f"/tickets/{ticket_id}/history")).json()
        assert [e["type"] for e in history] == ["TicketOpened", "TicketClosed"]
        assert history[0]["data"] == {"title": "from the old days", "priority": "normal"}

        rebuild = await asyncio.create_subprocess_exec(
            *(sys.executable, "-m", "projector_worker", "rebuild", "ticket_views", "--quiet"),
            cwd=ROOT,
            env={**os.environ, **settings_env(isolated_settings), **DOMAINS},
            stderr=asyncio.subprocess.PIPE,
        )
        _, stderr = await asyncio.wait_for(rebuild.communicate(), 60)
        assert rebuild.returncode == 0, stderr.decode()
        assert "g1 -> g2" in stderr.decode()
        after = await http.get(f"/tickets/{ticket_id}")
        assert after.json()["priority"] == "normal"
        assert after.json()["status"] == "closed"
        assert (await http.get(f"/tickets/{ticket_id}/history")).json() == history
