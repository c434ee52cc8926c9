-- claim: maintenance (`maintain`), then lease up to `limit` queued jobs to one worker, in
-- claim order; none while the queue is paused.
--
-- KEYS: queued active delayed deadlines cancelling marker paused seq tokens rates
-- ARGV[1] limit: the most jobs to lease
-- ARGV[2] the lease's length, ms
-- ARGV[3] the worker's id
-- ARGV[4] result retention, ms
-- ARGV[5] dead retention, ms (not positive: kept for good)
-- Returns {jobs, wake_in}: jobs holds one array per claimed job (the FIELDS values, then
-- the new token); wake_in is the ms until the next due job or lease expiry, -1 if none
-- (only computed when nothing was claimed).
--
-- Ids in `queued` whose hash is gone or whose status cannot be claimed are dropped; a job
-- whose deadline has passed expires instead of being claimed. Publishes the ids of the jobs
-- it finished (`finished`). Counts the jobs it took off the line in the queue's rates
-- (`rates_out`).
-- Needs: maintain wake retain deadline batch finished rates
local CLAIMABLE = $CLAIMABLE
local limit = tonumber(ARGV[1])
local lease_ms = tonumber(ARGV[2])
local worker = ARGV[3]
local result_ttl = tonumber(ARGV[4])

maintain(result_ttl, tonumber(ARGV[5]))

local jobs = {}
local taken = 0  -- ids taken off the line: claimed, expired or dropped
if redis.call('EXISTS', Q.paused) == 0 then
  local expires = int(now_ms + lease_ms)
  local leased, from = {}, {}
  while #jobs < limit do
    local popped = redis.call('ZPOPMIN', Q.queued, limit - #jobs)
    if #popped == 0 then break end
    taken = taken + #popped / 2
    -- A block of fencing tokens, one per job popped (those not claimed go unused).
    local token = redis.call('INCRBY', Q.tokens, #popped / 2) - #popped / 2
    for n = 1, #popped, 2 do
      local id = popped[n]
      local key = job_key(id)
      local f = redis.call('HMGET', key, 'status', 'attempts', 'deadline')
      if CLAIMABLE[f[1]] and past(f[3]) then
        redis.call('ZREM', Q.deadlines, id)
        redis.call('HSET', key, 'status', $EXPIRED, 'finished_at', now)
        reindex(id, f[1], $EXPIRED)
        retain(key, result_ttl)
        finish(id)
      elseif CLAIMABLE[f[1]] then
        -- The attempt is counted now, so a job that kills its worker still uses one up.
        local attempts = (tonumber(f[2]) or 0) + 1
        token = token + 1
        redis.call('HSET', key, 'status', $ACTIVE, 'attempts', attempts,
                   'started_at', now, 'token', int(token) .. ':' .. attempts, 'worker', worker)
        redis.call('HDEL', key, 'progress', 'retry_at', 'heartbeat_at')
        if f[3] then redis.call('ZREM', Q.deadlines, id) end
        leased[#leased + 1] = expires
        leased[#leased + 1] = id
        note(from, f[1], id)
        jobs[#jobs + 1] = redis.call('HMGET', key, $FIELDS)
      end
    end
  end
  zadd_all(Q.active, leased)
  reindex_all(from, $ACTIVE)
end

local wake_in = -1
if #jobs > 0 then
  -- Work left over: let another claimer in. None: the claim order starts over.
  local left = redis.call('EXISTS', Q.queued) == 1
  if left then wake() else redis.call('DEL', Q.seq) end
  rates_out(taken, left)
else
  rates_out(taken, taken > 0 and redis.call('EXISTS', Q.queued) == 1)
  local next_at = nil
  local d = redis.call('ZRANGE', Q.delayed, 0, 0, 'WITHSCORES')
  if d[2] then next_at = tonumber(d[2]) end
  local a = redis.call('ZRANGE', Q.active, 0, 0, 'WITHSCORES')
  if a[2] and (next_at == nil or tonumber(a[2]) < next_at) then next_at = tonumber(a[2]) end
  if next_at then wake_in = math.max(0, next_at - now_ms) end
end
publish_finished()
return {jobs, wake_in}
