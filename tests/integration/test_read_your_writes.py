"""`Prefer: wait` on command routes: the answer comes once the outcome is visible."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator

import httpx
import pytest
import redis.asyncio as aioredis

from common.readmodel.commands import ID_REUSED_REASON
from common.readmodel.keys import Keys
from common.settings import Settings
from gateway.idempotency import HEADER
from harness.processes import Processes
from tests.support.amqp import eventually
from tests.support.bodies import ORDER
from tests.support.scrape import scrape
from tests.support.statuses import forget_status

pytestmark = pytest.mark.integration

WAIT = {"Prefer": "wait=15"}


@pytest.fixture
async def client(processes: Processes) -> AsyncIterator[httpx.AsyncClient]:
    processes.start("command_worker")
    processes.start("projector_worker")
    gateway = processes.start("gateway")
    async with httpx.AsyncClient(base_url=gateway.base_url, timeout=30) as http:
        yield http


async def test_a_create_answers_201_once_the_view_shows_it(client: httpx.AsyncClient) -> None:
    created = await client.post("/orders", json=ORDER, headers=WAIT)
    assert created.status_code == 201, created.text
    order_id = created.json()["order_id"]
    assert created.headers["location"] == f"/orders/{order_id}"
    assert created.headers["preference-applied"] == "wait=10"  # capped by MAX_WAIT_S
    assert created.json()["status"] == "succeeded"
    assert created.json()["type"] == "CreateOrder"
    # No min_version, no waiting: the view is already there.
    view = await client.get(f"/orders/{order_id}")
    assert view.status_code == 200
    assert view.json()["version"] == 1

    added = await client.post(
        f"/orders/{order_id}/items",
        json={"product_id": "sku-z", "quantity": 4, "price": "1.25"},
        headers=WAIT,
    )
    assert added.status_code == 200, added.text
    assert added.json()["version"] == 2
    assert added.json()["projected"] is True
    view = await client.get(f"/orders/{order_id}")
    assert view.json()["item_count"] == 7
    assert view.json()["total_amount"] == "25.25"


async def test_a_rejection_answers_409_with_the_reason(client: httpx.AsyncClient) -> None:
    unknown = uuid.uuid4()
    shipped = await client.post(f"/orders/{unknown}/ship", headers=WAIT)
    assert shipped.status_code == 409, shipped.text
    assert shipped.headers["content-type"].startswith("application/problem+json")
    problem = shipped.json()
    assert problem["type"] == "urn:orders:problem:command-rejected"
    assert problem["detail"] == "order not found"

    created = await client.post("/orders", json=ORDER, headers=WAIT)
    order_id = created.json()["order_id"]
    cancelled = await client.delete(
        f"/orders/{order_id}", params={"reason": "no longer needed"}, headers=WAIT
    )
    assert cancelled.status_code == 200, cancelled.text
    again = await client.post(f"/orders/{order_id}/ship", headers=WAIT)
    assert again.status_code == 409
    assert again.json()["detail"] == "order is cancelled"


async def test_the_wait_runs_out_with_a_plain_202(processes: Processes) -> None:
    # No workers: nothing will happen to the command within the wait.
    gateway = processes.start("gateway")
    async with httpx.AsyncClient(base_url=gateway.base_url, timeout=30) as http:
        created = await http.post("/orders", json=ORDER, headers={"Prefer": "wait=0.3"})
        assert created.status_code == 202, created.text
        assert created.headers["location"] == f"/commands/{created.json()['command_id']}"
        status = await http.get(created.headers["location"])
        assert status.json()["status"] == "accepted"


async def test_waits_past_max_waiters_are_answered_at_once(processes: Processes) -> None:
    processes.start("command_worker")
    processes.start("projector_worker")
    gateway = processes.start("gateway", extra_env={"MAX_WAITERS": "2", "MAX_WAIT_S": "60"})
    long_wait = {"Prefer": "wait=60"}
    async with httpx.AsyncClient(base_url=gateway.base_url, timeout=90) as http:
        created = await http.post("/orders", json=ORDER, headers=WAIT)
        assert created.status_code == 201, created.text
        order = f"/orders/{created.json()['order_id']}"
        # Two waits for a version nobody has written yet fill the gateway's waiters.
        held = [
            asyncio.create_task(http.get(order, params={"min_version": 3}, headers=long_wait))
            for _ in range(2)
        ]

        async def pending() -> float:
            return (await scrape(gateway.base_url)).total("orders_waits_pending")

        async def full() -> bool:
            return await pending() == 2

        async def empty() -> bool:
            return await pending() == 0

        await eventually(full, what="two pending waits")

        stale = await http.get(order, params={"min_version": 2}, headers=long_wait)
        assert stale.status_code == 200, stale.text
        assert stale.headers["x-stale"] == "true"
        assert stale.json()["version"] == 1
        # With room, this would wait for the outcome and answer 200 (see above).
        added = await http.post(
            f"{order}/items",
            json={"product_id": "sku-z", "quantity": 1, "price": "1.00"},
            headers=long_wait,
        )
        assert added.status_code == 202, added.text
        assert "preference-applied" not in added.headers
        assert (await scrape(gateway.base_url)).total("orders_waits_refused_total") == 2

        # Version 3 releases the held waits, and waits are admitted again.
        third = await http.post(
            f"{order}/items",
            json={"product_id": "sku-y", "quantity": 1, "price": "1.00"},
            headers=WAIT,
        )
        assert third.status_code == 202, third.text  # still full when it was sent
        for answer in await asyncio.gather(*held):
            assert answer.status_code == 200, answer.text
            assert "x-stale" not in answer.headers
            assert answer.json()["version"] >= 3
        await eventually(empty, what="no pending waits")
        fourth = await http.post(
            f"{order}/items",
            json={"product_id": "sku-x", "quantity": 1, "price": "1.00"},
            headers=WAIT,
        )
        assert fourth.status_code == 200, fourth.text
        assert fourth.headers["preference-applied"] == "wait=15"


async def test_requests_past_http_max_concurrency_get_503(processes: Processes) -> None:
    gateway = processes.start(
        "gateway", extra_env={"HTTP_MAX_CONCURRENCY": "3", "MAX_WAITERS": "1"}
    )

    async def live_status() -> int:
        async with httpx.AsyncClient(base_url=gateway.base_url, timeout=10) as fresh:
            return (await fresh.get("/health/live")).status_code

    async def served() -> bool:
        return await live_status() == 200

    async with contextlib.AsyncExitStack() as stack:
        # Two kept-alive connections, opened one after the other (uvicorn counts the one a
        # request comes on: the limit is reached at 3 open connections).
        for _ in range(2):
            client = httpx.AsyncClient(base_url=gateway.base_url, timeout=30)
            await stack.enter_async_context(client)
            assert (await client.get("/health/live")).status_code == 200
        assert await live_status() == 503
    await eventually(served, what="200 once the connections closed")


async def test_an_order_at_its_limits_answers_409_with_the_reason(
    processes: Processes,
) -> None:
    limits = {"ORDERS_MAX_LINES": "3", "ORDERS_MAX_EVENTS": "4"}
    processes.start("command_worker", extra_env=limits)
    processes.start("projector_worker", extra_env=limits)
    gateway = processes.start("gateway", extra_env=limits)
    async with httpx.AsyncClient(base_url=gateway.base_url, timeout=30) as http:
        created = await http.post("/orders", json=ORDER, headers=WAIT)  # two lines, version 1
        assert created.status_code == 201, created.text
        items = f"/orders/{created.json()['order_id']}/items"

        async def add(product_id: str) -> httpx.Response:
            item = {"product_id": product_id, "quantity": 1, "price": "1.00"}
            return await http.post(items, json=item, headers=WAIT)

        assert (await add("sku-c")).json()["version"] == 2  # the third line
        too_many_lines = await add("sku-d")
        assert too_many_lines.status_code == 409, too_many_lines.text
        assert too_many_lines.json()["detail"] == "the order has reached its limit of 3 lines"
        assert (await add("sku-a")).json()["version"] == 3  # a known product: no new line
        too_many_events = await add("sku-a")
        assert too_many_events.status_code == 409, too_many_events.text
        assert too_many_events.json()["detail"] == (
            "the order has reached its limit of 4 events; it can still be shipped or cancelled"
        )
        # The last event the limit leaves is the order's end.
        shipped = await http.post(f"/orders/{created.json()['order_id']}/ship", headers=WAIT)
        assert shipped.status_code == 200, shipped.text
        view = await http.get(f"/orders/{created.json()['order_id']}")
        assert view.json()["version"] == 4
        assert view.json()["status"] == "shipped"
        assert view.json()["item_count"] == 5


async def test_a_reused_idempotency_key_never_reports_success_whatever_redis_forgot(
    client: httpx.AsyncClient, redis_client: aioredis.Redis, isolated_settings: Settings
) -> None:
    keys = Keys(isolated_settings.redis_key_prefix)
    key = f"order-{uuid.uuid4()}"
    created = await client.post("/orders", json=ORDER, headers={**WAIT, HEADER: key})
    assert created.status_code == 201, created.text
    command_id = created.json()["command_id"]
    status_url = f"/commands/{command_id}"
    first_status = (await client.get(status_url)).json()
    assert (first_status["status"], first_status["type"]) == ("succeeded", "CreateOrder")
    other = {**ORDER, "customer_id": "someone-else"}

    # Past the key's 24 h: its record is gone, the command's status is not.
    await redis_client.delete(keys.idempotency(key))
    refused = await client.post("/orders", json=other, headers={**WAIT, HEADER: key})
    assert refused.status_code == 422, refused.text
    assert refused.json()["type"] == "urn:orders:problem:idempotency-key-reused"
    assert (await client.get(status_url)).json() == first_status

    # Redis lost both: the command worker refuses it from the event store's record.
    await redis_client.delete(keys.idempotency(key))
    await forget_status(redis_client, keys, command_id)
    refused = await client.post("/orders", json=other, headers={**WAIT, HEADER: key})
    assert refused.status_code == 422, refused.text
    assert refused.json()["type"] == "urn:orders:problem:idempotency-key-reused"
    status = (await client.get(status_url)).json()
    assert (status["status"], status["reason"]) == ("rejected", ID_REUSED_REASON)

    # Without waiting, the 202's status shows the refusal and never a success.
    await redis_client.delete(keys.idempotency(key))
    await forget_status(redis_client, keys, command_id)
    accepted = await client.post(
        f"/orders/{created.json()['order_id']}/ship", headers={HEADER: key}
    )
    assert accepted.status_code == 202, accepted.text
    seen: list[str] = []

    async def settled() -> bool:
        status = (await client.get(accepted.headers["location"])).json()
        seen.append(status["status"])
        return bool(status["status"] == "rejected")

    await eventually(settled, what="the refusal")
    assert "succeeded" not in seen
    assert (await client.get(status_url)).json()["reason"] == ID_REUSED_REASON
    view = (await client.get(f"/orders/{created.json()['order_id']}")).json()
    assert (view["status"], view["customer_id"], view["version"]) == (
        "created",
        ORDER["customer_id"],
        1,
    )
