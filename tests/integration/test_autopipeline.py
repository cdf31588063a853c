"""The request path's shared Redis round trips (`AutoPipeline`) against a Redis of its own, whose
script cache the test may flush: a Redis that restarted, failed over or flushed its scripts
loses no status write, and staging scripts keeps nothing behind."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from redis.asyncio import Redis

from common.readmodel.commands import CommandStatus, mark_accepted, read_status
from common.readmodel.keys import Keys
from common.readmodel.pipelining import AutoPipeline
from harness.redis_sentinel import SentinelGroup, ServersUnavailable

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def own_redis_port() -> Iterator[int]:
    try:
        with SentinelGroup.started(replicas=0) as group:
            yield group.servers[0].port
    except ServersUnavailable as exc:
        pytest.skip(f"no Redis of its own: {exc}")


async def test_status_writes_survive_a_flushed_script_cache(own_redis_port: int) -> None:
    redis = Redis(port=own_redis_port)
    batch = AutoPipeline(redis)
    keys = Keys(f"t{uuid.uuid4().hex[:8]}:")
    try:
        await redis.script_flush()
        ids = [uuid.uuid4() for _ in range(20)]
        # Twenty callers at once share round trips; Redis knows none of the scripts yet.
        for command_id in ids:
            await batch.run(
                lambda pipe, c=command_id: mark_accepted(pipe, keys, c, "CreateOrder", f"Order-{c}")
            )
        await redis.script_flush()
        late = uuid.uuid4()
        await batch.run(lambda pipe: mark_accepted(pipe, keys, late, "CreateOrder", "Order-x"))
        for command_id in [*ids, late]:
            status = await read_status(redis, keys, command_id)
            assert status is not None, f"the status of {command_id} was lost"
            assert status["status"] == CommandStatus.ACCEPTED.value
        # Every call registered a script object on the staging pipeline; none may stay there.
        assert not batch._stage.scripts
    finally:
        await batch.close()
        await redis.aclose()
