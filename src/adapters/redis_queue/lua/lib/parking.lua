-- parking: what claims do with the limits (`limits`): how many jobs of each limited type may
-- start, and the jobs put aside while their type is at its limit.
--
-- A claim reads the limits from ARGV (`read_limits`): how many types, then per type its
-- name, its rate's count and window (ms; 0 and 0: no rate) and its concurrency (0: none);
-- its starts, started and slots keys follow the queue's fixed keys in KEYS, in that order.
-- Needs: limits batch

-- The limits given from ARGV[at]: a table type -> {name, rate, per, conc, starts, started,
-- slots}, or nil when no type is limited (then a claim does nothing more than without
-- limits).
local function read_limits(at)
  local n = tonumber(ARGV[at]) or 0
  if n == 0 then return nil end
  local limited = {}
  for i = 0, n - 1 do
    local a, k = at + 1 + i * 4, $GROUP_SIZE + 1 + i * 3
    local l = {name = ARGV[a], rate = tonumber(ARGV[a + 1]), per = tonumber(ARGV[a + 2]),
               conc = tonumber(ARGV[a + 3]), starts = KEYS[k], started = KEYS[k + 1],
               slots = KEYS[k + 2]}
    limited[l.name] = l
    if l.conc > 0 then SLOTS[#SLOTS + 1] = l.slots end
  end
  return limited
end

-- How many jobs of `l`'s type may start now (`l.free`), and, when its rate allows none,
-- when the next start is allowed (`l.until_ms`). Starts that left the window and lapsed
-- slots are dropped. Starts are kept in us, so two starts `per` apart are never closer
-- than that; one entry per claim (its starts share its time), so the upkeep of a rate costs
-- a claim the same however many jobs it starts.
local function room(l)
  local free = math.huge
  l.until_ms = nil
  if l.rate > 0 then
    local cut = int(now_us - l.per * 1000)
    local gone = redis.call('ZRANGEBYSCORE', l.starts, '-inf', cut)
    local used
    if #gone > 0 then
      local n = 0
      for _, entry in ipairs(gone) do n = n + tonumber(string.match(entry, ':(%d+)$$')) end
      redis.call('ZREMRANGEBYSCORE', l.starts, '-inf', cut)
      used = redis.call('DECRBY', l.started, n)
      if used < 0 then  -- the count was deleted: count the entries again
        used = 0
        for _, entry in ipairs(redis.call('ZRANGE', l.starts, 0, -1)) do
          used = used + tonumber(string.match(entry, ':(%d+)$$'))
        end
        redis.call('SET', l.started, used)
      end
    else
      used = tonumber(redis.call('GET', l.started)) or 0
    end
    free = l.rate - used
    if free <= 0 then
      local first = redis.call('ZRANGE', l.starts, 0, 0, 'WITHSCORES')
      if first[2] then
        l.until_ms = math.ceil((tonumber(first[2]) + l.per * 1000) / 1000)
      else  -- a count without its starts (they were deleted): start over
        redis.call('DEL', l.started)
        free = l.rate
      end
    end
  end
  if l.conc > 0 then
    redis.call('ZREMRANGEBYSCORE', l.slots, '-inf', now_ms)
    free = math.min(free, l.conc - redis.call('ZCARD', l.slots))
  end
  l.free = free
end

-- Count `n` starts of `l`'s type now, the first with fencing token `token`.
local function started(l, n, token)
  redis.call('ZADD', l.starts, now, token .. ':' .. n)
  redis.call('INCRBY', l.started, n)
end

-- Put back in line up to `n` parked jobs of `job_type`, at their places; answers how many.
local function unpark(job_type, n)
  local key = parked_key(job_type)
  local popped = redis.call('ZPOPMIN', key, n)
  local args = {}
  for i = 1, #popped, 2 do
    args[#args + 1] = popped[i + 1]
    args[#args + 1] = popped[i]
  end
  zadd_all(Q.queued, args)
  if redis.call('EXISTS', key) == 0 then redis.call('SREM', Q.limited, job_type) end
  return #popped / 2
end
