"""The whole system as a user drives it: commands over HTTP, then every query over HTTP."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from harness.processes import Processes
from tests.support.bodies import ORDER

pytestmark = pytest.mark.integration


@pytest.fixture
async def client(processes: Processes) -> AsyncIterator[httpx.AsyncClient]:
    processes.start("command_worker")
    processes.start("projector_worker")
    gateway = processes.start("gateway")
    async with httpx.AsyncClient(base_url=gateway.base_url, timeout=20) as http:
        yield http


async def fresh(client: httpx.AsyncClient, order_id: str, version: int) -> dict[str, Any]:
    """The order once its view reached `version` (the gateway waits for it)."""
    response = await client.get(
        f"/orders/{order_id}", params={"min_version": version}, headers={"Prefer": "wait=15"}
    )
    assert response.status_code == 200, response.text
    assert "x-stale" not in response.headers
    body: dict[str, Any] = response.json()
    return body


async def test_commands_over_http_are_seen_by_every_query(client: httpx.AsyncClient) -> None:
    created = await client.post("/orders", json=ORDER)
    assert created.status_code == 202, created.text
    order_id = created.json()["order_id"]
    view = await fresh(client, order_id, 1)
    assert view["total_amount"] == "20.25"
    assert view["item_count"] == 3
    assert view["status"] == "created"
    assert view["items"] == ORDER["items"]
    assert view["shipping_address"] == ORDER["shipping_address"]

    added = await client.post(
        f"/orders/{order_id}/items", json={"product_id": "sku-a", "quantity": 1, "price": "10.10"}
    )
    assert added.status_code == 202, added.text
    shipped = await client.post(f"/orders/{order_id}/ship")
    assert shipped.status_code == 202, shipped.text
    view = await fresh(client, order_id, 3)
    assert view["status"] == "shipped"
    assert view["total_amount"] == "30.35"
    assert view["items"][0] == {"product_id": "sku-a", "quantity": 3, "price": "10.10"}
    assert view["shipped_at"] is not None

    history = (await client.get(f"/orders/{order_id}/history")).json()["events"]
    assert [e["type"] for e in history] == ["OrderCreated", "ItemAdded", "OrderShipped"]
    assert [e["command_id"] for e in history] == [
        r.json()["command_id"] for r in (created, added, shipped)
    ]
    assert [e["version"] for e in history] == [1, 2, 3]
    assert history[0]["position"] < history[1]["position"] < history[2]["position"]

    mine = (await client.get("/customers/e2e-customer/orders")).json()
    assert [o["order_id"] for o in mine["items"]] == [order_id]
    assert mine["items"][0] == view
    shipped_only = (
        await client.get("/customers/e2e-customer/orders", params={"status": "created"})
    ).json()
    assert shipped_only["total"] == 0

    for params in (
        {"q": "arlington"},
        {"q": "sku-b compiler"},
        {"q": order_id},
        {"customer_id": "e2e-customer", "status": "shipped", "min_total": "30.35"},
        {"max_total": "31", "sort_by": "total_amount", "sort_order": "asc"},
    ):
        found = (await client.get("/orders/search", params=params)).json()
        assert [o["order_id"] for o in found["items"]] == [order_id], params

    status = (await client.get(f"/commands/{shipped.json()['command_id']}")).json()
    assert status["status"] == "succeeded"
    assert status["version"] == 3
