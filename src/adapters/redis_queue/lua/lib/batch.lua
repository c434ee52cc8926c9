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

-- Add many jobs to the index of status `to`, as entering it now.
local function index_all(ids, to)
  local args = {}
  for _, id in ipairs(ids) do
    args[#args + 1] = now
    args[#args + 1] = id
  end
  zadd_all(index_key(to), args)
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
