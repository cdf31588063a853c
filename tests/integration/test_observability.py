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

from common.contracts.orders import ItemAdded
from common.messaging.topology import COMMANDS_EXCHANGE, COMMANDS_QUEUE, PROJECTOR_QUEUE
from common.settings import Settings
from tests.integration.test_projector_support import Ledger, all_events, line, publish
from tests.support.amqp import eventually
from tests.support.processes import Proc, ProcessFactory, http_status, wait_for
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


@pytest.fixture
async def system(processes: ProcessFactory) -> AsyncIterator[System]:
    command_worker = processes.start("command_worker")
    projector = processes.start("projector_worker")
    gateway = processes.start("gateway")
    async with httpx.AsyncClient(base_url=gateway.base_url, timeout=20) as http:
        yield System(gateway, command_worker, projector, http)


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
    [applied] = await eventually(lambda: followed(system.projector), what="the projector's line")
    assert applied["message"] == "event applied to the views"
    assert applied["command_id"] == command_id
    assert applied["order_id"] == order_id
    assert applied["version"] == 1
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


async def test_no_secret_is_logged(processes: ProcessFactory, isolated_settings: Settings) -> None:
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


GATEWAY_ONLY = {"orders_http_request_seconds"}
WORKER_ONLY = {
    "orders_command_latency_seconds",
    "orders_events_appended",
    "orders_version_conflicts",
    "orders_events_relayed",
    "orders_relay_leader",
    "orders_relay_lag_positions",
}
PROJECTOR_ONLY = {
    "orders_events_projected",
    "orders_projection_lag_positions",
    "orders_projection_lag_seconds",
}
CONSUMERS = {"orders_message_handling_seconds", "orders_retries", "orders_dead_letters"}


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
    connection = await aio_pika.connect(isolated_settings.amqp_url)
    try:
        exchange = await (await connection.channel()).get_exchange(COMMANDS_EXCHANGE)
        await exchange.publish(aio_pika.Message(b"not json"), routing_key=COMMANDS_QUEUE)
    finally:
        await connection.close()

    gateway = await scrape(system.gateway.base_url)
    assert gateway.total("orders_commands_total", type="CreateOrder", outcome="accepted") == 1
    assert gateway.total("orders_commands_total", type="AddItem", outcome="accepted") == 1
    assert gateway.total("orders_commands_total", type="ShipOrder", outcome="accepted") == 0
    assert gateway.total("orders_http_request_seconds_count", route="/orders", status="201") == 1
    assert families(gateway) >= {"orders_commands"} | GATEWAY_ONLY
    assert not families(gateway) & (WORKER_ONLY | PROJECTOR_ONLY | CONSUMERS)

    async def worker_settled() -> Scrape | None:
        found = await scrape(system.command_worker.base_url)
        dead = found.total("orders_dead_letters_total", queue=COMMANDS_QUEUE, kind="poison")
        lag = found.total("orders_relay_lag_positions")
        return found if dead == 1 and lag == 0 else None

    worker = await eventually(worker_settled, what="the poison message and the relay")
    assert worker.total("orders_commands_total", type="CreateOrder", outcome="succeeded") == 1
    assert worker.total("orders_commands_total", type="AddItem", outcome="rejected") == 1
    assert {(s["type"], s["outcome"]) for s in worker.series("orders_commands_total")} == {
        (t, o)
        for t in ("CreateOrder", "AddItem", "ShipOrder", "CancelOrder")
        for o in ("succeeded", "rejected", "failed")
    }
    assert worker.total("orders_command_latency_seconds_count", type="CreateOrder") == 1
    assert worker.total("orders_message_handling_seconds_count", queue=COMMANDS_QUEUE) == 3
    assert worker.total("orders_events_appended_total") == 1
    assert worker.total("orders_events_relayed_total") == 1
    assert worker.total("orders_relay_leader") == 1
    assert {s["scope"] for s in worker.series("orders_version_conflicts_total")} == {
        "batch",
        "command",
    }
    assert worker.total("orders_retries_total", queue=COMMANDS_QUEUE) == 0
    assert worker.total("orders_dead_letters_total", queue=COMMANDS_QUEUE, kind="exhausted") == 0
    assert families(worker) >= {"orders_commands"} | WORKER_ONLY | CONSUMERS
    assert not families(worker) & (GATEWAY_ONLY | PROJECTOR_ONLY)

    async def projector_settled() -> Scrape | None:
        found = await scrape(system.projector.base_url)
        caught_up = (
            found.total("orders_events_projected_total") == 1
            and found.total("orders_projection_lag_positions") == 0
            and found.total("orders_projection_lag_seconds") == 0
        )
        return found if caught_up else None

    projector = await eventually(projector_settled, what="the projection lag to be sampled")
    assert projector.total("orders_message_handling_seconds_count", queue=PROJECTOR_QUEUE) == 1
    assert projector.total("orders_retries_total", queue=PROJECTOR_QUEUE) == 0
    assert {s["kind"] for s in projector.series("orders_dead_letters_total")} == {
        "poison",
        "exhausted",
    }
    assert families(projector) >= PROJECTOR_ONLY | CONSUMERS
    assert not families(projector) & (GATEWAY_ONLY | WORKER_ONLY | {"orders_commands"})


async def test_projection_lag_measures_the_views_against_the_event_store(
    processes: ProcessFactory, pg: asyncpg.Pool, isolated_settings: Settings
) -> None:
    projector = processes.start("projector_worker")
    ledger = Ledger(pg)
    await ledger.create("lagging", [line("sku-l", 1, "1.00")])
    await ledger.append(next(iter(ledger.versions)), ItemAdded(item=line("sku-l", 1, "1.00")))

    async def lag() -> tuple[float, float]:
        found = await scrape(projector.base_url)
        return (
            found.total("orders_projection_lag_positions"),
            found.total("orders_projection_lag_seconds"),
        )

    # Appended but not yet delivered: the views are two positions and some time behind.
    await eventually(lambda: _behind(lag, 2), what="the lag to show the undelivered events")
    await publish(isolated_settings, await all_events(pg))
    await eventually(lambda: _behind(lag, 0), what="the lag to return to zero")


async def _behind(lag: Callable[[], Awaitable[tuple[float, float]]], positions: int) -> bool:
    found_positions, seconds = await lag()
    return found_positions == positions and (seconds > 0) == (positions > 0)
