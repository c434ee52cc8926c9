-- queue_stats: the queue's figures (reads only).
--
-- KEYS: paused workers rates
-- ARGV: none
-- Returns {counts, oldest, paused, workers, rate_in, rate_out, drain}: counts has one
-- integer per status, in STATUS_LIST order (the index sizes); oldest is how long (us) the
-- oldest queued job has waited, -1 if none; paused is 1 or 0; workers counts the live
-- workers serving the queue; rate_in and rate_out are jobs submitted and claimed per second
-- lately, drain the jobs claimed per second while it had jobs waiting (false until
-- measured), as decimal strings (`rates`).
-- Needs: rates
local counts = {}
for _, status in ipairs($STATUS_LIST) do
  counts[#counts + 1] = redis.call('ZCARD', index_key(status))
end
local oldest = -1
local first = redis.call('ZRANGE', index_key($QUEUED), 0, 0, 'WITHSCORES')
if first[2] then oldest = math.max(0, now_us - tonumber(first[2])) end
local r = redis.call('HMGET', Q.rates, 'in', 'in_at', 'out', 'out_at', 'drain', 'weight')
return {counts, oldest, redis.call('EXISTS', Q.paused),
        redis.call('ZCOUNT', Q.workers, '(' .. now_ms, '+inf'),
        num(decayed(r[1], r[2])), num(decayed(r[3], r[4])), drain_rate({r[5], r[6]})}
