"""Fixtures: an isolated slice of RabbitMQ, PostgreSQL and Redis per test, and the processes."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest
import redis.asyncio as aioredis

from common.settings import Settings
from harness.isolation import Endpoints, endpoints, isolated_slice, settings_env
from harness.processes import Processes, process_group

__all__ = ["settings_env"]


@pytest.fixture(scope="session")
def services() -> Iterator[Endpoints]:
    with endpoints() as found:
        yield found


@pytest.fixture
def isolated_settings(services: Endpoints) -> Iterator[Settings]:
    """Settings naming a fresh vhost, database and Redis key prefix, removed after the test."""
    with isolated_slice(
        services, "test", uuid.uuid4().hex[:12], retry_base_delay_ms=50, shutdown_timeout_s=10
    ) as settings:
        yield settings


@pytest.fixture
def processes(
    isolated_settings: Settings, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[Processes]:
    """Start `python -m <module>` processes on the isolated services; all stopped at teardown.
    When the test fails, the report carries what each process logged (see below)."""
    with process_group(settings_env(isolated_settings), tmp_path) as factory:
        request.node.stash[_FACTORY] = factory
        yield factory


_FACTORY = pytest.StashKey[Processes]()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """A failed test's report gets each process's warnings and errors and its last lines: a
    failure in CI, on a machine nobody can look at afterwards, then explains itself."""
    report = yield
    factory = item.stash.get(_FACTORY, None)
    if factory is not None and report.failed and call.when == "call":
        for proc in factory.procs:
            report.sections.append((f"log of {proc.name}", proc.digest()))
    return report


@pytest.fixture
async def redis_client(isolated_settings: Settings) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(isolated_settings.redis_url)
    try:
        yield client
    finally:
        await client.aclose()


@pytest.fixture
async def pg(isolated_settings: Settings) -> AsyncIterator[asyncpg.Pool]:
    """A pool on the isolated database, created and migrated."""
    from common.eventstore.database import create_pool, prepare_database

    await prepare_database(isolated_settings.database_url)
    pool = await create_pool(isolated_settings.database_url, 4)
    try:
        yield pool
    finally:
        await pool.close()
