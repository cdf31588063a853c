"""An outage is not a message failure: while PostgreSQL or Redis stops answering, a worker
pauses its consumers, holds what it has, and resumes by itself once the service answers,
spending no retry and dead-lettering nothing, however long the outage lasts.

Each worker reaches the service through a proxy the test freezes: the connections stay open
and nothing answers, the kind of outage no error reports. Every outage here outlasts the
worker's whole retry budget many times over (two attempts, 50 ms apart), so a worker that took
an outage for a message failure would dead-letter the lot.
"""

from __future__ import annotations

import asyncio
import urllib.parse
from collections.abc import Iterator

import asyncpg
import pytest
from redis.asyncio import Redis

from common.readmodel.keys import Keys
from common.settings import Settings
from harness.load import command_mix
from harness.processes import Proc, Processes
from tests.support.amqp import eventually, publish_commands, queue_counts
from tests.support.domains import topology_of
from tests.support.invariants import (
    dead_letters,
    not_terminal_in_redis,
    recorded,
    write_side_problems,
)
from tests.support.proxy import FreezableProxy, freezable
from tests.support.scrape import scrape
from tests.support.views import views_match_streams

pytestmark = pytest.mark.integration

OUTAGE_S = 4.0
"""How long a dependency stays frozen once the worker paused: far past the retry budget."""
LATE = 5
"""Commands sent once the worker paused: they must wait in the queue, untaken."""
IMPATIENT = {"MAX_DELIVERY_ATTEMPTS": "2", "REDIS_TIMEOUT_S": "1", "DB_STATEMENT_TIMEOUT_S": "1"}


def through(url: str, proxy: FreezableProxy) -> str:
    """`url` with its host and port replaced by the proxy's."""
    parts = urllib.parse.urlsplit(url)
    credentials = parts.netloc.rpartition("@")[0]
    netloc = f"{credentials}@127.0.0.1:{proxy.port}" if credentials else f"127.0.0.1:{proxy.port}"
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


def proxy_for(url: str) -> Iterator[FreezableProxy]:
    parts = urllib.parse.urlsplit(url)
    with freezable(parts.hostname or "127.0.0.1", parts.port or 0) as proxy:
        yield proxy


@pytest.fixture
def pg_proxy(isolated_settings: Settings) -> Iterator[FreezableProxy]:
    yield from proxy_for(isolated_settings.database_url)


@pytest.fixture
def redis_proxy(isolated_settings: Settings) -> Iterator[FreezableProxy]:
    yield from proxy_for(isolated_settings.redis_url)


def metric(settings: Settings, name: str) -> str:
    return f"{settings.app_prefix.replace('-', '_')}_{name}"


async def paused_for(settings: Settings, worker: Proc, dependency: str) -> None:
    """Wait until `worker` counted an outage of `dependency` (it then stops consuming)."""

    async def paused() -> bool:
        found = await scrape(worker.base_url)
        name = metric(settings, "dependency_outages_total")
        return found.total(name, dependency=dependency) >= 1

    await eventually(paused, timeout=30, what=f"the worker paused for {dependency}")


async def no_retry_spent(settings: Settings, worker: Proc) -> None:
    found = await scrape(worker.base_url)
    assert found.total(metric(settings, "retries_total")) == 0
    assert found.total(metric(settings, "dead_letters_total")) == 0
    assert all(n == 0 for n in (await dead_letters(settings.amqp_url)).values())


async def test_a_frozen_postgres_pauses_the_command_worker_until_it_answers(
    isolated_settings: Settings,
    processes: Processes,
    pg: asyncpg.Pool,
    pg_proxy: FreezableProxy,
) -> None:
    worker = processes.start(
        "command_worker",
        extra_env={**IMPATIENT, "DATABASE_URL": through(isolated_settings.database_url, pg_proxy)},
    )
    queue = topology_of(isolated_settings).commands_queue
    creates, rest = command_mix(orders=10, additions_per_order=3)
    commands = creates + rest

    pg_proxy.freeze()
    await publish_commands(isolated_settings, commands[:-LATE])
    await paused_for(isolated_settings, worker, "postgres")
    await publish_commands(isolated_settings, commands[-LATE:])
    await asyncio.sleep(OUTAGE_S)  # the outage goes on; nothing may be spent meanwhile
    await no_retry_spent(isolated_settings, worker)
    assert await recorded(pg) == 0
    assert (await queue_counts(isolated_settings, queue))[0] == LATE  # paused: none was taken

    pg_proxy.thaw()
    await eventually(
        lambda: _recorded_all(pg, len(commands)), timeout=60, what="every command handled"
    )
    assert await write_side_problems(pg, [c.command_id for c in commands]) == []
    assert (await queue_counts(isolated_settings, queue))[0] == 0
    await no_retry_spent(isolated_settings, worker)
    assert worker.popen.poll() is None


def _start_behind_proxy(processes: Processes, settings: Settings, proxy: FreezableProxy) -> Proc:
    """A command worker, and a projector reaching Redis through `proxy`."""
    processes.start("command_worker")
    return processes.start(
        "projector_worker",
        extra_env={**IMPATIENT, "REDIS_URL": through(settings.redis_url, proxy)},
    )


async def test_a_frozen_redis_pauses_the_projector_until_it_answers(
    isolated_settings: Settings,
    processes: Processes,
    pg: asyncpg.Pool,
    redis_client: Redis,
    redis_proxy: FreezableProxy,
) -> None:
    projector = _start_behind_proxy(processes, isolated_settings, redis_proxy)
    topology = topology_of(isolated_settings)
    queue = topology.projection_queue("order_views")
    creates, rest = command_mix(orders=10, additions_per_order=3)
    commands = creates + rest

    redis_proxy.freeze()
    await publish_commands(isolated_settings, commands[:-LATE])
    await paused_for(isolated_settings, projector, "redis")
    await publish_commands(isolated_settings, commands[-LATE:])
    await eventually(lambda: _recorded_all(pg, len(commands)), timeout=60, what="commands handled")
    await asyncio.sleep(OUTAGE_S)
    await no_retry_spent(isolated_settings, projector)
    # Paused: the late commands' events wait in the queue (the relay may have sent them in one
    # message, a batch).
    assert (await queue_counts(isolated_settings, queue))[0] >= 1

    redis_proxy.thaw()
    keys = Keys(isolated_settings.redis_key_prefix)
    await eventually(
        lambda: views_match_streams(redis_client, keys, pg), timeout=60, what="views caught up"
    )
    assert await not_terminal_in_redis(redis_client, keys, [c.command_id for c in commands]) == []
    await no_retry_spent(isolated_settings, projector)
    assert projector.popen.poll() is None


async def test_an_idle_projector_pauses_when_its_watchdog_finds_redis_frozen(
    isolated_settings: Settings,
    processes: Processes,
    pg: asyncpg.Pool,
    redis_client: Redis,
    redis_proxy: FreezableProxy,
) -> None:
    """No event to apply: the projector's once-a-second check of the views is what finds the
    outage, and its consumers pause before any event can fail on it."""
    projector = _start_behind_proxy(processes, isolated_settings, redis_proxy)
    redis_proxy.freeze()
    await paused_for(isolated_settings, projector, "redis")
    redis_proxy.thaw()
    creates, rest = command_mix(orders=3, additions_per_order=1)
    await publish_commands(isolated_settings, creates + rest)
    keys = Keys(isolated_settings.redis_key_prefix)
    await eventually(
        lambda: views_match_streams(redis_client, keys, pg), timeout=60, what="views caught up"
    )
    await no_retry_spent(isolated_settings, projector)


async def _recorded_all(pool: asyncpg.Pool, n: int) -> bool:
    return await recorded(pool) >= n
