"""Command statuses as tests look at them: read as `GET /commands/{id}` reads them, forgotten
as Redis forgets them, and their expiry (`common/readmodel/status_store.py`)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any
from uuid import UUID

import orjson
from redis.asyncio import Redis

from common.readmodel import status_store
from common.readmodel.keys import Keys


async def stored_status(redis: Redis, keys: Keys, command_id: UUID | str) -> dict[str, Any]:
    """The command's live status by item name; {} when none is known."""
    return (await stored_statuses(redis, keys, [command_id]))[0]


async def stored_statuses(
    redis: Redis, keys: Keys, command_ids: Iterable[UUID | str]
) -> list[dict[str, Any]]:
    """The live statuses of the commands, in one round trip ({} for an unknown one)."""
    async with redis.pipeline(transaction=False) as pipe:
        for command_id in command_ids:
            names, field = status_store.location(keys, command_id)
            pipe.eval(status_store.READ_STATUS, 2, *names, field)
        raws = await pipe.execute()
    return [status_store.decode(raw) or {} for raw in raws]


async def forget_status(redis: Redis, keys: Keys, command_id: UUID | str) -> None:
    """Delete the command's status, in either layout."""
    (shard, legacy), field = status_store.location(keys, command_id)
    await redis.hdel(shard, field)
    await redis.delete(legacy)


async def seconds_to_live(redis: Redis, keys: Keys, command_id: UUID | str) -> int | None:
    """How long the command's stored status lives yet; None when none is stored."""
    (shard, _legacy), field = status_store.location(keys, command_id)
    raw = await redis.hget(shard, field)
    if raw is None:
        return None
    now, _micros = await redis.time()
    return int(orjson.loads(raw)[0]) - int(now)


async def never_expire(redis: Redis, keys: Keys, command_id: UUID | str) -> None:
    """Move the status's expiry far out, as PERSIST did to a status hash: the next writer must
    set it again."""
    (shard, _legacy), field = status_store.location(keys, command_id)
    raw = await redis.hget(shard, field)
    assert raw is not None, "no status to persist"
    items = orjson.loads(raw)
    items[0] = 2**31
    await redis.hset(shard, field, orjson.dumps(items))
