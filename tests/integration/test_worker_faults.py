"""Killing and stopping command workers under load loses nothing and duplicates nothing."""

from __future__ import annotations

import asyncpg
import pytest

from common.settings import Settings
from harness.load import command_mix
from harness.processes import Processes
from tests.support.amqp import channel, depth, eventually, publish_commands
from tests.support.domains import topology_of
from tests.support.invariants import recorded, relay_caught_up, write_side_problems

pytestmark = pytest.mark.integration


async def test_kill_9_of_a_command_worker_mid_load_loses_nothing(
    isolated_settings: Settings, processes: Processes, pg: asyncpg.Pool
) -> None:
    creates, rest = command_mix(orders=60, additions_per_order=25)
    commands = creates + rest
    await publish_commands(isolated_settings, commands)
    victim = processes.start("command_worker")
    survivor = processes.start("command_worker")
    await eventually(lambda: _more_than(pg, len(commands) // 4), what="a quarter handled")
    victim.kill()
    await eventually(lambda: _more_than(pg, len(commands) - 1), timeout=60, what="all handled")
    assert await write_side_problems(pg, [c.command_id for c in commands]) == []
    await eventually(lambda: relay_caught_up(pg), what="relay caught up")
    assert survivor.popen.poll() is None


async def test_sigterm_finishes_in_flight_work_and_exits_cleanly(
    isolated_settings: Settings, processes: Processes, pg: asyncpg.Pool
) -> None:
    creates, rest = command_mix(orders=40, additions_per_order=25)
    commands = creates + rest
    await publish_commands(isolated_settings, commands)
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
