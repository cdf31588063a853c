"""`Prefer: wait` on command routes: the answer comes once the outcome is visible."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import httpx
import pytest

from tests.integration.test_queries_end_to_end import ORDER
from tests.support.processes import ProcessFactory

pytestmark = pytest.mark.integration

WAIT = {"Prefer": "wait=15"}


@pytest.fixture
async def client(processes: ProcessFactory) -> AsyncIterator[httpx.AsyncClient]:
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


async def test_the_wait_runs_out_with_a_plain_202(processes: ProcessFactory) -> None:
    # No workers: nothing will happen to the command within the wait.
    gateway = processes.start("gateway")
    async with httpx.AsyncClient(base_url=gateway.base_url, timeout=30) as http:
        created = await http.post("/orders", json=ORDER, headers={"Prefer": "wait=0.3"})
        assert created.status_code == 202, created.text
        assert created.headers["location"] == f"/commands/{created.json()['command_id']}"
        status = await http.get(created.headers["location"])
        assert status.json()["status"] == "accepted"
