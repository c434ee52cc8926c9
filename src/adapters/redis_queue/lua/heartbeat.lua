-- heartbeat: a worker serving this queue is alive for the next `ttl` ms. Readers count only
-- the workers whose presence has not lapsed; the lapsed ones are dropped when a worker joins,
-- and the set itself expires some time after its last worker's presence does.
--
-- KEYS: workers
-- ARGV[1] the worker's id
-- ARGV[2] ttl, ms
-- Returns 1 if the worker joins (it was not in the set), else 0.
local ttl = tonumber(ARGV[2])
local joined = redis.call('ZADD', Q.workers, int(now_ms + ttl), ARGV[1])
if joined == 1 then redis.call('ZREMRANGEBYSCORE', Q.workers, '-inf', now_ms) end
-- Twice the ttl when less than one is left: one PEXPIRE every few beats, not one each.
if redis.call('PTTL', Q.workers) < ttl then redis.call('PEXPIRE', Q.workers, 2 * ttl) end
return joined
