"""Redis comes back older than it was: a snapshot restored under a running system (or a replica
that missed writes promoted). The generation pointer is still there, so nothing is rebuilt;
the projectors must notice the lost writes themselves and catch the views and command statuses
up from the event store, also for orders that get no new event."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import httpx
import pytest
from redis.asyncio import Redis

from common.readmodel.keys import Keys
from common.settings import Settings
from harness.processes import Proc, Processes
from orders.contracts import ItemAdded
from projector_worker.losses import LossDetector, Trigger
from projector_worker.redis_views import Generations
from projector_worker.runner import writer_for
from tests.support.domains import registry_of
from tests.support.events import Ledger, all_events, line, until
from tests.support.invariants import not_terminal_in_redis
from tests.support.scrape import scrape
from tests.support.snapshots import restore_snapshot, take_snapshot
from tests.support.statuses import stored_statuses
from tests.support.views import (
    ORDER_VIEWS,
    compare_with_replay,
    views_match_streams,
    views_reached,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

ADDRESS = {
    "recipient": "Snap Shot",
    "street": "1 Restore Road",
    "city": "Rollback",
    "postal_code": "10101",
    "country": "DE",
}


# --- the script ---------------------------------------------------------------------------------


async def test_apply_reports_the_checkpoint_and_write_count_it_found(
    pg: asyncpg.Pool, redis_client: Redis, isolated_settings: Settings
) -> None:
    registry = registry_of(isolated_settings)
    projection = registry.projections[ORDER_VIEWS]
    writer = writer_for(
        redis_client, Keys(isolated_settings.redis_key_prefix), registry, projection
    )
    ledger = Ledger(pg)
    first = await ledger.create("cust-1", [line("sku-1", 1, "1.00")])
    second = await ledger.create("cust-2", [line("sku-2", 1, "2.00")])
    await ledger.append(first, ItemAdded(item=line("sku-3", 1, "3.00")))
    created_1, created_2, added = await all_events(pg)
    assert (created_2.stream_id, added.stream_id) == (f"Order-{second}", f"Order-{first}")
    await redis_client.set(writer.keys.generation, 1)
    live = Generations(1, None)
    planned = {}
    detector = LossDetector(ORDER_VIEWS)
    losses: list[int] = []
    detector.listen(lambda since, _trigger: losses.append(since))

    async def apply(event: Any) -> tuple[int | None, int, int]:
        before = planned.get((event.stream_id, event.version - 1))
        change = projection.plan(before, event, registry.parse_event(event))
        planned[(event.stream_id, event.version)] = change.view
        mark = detector.mark()
        result = await writer.apply_live(event, change, live)
        detector.after_apply(mark, result)
        return result.live_checkpoint_before, result.writes_before, result.writes_after

    try:
        assert await apply(created_1) == (0, 0, 1)
        assert await apply(created_2) == (created_1.position, 1, 2)
        snapshot = await take_snapshot(redis_client, isolated_settings.redis_key_prefix)
        assert await apply(created_1) == (created_2.position, 2, 2)  # a duplicate writes nothing
        assert await apply(added) == (created_2.position, 2, 3)
        state = await writer.live_state()
        assert state is not None
        assert (state.writes, state.live, state.checkpoint) == (3, 1, added.position)
        assert state.server  # the run_id of the server that answered
        assert (losses, detector.seen) == ([], 3)

        # The older state comes back: the next call finds the count and checkpoint it held.
        await restore_snapshot(redis_client, snapshot)
        assert await apply(added) == (created_2.position, 2, 3)
        assert (losses, detector.seen) == ([created_2.position], 3)

        # A rebuild's replay decodes the same reply.
        await redis_client.set(writer.keys.rebuilding, 2)
        change = projection.plan(planned[(added.stream_id, 1)], added, registry.parse_event(added))
        async with redis_client.pipeline(transaction=False) as pipe:
            await writer.replay_into(pipe, added, change, 2, record_commands=False)
            [raw] = await pipe.execute()
        replayed = writer.result_of(raw, 2)
        assert replayed.gap  # generation 2 has nothing of the order yet
        assert replayed.blocks[0].checkpoint_before == 0
        assert replayed.live_checkpoint_before is None
        assert replayed.writes_before == 3
    finally:
        await writer.close()


# --- the running system -------------------------------------------------------------------------


@dataclass
class Client:
    """Sends commands over HTTP like a user, each with its own Idempotency-Key; remembers every
    command answered 202."""

    http: httpx.AsyncClient
    accepted: list[uuid.UUID] = field(default_factory=list)

    async def send(
        self, method: str, path: str, body: dict[str, Any] | None = None, **params: str
    ) -> dict[str, Any]:
        response = await self.http.request(
            method,
            path,
            json=body,
            params=params or None,
            headers={"Idempotency-Key": uuid.uuid4().hex},
        )
        assert response.status_code == 202, response.text
        answer: dict[str, Any] = response.json()
        self.accepted.append(uuid.UUID(answer["command_id"]))
        return answer

    async def create(self, n: int) -> uuid.UUID:
        body = {
            "customer_id": f"loss-{n % 5}",
            "items": [{"product_id": f"sku-{n % 7}", "quantity": 1 + n % 3, "price": "1.25"}],
            "shipping_address": ADDRESS,
        }
        return uuid.UUID((await self.send("POST", "/orders", body))["order_id"])

    async def add(self, order_id: uuid.UUID, n: int) -> None:
        body = {"product_id": f"sku-{n % 4}", "quantity": 1, "price": "0.50"}
        await self.send("POST", f"/orders/{order_id}/items", body)

    async def ship(self, order_id: uuid.UUID) -> None:
        await self.send("POST", f"/orders/{order_id}/ship")

    async def cancel(self, order_id: uuid.UUID) -> None:
        await self.send("DELETE", f"/orders/{order_id}", reason="changed plans")


@dataclass
class Run:
    settings: Settings
    client: Client
    pg: asyncpg.Pool
    redis: Redis

    @property
    def keys(self) -> Keys:
        return Keys(self.settings.redis_key_prefix)

    async def settled(self, commands: Iterable[uuid.UUID]) -> None:
        """Wait until every command has its outcome in Redis, and the streams they changed
        their last event in every projection."""
        ids = list(commands)
        await until(
            lambda: _none(not_terminal_in_redis(self.redis, self.keys, ids)), 60, "the outcomes"
        )
        rows = await self.pg.fetch(
            "SELECT stream_id, max(version) AS version FROM events WHERE stream_id IN"
            " (SELECT stream_id FROM commands WHERE command_id = ANY($1::uuid[]))"
            " GROUP BY stream_id",
            ids,
        )
        versions = {r["stream_id"]: int(r["version"]) for r in rows}
        registry = registry_of(self.settings)
        for name in registry.projections:
            await until(
                lambda name=name: views_reached(self.redis, self.keys, versions, name, registry),
                60,
                f"the views of {name}",
            )

    async def before_the_snapshot(self) -> tuple[list[uuid.UUID], list[uuid.UUID]]:
        """Orders with a few events each, two of them shipped; (open orders, shipped orders)."""
        orders = list(await asyncio.gather(*(self.client.create(n) for n in range(16))))
        await asyncio.gather(*(self.client.add(o, n) for n, o in enumerate(orders)))
        await self.settled(self.client.accepted)
        await asyncio.gather(*(self.client.ship(o) for o in orders[:2]))
        await self.settled(self.client.accepted)
        return orders[2:], orders[:2]

    async def after_the_snapshot(
        self, open_orders: list[uuid.UUID], shipped: list[uuid.UUID]
    ) -> list[uuid.UUID]:
        """Changes the restore will undo: items added, orders shipped and cancelled, new orders,
        and rejected commands; none of these orders gets an event afterwards."""
        before = len(self.client.accepted)
        await asyncio.gather(*(self.client.add(o, n) for n, o in enumerate(open_orders)))
        await asyncio.gather(
            *(self.client.ship(o) for o in open_orders[:3]),
            *(self.client.cancel(o) for o in open_orders[3:5]),
            *(self.client.create(100 + n) for n in range(6)),
            *(self.client.add(o, 9) for o in shipped),  # rejected: the order is shipped
            *(self.client.ship(uuid.uuid4()) for _ in range(2)),  # rejected: no such order
        )
        changed = self.client.accepted[before:]
        await self.settled(changed)
        return changed

    async def restored(self) -> None:
        """Every view equals a fresh replay of the event store, and every accepted command's
        status shows its recorded outcome, within a deadline."""
        await until(self._caught_up, 60, "the views and statuses to come back")
        comparison = await compare_with_replay(
            self.redis, self.keys, self.pg, registry_of(self.settings)
        )
        assert comparison.ok, comparison.describe()

    async def _caught_up(self) -> bool:
        if not await views_match_streams(self.redis, self.keys, self.pg):
            return False
        return not await self.wrong_statuses()

    async def wrong_statuses(self) -> list[str]:
        """Accepted commands whose status disagrees with the command ledger."""
        rows = await self.pg.fetch(
            "SELECT command_id, status, reason, version FROM commands"
            " WHERE command_id = ANY($1::uuid[])",
            self.client.accepted,
        )
        assert len(rows) == len(self.client.accepted)
        hashes = await stored_statuses(self.redis, self.keys, [r["command_id"] for r in rows])
        wrong = []
        for row, status in zip(rows, hashes, strict=True):
            shown = (
                status.get("status", ""),
                status.get("reason", ""),
                str(status.get("version", "")),
            )
            recorded = (row["status"], row["reason"] or "", str(row["version"]))
            visible = (
                row["status"] != "succeeded" or status.get("projected_version") == row["version"]
            )
            if shown != recorded or not visible:
                wrong.append(f"{row['command_id']}: {shown} in Redis, {recorded} recorded")
        return wrong


async def _none(found: Any) -> bool:
    return not await found


@contextlib.asynccontextmanager
async def running(
    processes: Processes,
    settings: Settings,
    pg: asyncpg.Pool,
    redis: Redis,
    projectors: int = 1,
) -> AsyncIterator[tuple[Run, list[Proc]]]:
    processes.start("command_worker")
    started = [processes.start("projector_worker") for _ in range(projectors)]
    gateway = processes.start("gateway")
    async with httpx.AsyncClient(base_url=gateway.base_url, timeout=30) as http:
        yield Run(settings, Client(http), pg, redis), started


def noticed(projector: Proc, by: Trigger) -> bool:
    log = projector.log()
    return f"Redis lost writes of {ORDER_VIEWS}" in log and f"({by.described})" in log


async def test_an_older_snapshot_restored_under_load_is_caught_up(
    processes: Processes, pg: asyncpg.Pool, redis_client: Redis, isolated_settings: Settings
) -> None:
    prefix = isolated_settings.redis_key_prefix
    async with running(processes, isolated_settings, pg, redis_client, projectors=2) as (
        run,
        projectors,
    ):
        open_orders, shipped = await run.before_the_snapshot()
        stop = asyncio.Event()
        churned = 0

        async def churn() -> None:
            """Other orders keep coming, before and after the restore."""
            nonlocal churned
            while not stop.is_set():
                order = await run.client.create(1000 + churned)
                await asyncio.gather(*(run.client.add(order, n) for n in range(3)))
                churned += 1

        load = [asyncio.create_task(churn()) for _ in range(3)]
        try:
            await until(lambda: _at_least(lambda: churned, 3), 30, "the load to run")
            snapshot = await take_snapshot(redis_client, prefix)
            await run.after_the_snapshot(open_orders, shipped)
            await restore_snapshot(redis_client, snapshot)
            restored_at = churned
            await until(lambda: _at_least(lambda: churned, restored_at + 6), 30, "more load")
        finally:
            stop.set()
            await asyncio.gather(*load)

        await run.restored()
        assert any(noticed(p, Trigger.APPLY) or noticed(p, Trigger.WATCHDOG) for p in projectors)
        recoveries = 0.0
        for projector in projectors:
            found = await scrape(projector.base_url)
            recoveries += found.total(
                "orders_projection_recoveries_total", projection=ORDER_VIEWS, trigger="apply"
            ) + found.total(
                "orders_projection_recoveries_total", projection=ORDER_VIEWS, trigger="watchdog"
            )
        assert recoveries >= 1


async def _at_least(count: Any, target: int) -> bool:
    return bool(count() >= target)


async def test_an_older_snapshot_restored_while_quiet_is_caught_up(
    processes: Processes, pg: asyncpg.Pool, redis_client: Redis, isolated_settings: Settings
) -> None:
    prefix = isolated_settings.redis_key_prefix
    async with running(processes, isolated_settings, pg, redis_client) as (run, [projector]):
        open_orders, shipped = await run.before_the_snapshot()
        snapshot = await take_snapshot(redis_client, prefix)
        changed = await run.after_the_snapshot(open_orders, shipped)
        await restore_snapshot(redis_client, snapshot)

        # No command is sent any more: only the projector's watchdog can notice.
        await run.restored()
        assert noticed(projector, Trigger.WATCHDOG)
        found = await scrape(projector.base_url)
        assert found.total("orders_projection_streams_recovered_total", projection=ORDER_VIEWS) > 0
        restored = found.total("orders_command_statuses_recovered_total", projection=ORDER_VIEWS)
        assert restored >= len(changed)


async def test_a_snapshot_restored_while_no_projector_runs_is_caught_up_at_start(
    processes: Processes, pg: asyncpg.Pool, redis_client: Redis, isolated_settings: Settings
) -> None:
    prefix = isolated_settings.redis_key_prefix
    async with running(processes, isolated_settings, pg, redis_client) as (run, [projector]):
        open_orders, shipped = await run.before_the_snapshot()
        snapshot = await take_snapshot(redis_client, prefix)
        await run.after_the_snapshot(open_orders, shipped)
        assert projector.terminate() == 0
        await restore_snapshot(redis_client, snapshot)

        successor = processes.start("projector_worker")
        await run.restored()
        assert f"recovered {ORDER_VIEWS} from the event store" in successor.log()
        assert Trigger.START.described in successor.log()
