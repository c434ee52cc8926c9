-- claim: take a due schedule's ticks and move its next tick on, if it still stands where
-- the caller found it (the same version, the same next tick): of every scheduler that found
-- it due, one wins.
--
-- KEYS[1] defs, KEYS[2] next, KEYS[3] firing (see put.lua and delete.lua)
-- ARGV[1] name, ARGV[2] version, ARGV[3] the next tick found (ms), ARGV[4] the next tick
-- after these (ms, or '' for none ahead), ARGV[5] the firings' lease expiry (ms), ARGV[6]
-- now (ms), then the ticks taken (ms), each a firing until `fired`
-- Returns 1 when taken, 0 when another scheduler moved it first (or it was changed,
-- paused or removed).
local name, version, found, after = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local def = redis.call('HGET', KEYS[1], name)
if not def or string.sub(def, 1, 16) ~= version then return 0 end
local score = redis.call('ZSCORE', KEYS[2], name)
if not score or tonumber(score) ~= tonumber(found) then return 0 end
if after == '' then
  redis.call('ZREM', KEYS[2], name)
else
  redis.call('ZADD', KEYS[2], after, name)
end
for i = 7, #ARGV do
  redis.call('ZADD', KEYS[3], ARGV[5], name .. ' ' .. ARGV[i] .. ' ' .. ARGV[6])
end
return 1
