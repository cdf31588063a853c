"""Taking a snapshot of every Redis key under a prefix, and restoring it later: what restoring
an older snapshot (or promoting a replica that missed writes) does to that part of the keyspace.

Both run as one script, so, like a real snapshot (a fork) and a real restore (a restart), each
is atomic: no client sees half of it, and no write lands between the keys.
"""

from __future__ import annotations

from dataclasses import dataclass

from redis.asyncio import Redis

_SNAPSHOT = """
local out = {}
for _, key in ipairs(redis.call('KEYS', ARGV[1])) do
  out[#out + 1] = key
  out[#out + 1] = redis.call('PTTL', key)
  out[#out + 1] = redis.call('DUMP', key)
end
return out
"""

_RESTORE = """
for _, key in ipairs(redis.call('KEYS', ARGV[1])) do redis.call('DEL', key) end
for i = 2, #ARGV, 3 do
  local ttl = tonumber(ARGV[i + 1])
  if ttl > 0 then
    redis.call('RESTORE', ARGV[i], ttl, ARGV[i + 2])
  elseif ttl == -1 then
    redis.call('RESTORE', ARGV[i], 0, ARGV[i + 2])
  end
end
return 1
"""


@dataclass(frozen=True)
class Snapshot:
    """Every key under `prefix`, dumped with its time to live (ms, -1 for none)."""

    prefix: str
    keys: tuple[tuple[bytes, int, bytes], ...]


async def take_snapshot(redis: Redis, prefix: str) -> Snapshot:
    raw = await redis.eval(_SNAPSHOT, 0, f"{prefix}*")
    return Snapshot(
        prefix,
        tuple((raw[i], int(raw[i + 1]), raw[i + 2]) for i in range(0, len(raw), 3)),
    )


async def restore_snapshot(redis: Redis, snapshot: Snapshot) -> None:
    """Replace every key under the snapshot's prefix with the snapshot's."""
    args: list[bytes | int | str] = [f"{snapshot.prefix}*"]
    for key, ttl, dump in snapshot.keys:
        args += [key, ttl, dump]
    await redis.eval(_RESTORE, 0, *args)
