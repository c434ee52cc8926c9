-- delete: forget a schedule, and the ticks of it that were taken but not submitted.
--
-- KEYS[1] defs, KEYS[2] next, KEYS[3] paused, KEYS[4] last, KEYS[5] firing (see put.lua;
--   last: hash name -> "<tick ms> <job id>"; firing: zset "<name> <tick ms> <claimed ms>"
--   -> lease expiry ms), KEYS[6] changed (see put.lua)
-- ARGV[1] name
-- Returns 1, or 0 when there was no such schedule.
local name = ARGV[1]
redis.call('INCR', KEYS[6])
local existed = redis.call('HDEL', KEYS[1], name)
redis.call('ZREM', KEYS[2], name)
redis.call('SREM', KEYS[3], name)
redis.call('HDEL', KEYS[4], name)
local prefix = name .. ' '
for _, member in ipairs(redis.call('ZRANGE', KEYS[5], 0, -1)) do
  if string.sub(member, 1, #prefix) == prefix then redis.call('ZREM', KEYS[5], member) end
end
return existed
