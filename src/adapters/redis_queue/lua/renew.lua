-- renew: extend the leases still held, and record the heartbeat on each job.
--
-- KEYS: active
-- then the slots key of each concurrency-limited job type (ARGV[2] of them, `limits`)
-- ARGV[1] the lease's new length, ms
-- ARGV[2] how many slots keys follow the fixed keys
-- then per lease: job id, token
-- Returns the ids whose lease was held (current token, not yet expired) and is now extended.
--
-- Renewals go through when Redis is full (used memory over `maxmemory`, `noeviction`): Redis
-- refuses a script's first write that could grow memory then, but never a write once the
-- script has written. A renewal grows nothing (it moves a score, overwrites a time), and a
-- refused one would let the lease lapse and the job run twice; so each lease is moved by
-- ZREM, a write that cannot grow memory, then ZADD. A slot the attempt holds lapses with
-- its lease, so it is moved too (XX: only a slot held).
-- Needs: limits
read_slots(2)
local expires = int(now_ms + tonumber(ARGV[1]))
local held = {}
for i = 3, #ARGV, 2 do
  local id, token = ARGV[i], ARGV[i + 1]
  local score = redis.call('ZSCORE', Q.active, id)
  if score and tonumber(score) > now_ms and redis.call('HGET', job_key(id), 'token') == token then
    redis.call('ZREM', Q.active, id)
    redis.call('ZADD', Q.active, expires, id)
    redis.call('HSET', job_key(id), 'heartbeat_at', now)
    for _, slots in ipairs(SLOTS) do redis.call('ZADD', slots, 'XX', expires, id) end
    held[#held + 1] = id
  end
end
return held
