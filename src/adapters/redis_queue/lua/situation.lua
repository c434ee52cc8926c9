-- situation: a job and, when it is queued, what decides when it runs (reads only).
--
-- KEYS: queued paused workers
-- ARGV[1] job id
-- ARGV[2] the caller's time, us (what counts a worker's presence as lapsed)
-- Returns {fields, ahead, paused, workers}: fields the FIELDS values (then its token), all
-- nil when there is no such job; for a queued job, ahead how many jobs are claimed before it,
-- paused 1 or 0, and workers the live workers serving the queue (-1 when paused: the pause
-- is the reason it waits); for any other, {fields, -1, 0, -1}. Asks no more than it needs:
-- a GET of a job reads it here, and nowhere else.
-- Clock: caller
local id = ARGV[1]
local fields = redis.call('HMGET', job_key(id), $FIELDS)
if fields[$STATUS_FIELD] ~= $QUEUED then return {fields, -1, 0, -1} end
local ahead = redis.call('ZRANK', Q.queued, id) or -1
if redis.call('EXISTS', Q.paused) == 1 then return {fields, ahead, 1, -1} end
return {fields, ahead, 0, redis.call('ZCOUNT', Q.workers, '(' .. now_ms, '+inf')}
