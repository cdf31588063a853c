"""The projector process against real RabbitMQ, PostgreSQL and Redis."""

from __future__ import annotations

import random
import uuid

import aio_pika
import asyncpg
import pytest
from redis.asyncio import Redis

from common.contracts.envelopes import RecordedEvent
from common.messaging.topology import dlq_name
from common.readmodel.keys import Keys
from common.settings import Settings
from harness.processes import Processes
from orders.contracts import ItemAdded, OrderShipped
from orders.layout import order_suffix
from orders.view import OrderView
from tests.support.amqp import queue_counts
from tests.support.domains import projection_names, projection_queues
from tests.support.events import (
    Ledger,
    all_events,
    line,
    order_stream,
    publish,
    until,
)
from tests.support.projector import order_views_queue, run_rebuild
from tests.support.statuses import stored_status
from tests.support.views import (
    dump_live,
    keys_with_prefix,
    live_generation,
    projection_keys,
    views_match_streams,
    views_reached,
)

pytestmark = pytest.mark.integration


async def test_live_events_become_views(
    processes: Processes, pg: asyncpg.Pool, redis_client: Redis, isolated_settings: Settings
) -> None:
    keys = Keys(isolated_settings.redis_key_prefix)
    processes.start("projector_worker")
    ledger = Ledger(pg)
    order_id = await ledger.create("cust-1", [line("sku-1", 2, "10.10"), line("sku-2", 1, "0.05")])
    await ledger.append(order_id, ItemAdded(item=line("sku-1", 1, "10.10")))
    command_id = await ledger.append(order_id, OrderShipped())
    await publish(isolated_settings, await all_events(pg))

    await until(lambda: views_reached(redis_client, keys, {order_id: 3}), 20, "the view")
    generation = await live_generation(redis_client, keys)
    assert generation is not None
    order_keys = projection_keys(keys).views(generation)
    raw = await redis_client.hgetall(order_keys.key(order_suffix(str(order_id))))
    view = OrderView.from_hash(raw)
    assert view.to_api()["total_amount"] == "30.35"
    assert view.item_count == 4
    assert view.status == "shipped"
    command = await stored_status(redis_client, keys, command_id)
    assert command["status"] == "succeeded"
    assert command["projected_version"] == 3
    assert command["type"] == "ShipOrder"
    checkpoint = await redis_client.get(order_keys.checkpoint)
    assert int(checkpoint) == (await all_events(pg))[-1].position


async def test_duplicates_and_disorder_across_two_projectors_give_the_replayed_views(
    processes: Processes, pg: asyncpg.Pool, redis_client: Redis, isolated_settings: Settings
) -> None:
    keys = Keys(isolated_settings.redis_key_prefix)
    # The projectors start on an empty store: every view then comes from the deliveries below
    # (not from a start-up rebuild), so their disorder and duplicates are what is tested.
    first = processes.start("projector_worker")
    second = processes.start("projector_worker")
    ledger = Ledger(pg)
    orders = await ledger.seed(30)
    events = await all_events(pg)

    rng = random.Random(7)
    deliveries = events + rng.sample(events, len(events) // 2)
    rng.shuffle(deliveries)
    await publish(isolated_settings, deliveries)

    await until(lambda: views_reached(redis_client, keys, ledger.versions), 30, "every order")
    await until(lambda: _drained(isolated_settings), 30, "the projection queues to drain")
    assert await views_match_streams(redis_client, keys, pg)
    generations = {n: await live_generation(redis_client, keys, n) for n in projection_names()}
    assert None not in generations.values(), generations
    live = await dump_live(redis_client, keys)
    assert len(orders) == 30

    result = run_rebuild(isolated_settings, "--all", "--quiet")
    assert result.returncode == 0, result.stderr
    for name, generation in generations.items():
        rebuilt = await live_generation(redis_client, keys, name)
        assert rebuilt is not None
        assert generation is not None
        assert rebuilt > generation, name
        pattern = projection_keys(keys, name).views(generation).pattern
        assert [k async for k in redis_client.scan_iter(match=pattern)] == [], name
    replayed = await dump_live(redis_client, keys)
    assert replayed == live
    # An event delivered before its predecessors made its stream catch up from the store.
    assert any(
        '"message":"catching up' in p.log() and "from the event store" in p.log()
        for p in (first, second)
    )
    assert await _no_dead_letters(isolated_settings)


async def _drained(settings: Settings) -> bool:
    """Every projection's queue is empty."""
    queues = projection_queues(settings)
    return (await queue_counts(settings, *queues)) == [0] * len(queues)


async def _no_dead_letters(settings: Settings) -> bool:
    """Every projection's dead-letter queue is empty."""
    dlqs = [dlq_name(q) for q in projection_queues(settings)]
    return (await queue_counts(settings, *dlqs)) == [0] * len(dlqs)


async def test_a_projector_on_an_empty_redis_rebuilds_alone_then_consumes(
    processes: Processes, pg: asyncpg.Pool, redis_client: Redis, isolated_settings: Settings
) -> None:
    keys = Keys(isolated_settings.redis_key_prefix)
    ledger = Ledger(pg)
    orders = await ledger.seed(12)
    added = await ledger.append(orders[0], ItemAdded(item=line("late", 1, "1.00")))

    projectors = [processes.start("projector_worker", wait=False) for _ in range(2)]
    for proc in projectors:
        proc.wait_ready()
    assert await views_reached(redis_client, keys, ledger.versions)
    assert await views_match_streams(redis_client, keys, pg)
    for name in projection_names():
        said = f"no views of {name} in Redis: rebuilding them from the event store"
        rebuilders = [p for p in projectors if said in p.log()]
        assert len(rebuilders) == 1, name
    status = await stored_status(redis_client, keys, added)
    assert status["status"] == "succeeded"
    assert status["type"] == "AddItem"

    # Redis loses everything at once (a restart without persistence): the next event rebuilds
    # it. One DEL, atomic: deleting key by key would race the rebuild and delete its new keys.
    await redis_client.delete(
        *await keys_with_prefix(redis_client, isolated_settings.redis_key_prefix)
    )
    new_order = await ledger.create("cust-new", [line("sku-1", 1, "5.00")])
    await publish(isolated_settings, (await all_events(pg))[-1:])
    await until(lambda: views_reached(redis_client, keys, ledger.versions), 30, "the rebuild")
    await until(lambda: views_match_streams(redis_client, keys, pg), 30, "every projection")
    assert new_order in ledger.versions
    assert (await stored_status(redis_client, keys, added))["status"] == "succeeded"


async def test_poison_events_are_dead_lettered(
    processes: Processes, pg: asyncpg.Pool, isolated_settings: Settings
) -> None:
    processes.start("projector_worker")
    ledger = Ledger(pg)
    await ledger.create("cust-1", [line("sku-1", 1, "1.00")])
    event = (await all_events(pg))[0]
    bogus = event.model_copy(
        update={"event_id": uuid.uuid4(), "stream_id": order_stream(uuid.uuid4()), "version": 2}
    )
    await publish(isolated_settings, [bogus])
    connection = await aio_pika.connect(isolated_settings.amqp_url)
    try:
        channel = await connection.channel()
        dlq = dlq_name(order_views_queue(isolated_settings))
        message = await until(lambda: _get(channel, dlq), 20, "a dead letter")
        assert b"not in the event store" in str(message.headers).encode()
    finally:
        await connection.close()


async def test_a_batch_applies_each_event_and_dead_letters_its_poison_alone(
    processes: Processes, pg: asyncpg.Pool, redis_client: Redis, isolated_settings: Settings
) -> None:
    """The relay sends the events of one read in one message: each stream's events apply in
    order, the streams side by side; an event that can never apply goes to the dead-letter
    queue as a message of its own, and the batch's other events are not held back by it."""
    processes.start("projector_worker")
    keys = Keys(isolated_settings.redis_key_prefix)
    ledger = Ledger(pg)
    orders = await ledger.seed(6)
    for order_id in orders[:3]:
        await ledger.append(order_id, ItemAdded(item=line("late", 1, "1.00")))
    events = await all_events(pg)
    bogus = events[0].model_copy(
        update={"event_id": uuid.uuid4(), "stream_id": order_stream(uuid.uuid4()), "version": 2}
    )
    await publish(isolated_settings, [*events[:4], bogus, *events[4:]], batched=True)
    await until(lambda: views_reached(redis_client, keys, ledger.versions), 20, "every view")
    assert await views_match_streams(redis_client, keys, pg)
    connection = await aio_pika.connect(isolated_settings.amqp_url)
    try:
        channel = await connection.channel()
        for queue in projection_queues(isolated_settings):
            dead = await until(lambda q=queue: _get(channel, dlq_name(q)), 20, "a dead letter")
            assert dead.type == bogus.type  # the event alone, not the batch
            assert RecordedEvent.model_validate_json(dead.body) == bogus
            assert dead.headers["x-failure-kind"] == "poison"
            assert await _get(channel, dlq_name(queue)) is None
    finally:
        await connection.close()


async def _get(
    channel: aio_pika.abc.AbstractChannel, queue: str
) -> aio_pika.abc.AbstractIncomingMessage | None:
    target = await channel.get_queue(queue)
    return await target.get(fail=False, no_ack=True)


async def test_sigterm_drains_and_a_successor_finishes_the_work(
    processes: Processes, pg: asyncpg.Pool, redis_client: Redis, isolated_settings: Settings
) -> None:
    keys = Keys(isolated_settings.redis_key_prefix)
    ledger = Ledger(pg)
    await ledger.seed(200)
    first = processes.start("projector_worker")
    await publish(isolated_settings, await all_events(pg))
    await until(lambda: _some_projected(redis_client, keys), 20, "projection to start")
    assert first.terminate(timeout=30) == 0
    assert '"stopped"' in first.log()

    processes.start("projector_worker")
    await until(lambda: views_reached(redis_client, keys, ledger.versions), 30, "every order")
    await until(lambda: _drained(isolated_settings), 30, "the projection queues to drain")
    assert await views_match_streams(redis_client, keys, pg)
    assert await _no_dead_letters(isolated_settings)


async def _some_projected(redis: Redis, keys: Keys) -> bool:
    generation = await live_generation(redis, keys)
    if generation is None:
        return False
    return bool(await redis.get(projection_keys(keys).views(generation).checkpoint))
