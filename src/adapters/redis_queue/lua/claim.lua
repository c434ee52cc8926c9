-- claim: maintenance (`maintain`), then lease up to `limit` queued jobs to one worker, in
-- claim order; none while the queue is paused.
--
-- KEYS: queued active delayed deadlines cancelling marker paused seq tokens rates limited
-- then, on one server, per limited job type (ARGV[6] of them), its starts, started and
-- slots keys (`limits`)
-- ARGV[1] limit: the most jobs to lease
-- ARGV[2] the lease's length, ms
-- ARGV[3] the worker's id
-- ARGV[4] result retention, ms
-- ARGV[5] dead retention, ms (not positive: kept for good)
-- ARGV[6] how many job types are limited, then per type 4 values (`limits`): its name, its
--   rate's count and window in ms (0 0: no rate), its concurrency (0: none); or, on Redis
--   Cluster, `granted`, how many types, then per type 3 values (`parking`): its name, the
--   permits `reserve` granted it, the ms until its rate allows a start (-1: not known)
-- Returns {jobs, wake_in}: jobs holds one array per claimed job (the FIELDS values, then
-- the new token: its id and type say which permits it used, for `convert`); wake_in is the ms until the next due job, lease expiry, deadline or start
-- a rate allows, -1 if none (only computed when nothing was claimed). A claimer that found
-- nothing need not claim again before then unless woken: whatever makes a job claimable
-- sooner pushes the marker (`wake`, `wake_before`).
--
-- Ids in `queued` whose hash is gone or whose status cannot be claimed are dropped; a job
-- whose deadline has passed expires instead of being claimed. A job whose type is at its
-- limit is parked (`limits`, `parking`), at most $MAINTENANCE_BATCH per call; parked jobs
-- go back in line as their type's limits allow, before the claim. Publishes the ids of the
-- jobs it finished (`finished`). Counts the jobs it took off the line in the queue's rates
-- (`rates_out`).
-- Needs: parking maintain wake retain deadline batch finished rates fields
local CLAIMABLE = $CLAIMABLE
local limit = tonumber(ARGV[1])
local lease_ms = tonumber(ARGV[2])
local worker = ARGV[3]
local result_ttl = tonumber(ARGV[4])
local limited = read_limits(6)

maintain(result_ttl, tonumber(ARGV[5]))

local jobs = {}
local taken = 0  -- ids taken off the line: claimed, expired or dropped
local parked = 0
if limited then
  for name, l in pairs(limited) do
    if not l.granted then room(l) end
    l.held, l.parked = {}, {}
    if l.free > 0 and redis.call('SISMEMBER', Q.limited, name) == 1 then
      unpark(name, math.min(l.free, limit))
    end
  end
end
if redis.call('EXISTS', Q.paused) == 0 then
  local expires = int(now_ms + lease_ms)
  local leased, from = {}, {}
  while #jobs < limit and parked < $MAINTENANCE_BATCH do
    -- Scores only where a job may be parked: a score in a reply is a double Redis formats.
    local popped, step
    if limited then
      popped, step = redis.call('ZPOPMIN', Q.queued, limit - #jobs), 2
    else
      popped, step = redis.call('ZRANGE', Q.queued, 0, limit - #jobs - 1), 1
      zrem_all(Q.queued, popped)
    end
    if #popped == 0 then break end
    local count = #popped / step
    taken = taken + count
    -- A block of fencing tokens, one per job popped (those not claimed go unused).
    local token = redis.call('INCRBY', Q.tokens, count) - count
    for n = 1, #popped, step do
      local id = popped[n]
      local key = job_key(id)
      -- Read once: the claim answers these fields, as the job stands once leased.
      local f = job_fields(id, key)
      local status, deadline = f[$STATUS_FIELD], f[$DEADLINE_FIELD]
      local l = limited and CLAIMABLE[status] and limited[f[$TYPE_FIELD]]
      if CLAIMABLE[status] and past(deadline) then
        redis.call('ZREM', Q.deadlines, id)
        redis.call('HSET', key, 'status', $EXPIRED, 'finished_at', now)
        reindex(id, status, $EXPIRED)
        retain(key, result_ttl)
        finish(id)
      elseif l and l.free <= 0 then
        -- Its type is at its limit: set aside, still queued, at its place in line.
        l.parked[#l.parked + 1] = popped[n + 1]
        l.parked[#l.parked + 1] = id
        parked, taken = parked + 1, taken - 1
      elseif CLAIMABLE[status] then
        -- The attempt is counted now, so a job that kills its worker still uses one up.
        local attempts = int((tonumber(f[$ATTEMPTS_FIELD]) or 0) + 1)
        token = token + 1
        local lease = int(token) .. ':' .. attempts
        redis.call('HSET', key, 'status', $ACTIVE, 'attempts', attempts,
                   'started_at', now, 'token', lease, 'worker', worker)
        if f[$PROGRESS_FIELD] or f[$RETRY_AT_FIELD] or f[$HEARTBEAT_AT_FIELD] then
          redis.call('HDEL', key, 'progress', 'retry_at', 'heartbeat_at')
        end
        if deadline then redis.call('ZREM', Q.deadlines, id) end
        leased[#leased + 1] = expires
        leased[#leased + 1] = id
        if l then
          l.free = l.free - 1
          l.first = l.first or int(token)
          l.held[#l.held + 1] = expires
          l.held[#l.held + 1] = id
        end
        note(from, status, id)
        f[$STATUS_FIELD], f[$ATTEMPTS_FIELD], f[$STARTED_AT_FIELD] = $ACTIVE, attempts, now
        f[$TOKEN_FIELD], f[$WORKER_FIELD] = lease, worker
        f[$PROGRESS_FIELD], f[$RETRY_AT_FIELD], f[$HEARTBEAT_AT_FIELD] = false, false, false
        jobs[#jobs + 1] = f
      end
    end
  end
  zadd_churning(Q.active, leased)
  reindex_all(from, $ACTIVE)
end

local wake_in = -1
if limited then
  for name, l in pairs(limited) do
    -- The queue's key base names its starts: each queue numbers its own tokens.
    if l.rate > 0 and l.first then started(l, #l.held / 2, base .. l.first) end
    if l.conc > 0 then zadd_all(l.slots, l.held) end
    if #l.parked > 0 then
      zadd_all(parked_key(name), l.parked)
      redis.call('SADD', Q.limited, name)
    end
  end
end
if #jobs > 0 then
  -- Work left over: let another claimer in. None: the claim order starts over, unless jobs
  -- are parked (they keep their places).
  local left = redis.call('EXISTS', Q.queued) == 1
  if left then wake()
  elseif redis.call('EXISTS', Q.limited) == 0 then redis.call('DEL', Q.seq) end
  rates_out(taken, left)
else
  -- Stopped by the most jobs parked per call: another claim goes on with the rest.
  if parked >= $MAINTENANCE_BATCH then wake() end
  rates_out(taken, taken > 0 and redis.call('EXISTS', Q.queued) == 1)
  local next_at = nil
  local d = redis.call('ZRANGE', Q.delayed, 0, 0, 'WITHSCORES')
  if d[2] then next_at = tonumber(d[2]) end
  local a = redis.call('ZRANGE', Q.active, 0, 0, 'WITHSCORES')
  if a[2] and (next_at == nil or tonumber(a[2]) < next_at) then next_at = tonumber(a[2]) end
  local e = redis.call('ZRANGE', Q.deadlines, 0, 0, 'WITHSCORES')
  if e[2] and (next_at == nil or tonumber(e[2]) < next_at) then next_at = tonumber(e[2]) end
  if limited then
    -- A type held by its rate with jobs parked: wake when its next start is allowed.
    for name, l in pairs(limited) do
      if l.until_ms and (next_at == nil or l.until_ms < next_at)
          and redis.call('SISMEMBER', Q.limited, name) == 1 then
        next_at = l.until_ms
      end
    end
  end
  if next_at then wake_in = math.max(0, next_at - now_ms) end
end
publish_finished()
return {jobs, wake_in}
