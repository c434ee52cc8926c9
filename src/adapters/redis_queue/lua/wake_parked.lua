-- wake_parked: on Redis Cluster, after slots of this queue's jobs were freed on the limits'
-- own slot (`release`): if jobs of a limited type are parked here, wake a claimer to take
-- one (on one server `settle` does it, in the same script).
--
-- KEYS: marker limited
-- then per job: the id of a job of this queue whose slot was freed
-- Returns one 1 per job, in order.
-- Needs: wake
if redis.call('EXISTS', Q.limited) == 1 then wake() end
local answers = {}
for i = 1, #ARGV do answers[i] = 1 end
return answers
