"""The `product_sales` read model: counters across orders, exact however events arrive.

Each test drives the real processes over HTTP and compares the answers of the sales routes
with figures computed independently from the event store: an order's lines count when it is
shipped, never when it is cancelled, and exactly once under racing commands, several
projectors, a kill -9 of one of them, and a rebuild while commands keep arriving.
"""

from __future__ import annotations

import asyncio
import os
import random
import sys
from collections import defaultdict
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

import asyncpg
import httpx
import orjson
import pytest

from common.domain import load_domains
from common.settings import Settings
from harness.processes import ROOT, Processes
from orders.aggregate import Order, OrderStatus, evolve
from tests.conftest import settings_env
from tests.support.amqp import channel, eventually
from tests.support.bodies import ORDER
from tests.support.domains import topology_of

pytestmark = pytest.mark.integration

PRODUCTS = ["sku-1", "sku-2", "sku-3", "sku-4", "sku-5"]
WAIT = {"Prefer": "wait=10"}


@pytest.fixture
async def client(processes: Processes) -> AsyncIterator[httpx.AsyncClient]:
    processes.start("command_worker")
    processes.start("projector_worker")
    gateway = processes.start("gateway")
    async with httpx.AsyncClient(base_url=gateway.base_url, timeout=30) as http:
        yield http


async def expected_sales(pg: asyncpg.Pool) -> dict[str, dict[str, Any]]:
    """The sales per product, folded from the event store with the Order aggregate."""
    registry = load_domains("orders")
    rows = await pg.fetch(
        "SELECT stream_id, type, schema_version, data FROM events ORDER BY stream_id, version"
    )
    orders: dict[str, Order] = defaultdict(Order)
    for row in rows:
        payload = registry.parse_stored(
            row["stream_id"], row["type"], row["schema_version"], orjson.loads(row["data"])
        )
        orders[row["stream_id"]] = evolve(orders[row["stream_id"]], payload)
    sales: dict[str, dict[str, Any]] = {}
    for order in orders.values():
        if order.status is not OrderStatus.SHIPPED:
            continue
        for line in order.lines.values():
            entry = sales.setdefault(
                line.product_id,
                {"product_id": line.product_id, "units": 0, "revenue": Decimal(0), "orders": 0},
            )
            entry["units"] += line.quantity
            entry["revenue"] += line.price * line.quantity
            entry["orders"] += 1
    return {
        pid: {**entry, "revenue": str(entry["revenue"].quantize(Decimal("0.01")))}
        for pid, entry in sales.items()
    }


async def served_sales(client: httpx.AsyncClient) -> dict[str, dict[str, Any]]:
    served = {}
    for product_id in PRODUCTS:
        answer = await client.get(f"/products/{product_id}/sales")
        if answer.status_code == 200:
            served[product_id] = answer.json()
        else:
            assert answer.status_code == 404, answer.text
    return served


async def sales_match(client: httpx.AsyncClient, pg: asyncpg.Pool) -> bool:
    return await served_sales(client) == await expected_sales(pg)


async def racing_orders(client: httpx.AsyncClient, count: int, seed: int) -> list[str]:
    """Create `count` orders, then race additions, ships and cancels on them."""
    rng = random.Random(seed)

    async def create() -> str:
        products = rng.sample(PRODUCTS, rng.randint(1, 3))
        items = [
            {
                "product_id": p,
                "quantity": rng.randint(1, 4),
                "price": f"{rng.randint(1, 999)}.{rng.randint(0, 99):02d}",
            }
            for p in products
        ]
        created = await client.post("/orders", json={**ORDER, "items": items}, headers=WAIT)
        assert created.status_code == 201, created.text
        return str(created.json()["order_id"])

    order_ids = list(await asyncio.gather(*(create() for _ in range(count))))

    async def race(order_id: str) -> None:
        item = {"product_id": rng.choice(PRODUCTS), "quantity": rng.randint(1, 3), "price": "1.25"}
        moves = [client.post(f"/orders/{order_id}/items", json=item)]
        roll = rng.random()
        if roll < 0.6:
            moves.append(client.post(f"/orders/{order_id}/ship"))
        if roll > 0.4:
            moves.append(client.delete(f"/orders/{order_id}", params={"reason": "changed"}))
        rng.shuffle(moves)
        for answer in await asyncio.gather(*moves):
            assert answer.status_code == 202, answer.text

    await asyncio.gather(*(race(order_id) for order_id in order_ids))
    return order_ids


async def commands_settled(pg: asyncpg.Pool, sent: int) -> bool:
    return int(await pg.fetchval("SELECT count(*) FROM commands")) >= sent


async def test_shipped_lines_count_once_and_cancelled_orders_never(
    client: httpx.AsyncClient, pg: asyncpg.Pool
) -> None:
    shipped = await client.post(
        "/orders",
        json={**ORDER, "items": [{"product_id": "sku-1", "quantity": 2, "price": "0.10"}]},
        headers=WAIT,
    )
    cancelled = await client.post(
        "/orders",
        json={**ORDER, "items": [{"product_id": "sku-1", "quantity": 5, "price": "9.99"}]},
        headers=WAIT,
    )
    shipped_id, cancelled_id = shipped.json()["order_id"], cancelled.json()["order_id"]
    await client.post(
        f"/orders/{shipped_id}/items",
        json={"product_id": "sku-2", "quantity": 1, "price": "0.01"},
        headers=WAIT,
    )
    await client.post(
        f"/orders/{shipped_id}/items",
        json={"product_id": "sku-1", "quantity": 1, "price": "5.00"},
        headers=WAIT,
    )
    assert (await client.get("/products/sku-1/sales")).status_code == 404
    assert (await client.post(f"/orders/{shipped_id}/ship", headers=WAIT)).status_code == 200
    cancel = await client.delete(f"/orders/{cancelled_id}", params={"reason": "no"}, headers=WAIT)
    assert cancel.status_code == 200
    # A product already on the order keeps its price: 3 x 0.10.
    assert (await client.get("/products/sku-1/sales")).json() == {
        "product_id": "sku-1",
        "units": 3,
        "revenue": "0.30",
        "orders": 1,
    }
    assert (await client.get("/products/top", params={"by": "units"})).json() == {
        "by": "units",
        "items": [
            {"product_id": "sku-1", "units": 3, "revenue": "0.30", "orders": 1},
            {"product_id": "sku-2", "units": 1, "revenue": "0.01", "orders": 1},
        ],
    }
    assert (await client.get("/products/sku-3/sales")).status_code == 404
    for bad in ({"by": "price"}, {"limit": 0}, {"limit": 101}, {"limit": "x"}):
        assert (await client.get("/products/top", params=bad)).status_code == 422
    assert (await client.get("/products/not a product/sales")).status_code == 422
    assert await sales_match(client, pg)


async def test_ties_rank_by_product_id(client: httpx.AsyncClient) -> None:
    for product_id in ("sku-3", "sku-1", "sku-2"):
        line = {"product_id": product_id, "quantity": 2, "price": "1.50"}
        created = await client.post("/orders", json={**ORDER, "items": [line]}, headers=WAIT)
        shipped = await client.post(f"/orders/{created.json()['order_id']}/ship", headers=WAIT)
        assert shipped.status_code == 200
    top = await client.get("/products/top", params={"by": "revenue", "limit": 2})
    assert [item["product_id"] for item in top.json()["items"]] == ["sku-1", "sku-2"]


async def test_sales_are_exact_under_races_kills_and_a_rebuild(
    processes: Processes, isolated_settings: Settings, pg: asyncpg.Pool
) -> None:
    processes.start("command_worker")
    victim = processes.start("projector_worker")
    processes.start("projector_worker")
    gateway = processes.start("gateway")
    async with httpx.AsyncClient(base_url=gateway.base_url, timeout=30) as client:
        first = asyncio.create_task(racing_orders(client, 40, seed=1))
        await eventually(lambda: commands_settled(pg, 40), what="the first orders")
        victim.kill()
        processes.start("projector_worker")
        await first

        rebuild = await asyncio.create_subprocess_exec(
            *(sys.executable, "-m", "projector_worker", "rebuild", "product_sales", "--quiet"),
            cwd=ROOT,
            env={**os.environ, **settings_env(isolated_settings)},
            stderr=asyncio.subprocess.PIPE,
        )
        await racing_orders(client, 30, seed=2)
        _, stderr = await asyncio.wait_for(rebuild.communicate(), 120)
        assert rebuild.returncode == 0, stderr.decode()
        assert "g1 -> g2" in stderr.decode()

        sent = int(await pg.fetchval("SELECT count(*) FROM commands"))
        assert sent >= 70
        await eventually(lambda: sales_match(client, pg), timeout=60, what="exact sales")
        expected = await expected_sales(pg)
        assert expected, "some orders shipped"
        top = (await client.get("/products/top", params={"by": "revenue", "limit": 100})).json()
        ranked = sorted(expected.values(), key=lambda s: (-Decimal(s["revenue"]), s["product_id"]))
        assert top["items"] == ranked


async def consumers(settings: Settings, queue: str) -> int:
    async with channel(settings.amqp_url, topology=topology_of(settings)) as ch:
        declared = await ch.declare_queue(queue, passive=True)
        return int(declared.declaration_result.consumer_count or 0)


async def test_each_projection_runs_and_lags_on_its_own(
    processes: Processes, isolated_settings: Settings, pg: asyncpg.Pool
) -> None:
    processes.start("command_worker")
    processes.start("projector_worker", "--projections", "order_views")
    sales = processes.start("projector_worker", "--projections", "product_sales")
    gateway = processes.start("gateway")
    topology = topology_of(isolated_settings)
    line = {"product_id": "sku-1", "quantity": 1, "price": "2.00"}
    async with httpx.AsyncClient(base_url=gateway.base_url, timeout=30) as client:

        async def ship_one() -> None:
            created = await client.post("/orders", json={**ORDER, "items": [line]}, headers=WAIT)
            assert created.status_code == 201, created.text
            shipped = await client.post(f"/orders/{created.json()['order_id']}/ship", headers=WAIT)
            assert shipped.status_code == 200, shipped.text

        async def units() -> int:
            answer = await client.get("/products/sku-1/sales")
            return int(answer.json()["units"]) if answer.status_code == 200 else 0

        async def units_are(expected: int) -> bool:
            return await units() == expected

        await ship_one()
        await eventually(lambda: units_are(1), what="the first sale")
        for name in ("order_views", "product_sales"):
            assert await consumers(isolated_settings, topology.projection_queue(name)) == 1

        # Without its projector, product_sales falls behind; order_views does not notice.
        sales.kill()
        await ship_one()
        await ship_one()
        assert await units() == 1
        sales_queue = topology.projection_queue("product_sales")

        async def no_sales_consumer() -> bool:
            return await consumers(isolated_settings, sales_queue) == 0

        await eventually(no_sales_consumer, what="the killed projector's consumer to go")
        processes.start("projector_worker", "--projections", "product_sales")
        await eventually(lambda: units_are(3), what="product_sales to catch up")
        assert await sales_match(client, pg)
