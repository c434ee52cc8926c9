-- batch: commands on many jobs at once.

-- ZADD (score, member, ...) and ZREM (members) of many at once, in chunks that stay within
-- what Lua's unpack can pass.
local function zadd_all(key, args)
  for i = 1, #args, 2000 do
    redis.call('ZADD', key, unpack(args, i, math.min(i + 1999, #args)))
  end
end
local function zrem_all(key, ids)
  for i = 1, #ids, 1000 do
    redis.call('ZREM', key, unpack(ids, i, math.min(i + 999, #ids)))
  end
end

-- `zadd_all` for a zset every job enters and leaves again (`active` and its index), which
-- it makes a skiplist as it creates it. Redis keeps a zset of up to 128 entries as a
-- listpack, where each ZADD and ZREM scans it whole, and a worker at concurrency 100 keeps
-- about 100 there. A member longer than `zset-max-listpack-value` (64 bytes unless raised
-- this far) makes it a skiplist, which it stays once that member is taken out again.
local function zadd_churning(key, args)
  if #args == 0 then return end
  local seed = redis.call('EXISTS', key) == 0 and string.rep('~', 4096)
  if seed then redis.call('ZADD', key, 0, seed) end
  zadd_all(key, args)
  if seed then redis.call('ZREM', key, seed) end
end

-- Add many jobs to the index of status `to`, as entering it now.
local function index_all(ids, to)
  local args = {}
  for _, id in ipairs(ids) do
    args[#args + 1] = now
    args[#args + 1] = id
  end
  if to == $ACTIVE then zadd_churning(index_key(to), args) else zadd_all(index_key(to), args) end
end

-- Add `id` to the list of `status` in `lists` (a table status -> ids).
local function note(lists, status, id)
  local ids = lists[status]
  if not ids then
    ids = {}
    lists[status] = ids
  end
  ids[#ids + 1] = id
end

-- `reindex` for many jobs at once that left one status: `to` maps each status they entered
-- to their ids.
local function reindex_from(from, to)
  for status, ids in pairs(to) do
    zrem_all(index_key(from), ids)
    index_all(ids, status)
  end
end

-- `reindex` for many jobs at once that entered one status: `from` maps each status they
-- left to their ids.
local function reindex_all(from, to)
  for status, ids in pairs(from) do
    zrem_all(index_key(status), ids)
    index_all(ids, to)
  end
end
