"""The drills' slice of the services, and waiting until the system on it has gone quiet.

The system itself (a gateway, command workers and projectors as real processes) is
`harness.system.System`."""

from __future__ import annotations

import asyncio
import contextlib
import time
from uuid import UUID

import aio_pika
import asyncpg
from redis.asyncio import Redis
from redis.exceptions import RedisError

from command_worker.relay import CHECKPOINT
from common.domain import load_domains
from common.messaging.nodes import connect_any
from common.messaging.topology import Topology, retry_delays_ms, retry_queue_name
from common.readmodel.connection import connect_redis
from common.readmodel.keys import Keys
from common.settings import Settings
from harness.isolation import Endpoints, isolated_slice, new_run_id
from tests.support.amqp import depth
from tests.support.invariants import not_terminal_in_redis, relay_caught_up
from tests.support.views import views_match_streams


def isolated_settings(services: Endpoints, run: str) -> contextlib.AbstractContextManager[Settings]:
    """Production defaults on a fresh vhost, database and key prefix, removed afterwards."""
    return isolated_slice(services, "chaos", run)


def topology_of(settings: Settings) -> Topology:
    """The exchanges and queues of the system under test: the commands queue and one queue
    per projection of the domains it loads."""
    registry = load_domains(settings.domain_names)
    return Topology(settings.app_prefix, tuple(registry.projections))


async def queue_backlog(settings: Settings) -> int:
    """Ready messages in the work queues (commands and every projection's) and their delay
    queues."""
    work_queues = topology_of(settings).work_queues
    names = [
        *work_queues,
        *(
            retry_queue_name(q, delay)
            for q in work_queues
            for delay in retry_delays_ms(settings.retry_base_delay_ms)
        ),
    ]
    connection = await connect_any(settings.amqp_url)
    try:
        ch = await connection.channel()
        return sum([await depth(ch, name) for name in names])
    finally:
        await connection.close()


async def quiet(settings: Settings, pool: asyncpg.Pool, redis: Redis, accepted: list[UUID]) -> str:
    """What is still moving ('' when nothing is): every accepted command recorded and terminal
    in Redis, the relay at the last position, every projection's view of every stream at the
    stream's version, and no message waiting in a work or delay queue."""
    recorded = await pool.fetchval(
        "SELECT count(*) FROM commands WHERE command_id = ANY($1::uuid[])", accepted
    )
    if recorded < len(accepted):
        return f"{len(accepted) - recorded} accepted commands not recorded yet"
    keys = Keys(settings.redis_key_prefix)
    pending = await not_terminal_in_redis(redis, keys, accepted)
    if pending:
        return f"{len(pending)} commands not terminal in Redis yet"
    if not await relay_caught_up(pool):
        return "the relay is behind: " + await relay_lag(pool)
    if not await views_match_streams(redis, keys, pool):
        return "views are behind the event store"
    backlog = await queue_backlog(settings)
    if backlog:
        return f"{backlog} messages still queued"
    return ""


async def relay_lag(pool: asyncpg.Pool) -> str:
    """Where the relay is, and the oldest transaction on the server it may be waiting for (its
    horizon waits for every transaction that could still commit a lower position)."""
    row = await pool.fetchrow(
        "SELECT (SELECT coalesce(max(position), 0) FROM events) AS head,"
        " (SELECT coalesce(max(position), 0) FROM checkpoints WHERE name = $1) AS checkpoint",
        CHECKPOINT,
    )
    oldest = await pool.fetchrow(
        "SELECT datname, state, backend_xid::text AS xid, now() - xact_start AS age,"
        " left(query, 80) AS query FROM pg_stat_activity WHERE backend_xid IS NOT NULL"
        " ORDER BY xact_start LIMIT 1"
    )
    assert row is not None
    where = f"at {row['checkpoint']} of {row['head']}"
    if oldest is None:
        return where
    return f"{where}; oldest transaction with an id: {dict(oldest)}"


async def wait_for_quiet(
    settings: Settings, accepted: list[UUID], timeout_s: float
) -> tuple[float, str]:
    """Seconds until the system went quiet, and '' or what was still moving at `timeout_s`.
    Transient errors (a service coming back) count as not quiet yet."""
    started = time.monotonic()
    waiting = "nothing checked yet"
    while time.monotonic() - started < timeout_s:
        try:
            waiting = await _check_quiet(settings, accepted)
        except (OSError, RedisError, asyncpg.PostgresError, aio_pika.exceptions.AMQPError) as exc:
            waiting = f"checking failed: {exc!r}"
        if not waiting:
            return time.monotonic() - started, ""
        await asyncio.sleep(0.5)
    return time.monotonic() - started, waiting


async def _check_quiet(settings: Settings, accepted: list[UUID]) -> str:
    pool = await asyncpg.create_pool(settings.database_url, min_size=1, max_size=2)
    client = connect_redis(settings.redis_url)
    try:
        return await quiet(settings, pool, client, accepted)
    finally:
        await client.aclose()
        await pool.close()


__all__ = ["isolated_settings", "new_run_id", "queue_backlog", "topology_of", "wait_for_quiet"]
