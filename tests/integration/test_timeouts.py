"""A dependency that stops answering fails a worker's call within its timeout, instead of
hanging the worker (the call is then retried like any transient failure)."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from redis.exceptions import TimeoutError as RedisTimeout

from command_worker.service import open_redis as command_worker_redis
from common.eventstore.database import create_pool, prepare_database
from common.settings import Settings
from harness.processes import free_port, wait_for
from projector_worker.redis_views import open_redis as projector_redis

pytestmark = pytest.mark.integration


@pytest.fixture
def frozen_redis(tmp_path: Path) -> Iterator[str]:
    """The URL of a Redis of its own that has stopped answering (SIGSTOP), without closing
    its connections: the kind of outage no error reports."""
    server = shutil.which("redis-server")
    if server is None:
        pytest.skip("redis-server is not installed")
    port = free_port()
    process = subprocess.Popen(
        [server, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--dir", str(tmp_path)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        ping = ["redis-cli", "-p", str(port), "ping"]
        wait_for(
            lambda: subprocess.run(ping, capture_output=True).stdout.strip() == b"PONG",
            10,
            "the extra redis-server",
        )
        os.kill(process.pid, signal.SIGSTOP)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        os.kill(process.pid, signal.SIGCONT)
        process.kill()
        process.wait(10)


@pytest.mark.parametrize("client", [command_worker_redis, projector_redis])
async def test_a_frozen_redis_fails_a_worker_call_within_its_timeout(
    frozen_redis: str, client: object
) -> None:
    settings = Settings(redis_url=frozen_redis, redis_timeout_s=0.5)
    redis = client(settings)  # type: ignore[operator]
    started = time.monotonic()
    with pytest.raises((RedisTimeout, TimeoutError)):
        await redis.ping()
    assert time.monotonic() - started < 5
    await redis.aclose()


async def test_a_statement_that_hangs_fails_within_the_statement_timeout(
    isolated_settings: Settings,
) -> None:
    await prepare_database(isolated_settings.database_url)
    pool = await create_pool(isolated_settings.database_url, 1, statement_timeout_s=0.5)
    try:
        started = time.monotonic()
        with pytest.raises(asyncio.TimeoutError):
            await pool.fetchval("SELECT pg_sleep(10)")
        assert time.monotonic() - started < 5
        assert await pool.fetchval("SELECT 1") == 1  # the pool goes on
    finally:
        await pool.close()
