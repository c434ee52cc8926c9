-- situation: a job and what decides when it runs (reads only).
--
-- KEYS: queued paused workers
-- ARGV[1] job id
-- Returns {fields, ahead, paused, workers}: fields the FIELDS values (then its token), all
-- nil when there is no such job; ahead how many jobs are claimed before it, -1 unless it
-- is queued; paused 1 or 0; workers the live workers serving the queue.
local id = ARGV[1]
local fields = redis.call('HMGET', job_key(id), $FIELDS)
local ahead = -1
if fields[$STATUS_FIELD] == $QUEUED then
  local rank = redis.call('ZRANK', Q.queued, id)
  if rank then ahead = rank end
end
return {fields, ahead, redis.call('EXISTS', Q.paused),
        redis.call('ZCOUNT', Q.workers, '(' .. now_ms, '+inf')}
