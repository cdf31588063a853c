"""Connecting to the event store: create the database if missing, migrate, pool."""

from __future__ import annotations

import asyncio
import logging
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from common.eventstore.schema import MIGRATIONS

log = logging.getLogger(__name__)

MIGRATION_LOCK = 0x6F72_6465_7273  # "orders": one advisory lock for every migrator


def database_name(url: str) -> str:
    return urlsplit(url).path.lstrip("/") or "postgres"


def maintenance_url(url: str) -> str:
    """The same server and user, on the `postgres` database."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path="/postgres"))


async def ensure_database(url: str) -> None:
    """Create the database named in `url` unless it exists; racing creators are fine."""
    name = database_name(url)
    conn = await asyncpg.connect(maintenance_url(url))
    try:
        exists = await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name)
        quoted = '"' + name.replace('"', '""') + '"'
        for attempt in range(20):
            if exists:
                return
            try:
                await conn.execute(f"CREATE DATABASE {quoted}")
                log.info("created database %s", name)
                return
            except (asyncpg.DuplicateDatabaseError, asyncpg.UniqueViolationError):
                return
            except asyncpg.ObjectInUseError:
                # Another CREATE DATABASE holds the template; it is done in a moment.
                await asyncio.sleep(0.05 * (attempt + 1))
                exists = await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name)
        raise RuntimeError(f"could not create database {name}")
    finally:
        await conn.close()


async def migrate(conn: asyncpg.Connection) -> int:
    """Apply pending migrations; returns how many ran. Serialised by an advisory lock."""
    await conn.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK)
    try:
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " version integer PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        done = {r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations")}
        ran = 0
        for version, sql in enumerate(MIGRATIONS, start=1):
            if version in done:
                continue
            async with conn.transaction():
                await conn.execute(sql)
                await conn.execute("INSERT INTO schema_migrations (version) VALUES ($1)", version)
            ran += 1
            log.info("applied migration %d", version)
        return ran
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK)


async def prepare_database(url: str) -> None:
    """Create and migrate the event store; idempotent, safe from many processes at once."""
    await ensure_database(url)
    conn = await asyncpg.connect(url)
    try:
        await migrate(conn)
    finally:
        await conn.close()


async def _keep_session(_conn: asyncpg.Connection) -> None:
    """Pool connections carry no session state to reset (no LISTEN, no SET, no locks); the
    default reset costs a round trip on every release. asyncpg still rolls back a transaction
    left open before it calls this (see the event store tests): one left idle after an append
    would hold the relay's horizon back, and any would hold its locks."""


SESSION_SETTINGS = {"plan_cache_mode": "force_custom_plan"}
"""Settings of every event-store session. asyncpg prepares each statement once per connection.
PostgreSQL costs a generic plan for it once, early, and switches to that plan when the custom
plans cost more on average. The log starts empty, so the generic plan is a sequential scan
costed as cheap; as the log grows, the custom plans cost more, and PostgreSQL switches to the
scan for the rest of the connection's life (measured: loading one stream went from 0.3 ms to
18 ms at 60,000 events, and kept growing). With custom plans only, each run is planned against
the table as it is; for these short statements that costs no more than the generic plan did."""


STATEMENT_TIMEOUT_S = 30.0
"""No statement of ours takes seconds; one that does waits on a server that stopped answering.
Processes pass `DB_STATEMENT_TIMEOUT_S`."""


async def connect(url: str, statement_timeout_s: float = STATEMENT_TIMEOUT_S) -> asyncpg.Connection:
    """One event-store session (the relay's); pools come from `create_pool`."""
    return await asyncpg.connect(
        url,
        server_settings=SESSION_SETTINGS,
        command_timeout=statement_timeout_s,
        timeout=statement_timeout_s,
    )


async def create_pool(
    url: str, size: int, statement_timeout_s: float = STATEMENT_TIMEOUT_S
) -> asyncpg.Pool:
    pool = await asyncpg.create_pool(
        url,
        min_size=1,
        max_size=size,
        reset=_keep_session,
        server_settings=SESSION_SETTINGS,
        command_timeout=statement_timeout_s,
        # Opening a connection is bounded too (asyncpg waits 60 s by default): a server that
        # accepts TCP but does not answer must fail the call that needed the connection.
        timeout=statement_timeout_s,
    )
    assert pool is not None
    return pool
