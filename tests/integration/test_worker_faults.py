"""Killing and stopping command workers under load loses nothing and duplicates nothing."""

from __future__ import annotations

import asyncpg
import pytest

from common.messaging.messages import command_message
from common.settings import Settings
from tests.support.amqp import channel, depth, eventually
from tests.support.domains import registry_of, topology_of
from tests.support.invariants import relay_caught_up, write_side_problems
from tests.support.load import command_mix
from tests.support.processes import ProcessFactory

pytestmark = pytest.mark.integration


async def recorded(pool: asyncpg.Pool) -> int:
    return int(await pool.fetchval("SELECT count(*) FROM commands"))


async def publish_all(settings: Settings, commands: list) -> None:  # type: ignore[type-arg]
    registry = registry_of(settings)
    topology = topology_of(settings)
    async with channel(settings.amqp_url) as ch:
        exchange = await ch.get_exchange(topology.commands_exchange)
        for command in commands:
            stream = registry.aggregate_of_command[command.type].stream_of(command)
            await exchange.publish(
                command_message(command, stream), routing_key=topology.commands_queue
            )


async def test_kill_9_of_a_command_worker_mid_load_loses_nothing(
    isolated_settings: Settings, processes: ProcessFactory, pg: asyncpg.Pool
) -> None:
    creates, rest = command_mix(orders=60, additions_per_order=25)
    commands = creates + rest
    await publish_all(isolated_settings, commands)
    victim = processes.start("command_worker")
    survivor = processes.start("command_worker")
    await eventually(lambda: _more_than(pg, len(commands) // 4), what="a quarter handled")
    victim.kill()
    await eventually(lambda: _more_than(pg, len(commands) - 1), timeout=60, what="all handled")
    assert await write_side_problems(pg, [c.command_id for c in commands]) == []
    await eventually(lambda: relay_caught_up(pg), what="relay caught up")
    assert survivor.popen.poll() is None


async def test_sigterm_finishes_in_flight_work_and_exits_cleanly(
    isolated_settings: Settings, processes: ProcessFactory, pg: asyncpg.Pool
) -> None:
    creates, rest = command_mix(orders=40, additions_per_order=25)
    commands = creates + rest
    await publish_all(isolated_settings, commands)
    worker = processes.start("command_worker")
    await eventually(lambda: _more_than(pg, 100), what="work under way")
    assert worker.terminate(timeout=30) == 0
    assert "command worker stopped" in worker.log()
    processes.start("command_worker")
    await eventually(lambda: _more_than(pg, len(commands) - 1), timeout=60, what="all handled")
    assert await write_side_problems(pg, [c.command_id for c in commands]) == []
    async with channel(isolated_settings.amqp_url) as ch:

        async def drained() -> bool:
            return await depth(ch, topology_of(isolated_settings).commands_queue) == 0

        await eventually(drained, what="queue drained")


async def _more_than(pool: asyncpg.Pool, n: int) -> bool:
    return await recorded(pool) > n
