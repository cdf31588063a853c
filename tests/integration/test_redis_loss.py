"""Redis comes back older than it was: a snapshot restored (or a replica that missed writes
promoted). APPLY reports what it found, so that a projector can tell."""

from __future__ import annotations

from typing import Any

import asyncpg
import pytest
from redis.asyncio import Redis

from common.readmodel.keys import Keys
from common.settings import Settings
from orders.contracts import ItemAdded
from projector_worker.redis_views import Generations, LiveState
from projector_worker.runner import writer_for
from tests.integration.test_projector_support import Ledger, all_events, line
from tests.support.domains import registry_of
from tests.support.snapshots import restore_snapshot, take_snapshot
from tests.support.views import ORDER_VIEWS

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

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

    async def apply(event: Any) -> tuple[int | None, int, int]:
        before = planned.get((event.stream_id, event.version - 1))
        change = projection.plan(before, event, registry.parse_event(event))
        planned[(event.stream_id, event.version)] = change.view
        result = await writer.apply_live(event, change, live)
        return result.live_checkpoint_before, result.writes_before, result.writes_after

    try:
        assert await apply(created_1) == (0, 0, 1)
        assert await apply(created_2) == (created_1.position, 1, 2)
        snapshot = await take_snapshot(redis_client, isolated_settings.redis_key_prefix)
        assert await apply(created_1) == (created_2.position, 2, 2)  # a duplicate writes nothing
        assert await apply(added) == (created_2.position, 2, 3)
        assert await writer.live_state() == LiveState(3, 1, added.position)

        # The older state comes back: the next call finds the count and checkpoint it held.
        await restore_snapshot(redis_client, snapshot)
        assert await apply(added) == (created_2.position, 2, 3)

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
