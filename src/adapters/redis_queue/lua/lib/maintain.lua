-- maintain: what time moves in a queue, run by every claim and recover.
-- Needs: retain deadline order batch settlement finished limits

-- Expire waiting jobs past their deadline, promote due retries and scheduled jobs, settle
-- lapsed leases: at most $MAINTENANCE_BATCH of each per call, so a call stays short however
-- large a backlog is (the next call continues). `result_ttl` and `dead_ttl` are the
-- retentions (ms). Answers how many jobs moved, and how many of them are now queued.
local EXPIRABLE = $EXPIRABLE
local PROMOTABLE = $PROMOTABLE
local function maintain(result_ttl, dead_ttl)
  local moved, queued = 0, 0
  -- Waiting jobs whose deadline passed never run.
  for _, id in ipairs(redis.call('ZRANGEBYSCORE', Q.deadlines, '-inf', now_ms,
                                 'LIMIT', 0, $MAINTENANCE_BATCH)) do
    redis.call('ZREM', Q.deadlines, id)
    local key = job_key(id)
    local f = redis.call('HMGET', key, 'status', 'type')
    local status = f[1]
    if EXPIRABLE[status] then
      if redis.call('ZREM', Q.queued, id) == 0 then unpark_one(id, status, f[2]) end
      redis.call('ZREM', Q.delayed, id)
      redis.call('HSET', key, 'status', $EXPIRED, 'finished_at', now)
      reindex(id, status, $EXPIRED)
      retain(key, result_ttl)
      finish(id)
      moved = moved + 1
    end
  end
  -- Due retries and scheduled jobs join the end of their priority, like new jobs.
  for _, id in ipairs(redis.call('ZRANGEBYSCORE', Q.delayed, '-inf', now_ms,
                                 'LIMIT', 0, $MAINTENANCE_BATCH)) do
    redis.call('ZREM', Q.delayed, id)
    local f = redis.call('HMGET', job_key(id), 'status', 'priority')
    if PROMOTABLE[f[1]] then
      redis.call('HSET', job_key(id), 'status', $QUEUED)
      reindex(id, f[1], $QUEUED)
      line_up(id, f[2], false)
      moved, queued = moved + 1, queued + 1
    end
  end
  -- A lease that lapsed: its worker died or stalled. The attempt ends as
  -- `Ending.lease_expired()` says, by the same rule as every other ending.
  local lapsed = redis.call('ZRANGEBYSCORE', Q.active, '-inf', now_ms,
                            'LIMIT', 0, $MAINTENANCE_BATCH)
  local to = {}
  for _, id in ipairs(lapsed) do
    local key = job_key(id)
    local f = attempt_facts(key)
    if SETTLES_FROM[f[1]] then
      local status = settle(id, key, f, $LAPSE_OUTCOME, $LAPSE_RETRY_IN, $LAPSE_ERROR,
                            $LAPSE_SUMMARY, result_ttl, dead_ttl)
      note(to, status, id)
      moved = moved + 1
      if status == $QUEUED then queued = queued + 1 end
    end
  end
  zrem_all(Q.active, lapsed)
  release_slots(lapsed)
  reindex_from($ACTIVE, to)
  return moved, queued
end
