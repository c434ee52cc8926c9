-- wake: make sure the queue's marker holds one element, so one blocked claimer wakes.
local function wake()
  if redis.call('LLEN', Q.marker) == 0 then redis.call('RPUSH', Q.marker, '1') end
end
