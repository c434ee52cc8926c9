-- idle: whether nothing uses the queue any more, and if so, delete what is left of it.
--
-- What the registry's sweep asks of each queue before it forgets the name (`registry.py`):
-- the queue is idle when it is not paused, no live worker serves it, and it holds no job
-- (the finished ones past their retention are forgotten first, as recover would).
--
-- KEYS: queued active delayed deadlines cancelling marker paused seq tokens stale workers rates limited
-- ARGV[1] result retention, ms
-- ARGV[2] dead retention, ms (not positive: kept for good)
-- Returns 1 if the queue is idle (its remaining keys are gone now), else 0.
-- Needs: tidy
if redis.call('EXISTS', Q.paused) == 1 then return 0 end
if redis.call('ZCOUNT', Q.workers, '(' .. now_ms, '+inf') > 0 then return 0 end
if redis.call('EXISTS', Q.queued, Q.active, Q.delayed) > 0 then return 0 end
tidy(tonumber(ARGV[1]), tonumber(ARGV[2]))
for _, status in ipairs($STATUS_LIST) do
  if redis.call('EXISTS', index_key(status)) == 1 then return 0 end
end
-- No job: its fencing tokens and claim order can start over (a token fences the writes
-- about one job, and there is none), a marker would only wake a claimer for nothing, and
-- a forgotten queue's rates go with it.
redis.call('DEL', Q.deadlines, Q.cancelling, Q.marker, Q.seq, Q.tokens, Q.stale, Q.workers,
           Q.rates, Q.limited)
return 1
