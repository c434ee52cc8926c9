-- wake: make sure the queue's marker holds one element, so one blocked claimer wakes.
local function wake()
  if redis.call('LLEN', Q.marker) == 0 then redis.call('RPUSH', Q.marker, '1') end
end

-- wake_before: about to add `score` (ms) to the sorted set `key` of times a waiting claimer
-- sleeps until (due jobs, deadlines): if it comes before every time already there, the
-- claimers asleep do not know of it, so wake one to look again.
local function wake_before(key, score)
  local first = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
  if not first[2] or tonumber(score) < tonumber(first[2]) then wake() end
end
