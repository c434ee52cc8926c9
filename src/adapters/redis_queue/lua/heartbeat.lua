-- heartbeat: a worker serving this queue is alive for the next `ttl` ms; workers whose
-- presence lapsed are dropped. The set itself expires when its last worker's does.
--
-- KEYS: workers
-- ARGV[1] the worker's id
-- ARGV[2] ttl, ms
-- Returns how many workers serve the queue now.
local ttl = tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', Q.workers, '-inf', now_ms)
redis.call('ZADD', Q.workers, int(now_ms + ttl), ARGV[1])
if redis.call('PTTL', Q.workers) < ttl then redis.call('PEXPIRE', Q.workers, ttl) end
return redis.call('ZCARD', Q.workers)
