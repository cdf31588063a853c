"""The whole system against a broker that drops it: every process reconnects by itself, with
its consumers, and commands posted while the gateway has no connection get a quick 503."""

from __future__ import annotations

import time
import urllib.parse
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from common.settings import Settings
from harness.isolation import Endpoints
from harness.processes import Proc, Processes, http_status
from tests.support.amqp import channel, eventually
from tests.support.domains import topology_of
from tests.support.scrape import scrape

pytestmark = pytest.mark.integration

PROCESS_NAMES = ("gateway", "command_worker", "projector")
"""The `connection_name` each process gives its AMQP connection."""

ORDER: dict[str, Any] = {
    "customer_id": "reconnect-customer",
    "items": [{"product_id": "sku-r", "quantity": 1, "price": "4.00"}],
    "shipping_address": {
        "recipient": "Ada Lovelace",
        "street": "12 Engine Street",
        "city": "London",
        "postal_code": "N1 9GU",
        "country": "GB",
    },
}


@dataclass
class System:
    gateway: Proc
    command_worker: Proc
    projector: Proc
    http: httpx.AsyncClient
    vhost: str

    @property
    def procs(self) -> list[Proc]:
        return [self.gateway, self.command_worker, self.projector]


@pytest.fixture
async def system(processes: Processes, isolated_settings: Settings) -> AsyncIterator[System]:
    command_worker = processes.start("command_worker")
    projector = processes.start("projector_worker")
    gateway = processes.start("gateway")
    async with httpx.AsyncClient(base_url=gateway.base_url, timeout=20) as http:
        yield System(
            gateway,
            command_worker,
            projector,
            http,
            urllib.parse.unquote(isolated_settings.amqp_url.rsplit("/", 1)[1]),
        )


def process_connections(services: Endpoints, vhost: str) -> dict[str, str]:
    """connection_name -> the broker's name of that connection, for the system's processes."""
    found = services.management("GET", f"/vhosts/{urllib.parse.quote(vhost, safe='')}/connections")
    named = {
        c.get("client_properties", {}).get("connection_name"): c["name"]
        for c in found
        if c.get("state", "running") == "running"
    }
    return {name: named[name] for name in PROCESS_NAMES if name in named}


def close_connections(services: Endpoints, names: list[str]) -> None:
    for name in names:
        services.management("DELETE", f"/connections/{urllib.parse.quote(name, safe='')}")


def one_consumer_each(settings: Settings) -> list[int]:
    """One consumer on the commands queue and on every projection's queue."""
    return [1] * len(topology_of(settings).work_queues)


async def consumer_counts(settings: Settings) -> list[int]:
    """Live consumer counts of the commands queue and every projection's queue (a passive
    declare, not the management API's sampled statistics)."""
    topology = topology_of(settings)
    async with channel(settings.amqp_url, settings.retry_base_delay_ms, topology) as ch:
        counts = []
        for name in topology.work_queues:
            queue = await ch.declare_queue(name, passive=True)
            counts.append(int(queue.declaration_result.consumer_count or 0))
        return counts


async def create_visible(http: httpx.AsyncClient) -> dict[str, Any]:
    """Create an order and wait until the view shows it: the whole pipeline works."""
    response = await http.post("/orders", json=ORDER, headers={"Prefer": "wait=15"})
    assert response.status_code == 201, response.text
    view = await http.get(response.headers["location"])
    assert view.status_code == 200, view.text
    body: dict[str, Any] = view.json()
    return body


def all_ready(system: System) -> bool:
    return all(http_status(f"{p.base_url}/health/ready") == 200 for p in system.procs)


async def recovered(system: System, services: Endpoints, old: set[str]) -> dict[str, str]:
    """Wait until every process has a new connection (not one of `old`) and is ready."""

    def reconnected() -> dict[str, str] | None:
        now = process_connections(services, system.vhost)
        fresh = len(now) == len(PROCESS_NAMES) and not set(now.values()) & old
        return now if fresh and all_ready(system) else None

    found: dict[str, str] = await eventually(
        reconnected, timeout=30, what="every process to reconnect", every=0.2
    )
    return found


async def test_every_process_recovers_when_the_broker_closes_its_connections(
    system: System, services: Endpoints, isolated_settings: Settings
) -> None:
    await create_visible(system.http)
    before = await eventually(
        lambda: (c := process_connections(services, system.vhost)) and len(c) == 3 and c,
        what="the three processes' connections to be listed",
    )
    assert await consumer_counts(isolated_settings) == one_consumer_each(isolated_settings)

    close_connections(services, list(before.values()))

    await recovered(system, services, set(before.values()))
    await eventually(
        lambda: _counts_are(isolated_settings, one_consumer_each(isolated_settings)),
        what="every consumer to be restored",
    )
    view = await create_visible(system.http)
    assert view["status"] == "created"
    added = await system.http.post(
        f"/orders/{view['order_id']}/items",
        json={"product_id": "sku-after", "quantity": 2, "price": "1.00"},
        headers={"Prefer": "wait=15"},
    )
    assert added.status_code == 200, added.text
    for proc, name in zip(system.procs, PROCESS_NAMES, strict=True):
        assert "rabbitmq connection lost" in proc.log(), proc.module
        reconnects = (await scrape(proc.base_url)).total(
            "orders_rabbitmq_reconnects_total", connection=name
        )
        assert reconnects == 1, proc.module


async def test_commands_get_a_quick_503_while_the_gateway_cannot_reconnect(
    system: System, services: Endpoints, isolated_settings: Settings
) -> None:
    await create_visible(system.http)
    permissions = f"/permissions/{urllib.parse.quote(system.vhost, safe='')}/guest"
    before = await eventually(
        lambda: (c := process_connections(services, system.vhost)) and len(c) == 3 and c,
        what="the three processes' connections to be listed",
    )
    # Without permissions on the vhost, every reconnect is refused until they are back.
    services.management("DELETE", permissions)
    try:
        close_connections(services, list(before.values()))

        await eventually(
            lambda: all(_refused(proc) for proc in system.procs),
            what="every process to have a reconnect refused",
        )
        ready = await system.http.get("/health/ready")
        assert ready.status_code == 503
        assert ready.json()["checks"]["rabbitmq"] is False
        for _ in range(5):
            started = time.monotonic()
            response = await system.http.post("/orders", json=ORDER)
            elapsed = time.monotonic() - started
            assert response.status_code == 503, response.text
            assert response.headers["content-type"] == "application/problem+json"
            assert int(response.headers["retry-after"]) > 0
            assert elapsed < 1.0, f"503 took {elapsed:.2f}s"
        for proc in (system.command_worker, system.projector):
            assert http_status(f"{proc.base_url}/health/ready") == 503, proc.module
    finally:
        services.management("PUT", permissions, {"configure": ".*", "write": ".*", "read": ".*"})

    await recovered(system, services, set(before.values()))
    await eventually(
        lambda: _counts_are(isolated_settings, one_consumer_each(isolated_settings)),
        what="every consumer to be restored",
    )
    await create_visible(system.http)


def _refused(proc: Proc) -> bool:
    return "rabbitmq connect failed" in proc.log_path.read_text(errors="replace")


async def _counts_are(settings: Settings, expected: list[int]) -> bool:
    return await consumer_counts(settings) == expected
