-- release: on Redis Cluster, a settlement's last step for jobs of a concurrency-limited
-- type: on the limits' own slot, the slots their ended attempts held are free. It runs
-- after the attempts were settled on their queues' slots (`settle`): a failure in between
-- leaves a slot that lapses with its lease (the type runs below its limit until then),
-- never one freed while its attempt runs.
--
-- KEYS (limits): slots
-- of the concurrency-limited job types of the ended attempts
-- ARGV, per ended attempt: the number of its type's slots key in KEYS (from 1), its job id
-- Returns one value per attempt, in order: 1 if it held a slot, now free, else 0.
local answers = {}
for i = 1, #ARGV, 2 do
  answers[#answers + 1] = redis.call('ZREM', KEYS[tonumber(ARGV[i])], ARGV[i + 1])
end
return answers
