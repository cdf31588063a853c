"""Where command statuses live in Redis, and the Lua every reader and writer shares.

A status is one field of a shard hash, `{prefix}statuses:{shard}`: the shard is the first
`SHARD_HEX_DIGITS` hex digits of the command id (256 hashes whatever the load), the field the
id's 16 bytes, the value a JSON array in the order of `RECORD`. It replaced a hash and a key per
command, which cost ~365 bytes a command (the key name, its keyspace and expiry entries, every
field named again in each hash); a status now costs ~230 (measured with 1,200 and 20,000
statuses of keyed commands). A value with a fingerprint is longer than 64 bytes, so the shards
are hashtables, not listpacks; 4,096 shards cost more (355 bytes a status at 1,200) for
nothing at 20,000.

Why a shard of the id, not of the time: `GET /commands/{id}` knows only the id, and an id
derived from an Idempotency-Key (`uuid5`) carries no time, so a time bucket could be found only
by asking every bucket, and a bucket of an hour's commands would be freed in one blocking
delete when it expired. A per-order hash (small, a listpack) cannot be found from the id either.

Redis 7.0 has no time to live per hash field, so each value carries its own `expires_at` (Unix
seconds, from Redis's clock): every writer sets it to now + `COMMAND_STATUS_TTL_S` (a restore
to the recorded time + the TTL), readers treat an expired status as absent, and
`sweep_statuses` deletes expired ones (the projectors run it every `sweep_interval_s`).

Statuses written before this layout, a hash per command at `Keys.command(id)` with a TTL of
its own, are still read while they live: a status missing from its shard is looked up there,
and the next write of it moves it into its shard and deletes the old hash.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any
from uuid import UUID

import orjson
from redis.asyncio import Redis

from common.readmodel.keys import Keys
from common.readmodel.pipelining import shared_script

SHARD_HEX_DIGITS = 2

RECORD = (
    "expires_at",
    "status",
    "version",
    "projected_version",
    "type",
    "stream_id",
    "reason",
    "fingerprint",
)
"""A status value's items, in order; trailing absent items are left out. The names are also
the fields of the old per-command hash (which held `command_id` too)."""

_NUMBERS = ("expires_at", "version", "projected_version")


def shard_key(keys: Keys, command_id: UUID | str) -> str:
    """The hash holding the command's status."""
    return keys.command_statuses(UUID(str(command_id)).hex[:SHARD_HEX_DIGITS])


def status_field(command_id: UUID | str) -> bytes:
    """The command's field in its shard hash: the id's 16 bytes."""
    return UUID(str(command_id)).bytes


def location(keys: Keys, command_id: UUID | str) -> tuple[list[str], bytes]:
    """KEYS (shard hash, old per-command hash) and the field of a command's status, as every
    script below takes them."""
    return [shard_key(keys, command_id), keys.command(command_id)], status_field(command_id)


def decode(raw: bytes | None) -> dict[str, Any] | None:
    """A status value (the array the scripts return) by item name; None for none."""
    if not raw:
        return None
    items = orjson.loads(raw)
    return {name: value for name, value in zip(RECORD, items, strict=False) if value is not None}


_NAMES = ", ".join(f"'{name}'" for name in RECORD)
_NUMERIC = ", ".join(f"{name} = true" for name in _NUMBERS)

STATUS_LUA = f"""
local STATUS_NAMES = {{{_NAMES}}}
local STATUS_NUMERIC = {{{_NUMERIC}}}
local function status_now()
  return tonumber(redis.call('TIME')[1])
end
local function status_encode(s)
  local items, last = {{}}, 0
  for i, name in ipairs(STATUS_NAMES) do
    if s[name] ~= nil then
      items[i] = s[name]
      last = i
    end
  end
  for i = 1, last do
    if items[i] == nil then items[i] = cjson.null end
  end
  return cjson.encode(items)
end
local function status_decode(raw)
  local s = {{}}
  for i, value in ipairs(cjson.decode(raw)) do
    if value ~= cjson.null then s[STATUS_NAMES[i]] = value end
  end
  return s
end
-- The live status in the shard hash `key` at `field`, else in the old hash `legacy`; nil if none.
local function status_get(key, field, legacy)
  local raw = redis.call('HGET', key, field)
  if raw then
    local s = status_decode(raw)
    if s.expires_at > status_now() then return s end
    return nil
  end
  local flat = redis.call('HGETALL', legacy)
  if #flat == 0 then return nil end
  local s = {{}}
  for i = 1, #flat, 2 do
    local name, value = flat[i], flat[i + 1]
    if STATUS_NUMERIC[name] then value = tonumber(value) end
    if value ~= '' and name ~= 'command_id' then s[name] = value end
  end
  s.expires_at = nil
  return s
end
-- Write a status from `w`: `check` (a fingerprint: an existing status of another one is left
-- alone), `set` (items written), `fill` (items written where absent), `projected` (raises
-- projected_version), `expires_at` or `ttl_s`. 1 if written, 0 if not ours.
local function status_write(key, field, legacy, w)
  local s = status_get(key, field, legacy)
  if w.check ~= nil and s ~= nil and s.fingerprint ~= w.check then return 0 end
  s = s or {{}}
  for name, value in pairs(w.set or {{}}) do s[name] = value end
  for name, value in pairs(w.fill or {{}}) do
    if s[name] == nil then s[name] = value end
  end
  if w.projected and (s.projected_version or 0) < w.projected then
    s.projected_version = w.projected
  end
  s.expires_at = w.expires_at or (status_now() + w.ttl_s)
  redis.call('HSET', key, field, status_encode(s))
  redis.call('DEL', legacy)
  return 1
end
"""
"""Lua functions prepended to every script that reads or writes a status (the projector's APPLY
too): the one spelling of the layout in Lua, generated from `RECORD`."""

WRITE_STATUS = (
    STATUS_LUA
    + """
-- KEYS: shard hash, old hash; ARGV: field, the write (see status_write) as JSON
return status_write(KEYS[1], ARGV[1], KEYS[2], cjson.decode(ARGV[2]))
"""
)

READ_STATUS = (
    "#!lua flags=no-writes\n"
    + STATUS_LUA
    + """
-- KEYS: shard hash, old hash; ARGV: field. The status as its array, or false.
local s = status_get(KEYS[1], ARGV[1], KEYS[2])
if s == nil then return false end
return status_encode(s)
"""
)

DELETE_EXPIRED = """
-- KEYS: a shard hash; ARGV: fields a sweep found expired. Deletes those still expired (a
-- writer may have renewed one since); returns how many.
local now = tonumber(redis.call('TIME')[1])
local removed = 0
for _, field in ipairs(ARGV) do
  local raw = redis.call('HGET', KEYS[1], field)
  if raw and tonumber(string.match(raw, '^%[(%d+)')) <= now then
    redis.call('HDEL', KEYS[1], field)
    removed = removed + 1
  end
end
return removed
"""
"""The expiry is the array's first item, so a sweep reads it without decoding the JSON."""

_EXPIRES_AT = re.compile(rb"^\[(\d+)")


def write_args(write: Mapping[str, Any]) -> bytes:
    return orjson.dumps(write)


def shard_keys(keys: Keys) -> list[str]:
    """Every shard hash, whether it exists or not."""
    return [keys.command_statuses(f"{n:0{SHARD_HEX_DIGITS}x}") for n in range(16**SHARD_HEX_DIGITS)]


def sweep_interval_s(ttl_s: int) -> float:
    """How often expired statuses are deleted: a 24th of their lifetime, between 1 s and an
    hour (an expired status is hidden from readers at once; this only frees its memory)."""
    return min(max(ttl_s / 24, 1.0), 3600.0)


SWEEP_SCAN = 1_000
"""Fields a sweep reads from a shard per HSCAN call, and deletes per DELETE_EXPIRED call: a
shard is never read whole in one call, however many statuses it holds."""


async def sweep_statuses(redis: Redis, keys: Keys) -> int:
    """Delete every expired status; how many. Safe to run from several processes at once."""
    removed = 0
    for shard in shard_keys(keys):
        now = int((await redis.time())[0])
        expired: list[bytes] = []
        async for field, value in redis.hscan_iter(shard, count=SWEEP_SCAN):
            found = _EXPIRES_AT.match(value)
            if found is not None and int(found.group(1)) <= now:
                expired.append(field)
            if len(expired) >= SWEEP_SCAN:
                removed += await _delete_expired(redis, shard, expired)
                expired = []
        if expired:
            removed += await _delete_expired(redis, shard, expired)
    return removed


async def _delete_expired(redis: Redis, shard: str, fields: list[bytes]) -> int:
    return int(await shared_script(DELETE_EXPIRED)([shard], fields, client=redis))
