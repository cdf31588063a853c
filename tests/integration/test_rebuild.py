"""`python -m projector_worker rebuild` while events keep flowing and queries keep reading."""

from __future__ import annotations

import asyncio
import os
import random
import sys
from collections.abc import Awaitable, Callable, Sequence

import asyncpg
import httpx
import orjson
import pytest
from redis.asyncio import Redis

from common.contracts.envelopes import RecordedEvent
from common.readmodel.keys import Keys
from common.settings import Settings
from harness.processes import ROOT, Processes
from orders.contracts import ItemAdded, OrderCreated
from orders.layout import order_suffix
from orders.view import OrderView
from projector_worker.rebuild import Rebuild
from projector_worker.runner import writer_for
from tests.conftest import settings_env
from tests.support.amqp import queue_counts
from tests.support.domains import projection_names, projection_queues, registry_of
from tests.support.events import (
    Ledger,
    address,
    all_events,
    event_publisher,
    line,
    order_stream,
    publish,
    until,
)
from tests.support.statuses import stored_statuses
from tests.support.views import (
    ORDER_VIEWS,
    dump_generation,
    dump_live,
    keys_with_prefix,
    live_generation,
    projection_keys,
    views_match_streams,
    views_reached,
)

pytestmark = pytest.mark.integration


async def rebuild(settings: Settings, *args: str) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "projector_worker",
        "rebuild",
        *args,
        cwd=ROOT,
        env={**os.environ, **settings_env(settings)},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    _, stderr = await asyncio.wait_for(process.communicate(), 120)
    assert process.returncode is not None
    return process.returncode, stderr.decode()


async def test_rebuild_while_events_flow_switches_to_identical_views(
    processes: Processes, pg: asyncpg.Pool, redis_client: Redis, isolated_settings: Settings
) -> None:
    keys = Keys(isolated_settings.redis_key_prefix)
    order_keys = projection_keys(keys)
    processes.start("projector_worker")
    gateway = processes.start("gateway")
    ledger = Ledger(pg)
    seeded = await ledger.seed(400)
    await publish(isolated_settings, await all_events(pg))
    await until(lambda: views_reached(redis_client, keys, ledger.versions), 30, "the views")
    before = await live_generation(redis_client, keys)
    assert before is not None

    stop = asyncio.Event()
    published = 0
    during_rebuild = 0

    async def keep_writing() -> None:
        async with event_publisher(isolated_settings) as send:
            await write_until_stopped(send)

    async def write_until_stopped(
        send: Callable[[Sequence[RecordedEvent]], Awaitable[None]],
    ) -> None:
        nonlocal published, during_rebuild
        rng = random.Random(3)
        while not stop.is_set():
            after = ledger.last_position
            rebuilding = bool(await redis_client.exists(order_keys.rebuilding))
            if rng.random() < 0.5:
                await ledger.create(f"cust-{rng.randrange(5)}", [line("sku-flow", 1, "2.00")])
            else:
                order_id = rng.choice(seeded)
                await ledger.append(order_id, ItemAdded(item=line("sku-more", 1, "0.50")))
            await send(await all_events(pg, after))
            published += 1
            if rebuilding and await redis_client.exists(order_keys.rebuilding):
                during_rebuild += 1

    reads = 0

    async def keep_reading(client: httpx.AsyncClient) -> None:
        nonlocal reads
        rng = random.Random(5)
        while not stop.is_set():
            order_id = rng.choice(seeded)
            response = await client.get(f"/orders/{order_id}")
            assert response.status_code == 200, response.text
            assert response.json()["version"] >= 1
            search = await client.get("/orders/search", params={"page_size": 1})
            assert search.status_code == 200, search.text
            assert search.json()["total"] >= len(seeded)
            reads += 1

    async with httpx.AsyncClient(base_url=gateway.base_url, timeout=20) as client:
        writer = asyncio.create_task(keep_writing())
        reader = asyncio.create_task(keep_reading(client))
        # Three processes replay side by side, while live projectors write to both generations.
        code, stderr = await rebuild(
            isolated_settings, ORDER_VIEWS, "--batch-size", "10", "--partitions", "3"
        )
        # Events keep flowing past the switch, and those must land in the new generation too.
        switched_at = published

        async def published_after_switch() -> bool:
            return published >= switched_at + 5

        await until(published_after_switch, 30, "events published after the switch")
        stop.set()
        await asyncio.gather(writer, reader)

    assert code == 0, stderr
    assert "events" in stderr
    assert "/s" in stderr
    assert f"rebuild of {ORDER_VIEWS} done" in stderr
    assert during_rebuild > 0
    assert reads > 0
    after = await live_generation(redis_client, keys)
    assert after is not None
    assert after > before
    assert await keys_with_prefix(redis_client, order_keys.views(before).base) == []

    await until(lambda: views_reached(redis_client, keys, ledger.versions), 30, "the last events")
    await until(lambda: _drained(isolated_settings), 30, "the projection queues to drain")
    assert await views_match_streams(redis_client, keys, pg)
    live = await dump_live(redis_client, keys)
    assert live[ORDER_VIEWS] == await dump_generation(redis_client, keys, after)
    code, stderr = await rebuild(isolated_settings, "--all", "--quiet", "--partitions", "1")
    assert code == 0, stderr
    assert await dump_live(redis_client, keys) == live
    fresh = await live_generation(redis_client, keys)
    assert fresh is not None
    assert fresh > after


async def _drained(settings: Settings) -> bool:
    """Every projection's queue is empty."""
    queues = projection_queues(settings)
    return (await queue_counts(settings, *queues)) == [0] * len(queues)


async def test_a_second_rebuild_waits_its_turn_and_an_empty_redis_is_restored(
    pg: asyncpg.Pool, redis_client: Redis, isolated_settings: Settings
) -> None:
    keys = Keys(isolated_settings.redis_key_prefix)
    ledger = Ledger(pg)
    await ledger.seed(10)
    # No projector runs: the CLI restores views and command statuses on its own.
    code, stderr = await rebuild(isolated_settings, "--all", "--partitions", "2")
    assert code == 0, stderr
    for name in projection_names():
        assert f"rebuild of {name} done: g1 (Redis was empty)" in stderr
    assert await views_reached(redis_client, keys, ledger.versions)
    assert await views_match_streams(redis_client, keys, pg)
    command_ids = [r["command_id"] for r in await pg.fetch("SELECT command_id FROM commands")]
    assert command_ids
    for status in await stored_statuses(redis_client, keys, command_ids):
        assert status["status"] == "succeeded"
        assert status["projected_version"] == status["version"]

    await redis_client.set(projection_keys(keys).rebuild_lock, "someone-else", px=60_000)
    code, stderr = await rebuild(isolated_settings, ORDER_VIEWS)
    assert code == 1
    assert f"another process is rebuilding {ORDER_VIEWS}" in stderr


@pytest.mark.parametrize("poison", ["unparseable", "cannot-follow"])
async def test_an_invalid_event_is_skipped_and_its_order_stops_before_it(
    pg: asyncpg.Pool, redis_client: Redis, isolated_settings: Settings, poison: str
) -> None:
    """A poison event in the middle of an order's run: the events before it apply, it is
    skipped and counted, the order's view stays before it, the other orders rebuild; both
    when Redis is empty (event by event) and in a plain rebuild (orders go as runs)."""
    keys = Keys(isolated_settings.redis_key_prefix)
    ledger = Ledger(pg)
    good = await ledger.seed(4)
    bad = await ledger.create("cust-9", [line("sku-1", 1, "1.00")])
    await ledger.append(bad, ItemAdded(item=line("sku-2", 1, "2.00")))
    await ledger.append(bad, ItemAdded(item=line("sku-3", 1, "3.00")))
    await ledger.append(bad, ItemAdded(item=line("sku-4", 1, "4.00")))
    if poison == "unparseable":
        bad_type, bad_data = "ItemAdded", {"item": {"quantity": -1}}
    else:  # a valid payload that cannot follow: a second creation of the same order
        again = OrderCreated(
            order_id=bad,
            customer_id="cust-9",
            items=[line("sku-1", 1, "1.00")],
            shipping_address=address(1),
        )
        bad_type, bad_data = again.type, again.model_dump(mode="json", exclude={"type"})
    await pg.execute(
        "UPDATE events SET type = $2, data = $3 WHERE stream_id = $1 AND version = 3",
        order_stream(bad),
        bad_type,
        orjson.dumps(bad_data).decode(),
    )
    registry = registry_of(isolated_settings)
    writer = writer_for(redis_client, keys, registry, registry.projections[ORDER_VIEWS])
    try:
        for _restore, _plain in ((1, 0), (0, 1)):
            summary = await Rebuild(writer, registry, pg).run()
            assert summary.skipped == 1
            assert summary.applied == summary.events - 2  # the bad event and the one after it
            assert await views_reached(redis_client, keys, {o: ledger.versions[o] for o in good})
            view_keys = projection_keys(keys).views(summary.generation)
            view = await redis_client.hgetall(view_keys.key(order_suffix(str(bad))))
            assert view[b"version"] == b"2"
            assert OrderView.from_hash(view).lines[-1].product_id == "sku-2"
    finally:
        await writer.close()
