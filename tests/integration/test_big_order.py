"""One big order does not slow every other order's commands.

Small orders' commands are timed, sent to visible (`Prefer: wait`), beside the same load of
additions twice in one run: spread over many orders, then all on one order that grows to its
limits. The limits and the linear fold bound what loading the big order costs each batch, so
the two p90s stay close. Marked `load`: `make chaos` runs it.
"""

from __future__ import annotations

import asyncio
import statistics
import time

import httpx
import pytest

from harness.processes import Processes
from tests.support.bodies import ORDER

pytestmark = [pytest.mark.integration, pytest.mark.load]

WAIT = {"Prefer": "wait=10"}
SMALL_ORDERS = 40
BIG_ORDER_ITEMS = 900
"""Additions of new products: past `ORDERS_MAX_LINES` (200) on one order, the rest rejected."""


async def small_order_latencies(http: httpx.AsyncClient) -> list[float]:
    """Seconds from sending to a visible outcome, for a create and an addition per order,
    a few orders at a time."""
    latencies: list[float] = []

    async def one_order() -> None:
        started = time.perf_counter()
        created = await http.post("/orders", json=ORDER, headers=WAIT)
        assert created.status_code == 201, created.text
        latencies.append(time.perf_counter() - started)
        item = {"product_id": "small", "quantity": 1, "price": "1.00"}
        started = time.perf_counter()
        added = await http.post(f"{created.headers['location']}/items", json=item, headers=WAIT)
        assert added.status_code == 200, added.text
        latencies.append(time.perf_counter() - started)

    for start in range(0, SMALL_ORDERS, 4):
        await asyncio.gather(*(one_order() for _ in range(start, min(start + 4, SMALL_ORDERS))))
    return latencies


def p90(samples: list[float]) -> float:
    return statistics.quantiles(samples, n=10)[-1]


async def additions(http: httpx.AsyncClient, orders: list[str], count: int) -> None:
    """`count` additions of new products, spread round-robin over `orders`, 50 at a time."""
    for start in range(0, count, 50):
        answers = await asyncio.gather(
            *(
                http.post(
                    f"{orders[i % len(orders)]}/items",
                    json={"product_id": f"p-{i}", "quantity": 1, "price": "1.00"},
                )
                for i in range(start, min(start + 50, count))
            )
        )
        assert all(a.status_code == 202 for a in answers)


async def beside(http: httpx.AsyncClient, orders: list[str]) -> float:
    """The small orders' p90 while `BIG_ORDER_ITEMS` additions go to `orders`."""
    load = asyncio.create_task(additions(http, orders, BIG_ORDER_ITEMS))
    latency = p90(await small_order_latencies(http))
    await load
    return latency


async def test_a_growing_order_does_not_hold_up_the_others(processes: Processes) -> None:
    processes.start("command_worker")
    processes.start("projector_worker")
    gateway = processes.start("gateway")
    async with httpx.AsyncClient(base_url=gateway.base_url, timeout=30) as http:

        async def new_order() -> str:
            created = await http.post("/orders", json=ORDER, headers=WAIT)
            assert created.status_code == 201, created.text
            return str(created.headers["location"])

        # The same load twice: spread over 30 orders, then all on one order that grows to its
        # limits (its later additions are rejected at the lines limit, after loading it).
        spread = await beside(http, [await new_order() for _ in range(30)])
        one_big = await beside(http, [await new_order()])
        print(
            f"small orders' p90 beside {BIG_ORDER_ITEMS} additions: spread over 30 orders "
            f"{spread * 1000:.1f} ms, on one order {one_big * 1000:.1f} ms "
            f"({one_big / spread:.1f}x)"
        )
        assert one_big < 2 * spread + 0.02, (spread, one_big)
