"""The gateway's query routes over real views: events in, every query out over HTTP."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

import asyncpg
import httpx
import pytest
from redis.asyncio import Redis

from common.contracts.envelopes import RecordedEvent
from common.domain import split_stream_id
from common.readmodel.commands import CommandResult, CommandStatus, record_results
from common.readmodel.keys import Keys
from common.settings import Settings
from gateway.waiting import Waiter
from harness.processes import Proc, Processes
from orders.contracts import ItemAdded, OrderShipped
from orders.projection import evolve
from orders.view import OrderView
from tests.support.amqp import eventually
from tests.support.domains import registry_of
from tests.support.events import (
    Ledger,
    all_events,
    line,
    order_stream,
    publish,
    until,
)
from tests.support.scrape import scrape
from tests.support.views import ORDER_VIEWS, views_reached

pytestmark = pytest.mark.integration

PROBLEM_JSON = "application/problem+json"


def expected_views(events: list[RecordedEvent]) -> dict[str, dict[str, Any]]:
    """Each order's view as the API shows it, by order id, from a replay of `events`."""
    registry = registry_of()
    views: dict[str, OrderView] = {}
    for event in events:
        order_id = split_stream_id(event.stream_id)[1]
        views[order_id] = evolve(views.get(order_id), event, registry.parse_event(event))
    return {order_id: view.to_api() for order_id, view in views.items()}


def newest_first(views: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted(views, key=lambda v: v["created_at"], reverse=True)


def by_total(views: list[dict[str, Any]], desc: bool) -> list[str]:
    ordered = sorted(views, key=lambda v: (Decimal(v["total_amount"]), v["order_id"]))
    ids = [v["order_id"] for v in ordered]
    return ids[::-1] if desc else ids


@pytest.fixture
def gateway(processes: Processes) -> Proc:
    processes.start("projector_worker")
    return processes.start("gateway")


@pytest.fixture
async def client(gateway: Proc) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=gateway.base_url, timeout=20) as http:
        yield http


async def all_pages(client: httpx.AsyncClient, path: str, **params: Any) -> list[str]:
    ids: list[str] = []
    page = 1
    while True:
        response = await client.get(path, params={**params, "page": page, "page_size": 4})
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["page"] == page
        assert body["page_size"] == 4
        assert body["total_pages"] == -(-body["total"] // 4)
        ids += [item["order_id"] for item in body["items"]]
        if page >= body["total_pages"]:
            assert len(ids) == body["total"]
            return ids
        page += 1


async def test_every_query(
    client: httpx.AsyncClient, pg: asyncpg.Pool, redis_client: Redis, isolated_settings: Settings
) -> None:
    keys = Keys(isolated_settings.redis_key_prefix)
    ledger = Ledger(pg)
    await ledger.seed(24)
    events = await all_events(pg)
    await publish(isolated_settings, events)
    await until(lambda: views_reached(redis_client, keys, ledger.versions), 30, "the views")
    expected = expected_views(events)
    everything = list(expected.values())

    for order_id, view in expected.items():
        response = await client.get(f"/orders/{order_id}")
        assert response.status_code == 200
        assert response.json() == view

    some_order = everything[5]
    history = (await client.get(f"/orders/{some_order['order_id']}/history")).json()
    stream = [e for e in events if e.stream_id == order_stream(some_order["order_id"])]
    assert stream
    assert history["order_id"] == some_order["order_id"]
    assert [(h["version"], h["type"], h["position"]) for h in history["events"]] == [
        (e.version, e.type, e.position) for e in stream
    ]
    assert history["events"][0]["data"] == stream[0].data
    assert history["events"][0]["command_id"] == str(stream[0].metadata.command_id)
    assert history["events"][0]["time"] == stream[0].metadata.occurred_at.isoformat()

    for customer in ("cust-0", "cust-1"):
        mine = [v for v in everything if v["customer_id"] == customer]
        ids = await all_pages(client, f"/customers/{customer}/orders")
        assert ids == [v["order_id"] for v in newest_first(mine)]
        for status in ("created", "shipped", "cancelled"):
            ids = await all_pages(client, f"/customers/{customer}/orders", status=status)
            assert ids == [v["order_id"] for v in newest_first(mine) if v["status"] == status]
    nobody = (await client.get("/customers/nobody/orders")).json()
    assert nobody == {"items": [], "total": 0, "page": 1, "page_size": 20, "total_pages": 0}

    def matching(**filters: Any) -> list[dict[str, Any]]:
        found = everything
        if "status" in filters:
            found = [v for v in found if v["status"] == filters["status"]]
        if "customer_id" in filters:
            found = [v for v in found if v["customer_id"] == filters["customer_id"]]
        if "min_total" in filters:
            found = [v for v in found if Decimal(v["total_amount"]) >= filters["min_total"]]
        if "max_total" in filters:
            found = [v for v in found if Decimal(v["total_amount"]) <= filters["max_total"]]
        if "product" in filters:
            found = [
                v for v in found if any(i["product_id"] == filters["product"] for i in v["items"])
            ]
        if "city" in filters:
            found = [v for v in found if v["shipping_address"]["city"] == filters["city"]]
        return found

    cases: list[tuple[dict[str, Any], dict[str, Any]]] = [
        ({}, {}),
        ({"status": "created"}, {"status": "created"}),
        ({"customer_id": "cust-2"}, {"customer_id": "cust-2"}),
        (
            {"customer_id": "cust-2", "status": "created"},
            {"customer_id": "cust-2", "status": "created"},
        ),
        ({"q": "sku-1"}, {"product": "sku-1"}),
        ({"q": "SKU-extra"}, {"product": "sku-extra"}),
        ({"q": "london"}, {"city": "London"}),
        ({"q": "paris sku-2"}, {"city": "Paris", "product": "sku-2"}),
        ({"q": "berlin", "status": "shipped"}, {"city": "Berlin", "status": "shipped"}),
        ({"min_total": "10"}, {"min_total": Decimal(10)}),
        (
            {"min_total": "5.5", "max_total": "30"},
            {"min_total": Decimal("5.5"), "max_total": Decimal(30)},
        ),
        ({"q": "sku-3", "max_total": "40"}, {"product": "sku-3", "max_total": Decimal(40)}),
    ]
    for params, filters in cases:
        found = matching(**filters)
        for sort_order in ("desc", "asc"):
            ids = await all_pages(client, "/orders/search", **params, sort_order=sort_order)
            want = [v["order_id"] for v in newest_first(found)]
            assert ids == (want if sort_order == "desc" else want[::-1]), (params, sort_order)
            ids = await all_pages(
                client, "/orders/search", **params, sort_by="total_amount", sort_order=sort_order
            )
            assert ids == by_total(found, sort_order == "desc"), (params, "total", sort_order)

    one = everything[3]
    ids = await all_pages(client, "/orders/search", q=one["order_id"])
    assert ids == [one["order_id"]]
    # An order's id is found from its view (no token set of its own), with any other filter.
    other_status = next(s for s in ("created", "shipped", "cancelled") if s != one["status"])
    total = Decimal(one["total_amount"])
    for params, found in [
        ({"q": one["order_id"].upper(), "status": one["status"]}, [one["order_id"]]),
        ({"q": one["order_id"], "status": other_status}, []),
        ({"q": f"{one['order_id']} {one['customer_id']}"}, [one["order_id"]]),
        ({"q": f"{one['order_id']} {everything[4]['order_id']}"}, []),
        ({"q": one["order_id"], "min_total": str(total), "sort_by": "total_amount"}, ids),
        ({"q": one["order_id"], "min_total": str(total + 1)}, []),
        ({"q": str(uuid.uuid4())}, []),
    ]:
        assert await all_pages(client, "/orders/search", **params) == found, params
    assert not [k async for k in redis_client.scan_iter(match=f"{keys.prefix}*scratch*")]
    assert (await client.get("/orders/search", params={"q": "no-such-word"})).json()["total"] == 0
    beyond = (await client.get("/orders/search", params={"page": 99})).json()
    assert beyond["items"] == []
    assert beyond["total"] == len(everything)


async def test_history_comes_a_page_at_a_time(
    client: httpx.AsyncClient, pg: asyncpg.Pool, redis_client: Redis, isolated_settings: Settings
) -> None:
    keys = Keys(isolated_settings.redis_key_prefix)
    ledger = Ledger(pg)
    order_id = await ledger.create("cust-1", [line("sku-0", 1, "1.00")])
    for n in range(6):
        await ledger.append(order_id, ItemAdded(item=line(f"sku-{n}", 1, "1.00")))
    await publish(isolated_settings, await all_events(pg))
    await until(lambda: views_reached(redis_client, keys, ledger.versions), 30, "the views")
    path = f"/orders/{order_id}/history"

    everything = (await client.get(path)).json()  # the default page holds all 7
    assert [e["version"] for e in everything["events"]] == list(range(1, 8))
    assert everything["next"] is None

    versions: list[list[int]] = []
    url: str | None = f"{path}?limit=3"
    while url is not None:
        response = await client.get(url)
        assert response.status_code == 200, response.text
        assert response.json()["order_id"] == str(order_id)
        versions.append([e["version"] for e in response.json()["events"]])
        url = response.json()["next"]
    assert versions == [[1, 2, 3], [4, 5, 6], [7]]

    exact = (await client.get(path, params={"after_version": 4, "limit": 3})).json()
    assert [e["version"] for e in exact["events"]] == [5, 6, 7]
    assert exact["next"] is None  # nothing after version 7: no empty page to follow
    assert exact["events"] == everything["events"][4:]
    beyond = (await client.get(path, params={"after_version": 99})).json()
    assert (beyond["events"], beyond["next"]) == ([], None)
    unknown = await client.get(f"/orders/{uuid.uuid4()}/history", params={"after_version": 3})
    assert unknown.status_code == 404


INVALID = [
    ("/orders/not-a-uuid", "order_id"),
    ("/orders/not-a-uuid/history", "order_id"),
    (f"/orders/{uuid.uuid4()}/history?after_version=-1", "after_version"),
    (f"/orders/{uuid.uuid4()}/history?after_version=1.5", "after_version"),
    (f"/orders/{uuid.uuid4()}/history?after_version=" + "9" * 40, "after_version"),
    (f"/orders/{uuid.uuid4()}/history?after_version=2147483648", "after_version"),
    (f"/orders/{uuid.uuid4()}/history?after_version=", "after_version"),
    (f"/orders/{uuid.uuid4()}/history?limit=0", "limit"),
    (f"/orders/{uuid.uuid4()}/history?limit=1001", "limit"),
    (f"/orders/{uuid.uuid4()}/history?limit=-5", "limit"),
    (f"/orders/{uuid.uuid4()}/history?limit=%F0%9F%92%A9", "limit"),
    ("/orders/search?page=0", "page"),
    ("/orders/search?page_size=0", "page_size"),
    ("/orders/search?page_size=101", "page_size"),
    ("/orders/search?sort_by=price", "sort_by"),
    ("/orders/search?sort_order=up", "sort_order"),
    ("/orders/search?status=lost", "status"),
    ("/orders/search?min_total=-1", "min_total"),
    ("/orders/search?min_total=1.001", "min_total"),
    ("/orders/search?min_total=5&max_total=4", "max_total"),
    ("/orders/search?customer_id=bad%20id", "customer_id"),
    (f"/orders/{uuid.uuid4()}?min_version=0", "min_version"),
    ("/customers/bad!id/orders", "customer_id"),
    ("/customers/c-1/orders?status=gone", "status"),
    ("/customers/c-1/orders?page=-1", "page"),
]


async def test_invalid_parameters_are_422_and_unknown_orders_404(
    client: httpx.AsyncClient,
) -> None:
    for path, field in INVALID:
        response = await client.get(path)
        assert response.status_code == 422, (path, response.text)
        assert response.headers["content-type"] == PROBLEM_JSON
        assert field in [error["field"] for error in response.json()["errors"]], path
    for path in (f"/orders/{uuid.uuid4()}", f"/orders/{uuid.uuid4()}/history"):
        response = await client.get(path)
        assert response.status_code == 404
        assert response.headers["content-type"] == PROBLEM_JSON


async def test_min_version_waits_for_the_view_or_answers_stale(
    gateway: Proc,
    client: httpx.AsyncClient,
    pg: asyncpg.Pool,
    redis_client: Redis,
    isolated_settings: Settings,
) -> None:
    keys = Keys(isolated_settings.redis_key_prefix)
    ledger = Ledger(pg)
    order_id = await ledger.create("cust-1", [line("sku-1", 1, "1.00")])
    await publish(isolated_settings, await all_events(pg))
    await until(lambda: views_reached(redis_client, keys, {order_id: 1}), 20, "the view")

    fresh = await client.get(f"/orders/{order_id}", params={"min_version": 1})
    assert fresh.status_code == 200
    assert "x-stale" not in fresh.headers

    started = time.monotonic()
    stale = await client.get(
        f"/orders/{order_id}", params={"min_version": 2}, headers={"Prefer": "wait=0.3"}
    )
    assert time.monotonic() - started >= 0.3
    assert stale.status_code == 200
    assert stale.headers["x-stale"] == "true"
    assert stale.json()["version"] == 1

    missing = await client.get(
        f"/orders/{uuid.uuid4()}", params={"min_version": 1}, headers={"Prefer": "wait=0"}
    )
    assert missing.status_code == 404
    assert missing.headers["x-stale"] == "true"

    waiting = asyncio.create_task(
        client.get(f"/orders/{order_id}", params={"min_version": 3}, headers={"Prefer": "wait=15"})
    )
    # The events go out once the gateway holds the wait, so the notification is what ends it.
    await until(lambda: _waits_pending(gateway, 1), 10, "the gateway to hold the wait")
    assert not waiting.done()
    await ledger.append(order_id, ItemAdded(item=line("sku-2", 1, "2.00")))
    await ledger.append(order_id, OrderShipped())
    published = time.monotonic()
    await publish(isolated_settings, (await all_events(pg))[1:])
    answer = await asyncio.wait_for(waiting, 15)
    assert time.monotonic() - published < 5
    assert answer.status_code == 200
    assert "x-stale" not in answer.headers
    assert answer.json()["version"] == 3
    assert answer.json()["status"] == "shipped"


async def test_waiter_settles_commands_when_visible_or_refused(
    gateway: Proc, pg: asyncpg.Pool, redis_client: Redis, isolated_settings: Settings
) -> None:
    keys = Keys(isolated_settings.redis_key_prefix)
    waiter = Waiter(redis_client, keys, registry_of(isolated_settings))
    try:
        ledger = Ledger(pg)
        order_id = uuid.uuid4()
        await ledger.create("cust-1", [line("sku-1", 1, "1.00")], order_id=order_id)
        command_id = (await all_events(pg))[0].metadata.command_id
        waiting = asyncio.create_task(waiter.wait_for_command(command_id, 15))
        await eventually(lambda: waiter.pending == 1, 10, "the waiter to hold the wait")
        assert not waiting.done()
        await publish(isolated_settings, await all_events(pg))
        progress = await asyncio.wait_for(waiting, 15)
        assert progress is not None
        assert progress.settled
        assert progress.projected
        assert progress.status == "succeeded"
        assert progress.stream_id == order_stream(order_id)
        # Settled already: answered from the state, without waiting.
        again = await waiter.wait_for_command(command_id, 5)
        assert again is not None
        assert again.settled
        assert again.version == 1
        assert await waiter.wait_for_version(ORDER_VIEWS, order_stream(order_id), 1, 0)
        assert not await waiter.wait_for_version(ORDER_VIEWS, order_stream(order_id), 2, 0)

        refused = uuid.uuid4()
        waiting = asyncio.create_task(waiter.wait_for_command(refused, 15))
        await eventually(lambda: waiter.pending == 1, 10, "the waiter to hold the wait")
        await record_results(
            redis_client,
            keys,
            [
                CommandResult(
                    command_id=refused,
                    command_type="ShipOrder",
                    stream_id=order_stream(order_id),
                    status=CommandStatus.REJECTED,
                    reason="order is shipped",
                    version=1,
                )
            ],
        )
        progress = await asyncio.wait_for(waiting, 15)
        assert progress is not None
        assert progress.settled
        assert progress.status == "rejected"
        assert progress.reason == "order is shipped"

        unknown = await waiter.wait_for_command(uuid.uuid4(), 0.1)
        assert unknown is None
        assert waiter.pending == 0
    finally:
        await waiter.close()


async def test_waiter_reads_notifications_only_while_someone_waits(
    redis_client: Redis, isolated_settings: Settings
) -> None:
    keys = Keys(isolated_settings.redis_key_prefix)
    channel = keys.command_outcomes_channel

    async def subscribers() -> int:
        [(_, count)] = await redis_client.pubsub_numsub(channel)
        return int(count)

    waiter = Waiter(redis_client, keys, registry_of(isolated_settings), linger_s=0.2)
    try:
        assert await subscribers() == 0  # nobody has waited yet

        async def settle_a_refusal() -> None:
            """A wait, settled by a notification (not by a re-read)."""
            refused = uuid.uuid4()
            waiting = asyncio.create_task(waiter.wait_for_command(refused, 15))
            await asyncio.wait_for(waiter.subscribed.wait(), 10)
            assert not waiting.done()
            await record_results(
                redis_client,
                keys,
                [
                    CommandResult(
                        command_id=refused,
                        command_type="ShipOrder",
                        stream_id=order_stream(uuid.uuid4()),
                        status=CommandStatus.REJECTED,
                        reason="order not found",
                        version=0,
                    )
                ],
            )
            progress = await asyncio.wait_for(waiting, 15)
            assert progress is not None
            assert progress.status == "rejected"

        await settle_a_refusal()  # the first wait subscribes
        assert await subscribers() == 1

        async def unsubscribed() -> bool:
            return await subscribers() == 0

        await eventually(unsubscribed, timeout=10, what="the idle unsubscribe")
        assert not waiter.subscribed.is_set()

        await settle_a_refusal()  # the next wait subscribes again
    finally:
        await waiter.close()
    assert await subscribers() == 0


async def _waits_pending(gateway: Proc, count: int) -> bool:
    """The gateway reports `count` waits pending on `/metrics`."""
    return (await scrape(gateway.base_url)).total("orders_waits_pending") == count
