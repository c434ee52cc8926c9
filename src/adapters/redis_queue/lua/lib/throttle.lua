-- throttle: which limit of a job type holds its queued jobs back now, reading only: for
-- `situation` on one server, and `throttled` on the limits' own slot on Redis Cluster.
-- Needs only the clock.

-- The limit that holds a type back, given its rate's count and window (ms; 0 and 0: no
-- rate), its concurrency (0: none) and its starts and slots keys (`limits`): 'rate <ms>'
-- (when its rate next allows a start), 'concurrency', or false.
local function throttle_of(rate, per, conc, starts, slots)
  local used, first = 0, nil
  if rate > 0 then
    -- The starts in the window, one entry per claim, oldest first.
    local since = '(' .. int(now_us - per * 1000)
    local entries = redis.call('ZRANGEBYSCORE', starts, since, '+inf', 'WITHSCORES')
    for e = 1, #entries, 2 do
      used = used + tonumber(string.match(entries[e], ':(%d+)$$'))
      first = first or tonumber(entries[e + 1])
    end
  end
  if rate > 0 and used >= rate then
    return 'rate ' .. int(math.ceil((first + per * 1000) / 1000))
  elseif conc > 0 and redis.call('ZCOUNT', slots, '(' .. now_ms, '+inf') >= conc then
    return 'concurrency'
  end
  return false
end
