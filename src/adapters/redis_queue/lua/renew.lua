-- renew: extend the leases still held, and record the heartbeat on each job.
--
-- KEYS: active
-- ARGV[1] the lease's new length, ms
-- then per lease: job id, token
-- Returns the ids whose lease was held (current token, not yet expired) and is now extended.
local expires = int(now_ms + tonumber(ARGV[1]))
local held = {}
for i = 2, #ARGV, 2 do
  local id, token = ARGV[i], ARGV[i + 1]
  local score = redis.call('ZSCORE', Q.active, id)
  if score and tonumber(score) > now_ms and redis.call('HGET', job_key(id), 'token') == token then
    redis.call('ZADD', Q.active, 'XX', expires, id)
    redis.call('HSET', job_key(id), 'heartbeat_at', now)
    held[#held + 1] = id
  end
end
return held
