"""The event store and the relay on a real PostgreSQL and RabbitMQ: expected versions fail
loudly, commands are recorded once, and the relay never skips a late-committing event."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

import aio_pika
import asyncpg
import orjson
import pytest

from command_worker.relay import CHECKPOINT, Relay
from common.contracts.envelopes import EventMetadata
from common.domain import stream_id
from common.eventstore.store import DuplicateCommand, EventStore, NewEvent, WrongExpectedVersion
from common.messaging.connection import BrokerUnavailable
from common.messaging.publishing import ConfirmedPublisher
from common.observability import metrics
from common.settings import Settings
from tests.support.amqp import channel, events_in, eventually, take_events, tap_events
from tests.support.domains import registry_of, topology_of

pytestmark = pytest.mark.integration


def new_event(command_id: uuid.UUID, n: int = 0) -> NewEvent:
    return NewEvent(
        event_id=uuid.uuid4(),
        type="ItemAdded",
        data={"item": {"product_id": f"p{n}", "quantity": 1, "price": "1.00"}},
        metadata=EventMetadata(
            command_id=command_id,
            command_type="AddItem",
            correlation_id=command_id,
            causation_id=command_id,
            occurred_at=datetime.now(UTC),
        ),
    )


async def append(store: EventStore, stream: str, expected: int, count: int = 1) -> list[int]:
    command_id = uuid.uuid4()
    return await store.append_to_stream(
        stream,
        [new_event(command_id, i) for i in range(count)],
        expected,
        command_id=command_id,
        command_type="AddItem",
        fingerprint=None,
    )


def new_stream() -> str:
    return stream_id("Order", uuid.uuid4())


@asynccontextmanager
async def running_relay(settings: Settings, **options: Any) -> AsyncIterator[Relay]:
    connection = await aio_pika.connect(settings.amqp_url)
    publisher = await ConfirmedPublisher.open(connection, 5.0)
    relay = Relay(
        settings.database_url,
        lambda: publisher,
        exchange=topology_of(settings).events_exchange,
        upcast=registry_of(settings).upcast,
        batch_size=100,
        idle_poll_s=0.2,
        **options,
    )
    relay.start()
    try:
        yield relay
    finally:
        await relay.stop()
        await connection.close()


async def test_a_stale_expected_version_fails_loudly(pg: asyncpg.Pool) -> None:
    store = EventStore(pg)
    stream = new_stream()
    await append(store, stream, 0)
    with pytest.raises(WrongExpectedVersion):
        await append(store, stream, 0)
    await append(store, stream, 1, count=2)
    assert [e.version for e in await store.load_stream(stream)] == [1, 2, 3]


async def test_racing_appends_never_both_win(pg: asyncpg.Pool) -> None:
    store = EventStore(pg)
    stream = new_stream()
    results = await asyncio.gather(
        *(append(store, stream, 0) for _ in range(10)), return_exceptions=True
    )
    winners = [r for r in results if not isinstance(r, BaseException)]
    losers = [r for r in results if isinstance(r, WrongExpectedVersion)]
    assert (len(winners), len(losers)) == (1, 9)
    assert len(await store.load_stream(stream)) == 1


async def test_a_command_is_recorded_once(pg: asyncpg.Pool) -> None:
    store = EventStore(pg)
    command_id = uuid.uuid4()
    stream = new_stream()
    await store.append_to_stream(
        stream,
        [new_event(command_id)],
        0,
        command_id=command_id,
        command_type="X",
        fingerprint="f",
    )
    with pytest.raises(DuplicateCommand):
        await store.append_to_stream(
            stream,
            [new_event(command_id)],
            1,
            command_id=command_id,
            command_type="X",
            fingerprint="f",
        )
    assert len(await store.load_stream(stream)) == 1


class FailingThird:
    """The real publisher, except that its third batch waits for `release`, then fails."""

    def __init__(self, real: ConfirmedPublisher) -> None:
        self.real = real
        self.calls = 0
        self.third_pending = asyncio.Event()
        self.release = asyncio.Event()

    async def publish_many(
        self, exchange: str, messages: list[tuple[str, aio_pika.Message]]
    ) -> None:
        self.calls += 1
        if self.calls == 3:
            self.third_pending.set()
            await self.release.wait()
            raise BrokerUnavailable("the third batch failed (injected)")
        await self.real.publish_many(exchange, messages)


async def test_relay_sends_on_while_a_batch_awaits_its_confirm_and_resends_after_a_failure(
    isolated_settings: Settings, pg: asyncpg.Pool
) -> None:
    """Batch 4 goes out while batch 3 (positions 5-6) is unconfirmed (twice the batch size may
    be in flight); nothing from 5 on counts as published or reaches the checkpoint until it is
    confirmed; when it fails, the relay sends again from position 5, and every event arrives."""
    store = EventStore(pg)
    streams = [new_stream() for _ in range(4)]
    for version in range(5):
        for stream in streams:
            await append(store, stream, version)
    connection = await aio_pika.connect(isolated_settings.amqp_url)
    publisher = FailingThird(await ConfirmedPublisher.open(connection, 5.0))
    relay = Relay(
        isolated_settings.database_url,
        lambda: publisher,  # type: ignore[arg-type, return-value]
        exchange=topology_of(isolated_settings).events_exchange,
        upcast=registry_of(isolated_settings).upcast,
        batch_size=2,
        idle_poll_s=0.2,
    )
    try:
        async with channel(isolated_settings.amqp_url) as ch:
            tap = await tap_events(ch)
            relay.start()
            await asyncio.wait_for(publisher.third_pending.wait(), 10)
            await eventually(lambda: publisher.calls == 4, what="a batch sent past the third")
            await eventually(lambda: relay.published_up_to == 4, what="batches 1-2 confirmed")
            stored = await pg.fetchval(
                "SELECT position FROM checkpoints WHERE name = $1", CHECKPOINT
            )
            assert stored is None or stored <= 4
            assert publisher.calls == 4  # batch 5 would put 6 events in flight
            publisher.release.set()
            await eventually(lambda: relay.published_up_to == 20, what="all 20 confirmed")
            # Confirmed means enqueued: everything sent is in the tap by now.
            positions = []
            while (message := await tap.get(fail=False, no_ack=True)) is not None:
                positions += [event["position"] for event in events_in(message)]
            assert set(positions) == set(range(1, 21)), sorted(positions)
            assert positions.count(5) == positions.count(6) == 1  # only the resend reached RabbitMQ
    finally:
        await relay.stop()
        await connection.close()
    assert await pg.fetchval("SELECT position FROM checkpoints WHERE name = $1", CHECKPOINT) == 20


async def test_relay_publishes_in_order_and_resumes_from_its_checkpoint(
    isolated_settings: Settings, pg: asyncpg.Pool
) -> None:
    store = EventStore(pg)
    streams = [new_stream() for _ in range(3)]
    for version in range(4):
        for stream in streams:
            await append(store, stream, version)
    async with channel(isolated_settings.amqp_url) as ch:
        tap = await tap_events(ch)
        async with running_relay(isolated_settings) as relay:
            first = await take_events(tap, 12)
            await eventually(lambda: relay.published_up_to == 12, what="published up to 12")

            async def checkpoint() -> int | None:
                query = "SELECT position FROM checkpoints WHERE name = $1"
                return await pg.fetchval(query, CHECKPOINT)  # type: ignore[no-any-return]

            # Written at most once a second, and within a second of the relay catching up.
            await eventually(checkpoint, timeout=5, what="a checkpoint")
            assert await checkpoint() == 12
        await append(store, streams[0], 4)
        async with running_relay(isolated_settings):
            [late] = await take_events(tap, 1)
    assert [event["position"] for event in first] == list(range(1, 13))
    assert late["position"] == 13


async def test_relay_does_not_skip_an_event_committed_after_a_higher_position(
    isolated_settings: Settings, pg: asyncpg.Pool
) -> None:
    """Transaction A takes position 1 and commits last; B takes position 2 and commits first.
    A relay trusting "everything below the highest visible position" would publish 2 and skip
    1 for ever (Marten #3321, Eventuous #222, Axon #391)."""
    store = EventStore(pg)
    slow = await asyncpg.connect(isolated_settings.database_url)
    try:
        slow_tx = slow.transaction()
        await slow_tx.start()
        command_id = uuid.uuid4()
        event = new_event(command_id)
        [slow_position] = await slow.fetchval(
            "SELECT append_to_stream($1, 'AddItem', 'slow', 0, NULL, $2, $3, $4, $5::jsonb[],"
            " $6::jsonb[])",
            command_id,
            [event.event_id],
            [event.type],
            [event.schema_version],
            [orjson.dumps(event.data).decode()],
            [event.metadata.model_dump_json()],
        )
        [fast_position] = await append(store, "fast", 0)
        assert slow_position < fast_position

        async with channel(isolated_settings.amqp_url) as ch:
            tap = await tap_events(ch)
            async with running_relay(isolated_settings) as relay:
                await eventually(lambda: relay.is_leader, what="relay leading")
                # The relay sees position 2 committed but must hold back until A ends.
                assert await tap.get(fail=False, no_ack=True) is None
                await slow_tx.commit()
                events = await take_events(tap, 2)
    finally:
        await slow.close()
    assert [event["position"] for event in events] == [slow_position, fast_position]


async def _open_append(conn: asyncpg.Connection, stream: str) -> int:
    """Append one event on `conn` (inside its open transaction); its position."""
    command_id = uuid.uuid4()
    event = new_event(command_id)
    [position] = await conn.fetchval(
        "SELECT append_to_stream($1, 'AddItem', $2, 0, NULL, $3, $4, $5, $6::jsonb[], $7::jsonb[])",
        command_id,
        stream,
        [event.event_id],
        [event.type],
        [event.schema_version],
        [orjson.dumps(event.data).decode()],
        [event.metadata.model_dump_json()],
    )
    return int(position)


async def test_the_horizon_waits_for_a_newer_transaction_holding_a_lower_position(
    isolated_settings: Settings, pg: asyncpg.Pool
) -> None:
    """B takes its transaction id, then A takes a newer one and position p; B takes p + 1 and
    commits while A is still open. A snapshot's xmax is the latest *completed* id + 1, which
    can be A's own id: A is then in no snapshot's list of running transactions, and a horizon
    built on snapshots called p + 1 final and skipped p for ever (seen under load)."""
    older = await asyncpg.connect(isolated_settings.database_url)
    newer = await asyncpg.connect(isolated_settings.database_url)
    relay_conn = await asyncpg.connect(isolated_settings.database_url)
    try:
        older_tx, newer_tx = older.transaction(), newer.transaction()
        await older_tx.start()
        older_id = int(await older.fetchval("SELECT pg_current_xact_id()::text::bigint"))
        await newer_tx.start()
        newer_id = int(await newer.fetchval("SELECT pg_current_xact_id()::text::bigint"))
        assert older_id < newer_id
        low = await _open_append(newer, "newer")
        high = await _open_append(older, "older")
        assert low < high
        await older_tx.commit()

        horizon = await EventStore.read_horizon(relay_conn)
        assert horizon.last_position >= high
        assert not horizon.final
        waiting = asyncio.create_task(EventStore.wait_until_final(relay_conn, horizon))
        done, _ = await asyncio.wait({waiting}, timeout=0.5)
        assert not done, "the horizon must not be final while the newer transaction is open"
        await newer_tx.commit()
        await asyncio.wait_for(waiting, 10)
        events = await EventStore.read_range(relay_conn, 0, horizon.last_position, 100)
        assert [e.position for e in events] == [low, high]
    finally:
        for conn in (older, newer, relay_conn):
            await conn.close()


async def test_a_write_transaction_on_another_table_holds_nothing_back(
    isolated_settings: Settings, pg: asyncpg.Pool
) -> None:
    """A write transaction left open in the event store's database on a table of its own (a
    `psql` session during a manual fix) can take no position: the horizon is final at once and
    the relay publishes on. It used to hold every view back for as long as it stayed open."""
    store = EventStore(pg)
    forgotten = await asyncpg.connect(isolated_settings.database_url)
    try:
        await forgotten.execute("CREATE TABLE scratch (x integer)")
        await forgotten.execute("BEGIN")
        await forgotten.execute("INSERT INTO scratch VALUES (1)")
        assert await forgotten.fetchval("SELECT pg_current_xact_id_if_assigned()") is not None
        [appended] = await append(store, new_stream(), 0)
        async with pg.acquire() as conn:
            horizon = await EventStore.read_horizon(conn)
        assert horizon.last_position >= appended
        assert horizon.final, horizon

        async with channel(isolated_settings.amqp_url) as ch:
            tap = await tap_events(ch)
            async with running_relay(isolated_settings) as relay:
                await eventually(lambda: relay.is_leader, what="relay leading")
                [later] = await append(store, new_stream(), 0)
                events = await take_events(tap, 2, timeout=10)
        assert forgotten.is_in_transaction()
    finally:
        await forgotten.close()
    assert [event["position"] for event in events] == [appended, later]


async def test_any_insert_into_the_log_holds_the_horizon_until_it_ends(
    isolated_settings: Settings, pg: asyncpg.Pool
) -> None:
    """Not only the append functions take positions: a manual `INSERT INTO events` does too, and
    the statement trigger marks its transaction as an appender before its rows take their
    positions. Left open, it holds the horizon; nothing after it is published before it ends."""
    store = EventStore(pg)
    manual = await asyncpg.connect(isolated_settings.database_url)
    try:
        manual_tx = manual.transaction()
        await manual_tx.start()
        low = await manual.fetchval(
            "INSERT INTO events (stream_id, version, event_id, type, data, metadata)"
            " VALUES ('manual', 1, gen_random_uuid(), 'ItemAdded', '{}', '{}')"
            " RETURNING position"
        )
        manual_id = int(await manual.fetchval("SELECT pg_current_xact_id()::text::bigint"))
        [high] = await append(store, new_stream(), 0)
        async with pg.acquire() as conn:
            horizon = await EventStore.read_horizon(conn)
            assert horizon.last_position >= high
            assert horizon.running == (manual_id % 2**32,)
            waiting = asyncio.create_task(EventStore.wait_until_final(conn, horizon))
            done, _ = await asyncio.wait({waiting}, timeout=0.5)
            assert not done, "the horizon must not be final while the manual insert is open"
            await manual_tx.commit()
            await asyncio.wait_for(waiting, 10)
            positions = await conn.fetch(
                "SELECT position FROM events WHERE position <= $1 ORDER BY position",
                horizon.last_position,
            )
        assert [p["position"] for p in positions] == [low, high]
    finally:
        await manual.close()


def relay_blocked_seconds() -> float:
    [family] = metrics.RELAY_BLOCKED.collect()
    [sample] = family.samples
    return sample.value


async def test_an_appender_holding_the_relay_back_is_named_in_logs_and_metrics(
    isolated_settings: Settings, pg: asyncpg.Pool, caplog: pytest.LogCaptureFixture
) -> None:
    """An append left open past `HELD_BACK_REPORT_S`: the relay holds back every event after it
    and says who it waits for (a warning naming the session, `relay_blocked_seconds`); when the
    append commits, both events are published in order and the gauge is back at 0."""
    caplog.set_level(logging.WARNING, logger="command_worker.relay")
    store = EventStore(pg)
    held = await asyncpg.connect(
        isolated_settings.database_url, server_settings={"application_name": "forgotten-append"}
    )
    try:
        held_tx = held.transaction()
        await held_tx.start()
        low = await _open_append(held, new_stream())
        [high] = await append(store, new_stream(), 0)

        def named() -> list[str]:
            return [
                r.getMessage()
                for r in caplog.records
                if r.name == "command_worker.relay"
                and r.levelno == logging.WARNING
                and f"pid {held.get_server_pid()} " in r.getMessage()
            ]

        async with channel(isolated_settings.amqp_url) as ch:
            tap = await tap_events(ch)
            async with running_relay(isolated_settings):
                await eventually(named, timeout=10, what="a warning naming the held session")
                assert relay_blocked_seconds() >= 1.0
                assert await tap.get(fail=False, no_ack=True) is None
                await held_tx.commit()
                events = await take_events(tap, 2)
                await eventually(lambda: relay_blocked_seconds() == 0, what="the gauge at 0")
    finally:
        await held.close()
    assert [event["position"] for event in events] == [low, high]
    [warning] = named()[:1]
    assert "'forgotten-append'" in warning, warning
    assert "state idle in transaction" in warning, warning


async def test_rolled_back_positions_leave_a_gap_the_relay_passes(
    isolated_settings: Settings, pg: asyncpg.Pool
) -> None:
    store = EventStore(pg)
    await append(store, "a", 0)
    with pytest.raises(WrongExpectedVersion):
        await append(store, "a", 0)  # takes a position, then rolls back
    await append(store, "a", 1)
    async with channel(isolated_settings.amqp_url) as ch:
        tap = await tap_events(ch)
        async with running_relay(isolated_settings):
            events = await take_events(tap, 2)
    assert [event["version"] for event in events] == [1, 2]


async def test_one_relay_leads_and_another_takes_over(
    isolated_settings: Settings, pg: asyncpg.Pool
) -> None:
    store = EventStore(pg)
    async with (
        channel(isolated_settings.amqp_url) as ch,
        running_relay(isolated_settings) as first,
        running_relay(isolated_settings) as second,
    ):
        tap = await tap_events(ch)
        await eventually(lambda: first.is_leader or second.is_leader, what="a leader")
        leader, standby = (first, second) if first.is_leader else (second, first)
        assert not standby.is_leader
        await append(store, "s", 0)
        await take_events(tap, 1)
        await leader.stop()
        await eventually(lambda: standby.is_leader, what="standby takes over")
        await append(store, "s", 1)
        [after] = await take_events(tap, 1)
    assert after["version"] == 2


async def test_a_connection_released_inside_a_transaction_comes_back_without_it(
    pg: asyncpg.Pool,
) -> None:
    """An open transaction holds its id and its locks, and after an append the relay's horizon
    too: the pool must never hand such a connection out again, let alone keep it idle."""
    async with pg.acquire() as conn:
        await conn.execute("BEGIN")
        await conn.execute("INSERT INTO checkpoints (name, position) VALUES ('stray', 1)")
        assert conn.is_in_transaction()
    async with pg.acquire() as conn:
        assert not conn.is_in_transaction()
        assert await conn.fetchval("SELECT count(*) FROM checkpoints WHERE name = 'stray'") == 0


async def test_the_horizon_functions_keep_their_plans_for_the_session(pg: asyncpg.Pool) -> None:
    """The relay reads the horizon after every append. A LANGUAGE sql function that PostgreSQL
    cannot inline is parsed and planned again on every call (`pg_stat_activity` is a view over
    three relations), which cost five times the query itself; PL/pgSQL keeps the plan."""
    async with pg.acquire() as conn:
        languages = dict(
            await conn.fetch(
                "SELECT p.proname, l.lanname FROM pg_proc p JOIN pg_language l"
                " ON l.oid = p.prolang WHERE p.proname = ANY($1::text[])",
                ["running_transactions", "read_horizon"],
            )
        )
        assert languages == {"running_transactions": "plpgsql", "read_horizon": "plpgsql"}


async def test_a_session_keeps_reading_by_index_as_the_log_grows(pg: asyncpg.Pool) -> None:
    """A statement prepared while the log was small must not fall back to a plan made for a
    small table. PostgreSQL keeps the generic plan it costed early on (a sequential scan) and
    switches to it once the custom plans of the grown table cost more on average: from then
    on every load scans the whole log."""
    store = EventStore(pg)
    await append(store, "early", 0)
    async with pg.acquire() as conn:
        for _ in range(10):  # past the runs after which PostgreSQL may settle on one plan
            assert len((await store.load_streams(conn, ["early"]))["early"]) == 1
        await conn.execute(
            "INSERT INTO events (stream_id, version, event_id, type, data, metadata)"
            " SELECT 'grown-' || g, 1, gen_random_uuid(), 'ItemAdded', '{}', '{}'"
            " FROM generate_series(1, 30000) AS g"
        )
        for _ in range(10):
            await store.load_streams(conn, ["early"])
        name = await conn.fetchval(
            "SELECT name FROM pg_prepared_statements"
            " WHERE statement LIKE 'SELECT stream_id, version, type, data, schema_version"
            " FROM events WHERE%'"
        )
        assert name is not None
        plan = await conn.fetchval(f"EXPLAIN (FORMAT JSON) EXECUTE {name}('{{early}}')")
        assert "Seq Scan" not in plan, plan
