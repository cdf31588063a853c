"""The projector's Lua scripts. Each runs atomically in Redis; Python computes everything else.

APPLY is the only script on the hot path: one call per event, covering one or two generations
(the one queries read and, during a rebuild, the one being built). Its key layout:

    KEYS[1] generation pointer, KEYS[2] rebuilding marker, KEYS[3] the command's status hash,
    then one block of `ARGV[6]` keys per generation:
    block+1 order hash, block+2 checkpoint, block+3 members set, block+4 history list,
    block+5.. the sorted sets the change touches (referenced by their index in the change).

ARGV carries the expectations, the event's version and position, the command's fields, the
notifications, and the change itself as one JSON array (one argument instead of a hundred:
encoding arguments is the client's main cost). A rebuild may apply a run of consecutive
events of one order in one call: ARGV[3] is then the run's last version, ARGV[17] its first,
the history entries are all of the run's, and the sorted-set changes are the run's net effect.
A block whose version is inside the run (neither before it nor past it) answers gap.

It returns `{-2}` when neither a pointer nor a marker exists (Redis was emptied), `{-1}` when
they are not what the caller expected (a rebuild started or switched: read them again),
else per block `{code, version_before}` with code 1 applied, 0 duplicate, 2 gap.
"""

from __future__ import annotations

APPLY_EMPTY = -2
APPLY_STALE = -1
BLOCK_DUPLICATE = 0
BLOCK_APPLIED = 1
BLOCK_GAP = 2

FLAG_PUBLISH = 1
"""Publish the read-your-writes notifications when the block queries read applied the event."""
FLAG_RECORD_COMMAND = 2
"""Record `projected_version` on the command's status hash when any block applied the event."""

FIXED_KEYS = 3
BLOCK_FIXED_KEYS = 4

APPLY = """
local pointer = redis.call('GET', KEYS[1])
local marker = redis.call('GET', KEYS[2])
if not pointer and not marker then return {-2} end
if (ARGV[1] ~= '*' and (pointer or '') ~= ARGV[1]) or (marker or '') ~= ARGV[2] then
  return {-1}
end
local version = tonumber(ARGV[3])
local first = tonumber(ARGV[17] or ARGV[3])
local position = tonumber(ARGV[4])
local nblocks = tonumber(ARGV[5])
local per_block = tonumber(ARGV[6])
local live = tonumber(ARGV[7])
local flags = tonumber(ARGV[8])
local change = nil
local out = {}
local any_applied = false
local live_applied = false
for b = 0, nblocks - 1 do
  local base = 3 + b * per_block
  local current = tonumber(redis.call('HGET', KEYS[base + 1], 'version') or '0')
  local code = 1
  if current >= version then
    code = 0
  elseif current ~= first - 1 then
    code = 2
  else
    -- {hash fields and values, {history entries}, {index, score, member...}, {index, member...}}
    change = change or cjson.decode(ARGV[16])
    redis.call('HSET', KEYS[base + 1], unpack(change[1]))
    redis.call('RPUSH', KEYS[base + 4], unpack(change[2]))
    local removed = change[4]
    for i = 1, #removed, 2 do
      redis.call('ZREM', KEYS[base + removed[i]], removed[i + 1])
    end
    local added = change[3]
    for i = 1, #added, 3 do
      redis.call('ZADD', KEYS[base + added[i]], added[i + 1], added[i + 2])
    end
    local checkpoint = tonumber(redis.call('GET', KEYS[base + 2]) or '0')
    if position > checkpoint then redis.call('SET', KEYS[base + 2], ARGV[4]) end
    local members = {KEYS[base + 1], KEYS[base + 2], KEYS[base + 4]}
    for k = base + 5, base + per_block do members[#members + 1] = KEYS[k] end
    redis.call('SADD', KEYS[base + 3], unpack(members))
    any_applied = true
    if b + 1 == live then live_applied = true end
  end
  out[#out + 1] = code
  out[#out + 1] = current
end
if any_applied and flags >= 2 then
  redis.call('HSETNX', KEYS[3], 'command_id', ARGV[9])
  redis.call('HSETNX', KEYS[3], 'type', ARGV[10])
  redis.call('HSETNX', KEYS[3], 'order_id', ARGV[11])
  redis.call('HSETNX', KEYS[3], 'version', ARGV[3])
  redis.call('HSETNX', KEYS[3], 'reason', '')
  redis.call('HSET', KEYS[3], 'status', 'succeeded')
  local projected = tonumber(redis.call('HGET', KEYS[3], 'projected_version') or '0')
  if version > projected then redis.call('HSET', KEYS[3], 'projected_version', ARGV[3]) end
end
if live_applied and flags % 2 == 1 then
  redis.call('PUBLISH', ARGV[12], ARGV[13])
  redis.call('PUBLISH', ARGV[14], ARGV[15])
end
return out
"""

BEGIN_REBUILD = """
-- KEYS: lock, counter, pointer, generations, marker; ARGV: token, marker ttl ms
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return -1 end
local n = redis.call('INCR', KEYS[2])
local pointer = tonumber(redis.call('GET', KEYS[3]) or '0')
if n <= pointer then
  n = pointer + 1
  redis.call('SET', KEYS[2], n)
end
redis.call('SADD', KEYS[4], n)
redis.call('SET', KEYS[5], n, 'PX', ARGV[2])
return n
"""

RENEW = """
-- KEYS: lock, marker; ARGV: token, ttl ms, generation
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
if ARGV[3] ~= '' then
  if redis.call('GET', KEYS[2]) ~= ARGV[3] then return 0 end
  redis.call('PEXPIRE', KEYS[2], ARGV[2])
end
return 1
"""

SWITCH = """
-- KEYS: lock, marker, pointer; ARGV: token, generation, channel, message
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return -1 end
if redis.call('GET', KEYS[2]) ~= ARGV[2] then return -1 end
local old = tonumber(redis.call('GET', KEYS[3]) or '0')
redis.call('SET', KEYS[3], ARGV[2])
redis.call('DEL', KEYS[2])
redis.call('PUBLISH', ARGV[3], ARGV[4])
return old
"""

ABANDON = """
-- KEYS: lock, marker; ARGV: token, generation
if redis.call('GET', KEYS[2]) == ARGV[2] then redis.call('DEL', KEYS[2]) end
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
return 1
"""

RELEASE = """
-- KEYS: lock; ARGV: token
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
