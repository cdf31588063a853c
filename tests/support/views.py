"""Reading the Redis views the way a test judges them: dump a projection's generation, and
compare the live views of every projection with a fresh replay of the event store.

`keys` is the deployment's `Keys` (a projection's keys are derived from it by name) or, where
one projection is meant, its `ProjectionKeys`. The projection defaults to `order_views`, the
one the order queries read; the checks over "every view" cover every projection the loaded
domains register.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import asyncpg
from redis.asyncio import Redis

from common.domain import Registry, stream_id
from common.readmodel.keys import Keys, ProjectionKeys
from orders.projection import STREAM_TYPE, OrderViews
from projector_worker.generations import drop_generation
from projector_worker.rebuild import Rebuild
from projector_worker.runner import writer_for
from tests.support.domains import registry_of

ORDER_VIEWS = OrderViews.name
"""The projection the order queries read, and the default one here."""


def projection_keys(keys: Keys | ProjectionKeys, projection: str = ORDER_VIEWS) -> ProjectionKeys:
    if isinstance(keys, ProjectionKeys):
        return keys
    return keys.projection(registry_of().projections[projection].keys_name())


async def live_generation(
    redis: Redis, keys: Keys | ProjectionKeys, projection: str = ORDER_VIEWS
) -> int | None:
    value = await redis.get(projection_keys(keys, projection).generation)
    return int(value) if value else None


def _stream(order_or_stream: uuid.UUID | str) -> str:
    """An order id (a UUID) is the stream `Order-<id>`; a string is a stream id already."""
    if isinstance(order_or_stream, uuid.UUID):
        return stream_id(STREAM_TYPE, order_or_stream)
    return order_or_stream


async def views_reached(
    redis: Redis,
    keys: Keys,
    versions: Mapping[uuid.UUID, int] | Mapping[str, int],
    projection: str = ORDER_VIEWS,
    registry: Registry | None = None,
) -> bool:
    """Whether queries see every stream at (at least) the given version in `projection`.
    A key of `versions` is an order id (UUID) or a stream id."""
    target = (registry or registry_of()).projections[projection]
    generation = await live_generation(redis, keys, projection)
    if generation is None:
        return False
    view_keys = projection_keys(keys, projection).views(generation)
    async with redis.pipeline(transaction=False) as pipe:
        for key in versions:
            pipe.hget(view_keys.key(target.view_key(_stream(key))), "version")
        found = await pipe.execute()
    return all(
        v is not None and int(v) >= want for v, want in zip(found, versions.values(), strict=True)
    )


async def views_match_streams(
    redis: Redis, keys: Keys, pool: asyncpg.Pool, registry: Registry | None = None
) -> bool:
    """Whether, in every projection, the view of every stream it follows is at the stream's
    last version (the projectors are done)."""
    registry = registry or registry_of()
    rows = await pool.fetch("SELECT stream_id, max(version) AS version FROM events GROUP BY 1")
    for name, projection in registry.projections.items():
        versions = {
            r["stream_id"]: int(r["version"]) for r in rows if projection.follows(r["stream_id"])
        }
        if not await views_reached(redis, keys, versions, name, registry):
            return False
    return True


async def dump_generation(
    redis: Redis, keys: Keys | ProjectionKeys, generation: int, projection: str = ORDER_VIEWS
) -> dict[str, Any]:
    """Every key of a projection's generation with its content, keyed by suffix (comparable
    across generations and prefixes)."""
    view_keys = projection_keys(keys, projection).views(generation)
    members = sorted([key async for key in redis.scan_iter(match=view_keys.pattern, count=1000)])
    kinds = {key: (await redis.type(key)).decode() for key in members}
    members = [key for key in members if kinds[key] != "none"]
    base = view_keys.base.encode()
    dump: dict[str, Any] = {"members": sorted(m.removeprefix(base).decode() for m in members)}
    for key in members:
        kind = kinds[key]
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


async def dump_live(
    redis: Redis, keys: Keys, registry: Registry | None = None
) -> dict[str, dict[str, Any] | None]:
    """The live generation of every projection, dumped (None for one without views)."""
    dumps: dict[str, dict[str, Any] | None] = {}
    for name in (registry or registry_of()).projections:
        generation = await live_generation(redis, keys, name)
        dumps[name] = (
            None if generation is None else await dump_generation(redis, keys, generation, name)
        )
    return dumps


def dump_differences(
    left: dict[str, dict[str, Any] | None], right: dict[str, dict[str, Any] | None]
) -> list[str]:
    """Where two `dump_live` results differ, key by key (what an assertion should print)."""
    found = []
    for name in sorted(set(left) | set(right)):
        a, b = left.get(name) or {}, right.get(name) or {}
        for key in sorted(set(a) | set(b)):
            if a.get(key) != b.get(key):
                found.append(f"{name} {key}: {a.get(key)!r} != {b.get(key)!r}")
    return found


async def keys_with_prefix(redis: Redis, prefix: str) -> list[bytes]:
    """Test-only SCAN to prove nothing was left behind."""
    return [key async for key in redis.scan_iter(match=f"{prefix}*", count=1000)]


@dataclass
class ViewComparison:
    """The live views of every projection against a fresh replay of the event store, key by
    key."""

    keys_compared: int = 0
    wrong: list[str] = field(default_factory=list)
    """`<projection>/<suffix>` of keys that differ, are missing from the live views, or should
    not exist."""
    generations: dict[str, int | None] = field(default_factory=dict)
    """The live generation of each projection (None: queries of it have no views)."""

    @property
    def without_views(self) -> list[str]:
        return [name for name, generation in self.generations.items() if generation is None]

    @property
    def has_views(self) -> bool:
        return bool(self.generations) and not self.without_views

    @property
    def ok(self) -> bool:
        return self.has_views and not self.wrong

    def describe(self) -> str:
        if not self.has_views:
            missing = ", ".join(self.without_views) or "every projection"
            return f"no live generation of {missing}: its queries have no views"
        if not self.wrong:
            return f"{self.keys_compared} keys equal a fresh replay"
        return f"{len(self.wrong)} of {self.keys_compared} keys differ, e.g. {self.wrong[:3]}"


async def compare_with_replay(
    redis: Redis, keys: Keys, pool: asyncpg.Pool, registry: Registry | None = None
) -> ViewComparison:
    """Replay the whole event store into a scratch prefix (the projector's own rebuild code),
    projection by projection, and compare every view, index, counter, history and checkpoint
    with the live generation. The scratch keys are deleted afterwards."""
    registry = registry or registry_of()
    comparison = ViewComparison()
    for name, projection in registry.projections.items():
        live = await live_generation(redis, keys, name)
        comparison.generations[name] = live
        if live is None:
            continue
        scratch = Keys(f"{keys.prefix}replay-{uuid.uuid4().hex[:8]}:")
        writer = writer_for(redis, scratch, registry, projection)
        try:
            summary = await Rebuild(writer, registry, pool).run()
            expected = await dump_generation(redis, scratch, summary.generation, name)
            actual = await dump_generation(redis, keys, live, name)
        finally:
            await writer.close()
            generation = await live_generation(redis, scratch, name)
            if generation is not None:
                await drop_generation(redis, projection_keys(scratch, name), generation)
            leftovers = await keys_with_prefix(redis, scratch.prefix)
            for start in range(0, len(leftovers), 500):
                await redis.unlink(*leftovers[start : start + 500])
        suffixes = sorted(set(expected) | set(actual))
        comparison.keys_compared += len(suffixes)
        comparison.wrong += [
            f"{name}/{suffix}" for suffix in suffixes if expected.get(suffix) != actual.get(suffix)
        ]
    return comparison
