-- tidy: what only recover does, on its timer, so claims stay short.
-- Needs: forget

-- Forget finished jobs past their retention (at most $MAINTENANCE_BATCH of each status), and
-- restart the claim order of an empty queue.
local function tidy(result_ttl, dead_ttl)
  forget($SUCCEEDED, result_ttl, $MAINTENANCE_BATCH)
  forget($CANCELLED, result_ttl, $MAINTENANCE_BATCH)
  forget($EXPIRED, result_ttl, $MAINTENANCE_BATCH)
  forget($DEAD, dead_ttl, $MAINTENANCE_BATCH)
  if redis.call('EXISTS', Q.queued, Q.limited) == 0 then redis.call('DEL', Q.seq) end
end
