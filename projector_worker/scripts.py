"""The projector's Lua scripts. Each runs atomically in Redis; Python computes everything else.

APPLY is the only script on the hot path: one call per event, covering one or two generations
of one projection (the one queries read and, during a rebuild, the one being built). Its keys:

    KEYS[1] generation pointer, KEYS[2] rebuilding marker, KEYS[3] the shard hash of the
    command's status, KEYS[4] the projection's write count, KEYS[5] the command's old status
    hash (`status_store.py`), then one block of `per_block` keys per generation:
    block+1 view hash, block+2 checkpoint, block+3 history list, block+4.. the shared keys
    the change touches (referenced by their index in the change).

ARGV[1] is a JSON object of named arguments (`APPLY_ARGS` lists them), ARGV[2] the change as
one JSON array, decoded only when a block applies (encoding arguments is the client's main
cost; one argument is cheaper than a hundred), ARGV[3] the command's field in its status shard
hash ('' when no status is recorded). A rebuild may apply a run of consecutive events
of one stream in one call: `version` is then the run's last version and `first` its first,
the history entries are all of the run's, and the shared keys change by the run's net effect.
A block whose version is inside the run (neither before it nor past it) answers gap.

It returns `{-2}` when neither a pointer nor a marker exists (Redis was emptied), `{-1}` when
they are not what the caller expected (a rebuild started or switched: read them again),
else per block `{code, version_before, checkpoint_before}` with code 1 applied, 0 duplicate,
2 gap, then the write count before the call. The count goes up by one when any block applied;
the checkpoint and the count are read in the same atomic call as the pointer, so a projector
that sees either lower than it already knew has found Redis to have lost writes.
"""

from __future__ import annotations

from common.readmodel.status_store import STATUS_LUA

APPLY_EMPTY = -2
APPLY_STALE = -1
BLOCK_DUPLICATE = 0
BLOCK_APPLIED = 1
BLOCK_GAP = 2

FIXED_KEYS = 5
BLOCK_FIXED_KEYS = 3

APPLY_ARGS = (
    "expect_live",  # the pointer the caller saw, '' for none, '*' for any
    "expect_building",  # the marker the caller saw, '' for none
    "version",  # the view's version after the change
    "first",  # the version of the change's first event
    "position",  # the global position of its last event
    "blocks",  # generations written
    "per_block",  # keys per generation
    "live_block",  # 1-based block of the generation queries read; 0 if none is written
    "command",  # the write of the command's status (`status_write`), when it is recorded
    "notify",  # [[channel, message], ...] published when the live block applied
)
"""The named arguments of APPLY, in ARGV[1]; `ViewWriter` builds them."""

APPLY = (
    STATUS_LUA
    + """
local a = cjson.decode(ARGV[1])
local pointer = redis.call('GET', KEYS[1])
local marker = redis.call('GET', KEYS[2])
if not pointer and not marker then return {-2} end
if (a.expect_live ~= '*' and (pointer or '') ~= a.expect_live)
    or (marker or '') ~= a.expect_building then
  return {-1}
end
local version = a.version
local change = nil
local out = {}
local any_applied = false
local live_applied = false
for b = 0, a.blocks - 1 do
  local base = 5 + b * a.per_block
  local current = tonumber(redis.call('HGET', KEYS[base + 1], 'version') or '0')
  local checkpoint = tonumber(redis.call('GET', KEYS[base + 2]) or '0')
  local code = 1
  if current >= version then
    code = 0
  elseif current ~= a.first - 1 then
    code = 2
  else
    -- {hash fields and values, {history entries}, {index, score, member...},
    --  {index, member...}, {index, field, delta...}, {index, member, delta...}}
    change = change or cjson.decode(ARGV[2])
    redis.call('HSET', KEYS[base + 1], unpack(change[1]))
    if #change[2] > 0 then redis.call('RPUSH', KEYS[base + 3], unpack(change[2])) end
    local removed = change[4]
    for i = 1, #removed, 2 do
      redis.call('ZREM', KEYS[base + removed[i]], removed[i + 1])
    end
    local added = change[3]
    for i = 1, #added, 3 do
      redis.call('ZADD', KEYS[base + added[i]], added[i + 1], added[i + 2])
    end
    local counted = change[5]
    for i = 1, #counted, 3 do
      redis.call('HINCRBY', KEYS[base + counted[i]], counted[i + 1], counted[i + 2])
    end
    local ranked = change[6]
    for i = 1, #ranked, 3 do
      redis.call('ZINCRBY', KEYS[base + ranked[i]], ranked[i + 2], ranked[i + 1])
    end
    if a.position > checkpoint then redis.call('SET', KEYS[base + 2], a.position) end
    any_applied = true
    if b + 1 == a.live_block then live_applied = true end
  end
  out[#out + 1] = code
  out[#out + 1] = current
  out[#out + 1] = checkpoint
end
local writes = tonumber(redis.call('GET', KEYS[4]) or '0')
if any_applied then redis.call('INCR', KEYS[4]) end
out[#out + 1] = writes
if any_applied and a.command then status_write(KEYS[3], ARGV[3], KEYS[5], a.command) end
if live_applied and a.notify then
  for _, note in ipairs(a.notify) do redis.call('PUBLISH', note[1], note[2]) end
end
return out
"""
)

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

ADVANCE = """
-- KEYS: pointer, marker; ARGV: projection prefix, position, checkpoint suffix
-- Move the checkpoint of every generation being written up to a position the projection has
-- passed without a change (events of streams it does not follow), so its lag can reach 0.
-- The generation base mirrors `layout.generation_base`, as in the read scripts.
local position = tonumber(ARGV[2])
for _, generation in ipairs({redis.call('GET', KEYS[1]), redis.call('GET', KEYS[2])}) do
  if generation then
    local base = ARGV[1] .. 'g' .. generation .. ':'
    local checkpoint = tonumber(redis.call('GET', base .. ARGV[3]) or '0')
    if position > checkpoint then
      redis.call('SET', base .. ARGV[3], position)
    end
  end
end
return 1
"""
