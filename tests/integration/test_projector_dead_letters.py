"""The projector's dead letters through its command line: listed with their reason, and moved
back once the cause is fixed."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import asyncpg
import pytest
from redis.asyncio import Redis

from common.contracts.envelopes import EventMetadata, RecordedEvent
from common.eventstore.store import EventStore, NewEvent
from common.messaging.topology import dlq_name
from common.readmodel.keys import Keys
from common.settings import Settings
from harness.processes import Processes
from orders.contracts import ItemAdded
from tests.support.amqp import queue_counts
from tests.support.events import (
    Ledger,
    all_events,
    line,
    order_stream,
    publish,
    until,
)
from tests.support.projector import order_views_queue, projector_cli
from tests.support.views import ORDER_VIEWS, views_reached

pytestmark = pytest.mark.integration


def dlq_command(settings: Settings, *args: str) -> str:
    result = projector_cli(settings, "dlq", *args, timeout_s=60)
    assert result.returncode == 0, result.stderr
    return result.stdout


async def test_a_dead_lettered_event_is_listed_then_replayed_once_its_cause_is_fixed(
    processes: Processes, pg: asyncpg.Pool, redis_client: Redis, isolated_settings: Settings
) -> None:
    keys = Keys(isolated_settings.redis_key_prefix)
    queue = order_views_queue(isolated_settings)
    processes.start("projector_worker")
    ledger = Ledger(pg)
    order_id = await ledger.create("cust-dlq", [line("sku-1", 1, "1.00")])
    await publish(isolated_settings, await all_events(pg))
    await until(lambda: views_reached(redis_client, keys, {order_id: 1}), 20, "the view")

    # Version 3 arrives while the event store holds only version 1 (a store restored from an
    # older backup, say): the projector cannot catch up, so the event is dead-lettered.
    command_id = uuid.uuid4()
    third = NewEvent(
        event_id=uuid.uuid4(),
        type="ItemAdded",
        data=ItemAdded(item=line("sku-3", 3, "3.00")).model_dump(mode="json", exclude={"type"}),
        metadata=EventMetadata(
            command_id=command_id,
            command_type="AddItem",
            correlation_id=uuid.uuid4(),
            causation_id=command_id,
            occurred_at=datetime.now(UTC),
        ),
    )
    early = RecordedEvent(
        event_id=third.event_id,
        position=1_000,
        stream_id=order_stream(order_id),
        version=3,
        type=third.type,
        data=third.data,
        metadata=third.metadata,
        recorded_at=datetime.now(UTC),
    )
    await publish(isolated_settings, [early])

    async def dead_lettered() -> bool:
        return await queue_counts(isolated_settings, dlq_name(queue)) == [1]

    await until(dead_lettered, 20, "the dead letter")
    # The order views' queue is the default one, and can be named.
    for listing in (
        dlq_command(isolated_settings, "list"),
        dlq_command(isolated_settings, "--projection", ORDER_VIEWS, "list"),
    ):
        assert f"1 dead letter(s) in {dlq_name(queue)}" in listing
        assert f"- {third.event_id}  type=ItemAdded  kind=poison" in listing
        assert "is not in the event store" in listing
    assert await queue_counts(isolated_settings, dlq_name(queue)) == [1]

    # The missing events are back in the store (not published): replaying the dead letter
    # makes the projector catch the order up from the store.
    await ledger.append(order_id, ItemAdded(item=line("sku-2", 2, "2.00")))
    await EventStore(pg).append_to_stream(
        order_stream(order_id),
        [third],
        2,
        command_id=command_id,
        command_type="AddItem",
        fingerprint=None,
    )
    replayed = dlq_command(isolated_settings, "--projection", ORDER_VIEWS, "replay")
    assert f"moved 1 dead letter(s) from {dlq_name(queue)} back to {queue}" in replayed
    await until(lambda: views_reached(redis_client, keys, {order_id: 3}), 20, "the caught-up view")
    assert await queue_counts(isolated_settings, queue, dlq_name(queue)) == [0, 0]
