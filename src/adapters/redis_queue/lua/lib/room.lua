-- room: how much room a job type's limits have now (`limits` describes the keys), in a
-- script of the queue (one server: `claim`) or of the limits' own slot (`reserve`, on Redis
-- Cluster). Needs only the clock.

-- The limits of one type: its name, rate's count and window (ms; 0 and 0: no rate) and
-- concurrency (0: none) from ARGV[a], its starts, started and slots keys from KEYS[k].
local function limit_of(a, k)
  return {name = ARGV[a], rate = tonumber(ARGV[a + 1]), per = tonumber(ARGV[a + 2]),
          conc = tonumber(ARGV[a + 3]), starts = KEYS[k], started = KEYS[k + 1],
          slots = KEYS[k + 2]}
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

-- Count `n` starts of `l`'s type now, as the entry `id`, which no other entry in the window
-- has (a queue's key base and its first fencing token, or a reservation's id): an entry
-- written again would be counted twice and given back once.
local function started(l, n, id)
  redis.call('ZADD', l.starts, now, id .. ':' .. n)
  redis.call('INCRBY', l.started, n)
end

