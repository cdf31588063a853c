"""Command statuses expire `COMMAND_STATUS_TTL_S` after their last write, whichever process
wrote last; expired ones are hidden at once and swept away; old per-command hashes are read."""

from __future__ import annotations

import asyncio
import os
import sys
import time
import uuid

import httpx
import pytest
from redis.asyncio import Redis

from common.readmodel import status_store
from common.readmodel.commands import (
    PROJECTED_VERSION_FIELD,
    CommandResult,
    CommandStatus,
    mark_accepted,
    read_status,
    record_results,
)
from common.readmodel.keys import Keys
from common.settings import Settings
from harness.processes import ROOT, Processes
from tests.conftest import settings_env
from tests.support.amqp import eventually
from tests.support.bodies import ORDER
from tests.support.statuses import never_expire, seconds_to_live, stored_status

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
    keys = Keys(isolated_settings.redis_key_prefix)
    command_id = uuid.UUID(created.json()["command_id"])

    async def ttl_set() -> bool:
        left = await seconds_to_live(redis_client, keys, command_id)
        return left is not None and TTL_S - 60 < left <= TTL_S

    assert await ttl_set(), "accepted"
    # Each later writer must set the expiry again, not rely on an earlier one.
    await never_expire(redis_client, keys, command_id)
    processes.start("command_worker", extra_env=env)

    async def succeeded() -> bool:
        return (await stored_status(redis_client, keys, command_id)).get("status") == "succeeded"

    await eventually(succeeded, what="the outcome")
    assert await ttl_set(), "outcome"

    await never_expire(redis_client, keys, command_id)
    processes.start("projector_worker", extra_env=env)

    async def projected() -> bool:
        status = await stored_status(redis_client, keys, command_id)
        return status.get(PROJECTED_VERSION_FIELD) == 1

    await eventually(projected, what="the projection")
    assert await ttl_set(), "projected"

    # A rebuild that restores the statuses gives each the rest of its lifetime, no more.
    await never_expire(redis_client, keys, command_id)
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


async def test_expired_statuses_are_hidden_then_swept_and_old_hashes_read(
    redis_client: Redis, isolated_settings: Settings
) -> None:
    keys = Keys(isolated_settings.redis_key_prefix)
    live, expired = uuid.uuid4(), uuid.uuid4()
    for command_id, ttl_s in ((live, 1000), (expired, 1)):
        await mark_accepted(redis_client, keys, command_id, "CreateOrder", "Order-x", ttl_s=ttl_s)
    assert (await stored_status(redis_client, keys, expired))["status"] == "accepted"

    async def hidden() -> bool:
        return await stored_status(redis_client, keys, expired) == {}

    await eventually(hidden, what="the expiry", timeout=10)
    (shard, _), field = status_store.location(keys, expired)
    assert await redis_client.hexists(shard, field), "hidden before it is swept"
    assert await status_store.sweep_statuses(redis_client, keys) == 1
    assert not await redis_client.hexists(shard, field)
    assert (await stored_status(redis_client, keys, live))["status"] == "accepted"

    # A status written before shard hashes, a hash per command, is read while it lives, and
    # the next write of it moves it into its shard.
    old = uuid.uuid4()
    await redis_client.hset(
        keys.command(old),
        mapping={
            "command_id": str(old),
            "type": "ShipOrder",
            "stream_id": "Order-y",
            "status": "succeeded",
            "reason": "",
            "version": "2",
        },
    )
    await redis_client.expire(keys.command(old), 1000)
    status = await read_status(redis_client, keys, old)
    assert status == {
        "type": "ShipOrder",
        "stream_id": "Order-y",
        "status": "succeeded",
        "version": 2,
    }
    # (The gateway's `accepted` leaves any existing status alone, the old form's too.)
    await mark_accepted(redis_client, keys, old, "ShipOrder", "Order-y", ttl_s=1000)
    assert await redis_client.exists(keys.command(old))
    outcome = CommandResult(old, "ShipOrder", "Order-y", CommandStatus.SUCCEEDED, None, 2)
    await record_results(redis_client, keys, [outcome], ttl_s=1000)
    assert not await redis_client.exists(keys.command(old))
    assert await read_status(redis_client, keys, old) == {
        **status,
        "reason": "",
        "expires_at": pytest.approx(time.time() + 1000, abs=5),
    }


async def test_a_projector_sweeps_expired_statuses(
    processes: Processes, redis_client: Redis, isolated_settings: Settings
) -> None:
    keys = Keys(isolated_settings.redis_key_prefix)
    expired = uuid.uuid4()
    await mark_accepted(redis_client, keys, expired, "CreateOrder", "Order-x", ttl_s=1)
    (shard, _), field = status_store.location(keys, expired)
    # TTL 24 s: a sweep every second.
    processes.start("projector_worker", extra_env={"COMMAND_STATUS_TTL_S": "24"})

    async def swept() -> bool:
        return not await redis_client.hexists(shard, field)

    await eventually(swept, what="the sweep", timeout=30)
