"""A search costs Redis a bounded amount of work, whatever its parameters: broad combinations
are measured and refused (422 "refine the query"), deep pages too, and no parameter value
makes a query route fail (5xx)."""

from __future__ import annotations

import asyncio
import statistics
import sys
import time
import urllib.parse
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import orjson
import pytest
from redis.asyncio import Redis

from common.readmodel.keys import Keys
from common.settings import Settings
from harness.processes import Proc, Processes
from orders.queries import MAX_OFFSET
from orders.view import OrderView
from tests.support.amqp import eventually
from tests.support.scrape import scrape
from tests.support.seeding import order_changes, write_views

pytestmark = pytest.mark.integration

PROBLEM_JSON = "application/problem+json"
TOO_BROAD = "urn:orders:problem:query-too-broad"


async def seed(redis: Redis, settings: Settings, orders: int, customers: int) -> list[OrderView]:
    """`orders` order views written straight into Redis."""
    changes = list(order_changes(orders, customers))
    await write_views(redis, Keys(settings.redis_key_prefix), changes)
    return [change.view for change in changes]


ClientOf = Callable[[Proc], httpx.AsyncClient]


@pytest.fixture
async def client_of() -> AsyncIterator[ClientOf]:
    """An HTTP client of a gateway; all closed at teardown."""
    clients: list[httpx.AsyncClient] = []

    def make(gateway: Proc) -> httpx.AsyncClient:
        clients.append(httpx.AsyncClient(base_url=gateway.base_url, timeout=20))
        return clients[-1]

    yield make
    for client in clients:
        await client.aclose()


async def test_broad_searches_are_refused_and_paging_one_set_is_not(
    processes: Processes, client_of: ClientOf, redis_client: Redis, isolated_settings: Settings
) -> None:
    views = await seed(redis_client, isolated_settings, 120, customers=4)
    gateway = processes.start("gateway", extra_env={"ORDERS_SEARCH_MAX_CANDIDATES": "25"})
    client = client_of(gateway)

    async def refused(path: str, **params: Any) -> list[str]:
        response = await client.get(path, params=params)
        assert response.status_code == 422, (params, response.text)
        assert response.headers["content-type"] == PROBLEM_JSON
        problem = response.json()
        assert problem["type"] == TOO_BROAD, problem
        assert problem["title"] == "Refine the query"
        assert "refine" in problem["detail"] or "narrow" in problem["detail"]
        return [error["field"] for error in problem["errors"]]

    async def total(path: str, **params: Any) -> int:
        response = await client.get(path, params=params)
        assert response.status_code == 200, (params, response.text)
        return int(response.json()["total"])

    # One sorted set, paged: allowed at any size.
    assert await total("/orders/search") == 120
    assert await total("/orders/search", sort_by="total_amount", sort_order="asc") == 120
    assert await total("/orders/search", status="created") == 60
    assert await total("/orders/search", q="high") == 120  # every street is a High Street
    assert await total("/orders/search", min_total="0", sort_by="total_amount") == 120
    assert await total("/customers/cust-1/orders") == 30

    # Scratch work over more than 25 candidates: refused, naming what makes it broad.
    assert await refused("/orders/search", min_total="0") == ["min_total"]
    assert await refused("/orders/search", min_total="0", max_total="9999") == [
        "min_total",
        "max_total",
    ]
    assert await refused("/orders/search", status="created", sort_by="total_amount") == ["status"]
    assert await refused("/orders/search", q="high street", status="shipped") == ["q", "status"]
    assert await refused("/customers/cust-1/orders", page=MAX_OFFSET // 20 + 1) == ["page"]
    assert await refused("/orders/search", page=MAX_OFFSET // 100 + 1, page_size=100) == ["page"]

    # Within the cap the same shapes are answered: one selective input is enough.
    london = [v for v in views if dict(v.shipping_address)["city"] == "London"]
    assert len(london) == 20
    created = [v for v in london if v.status == "created"]
    assert await total("/orders/search", q="london", status="created") == len(created)
    assert await total("/orders/search", q="london", sort_by="total_amount") == 20
    mine = [v for v in views if v.customer_id == "cust-2" and v.status == "shipped"]
    assert await total(
        "/orders/search", customer_id="cust-2", status="shipped", min_total="0"
    ) == len(mine)
    dearest = sorted(v.total_amount for v in views)[-10]
    expensive = [v for v in views if v.total_amount >= dearest]
    assert await total("/orders/search", min_total=str(dearest)) == len(expensive)
    deepest = await client.get("/orders/search", params={"page": MAX_OFFSET // 20})
    assert deepest.status_code == 200


HOSTILE = [
    "",
    " ",
    "0",
    "-1",
    "1.5",
    "1e3",
    "1e400",
    "nan",
    "inf",
    "-inf",
    "2147483648",
    "9223372036854775808",
    "9" * 400,
    "-" + "9" * 400,
    "0x10",
    "true",
    "null",
    "[]",
    "é",
    "💩",
    "日本語",
    "\x00",
    "%",
    "a,b",
    "x" * 3000,
    "sku-1 " * 300,
]

SEARCH_PARAMS = [
    "q",
    "status",
    "customer_id",
    "min_total",
    "max_total",
    "sort_by",
    "sort_order",
    "page",
    "page_size",
    "unknown",
]


async def test_no_parameter_value_makes_a_query_route_fail(
    processes: Processes, client_of: ClientOf, redis_client: Redis, isolated_settings: Settings
) -> None:
    views = await seed(redis_client, isolated_settings, 60, customers=3)
    client = client_of(processes.start("gateway"))
    one_order = views[7].order_id
    urls: list[tuple[str, dict[str, str]]] = []
    for value in HOSTILE:
        urls += [("/orders/search", {name: value}) for name in SEARCH_PARAMS]
        narrowed = {"q": "london", "min_total": "1"}
        urls += [
            ("/orders/search", {**narrowed, name: value})
            for name in ("page", "page_size", "max_total", "sort_by")
        ]
        urls += [
            ("/customers/cust-1/orders", {name: value}) for name in ("status", "page", "page_size")
        ]
        urls.append((f"/customers/{urllib.parse.quote(value, safe='')}/orders", {}))
        urls.append((f"/orders/{one_order}", {"min_version": value}))
        urls.append((f"/orders/{urllib.parse.quote(value, safe='')}", {}))
        urls.append((f"/orders/{urllib.parse.quote(value, safe='')}/history", {}))
        urls += [
            (f"/orders/{one_order}/history", {name: value}) for name in ("after_version", "limit")
        ]
    statuses: dict[int, int] = {}
    for path, params in urls:
        # Prefer: wait=0 answers a min_version above the view at once (X-Stale) instead of
        # after MAX_WAIT_S.
        response = await client.get(path, params=params, headers={"Prefer": "wait=0"})
        if response.status_code == 307:
            # An empty id: `/orders/` redirects to `/orders` (whose GET is a 405).
            assert "//" in path or path.endswith("/"), path
            continue
        assert 200 <= response.status_code < 500, (path, params, response.text)
        if response.status_code >= 400:
            assert response.headers["content-type"] == PROBLEM_JSON, (path, params)
        statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
    print(f"\n{len(urls)} requests with hostile values: {dict(sorted(statuses.items()))}")
    assert statuses.get(200, 0) > 0
    assert statuses.get(422, 0) > 0


def p99(samples: list[float]) -> float:
    return statistics.quantiles(samples, n=100)[98]


SEARCHERS = 4
BROADEST = [
    # Refused after O(K + log N) measuring: before the cap, each made Redis copy and re-score
    # every order (or half of them) in scratch sets.
    {"min_total": "0"},
    {"min_total": "0", "max_total": "999999"},
    {"status": "created", "sort_by": "total_amount"},
    {"q": "high street", "status": "created"},
    {"sort_by": "total_amount", "min_total": "0", "page": MAX_OFFSET // 100 + 1, "page_size": 100},
    # Allowed at any size, in O(log N + page): one sorted set, paged (deep too).
    {"page_size": 100},
    {"sort_by": "total_amount", "page_size": 100},
    {"q": "high", "page": MAX_OFFSET // 100, "page_size": 100},
    {"min_total": "0", "sort_by": "total_amount", "page": MAX_OFFSET // 100, "page_size": 100},
]
AT_THE_CAP = [
    # Allowed, with 10,000 candidates (a third of the orders are in France): the most work
    # ORDERS_SEARCH_MAX_CANDIDATES lets one search make Redis do.
    {"q": "fr", "status": "created", "page_size": 100},
    {"q": "fr", "sort_by": "total_amount", "page_size": 100},
    {"q": "fr", "min_total": "0", "page_size": 100},
]


@pytest.mark.load
async def test_broad_searches_do_not_hold_up_order_reads(
    processes: Processes, client_of: ClientOf, redis_client: Redis, isolated_settings: Settings
) -> None:
    """The p99 of `GET /orders/{id}` alone, then while clients loop the broadest searches
    (bounded: at most 5 times higher), then while they loop searches at the cap (reported:
    the cap bounds what one search costs, not how many a client sends)."""
    orders = 30_000
    started = time.monotonic()
    order_ids = [v.order_id for v in await seed(redis_client, isolated_settings, orders, 2000)]
    seeded_s = time.monotonic() - started
    # The searches and the reads go through gateways of their own, as behind a load balancer
    # with several gateway processes: what they share, and what a broad search could hold
    # up, is Redis. The searching clients run in a process of their own too, so that their
    # work does not delay the reads measured here.
    reading, searching = processes.start("gateway"), processes.start("gateway")
    reader = client_of(reading)
    phase_s = 4.0

    async def read_orders(seconds: float) -> list[float]:
        latencies = []
        deadline = time.monotonic() + seconds
        n = 0
        while time.monotonic() < deadline:
            n += 1
            began = time.perf_counter()
            response = await reader.get(f"/orders/{order_ids[(n * 7919) % orders]}")
            latencies.append(time.perf_counter() - began)
            assert response.status_code == 200
        return latencies

    async def searches_answered() -> float:
        found = await scrape(searching.base_url)
        return found.total("orders_http_request_seconds_count", route="/orders/search")

    async def more_searches_answered(than: float) -> bool:
        return await searches_answered() > than

    async def read_orders_while_searching(
        searches: list[dict[str, Any]],
    ) -> tuple[list[float], dict[str, int]]:
        answered_before = await searches_answered()
        searchers = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "tests.support.search_load",
            searching.base_url,
            str(SEARCHERS),
            str(phase_s + 1.0),
            orjson.dumps(searches).decode(),
            stdout=asyncio.subprocess.PIPE,
        )
        try:
            await eventually(
                lambda: more_searches_answered(answered_before), 10, "the searchers to start"
            )
            latencies = await read_orders(phase_s)
            out, _ = await asyncio.wait_for(searchers.communicate(), 20)
        finally:
            if searchers.returncode is None:
                searchers.kill()
                await searchers.wait()
        return latencies, orjson.loads(out)

    await read_orders(0.5)  # warm the connection and the script cache
    quiet = await read_orders(phase_s)
    busy, answered = await read_orders_while_searching(BROADEST)
    at_cap, answered_at_cap = await read_orders_while_searching(AT_THE_CAP)

    def figures(latencies: list[float]) -> str:
        return f"{p99(latencies) * 1000:.2f} ms ({len(latencies)} reads)"

    factor = p99(busy) / p99(quiet)
    print(
        f"\n{orders} orders seeded in {seeded_s:.1f} s; GET /orders/{{id}} p99: "
        f"{figures(quiet)} alone; {figures(busy)} with {SEARCHERS} clients looping the "
        f"broadest searches (answered {answered}), x{factor:.2f}; {figures(at_cap)} with them "
        f"looping searches of 10,000 candidates (answered {answered_at_cap}), "
        f"x{p99(at_cap) / p99(quiet):.2f}"
    )
    assert set(answered) == {"200", "422"}
    assert set(answered_at_cap) == {"200"}
    assert factor < 5
