-- recover: claim's maintenance (`maintain`), for queues nobody claims from, and what claims
-- leave to it (`tidy`).
--
-- KEYS: queued active delayed deadlines cancelling marker seq limited
-- ARGV[1] result retention, ms
-- ARGV[2] dead retention, ms (not positive: kept for good)
-- then the job types that are limited (`limits`): jobs parked of any other type (its limits
--   were lifted) go back in line
-- Returns how many jobs moved; wakes a claimer if any was queued; publishes the ids of the
-- jobs it finished (`finished`).
-- Needs: maintain tidy wake parking
local result_ttl, dead_ttl = tonumber(ARGV[1]), tonumber(ARGV[2])
local moved, queued = maintain(result_ttl, dead_ttl)
if redis.call('EXISTS', Q.limited) == 1 then
  local still = {}
  for i = 3, #ARGV do still[ARGV[i]] = true end
  for _, name in ipairs(redis.call('SMEMBERS', Q.limited)) do
    if not still[name] then queued = queued + unpark(name, $MAINTENANCE_BATCH) end
  end
end
tidy(result_ttl, dead_ttl)
if queued > 0 then wake() end
publish_finished()
return moved
