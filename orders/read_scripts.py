"""The order search's read script, beyond the generic ones of `common/readmodel/reading.py`
(whose conventions it follows: KEYS[1] the pointer, ARGV[1] the projection's key prefix)."""

from __future__ import annotations

from common.readmodel.reading import GENERATION_BASE

SEARCH = (
    GENERATION_BASE
    + """
-- ARGV[2] order suffix without the id, [3] by-created suffix, [4] by-total suffix,
-- [5] scratch suffix, [6] 'created_at' | 'total_amount', [7] 'asc' | 'desc',
-- [8] offset, [9] count, [10] min total or '-inf', [11] max total or '+inf',
-- [12] most candidates scratch work may examine, [13] number of filter sets,
-- [14..] filter sets, each as two arguments: its suffix (scored by creation time) and an
-- order id or '': an order's own id is in no token set, so a term shaped like an order id
-- matches that order too when it exists (it is in the by-created set), besides the orders whose
-- token set it names (a customer or product id could look the same).
-- Returns {1, total, views, 0}, or {1, 0, {}, candidates} when the search would examine
-- more candidates than [12] in scratch sets (nothing is copied: refine the search).
local by_created = base .. ARGV[3]
local by_total = base .. ARGV[4]
local scratch = base .. ARGV[5]
local by_amount = ARGV[6] == 'total_amount'
local desc = ARGV[7] == 'desc'
local offset = tonumber(ARGV[8])
local count = tonumber(ARGV[9])
local low, high = ARGV[10], ARGV[11]
local ranged = low ~= '-inf' or high ~= '+inf'

local max_candidates = tonumber(ARGV[12])

local sets = {}
local smallest = nil
local own_id_sets = {}
local function drop_own_id_sets()
  if #own_id_sets > 0 then redis.call('DEL', unpack(own_id_sets)) end
end
for i = 1, tonumber(ARGV[13]) do
  local key = base .. ARGV[12 + 2 * i]
  local order_id = ARGV[13 + 2 * i]
  if order_id ~= '' then
    local created = redis.call('ZSCORE', by_created, order_id)
    if created then
      -- The term's token set with the order of that id added, in a scratch set of its own.
      local own = scratch .. ':' .. i
      own_id_sets[#own_id_sets + 1] = own
      redis.call('ZUNIONSTORE', own, 1, key)
      redis.call('ZADD', own, created, order_id)
      key = own
    end
  end
  local size = redis.call('ZCARD', key)
  if size == 0 then
    drop_own_id_sets()
    return {1, 0, {}, 0}
  end
  if smallest == nil or size < smallest then smallest = size end
  sets[#sets + 1] = key
end

local source = nil
local scratch_used = false
if #sets == 0 and (by_amount or not ranged) then
  source = by_amount and by_total or by_created
elseif #sets == 1 and not by_amount and not ranged then
  source = sets[1]
else
  -- Scratch work walks the smallest filter set (or the range's slice of the totals): measure
  -- it first, in O(K + log N), and refuse before copying anything.
  local candidates = smallest or redis.call('ZCOUNT', by_total, low, high)
  if candidates > max_candidates then
    drop_own_id_sets()
    return {1, 0, {}, candidates}
  end
  scratch_used = true
  if #sets == 0 then
    -- Only a range: the matching slice of the totals, then their creation times.
    redis.call('ZRANGESTORE', scratch, by_total, low, high, 'BYSCORE')
  elseif by_amount or ranged then
    -- Intersect the filters with the totals (Redis walks the smallest set); score = total.
    local args = {'ZINTERSTORE', scratch, #sets + 1}
    for _, key in ipairs(sets) do args[#args + 1] = key end
    args[#args + 1] = by_total
    args[#args + 1] = 'WEIGHTS'
    for _ = 1, #sets do args[#args + 1] = 0 end
    args[#args + 1] = 1
    redis.call(unpack(args))
    if low ~= '-inf' then redis.call('ZREMRANGEBYSCORE', scratch, '-inf', '(' .. low) end
    if high ~= '+inf' then redis.call('ZREMRANGEBYSCORE', scratch, '(' .. high, '+inf') end
  else
    -- Filters alone: every set is scored by creation time, and so is their intersection.
    local args = {'ZINTERSTORE', scratch, #sets}
    for _, key in ipairs(sets) do args[#args + 1] = key end
    args[#args + 1] = 'AGGREGATE'
    args[#args + 1] = 'MAX'
    redis.call(unpack(args))
  end
  if not by_amount and (#sets == 0 or ranged) then
    -- Re-score the survivors, scored by total, by creation time.
    redis.call('ZINTERSTORE', scratch, 2, scratch, by_created, 'WEIGHTS', 0, 1)
  end
  ranged = false
  source = scratch
end

local total, ids
if ranged then
  -- Only when paging the totals themselves with a range: no scratch needed.
  total = redis.call('ZCOUNT', source, low, high)
  if desc then
    ids = redis.call('ZRANGE', source, high, low, 'BYSCORE', 'REV', 'LIMIT', offset, count)
  else
    ids = redis.call('ZRANGE', source, low, high, 'BYSCORE', 'LIMIT', offset, count)
  end
else
  total = redis.call('ZCARD', source)
  if desc then
    ids = redis.call('ZRANGE', source, offset, offset + count - 1, 'REV')
  else
    ids = redis.call('ZRANGE', source, offset, offset + count - 1)
  end
end
local views = {}
for i, id in ipairs(ids) do views[i] = redis.call('HGETALL', base .. ARGV[2] .. id) end
if scratch_used then redis.call('DEL', scratch) end
drop_own_id_sets()
return {1, total, views, 0}
"""
)
