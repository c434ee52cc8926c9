-- rates: the queue's rates in `Q.rates`, as `domain/rates.py` computes them (the unit tests
-- hold the two to the same figures): jobs in and out per second, decaying counts over about
-- $RATE_SHOW s of wall time, and the drain rate, a bias-corrected average over about
-- $RATE_DRAIN s of the time the queue had jobs waiting. Times in seconds; numbers are kept
-- as decimal strings (a Lua number returned to Redis would be cut to an integer).
local RATE_SHOW, RATE_DRAIN = $RATE_SHOW, $RATE_DRAIN
local now_s = now_us / 1000000
local function num(x) return string.format('%.17g', x) end
local function decayed(rate, since)
  if not rate then return 0 end
  return tonumber(rate) * math.exp(-math.max(0, now_s - tonumber(since)) / RATE_SHOW)
end

-- `n` jobs were submitted to the queue.
local function rates_in(n)
  local r = redis.call('HMGET', Q.rates, 'in', 'in_at')
  redis.call('HSET', Q.rates, 'in', num(decayed(r[1], r[2]) + n / RATE_SHOW),
             'in_at', num(now_s))
end

-- `n` jobs left the line; `left`: some still wait. Nothing left to take (`n` 0): the queue
-- is not draining, so the time until the next claim is not counted.
local function rates_out(n, left)
  if n <= 0 then
    if redis.call('HGET', Q.rates, 'busy') == '1' then redis.call('HSET', Q.rates, 'busy', 0) end
    return
  end
  local r = redis.call('HMGET', Q.rates, 'out', 'out_at', 'drain', 'weight', 'busy')
  local w = {'out', num(decayed(r[1], r[2]) + n / RATE_SHOW), 'out_at', num(now_s),
             'busy', left and 1 or 0}
  if r[5] == '1' then
    local dt = math.max(0, now_s - tonumber(r[2]))
    local keep = math.exp(-dt / RATE_DRAIN)
    -- (1 - keep) / dt tends to 1 / RATE_DRAIN as dt tends to 0.
    local per_job = 1 / RATE_DRAIN
    if dt > 0 then per_job = (1 - keep) / dt end
    w[#w + 1] = 'drain'
    w[#w + 1] = num((tonumber(r[3]) or 0) * keep + n * per_job)
    w[#w + 1] = 'weight'
    w[#w + 1] = num((tonumber(r[4]) or 0) * keep + (1 - keep))
  end
  redis.call('HSET', Q.rates, unpack(w))
end

-- The drain rate (jobs/s) as a decimal string, or false until it has been measured.
local function drain_rate(r)
  local weight = tonumber(r[2])
  if not weight or weight <= 0 then return false end
  return num(tonumber(r[1]) / weight)
end
