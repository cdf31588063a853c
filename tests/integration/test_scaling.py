"""Three command workers and two projectors side by side, driven over HTTP.

A hundred orders, over a thousand commands, a few orders taking a hundred and fifty concurrent
item additions each (so every worker holds commands of the same order at once), ships and cancels
racing the additions. Then, exactly: every command recorded once, streams contiguous, every
addition to an open order kept, each order's view and history equal to a replay of its stream,
the whole live generation equal to a fresh rebuild, and no dead letters.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import httpx
import orjson
import pytest
from redis.asyncio import Redis

from common.contracts.envelopes import RecordedEvent
from common.messaging.topology import dlq_name
from common.readmodel.keys import Keys
from common.readmodel.projection import history_event_json
from common.settings import Settings
from harness.processes import Processes
from orders.projection import OrderViews, replay
from tests.support.amqp import queue_counts
from tests.support.domains import projection_names, registry_of, topology_of
from tests.support.events import all_events, order_stream, until
from tests.support.invariants import relay_caught_up, write_side_problems
from tests.support.projector import run_rebuild
from tests.support.scrape import scrape
from tests.support.statuses import stored_statuses
from tests.support.views import (
    dump_differences,
    dump_live,
    live_generation,
    views_match_streams,
    views_reached,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

ORDERS = 120
HOT_ORDERS = 4
"""Orders that take HOT_ADDITIONS item additions each, sent concurrently with everything else."""
HOT_ADDITIONS = 150
COLD_ADDITIONS = 4
CONCURRENCY = 32
TERMINAL = {b"succeeded", b"rejected", b"failed"}

ADDRESS = {
    "recipient": "Scale Tester",
    "street": "3 Worker Row",
    "city": "Quorum",
    "postal_code": "30303",
    "country": "NL",
}


@dataclass
class Sent:
    """What the test sent and the gateway accepted, by order."""

    kinds: dict[uuid.UUID, str] = field(default_factory=dict)
    """command id -> create / add / ship / cancel"""
    order_of: dict[uuid.UUID, uuid.UUID] = field(default_factory=dict)
    """command id -> order id"""
    added: dict[uuid.UUID, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))
    """hot order id -> quantity added per product (every addition must be kept)"""

    def accept(self, kind: str, body: dict[str, Any]) -> None:
        command_id = uuid.UUID(body["command_id"])
        self.kinds[command_id] = kind
        self.order_of[command_id] = uuid.UUID(body["order_id"])


async def bounded(calls: list[Callable[[], Awaitable[None]]], limit: int) -> None:
    """Run every call, at most `limit` at a time."""
    gate = asyncio.Semaphore(limit)

    async def run(call: Callable[[], Awaitable[None]]) -> None:
        async with gate:
            await call()

    await asyncio.gather(*(run(call) for call in calls))


def add_item(
    http: httpx.AsyncClient, sent: Sent, order_id: uuid.UUID, product: str, quantity: int
) -> Callable[[], Awaitable[None]]:
    async def call() -> None:
        response = await http.post(
            f"/orders/{order_id}/items",
            json={"product_id": product, "quantity": quantity, "price": "1.25"},
        )
        assert response.status_code == 202, response.text
        sent.accept("add", response.json())

    return call


def finish(
    http: httpx.AsyncClient, sent: Sent, order_id: uuid.UUID, kind: str
) -> Callable[[], Awaitable[None]]:
    async def call() -> None:
        if kind == "ship":
            response = await http.post(f"/orders/{order_id}/ship")
        else:
            response = await http.delete(f"/orders/{order_id}", params={"reason": "scale test"})
        assert response.status_code == 202, response.text
        sent.accept(kind, response.json())

    return call


async def drive(http: httpx.AsyncClient) -> tuple[Sent, list[uuid.UUID]]:
    """Creates first (each answered once visible), then everything else shuffled together."""
    sent = Sent()
    order_ids: list[uuid.UUID] = []

    async def create(n: int) -> None:
        response = await http.post(
            "/orders",
            json={
                "customer_id": f"scale-{n % 23}",
                "items": [{"product_id": "base", "quantity": 1, "price": "3.50"}],
                "shipping_address": ADDRESS,
            },
            headers={"Prefer": "wait=10"},
        )
        assert response.status_code == 201, response.text
        sent.accept("create", response.json())
        order_ids.append(uuid.UUID(response.json()["order_id"]))

    await bounded([lambda n=n: create(n) for n in range(ORDERS)], CONCURRENCY)

    hot, cold = order_ids[:HOT_ORDERS], order_ids[HOT_ORDERS:]
    calls: list[Callable[[], Awaitable[None]]] = []
    for order_id in hot:
        for n in range(HOT_ADDITIONS):
            product, quantity = f"hot-{n % 5}", 1 + n % 3
            sent.added[order_id][product] += quantity
            calls.append(add_item(http, sent, order_id, product, quantity))
    for i, order_id in enumerate(cold):
        calls += [add_item(http, sent, order_id, f"cold-{n}", 1) for n in range(COLD_ADDITIONS)]
        if i % 2 == 0:
            calls.append(finish(http, sent, order_id, "ship" if i % 4 == 0 else "cancel"))
    random.Random(11).shuffle(calls)
    await bounded(calls, CONCURRENCY)
    return sent, order_ids


async def statuses(redis: Redis, keys: Keys, command_ids: list[uuid.UUID]) -> list[bytes | None]:
    found = await stored_statuses(redis, keys, command_ids)
    return [status["status"].encode() if status else None for status in found]


def by_stream(events: list[RecordedEvent]) -> dict[str, list[RecordedEvent]]:
    streams: dict[str, list[RecordedEvent]] = defaultdict(list)
    for event in events:
        streams[event.stream_id].append(event)
    return streams


async def test_three_command_workers_and_two_projectors_lose_nothing(
    processes: Processes,
    pg: asyncpg.Pool,
    redis_client: Redis,
    isolated_settings: Settings,
) -> None:
    keys = Keys(isolated_settings.redis_key_prefix)
    workers = [processes.start("command_worker", wait=False) for _ in range(3)]
    projectors = [processes.start("projector_worker", wait=False) for _ in range(2)]
    gateway = processes.start("gateway", wait=False)
    for proc in [*workers, *projectors, gateway]:
        proc.wait_ready()

    started = time.monotonic()
    limits = httpx.Limits(max_connections=CONCURRENCY, max_keepalive_connections=CONCURRENCY)
    async with httpx.AsyncClient(base_url=gateway.base_url, timeout=30, limits=limits) as http:
        sent, order_ids = await drive(http)
        sent_s = time.monotonic() - started
        command_ids = list(sent.kinds)

        async def all_terminal() -> bool:
            return all(s in TERMINAL for s in await statuses(redis_client, keys, command_ids))

        await until(all_terminal, 60, "every accepted command to reach a terminal status")
        settled_s = time.monotonic() - started

        # The write side, from the event store itself.
        assert await write_side_problems(pg, command_ids) == []
        rows = await pg.fetch(
            "SELECT command_id, status, stream_id FROM commands WHERE command_id = ANY($1)",
            command_ids,
        )
        outcome = {r["command_id"]: r["status"] for r in rows}
        counts = Counter(outcome.values())
        assert counts["failed"] == 0, counts
        hot_adds = [
            c for c, o in sent.order_of.items() if o in sent.added and sent.kinds[c] == "add"
        ]
        assert {outcome[c] for c in hot_adds} == {"succeeded"}

        events = await all_events(pg)
        streams = by_stream(events)
        assert sorted(streams) == sorted(order_stream(o) for o in order_ids)
        assert {r["stream_id"] for r in rows} <= set(streams)
        succeeded_by_order: dict[str, set[uuid.UUID]] = defaultdict(set)
        for command_id, status in outcome.items():
            if status == "succeeded":
                succeeded_by_order[order_stream(sent.order_of[command_id])].add(command_id)
        for stream_id, stream in streams.items():
            assert [e.version for e in stream] == list(range(1, len(stream) + 1))
            # Each succeeded command has exactly its one event; no other command has any.
            assert sorted(e.metadata.command_id for e in stream) == sorted(
                succeeded_by_order[stream_id]
            )

        # The read side: every view and history equals a replay of its stream.
        versions = {s: len(stream) for s, stream in streams.items()}
        await until(lambda: views_reached(redis_client, keys, versions), 30, "every view")
        await until(lambda: relay_caught_up(pg), 10, "the relay to catch up")
        await until(
            lambda: _drained(isolated_settings), 30, "the command and projection queues to drain"
        )
        assert await views_match_streams(redis_client, keys, pg)
        registry = registry_of(isolated_settings)
        for order_id in order_ids:
            stream = streams[order_stream(order_id)]
            expected = replay((e, registry.parse_event(e)) for e in stream)
            assert expected is not None
            view = (await http.get(f"/orders/{order_id}")).json()
            assert view == orjson.loads(orjson.dumps(expected.to_api())), order_id
            history = (await http.get(f"/orders/{order_id}/history?limit=1000")).json()
            assert history["next"] is None
            assert history["events"] == [
                orjson.loads(history_event_json(OrderViews().history_entry(e))) for e in stream
            ]
            if order_id in sent.added:
                quantities = Counter(
                    {line["product_id"]: line["quantity"] for line in view["items"]}
                )
                assert quantities == sent.added[order_id] + Counter({"base": 1})

    # The whole live generation of every projection (views, histories, every index) equals
    # a fresh replay.
    lives = {name: await live_generation(redis_client, keys, name) for name in projection_names()}
    assert None not in lives.values(), lives
    live_dump = await dump_live(redis_client, keys)
    result = run_rebuild(isolated_settings, "--all", "--quiet")
    assert result.returncode == 0, result.stderr
    for name, live in lives.items():
        rebuilt = await live_generation(redis_client, keys, name)
        assert rebuilt is not None
        assert rebuilt != live, name
    rebuilt_dump = await dump_live(redis_client, keys)
    assert rebuilt_dump == live_dump, dump_differences(live_dump, rebuilt_dump)

    dlqs = [dlq_name(q) for q in topology_of(isolated_settings).work_queues]
    assert await queue_counts(isolated_settings, *dlqs) == [0] * len(dlqs)

    conflicts = {"batch": 0.0, "command": 0.0}
    handled = 0.0
    for worker in workers:
        metrics = await scrape(worker.base_url)
        for scope in conflicts:
            conflicts[scope] += metrics.total("orders_version_conflicts_total", scope=scope)
        handled += sum(
            metrics.total("orders_commands_total", outcome=o)
            for o in ("succeeded", "rejected", "failed")
        )
    assert handled >= len(command_ids)
    print(
        f"\nscaling: {len(command_ids)} commands on {ORDERS} orders "
        f"({HOT_ORDERS} hot x {HOT_ADDITIONS} additions) through 3 command workers and "
        f"2 projectors; sent in {sent_s:.1f}s, all settled after {settled_s:.1f}s; "
        f"outcomes {dict(counts)}; version conflicts: {conflicts['batch']:.0f} batch, "
        f"{conflicts['command']:.0f} single-command over {handled:.0f} commands handled "
        f"= {(conflicts['batch'] + conflicts['command']) / handled:.2%}"
    )


async def _drained(settings: Settings) -> bool:
    """The commands queue and every projection's queue are empty."""
    queues = topology_of(settings).work_queues
    return await queue_counts(settings, *queues) == [0] * len(queues)
