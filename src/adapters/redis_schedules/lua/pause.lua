-- pause: stop a schedule's ticks.
--
-- KEYS[1] defs, KEYS[2] next, KEYS[3] paused, KEYS[4] changed (see put.lua)
-- ARGV[1] name
-- Returns 1, or 0 when there is no such schedule.
local name = ARGV[1]
if redis.call('HEXISTS', KEYS[1], name) == 0 then return 0 end
redis.call('INCR', KEYS[4])
redis.call('SADD', KEYS[3], name)
redis.call('ZREM', KEYS[2], name)
return 1
