-- order: the claim order of `Q.queued`. A job's score is
-- `(PRIORITY_MAX - priority) * BAND + BAND / 2 + seq` when it joins the end of its priority
-- (new, due, requeued) and `... - seq` when it goes to the front (a release, a retry due at
-- once), `seq` from `Q.seq`: ZPOPMIN claims in order, every score is exact in a double
-- (< 2^53), and a priority's band holds BAND / 2 moves between two moments the queue is
-- empty (`seq` restarts then).

-- A job's score from its priority and a `seq`: behind the jobs of its priority, or at their
-- `head`.
local function claim_order(priority, seq, head)
  local p = math.floor(tonumber(priority) or 0)
  p = math.max($PRIORITY_MIN, math.min($PRIORITY_MAX, p))
  local band = ($PRIORITY_MAX - p) * $BAND + $HALF_BAND
  return int(head and band - seq or band + seq)
end

-- Put job `id` in line to be claimed: behind the jobs of its priority, or at their `head`.
local function line_up(id, priority, head)
  redis.call('ZADD', Q.queued, claim_order(priority, redis.call('INCR', Q.seq), head), id)
end
