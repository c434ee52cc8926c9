-- resume: let a paused schedule tick again, from its first tick after now (computed by the
-- caller from the version it read).
--
-- KEYS[1] defs, KEYS[2] next, KEYS[3] paused, KEYS[4] changed (see put.lua)
-- ARGV[1] name, ARGV[2] version, ARGV[3] next tick ms or '' (none ahead)
-- Returns 1 (a running one is left as it is), or 0 when there is no schedule of that version.
local name, version, first = ARGV[1], ARGV[2], ARGV[3]
local def = redis.call('HGET', KEYS[1], name)
if not def or string.sub(def, 1, 16) ~= version then return 0 end
redis.call('INCR', KEYS[4])
if redis.call('SREM', KEYS[3], name) == 1 and first ~= '' then
  redis.call('ZADD', KEYS[2], first, name)
end
return 1
