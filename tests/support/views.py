"""Reading the Redis views the way a test judges them: dump a generation, and compare the live
views with a fresh replay of the event store."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

import asyncpg
from redis.asyncio import Redis

from common.readmodel.keys import Keys
from projector_worker.rebuild import Rebuild, drop_generation
from projector_worker.redis_views import ViewWriter


async def live_generation(redis: Redis, keys: Keys) -> int | None:
    value = await redis.get(keys.generation)
    return int(value) if value else None


async def views_reached(redis: Redis, keys: Keys, versions: dict[uuid.UUID, int]) -> bool:
    """Whether queries see every order at (at least) the given version."""
    generation = await live_generation(redis, keys)
    if generation is None:
        return False
    view_keys = keys.views(generation)
    async with redis.pipeline(transaction=False) as pipe:
        for order_id in versions:
            pipe.hget(view_keys.order(str(order_id)), "version")
        found = await pipe.execute()
    return all(
        v is not None and int(v) >= want for v, want in zip(found, versions.values(), strict=True)
    )


async def views_match_streams(redis: Redis, keys: Keys, pool: asyncpg.Pool) -> bool:
    """Whether every order's view is at its stream's last version (the projectors are done)."""
    rows = await pool.fetch("SELECT stream_id, max(version) AS version FROM events GROUP BY 1")
    return await views_reached(
        redis, keys, {uuid.UUID(r["stream_id"]): int(r["version"]) for r in rows}
    )


async def dump_generation(redis: Redis, keys: Keys, generation: int) -> dict[str, Any]:
    """Every key of a generation with its content, keyed by suffix (comparable across
    generations)."""
    view_keys = keys.views(generation)
    members = sorted(await redis.smembers(view_keys.members))
    base = view_keys.base.encode()
    dump: dict[str, Any] = {"members": sorted(m.removeprefix(base).decode() for m in members)}
    for key in members:
        kind = (await redis.type(key)).decode()
        if kind == "hash":
            value: Any = dict(sorted((await redis.hgetall(key)).items()))
        elif kind == "list":
            value = await redis.lrange(key, 0, -1)
        elif kind == "zset":
            value = await redis.zrange(key, 0, -1, withscores=True)
        elif kind == "string":
            value = await redis.get(key)
        else:
            value = kind
        dump[key.removeprefix(base).decode()] = value
    return dump


async def keys_with_prefix(redis: Redis, prefix: str) -> list[bytes]:
    """Test-only SCAN to prove nothing was left behind."""
    return [key async for key in redis.scan_iter(match=f"{prefix}*", count=1000)]


@dataclass
class ViewComparison:
    """The live views against a fresh replay of the event store, key by key."""

    keys_compared: int = 0
    wrong: list[str] = field(default_factory=list)
    """Suffixes of keys that differ, are missing from the live views, or should not exist."""
    live_generation: int | None = None

    @property
    def ok(self) -> bool:
        return self.live_generation is not None and not self.wrong

    def describe(self) -> str:
        if self.live_generation is None:
            return "no live generation: queries have no views"
        if not self.wrong:
            return f"{self.keys_compared} keys equal a fresh replay"
        return f"{len(self.wrong)} of {self.keys_compared} keys differ, e.g. {self.wrong[:3]}"


async def compare_with_replay(redis: Redis, keys: Keys, pool: asyncpg.Pool) -> ViewComparison:
    """Replay the whole event store into a scratch prefix (the projector's own rebuild code)
    and compare every view, index, sorted set, history and checkpoint with the live generation.
    The scratch keys are deleted afterwards."""
    live = await live_generation(redis, keys)
    if live is None:
        return ViewComparison()
    scratch = Keys(f"{keys.prefix}replay-{uuid.uuid4().hex[:8]}:")
    try:
        summary = await Rebuild(ViewWriter(redis, scratch), pool).run()
        expected = await dump_generation(redis, scratch, summary.generation)
        actual = await dump_generation(redis, keys, live)
    finally:
        generation = await live_generation(redis, scratch)
        if generation is not None:
            await drop_generation(redis, scratch, generation)
        leftovers = await keys_with_prefix(redis, scratch.prefix)
        for start in range(0, len(leftovers), 500):
            await redis.unlink(*leftovers[start : start + 500])
    names = sorted(set(expected) | set(actual))
    wrong = [name for name in names if expected.get(name) != actual.get(name)]
    return ViewComparison(keys_compared=len(names), wrong=wrong, live_generation=live)
