-- take_over: a stale firing passes to the caller, if its lease is still the one it saw.
--
-- KEYS[1] firing (see delete.lua)
-- ARGV[1] member, ARGV[2] the lease expiry seen (ms), ARGV[3] the new one (ms)
-- Returns 1 when taken, 0 when another scheduler took it (or it was fired) first.
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not score or tonumber(score) ~= tonumber(ARGV[2]) then return 0 end
redis.call('ZADD', KEYS[1], ARGV[3], ARGV[1])
return 1
