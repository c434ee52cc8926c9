-- recover: claim's maintenance (`maintain`), for queues nobody claims from, and what claims
-- leave to it (`tidy`).
--
-- KEYS: queued active delayed deadlines cancelling marker seq
-- ARGV[1] result retention, ms
-- ARGV[2] dead retention, ms (not positive: kept for good)
-- Returns how many jobs moved; wakes a claimer if any was queued; publishes the ids of the
-- jobs it finished (`finished`).
-- Needs: maintain tidy wake
local result_ttl, dead_ttl = tonumber(ARGV[1]), tonumber(ARGV[2])
local moved, queued = maintain(result_ttl, dead_ttl)
tidy(result_ttl, dead_ttl)
if queued > 0 then wake() end
publish_finished()
return moved
