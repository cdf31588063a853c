"""Reading any projection's views from Redis, the way domain queries and waits do.

Every read resolves the generation pointer and reads inside one atomic script call, so a query
never mixes two generations and never sees a generation before its switch. A script takes
KEYS[1] = the projection's generation pointer and ARGV[1] = its key prefix, and answers `{0}`
when there is no pointer (Redis is empty), else `{1, ...}`. `GENERATION_BASE` mirrors
`layout.generation_base`; every other key arrives as a suffix computed in Python.
"""

from __future__ import annotations

from typing import Any

from redis.asyncio import Redis

from common.readmodel.keys import ProjectionKeys

READ_ONLY = "#!lua flags=no-writes\n"
"""The first line of a script that only reads: Redis then runs it on a replica, also while the
replica holds writes back (`CLIENT PAUSE WRITE`), and refuses any write it attempts."""

GENERATION_BASE = """
local generation = redis.call('GET', KEYS[1])
if not generation then return {0} end
local base = ARGV[1] .. 'g' .. generation .. ':'
"""
"""The start of every read script: `base` is the live generation's key prefix."""

VIEW = (
    READ_ONLY
    + GENERATION_BASE
    + """
-- ARGV[2] view suffix
return {1, redis.call('HGETALL', base .. ARGV[2])}
"""
)

VIEW_VERSION = (
    READ_ONLY
    + GENERATION_BASE
    + """
-- ARGV[2] view suffix
return {1, tonumber(redis.call('HGET', base .. ARGV[2], 'version') or '0')}
"""
)

HISTORY = (
    READ_ONLY
    + GENERATION_BASE
    + """
-- ARGV[2] view suffix, ARGV[3] history suffix, ARGV[4] first index, ARGV[5] last index
if redis.call('EXISTS', base .. ARGV[2]) == 0 then return {1, 0, {}} end
return {1, 1, redis.call('LRANGE', base .. ARGV[3], ARGV[4], ARGV[5])}
"""
)


class ViewsUnavailable(Exception):
    """Redis holds no generation of the projection (emptied, or being rebuilt from nothing)."""


class ProjectionReader:
    """Runs read scripts against the live generation of one projection."""

    def __init__(self, redis: Redis, keys: ProjectionKeys) -> None:
        self.redis = redis
        self.keys = keys
        self._view = redis.register_script(VIEW)
        self._version = redis.register_script(VIEW_VERSION)
        self._history = redis.register_script(HISTORY)

    async def call(self, script: Any, *args: Any) -> list[Any]:
        """The script's answer after its leading 1; `ViewsUnavailable` when there is none."""
        reply = await script(keys=[self.keys.generation], args=[self.keys.prefix, *args])
        if not reply[0]:
            raise ViewsUnavailable("no views in Redis")
        return list(reply)

    async def view(self, view_key: str) -> dict[bytes, bytes]:
        """The hash of one view (empty when there is none)."""
        _, fields = await self.call(self._view, view_key)
        return dict(zip(fields[::2], fields[1::2], strict=True))

    async def version(self, view_key: str) -> int:
        """The version of one view; 0 when there is none."""
        _, version = await self.call(self._version, view_key)
        return int(version)

    async def history(
        self, view_key: str, history_key: str, offset: int = 0, count: int | None = None
    ) -> list[bytes] | None:
        """A stream's history entries (JSON) in version order, from index `offset` (the entry
        of version `offset + 1`), at most `count` of them (all when None); None when the stream
        has no view. Redis reads only the slice asked for."""
        if offset < 0 or (count is not None and count < 1):
            raise ValueError("a history slice starts at 0 or later and holds at least one entry")
        last = -1 if count is None else offset + count - 1
        _, exists, entries = await self.call(self._history, view_key, history_key, offset, last)
        return list(entries) if exists else None
