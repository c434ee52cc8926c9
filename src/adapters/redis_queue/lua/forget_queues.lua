-- forget_queues: forget the names of idle queues, each only if it was not used since the
-- sweep read its last use (before finding its queue idle), nor in the last `grace` ms: a
-- name registered for a write about to be made is never forgotten under it.
--
-- KEYS (registry): queues tags touched legacy
-- ARGV[1] grace, ms
-- then per name: the name, its tag, its last use as the sweep read it ('<ms> <generation>')
-- Returns the names forgotten.
local clock = redis.call('TIME')
local before = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
  - tonumber(ARGV[1])
local forgotten = {}
for i = 2, #ARGV, 3 do
  local name, tag, seen = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  local used_at = tonumber(string.match(seen, '^(%d+) '))
  if used_at and used_at <= before and redis.call('HGET', R.touched, name) == seen then
    redis.call('SREM', R.queues, name)
    redis.call('HDEL', R.touched, name)
    redis.call('SREM', R.legacy, name)
    local kept = {}
    for other in string.gmatch(redis.call('HGET', R.tags, tag) or '', '%S+') do
      if other ~= name then kept[#kept + 1] = other end
    end
    if #kept > 0 then
      redis.call('HSET', R.tags, tag, table.concat(kept, ' '))
    else
      redis.call('HDEL', R.tags, tag)
    end
    forgotten[#forgotten + 1] = name
  end
end
return forgotten
