"""Command-status hashes expire after `COMMAND_STATUS_TTL_S`, whichever process wrote last."""

from __future__ import annotations

import asyncio
import os
import sys
import uuid

import httpx
import pytest
from redis.asyncio import Redis

from common.readmodel.commands import PROJECTED_VERSION_FIELD
from common.readmodel.keys import Keys
from common.settings import Settings
from harness.processes import ROOT, Processes
from tests.conftest import settings_env
from tests.support.amqp import eventually
from tests.support.bodies import ORDER

pytestmark = pytest.mark.integration

TTL_S = 1000


async def test_every_writer_of_a_status_sets_its_ttl(
    processes: Processes, redis_client: Redis, isolated_settings: Settings
) -> None:
    env = {"COMMAND_STATUS_TTL_S": str(TTL_S)}
    gateway = processes.start("gateway", extra_env=env)
    async with httpx.AsyncClient(base_url=gateway.base_url, timeout=30) as http:
        created = await http.post("/orders", json=ORDER, headers={"Idempotency-Key": "k-ttl"})
        assert created.status_code == 202, created.text
    key = Keys(isolated_settings.redis_key_prefix).command(uuid.UUID(created.json()["command_id"]))

    async def ttl_set() -> bool:
        return TTL_S - 60 < await redis_client.ttl(key) <= TTL_S

    assert await ttl_set(), "accepted"
    # Each later writer must set the TTL again, not rely on an earlier one.
    assert await redis_client.persist(key)
    processes.start("command_worker", extra_env=env)

    async def succeeded() -> bool:
        return await redis_client.hget(key, "status") == b"succeeded"

    await eventually(succeeded, what="the outcome")
    assert await ttl_set(), "outcome"

    assert await redis_client.persist(key)
    processes.start("projector_worker", extra_env=env)

    async def projected() -> bool:
        return await redis_client.hget(key, PROJECTED_VERSION_FIELD) == b"1"

    await eventually(projected, what="the projection")
    assert await ttl_set(), "projected"

    # A rebuild that restores the statuses gives each the rest of its lifetime, no more.
    assert await redis_client.persist(key)
    rebuild = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "projector_worker", "rebuild", "order_views"),
        *("--restore-commands", "--quiet"),
        cwd=ROOT,
        env={**os.environ, **settings_env(isolated_settings), **env},
        stderr=asyncio.subprocess.PIPE,
    )
    _, stderr = await asyncio.wait_for(rebuild.communicate(), 60)
    assert rebuild.returncode == 0, stderr.decode()
    assert "command statuses restored" in stderr.decode()
    assert await ttl_set(), "restored"
