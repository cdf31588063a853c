"""Logs and metrics of the running processes, as an operator reads them."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aio_pika
import asyncpg
import httpx
import pytest

from common.domain import Registry, stream_id
from common.messaging.topology import Topology, dlq_name
from common.settings import Settings
from harness.processes import Proc, Processes, http_status, wait_for
from orders.contracts import ItemAdded
from orders.projection import OrderViews
from tests.support.amqp import eventually
from tests.support.domains import registry_of, topology_of
from tests.support.events import Ledger, all_events, line, publish
from tests.support.scrape import Scrape, scrape

pytestmark = pytest.mark.integration

ORDER: dict[str, Any] = {
    "customer_id": "observed-customer",
    "items": [{"product_id": "sku-o", "quantity": 2, "price": "2.50"}],
    "shipping_address": {
        "recipient": "Margaret Hamilton",
        "street": "1 Apollo Way",
        "city": "Boston",
        "postal_code": "02139",
        "country": "US",
    },
}


@dataclass
class System:
    gateway: Proc
    command_worker: Proc
    projector: Proc
    http: httpx.AsyncClient
    registry: Registry
    topology: Topology


@pytest.fixture
async def system(processes: Processes, isolated_settings: Settings) -> AsyncIterator[System]:
    registry = registry_of(isolated_settings)
    topology = topology_of(isolated_settings)
    command_worker = processes.start("command_worker")
    projector = processes.start("projector_worker")
    gateway = processes.start("gateway")
    async with httpx.AsyncClient(base_url=gateway.base_url, timeout=20) as http:
        yield System(gateway, command_worker, projector, http, registry, topology)


def json_lines(proc: Proc) -> list[dict[str, Any]]:
    """Every line the process logged, each parsed as JSON (a line that is not fails the test)."""
    entries = []
    for number, text in enumerate(proc.log_path.read_text().splitlines(), 1):
        try:
            entries.append(json.loads(text))
        except json.JSONDecodeError:
            pytest.fail(f"{proc.module} log line {number} is not JSON: {text!r}")
    return entries


# --- logs ---------------------------------------------------------------------------------------


async def test_one_command_is_followed_by_its_correlation_id_to_the_redis_write(
    system: System,
) -> None:
    cid = str(uuid.uuid4())
    response = await system.http.post(
        "/orders", json=ORDER, headers={"X-Correlation-Id": cid, "Prefer": "wait=15"}
    )
    assert response.status_code == 201, response.text
    assert response.headers["x-correlation-id"] == cid
    command_id = response.json()["command_id"]
    order_id = response.json()["order_id"]

    def followed(proc: Proc) -> list[dict[str, Any]]:
        return [e for e in json_lines(proc) if e.get("correlation_id") == cid]

    [accepted] = await eventually(lambda: followed(system.gateway), what="the gateway's line")
    assert accepted["message"] == "command accepted"
    assert accepted["command_id"] == command_id
    [handled] = await eventually(lambda: followed(system.command_worker), what="the worker's line")
    assert handled["message"] == "command succeeded"
    assert handled["command_id"] == command_id
    # Each projection following the order's stream applies its event once, and says so.
    stream = stream_id("Order", order_id)
    following = sorted(p.name for p in system.registry.projections.values() if p.follows(stream))
    assert OrderViews.name in following
    lines = await eventually(
        lambda: len(followed(system.projector)) >= len(following) and followed(system.projector),
        what="the projector's lines",
    )
    assert sorted(entry["projection"] for entry in lines) == following
    for entry in lines:
        assert entry["message"] == "event applied to the views"
        assert entry["command_id"] == command_id
        assert entry["stream_id"] == stream
        assert entry["version"] == 1
    [applied] = [entry for entry in lines if entry["projection"] == OrderViews.name]
    for entry in (accepted, handled, applied):
        assert {"time", "level", "process", "logger", "message"} <= entry.keys()
    assert [accepted["process"], handled["process"], applied["process"]] == [
        "gateway",
        "command_worker",
        "projector",
    ]
    for proc in (system.gateway, system.command_worker, system.projector):
        proc.terminate()
        json_lines(proc)  # shutdown lines are JSON too


async def test_no_secret_is_logged(processes: Processes, isolated_settings: Settings) -> None:
    api_key = "secret-key-123"
    password = "s3cret-pa55word"
    vhost = isolated_settings.amqp_url.rsplit("/", 1)[1]
    env = {
        "API_KEYS": api_key,
        # A wrong password: every connection attempt fails, and client errors quote the URL.
        "AMQP_URL": f"amqp://guest:{password}@127.0.0.1:5672/{vhost}",
    }
    procs = [
        processes.start(module, extra_env=env, wait=False)
        for module in ("gateway", "command_worker", "projector_worker")
    ]
    for proc in procs:
        wait_for(
            lambda proc=proc: http_status(f"{proc.base_url}/health/live") == 200,
            30,
            f"{proc.module} to be live",
        )
    gateway = procs[0]
    async with httpx.AsyncClient(base_url=gateway.base_url, timeout=10) as http:
        authorized = {"Authorization": f"Bearer {api_key}"}
        assert (await http.post("/orders", json=ORDER, headers=authorized)).status_code == 503
        assert (await http.post("/orders", json=ORDER)).status_code == 401
        wrong = {"Authorization": f"Bearer {api_key}-not"}
        assert (await http.get("/metrics", headers=wrong)).status_code == 401
        assert (await http.get("/orders/not-an-id", headers=authorized)).status_code == 422

    def failed_twice(proc: Proc) -> bool:
        return proc.log_path.read_text().count("rabbitmq connect failed") >= 2

    await eventually(lambda: all(failed_twice(p) for p in procs), what="failed connection attempts")
    for proc in procs:
        proc.terminate()
        text = proc.log_path.read_text()
        assert api_key not in text, proc.module
        assert password not in text, proc.module
        json_lines(proc)


# --- metrics ------------------------------------------------------------------------------------


def families(metrics: Scrape) -> set[str]:
    return set(metrics.families)


GATEWAY_ONLY = {"orders_http_request_seconds", "orders_waits_pending", "orders_waits_refused"}
WORKER_ONLY = {
    "orders_command_latency_seconds",
    "orders_events_appended",
    "orders_version_conflicts",
    "orders_events_relayed",
    "orders_relay_leader",
    "orders_relay_lag_positions",
    "orders_relay_blocked_seconds",
}
PROJECTOR_ONLY = {
    "orders_command_visible_seconds",
    "orders_events_projected",
    "orders_events_ignored",
    "orders_projection_lag_positions",
    "orders_projection_lag_seconds",
}
CONSUMERS = {
    "orders_message_handling_seconds",
    "orders_retries",
    "orders_dead_letters",
    "orders_queue_messages",
    "orders_queue_consumers",
}
EVERY_PROCESS = {"orders_rabbitmq_reconnects", "orders_gc_pause_seconds"}


async def test_each_process_exports_its_metrics(
    system: System, isolated_settings: Settings
) -> None:
    created = await system.http.post("/orders", json=ORDER, headers={"Prefer": "wait=15"})
    assert created.status_code == 201, created.text
    rejected = await system.http.post(
        f"/orders/{uuid.uuid4()}/items",
        json={"product_id": "sku-x", "quantity": 1, "price": "1.00"},
        headers={"Prefer": "wait=15"},
    )
    assert rejected.status_code == 409, rejected.text
    topology = system.topology
    commands_queue = topology.commands_queue
    connection = await aio_pika.connect(isolated_settings.amqp_url)
    try:
        exchange = await (await connection.channel()).get_exchange(topology.commands_exchange)
        await exchange.publish(aio_pika.Message(b"not json"), routing_key=commands_queue)
    finally:
        await connection.close()

    gateway = await scrape(system.gateway.base_url)
    assert gateway.total("orders_commands_total", type="CreateOrder", outcome="accepted") == 1
    assert gateway.total("orders_commands_total", type="AddItem", outcome="accepted") == 1
    assert gateway.total("orders_commands_total", type="ShipOrder", outcome="accepted") == 0
    assert gateway.total("orders_http_request_seconds_count", route="/orders", status="201") == 1
    assert families(gateway) >= {"orders_commands"} | GATEWAY_ONLY | EVERY_PROCESS
    assert gateway.series("orders_rabbitmq_reconnects_total") == [{"connection": "gateway"}]
    assert gateway.total("orders_rabbitmq_reconnects_total") == 0
    assert not families(gateway) & (WORKER_ONLY | PROJECTOR_ONLY | CONSUMERS)

    async def worker_settled() -> Scrape | None:
        found = await scrape(system.command_worker.base_url)
        dead = found.total("orders_dead_letters_total", queue=commands_queue, kind="poison")
        lag = found.total("orders_relay_lag_positions")
        sampled = found.total("orders_queue_messages", queue=dlq_name(commands_queue))
        return found if dead == 1 and lag == 0 and sampled == 1 else None

    worker = await eventually(
        worker_settled, what="the poison message, the relay and the queue depths"
    )
    assert worker.total("orders_queue_messages", queue=commands_queue) == 0
    assert worker.total("orders_queue_consumers", queue=commands_queue) == 1
    assert worker.total("orders_queue_consumers", queue=dlq_name(commands_queue)) == 0
    assert worker.total("orders_rabbitmq_reconnects_total", connection="command_worker") == 0
    assert worker.total("orders_commands_total", type="CreateOrder", outcome="succeeded") == 1
    assert worker.total("orders_commands_total", type="AddItem", outcome="rejected") == 1
    command_types = system.registry.command_types
    assert {"CreateOrder", "AddItem", "ShipOrder", "CancelOrder"} <= command_types
    assert {(s["type"], s["outcome"]) for s in worker.series("orders_commands_total")} == {
        (t, o) for t in command_types for o in ("succeeded", "rejected", "failed")
    }
    assert worker.total("orders_command_latency_seconds_count", type="CreateOrder") == 1
    assert worker.total("orders_message_handling_seconds_count", queue=commands_queue) == 3
    assert worker.total("orders_events_appended_total") == 1
    assert worker.total("orders_events_relayed_total") == 1
    assert worker.total("orders_relay_leader") == 1
    assert worker.total("orders_relay_blocked_seconds") == 0
    assert {s["scope"] for s in worker.series("orders_version_conflicts_total")} == {
        "batch",
        "command",
    }
    assert worker.total("orders_retries_total", queue=commands_queue) == 0
    assert worker.total("orders_dead_letters_total", queue=commands_queue, kind="exhausted") == 0
    assert families(worker) >= {"orders_commands"} | WORKER_ONLY | CONSUMERS | EVERY_PROCESS
    assert not families(worker) & (GATEWAY_ONLY | PROJECTOR_ONLY)

    # One event was appended; every projection got it, those following orders applied it.
    stream = stream_id("Order", created.json()["order_id"])
    projections = system.registry.projections

    async def projector_settled() -> Scrape | None:
        found = await scrape(system.projector.base_url)
        caught_up = (
            all(
                found.total("orders_message_handling_seconds_count", queue=queue) >= 1
                for queue in map(topology.projection_queue, projections)
            )
            and all(
                found.total("orders_events_projected_total", projection=name) == 1
                for name, projection in projections.items()
                if projection.follows(stream)
            )
            and found.total("orders_projection_lag_positions") == 0
            and found.total("orders_projection_lag_seconds") == 0
            and all(
                found.total("orders_queue_consumers", queue=queue) == 1
                for queue in map(topology.projection_queue, projections)
            )
        )
        return found if caught_up else None

    projector = await eventually(projector_settled, what="the projection lag to be sampled")
    assert OrderViews.name in projections
    for name, projection in projections.items():
        queue = topology.projection_queue(name)
        applied = 1 if projection.follows(stream) else 0
        assert projector.total("orders_message_handling_seconds_count", queue=queue) == 1, name
        assert projector.total("orders_retries_total", queue=queue) == 0, name
        assert projector.total("orders_events_projected_total", projection=name) == applied, name
        assert projector.total("orders_events_ignored_total", projection=name) == 1 - applied, name
    assert {s["kind"] for s in projector.series("orders_dead_letters_total")} == {
        "poison",
        "exhausted",
    }
    # Accepted -> visible: the order's creation, once, in the projection it is visible in.
    visible = "orders_command_visible_seconds_count"
    assert projector.total(visible, type="CreateOrder") == 1
    assert projector.total(visible) == 1
    assert {s["type"] for s in projector.series(visible)} == command_types
    assert projector.total("orders_command_visible_seconds_sum") > 0
    assert families(projector) >= PROJECTOR_ONLY | CONSUMERS | EVERY_PROCESS
    assert not families(projector) & (GATEWAY_ONLY | WORKER_ONLY | {"orders_commands"})


async def test_projection_lag_measures_the_views_against_the_event_store(
    processes: Processes, pg: asyncpg.Pool, isolated_settings: Settings
) -> None:
    projector = processes.start("projector_worker")
    projections = list(registry_of(isolated_settings).projections)
    ledger = Ledger(pg)
    await ledger.create("lagging", [line("sku-l", 1, "1.00")])
    await ledger.append(next(iter(ledger.versions)), ItemAdded(item=line("sku-l", 1, "1.00")))

    async def lag() -> list[tuple[float, float]]:
        """Each projection's lag, in positions and seconds."""
        found = await scrape(projector.base_url)
        return [
            (
                found.total("orders_projection_lag_positions", projection=name),
                found.total("orders_projection_lag_seconds", projection=name),
            )
            for name in projections
        ]

    # Appended but not yet delivered: the views are two positions and some time behind.
    await eventually(lambda: _behind(lag, 2), what="the lag to show the undelivered events")
    await publish(isolated_settings, await all_events(pg))
    await eventually(lambda: _behind(lag, 0), what="the lag to return to zero")


async def _behind(lag: Callable[[], Awaitable[list[tuple[float, float]]]], positions: int) -> bool:
    return all(
        found_positions == positions and (seconds > 0) == (positions > 0)
        for found_positions, seconds in await lag()
    )
