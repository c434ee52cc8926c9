-- situation: a job and, when it is queued, what decides when it runs (reads only).
--
-- KEYS: queued paused workers rates
-- ARGV[1] job id
-- ARGV[2] the caller's time, us (what counts a worker's presence as lapsed)
-- Returns {fields, ahead, paused, workers, drain}: fields the FIELDS values (then its
-- token), all nil when there is no such job; for a queued job, ahead how many jobs are
-- claimed before it, paused 1 or 0, workers the live workers serving the queue (-1 when
-- paused: the pause is the reason it waits), and drain the queue's drain rate (jobs/s, a
-- decimal string; false until measured, or when paused); for any other,
-- {fields, -1, 0, -1, false}. Asks no more than it needs: a GET of a job reads it here, and
-- nowhere else.
-- Clock: caller
-- Needs: rates
local id = ARGV[1]
local fields = redis.call('HMGET', job_key(id), $FIELDS)
if fields[$STATUS_FIELD] ~= $QUEUED then return {fields, -1, 0, -1, false} end
local ahead = redis.call('ZRANK', Q.queued, id) or -1
if redis.call('EXISTS', Q.paused) == 1 then return {fields, ahead, 1, -1, false} end
return {fields, ahead, 0, redis.call('ZCOUNT', Q.workers, '(' .. now_ms, '+inf'),
        drain_rate(redis.call('HMGET', Q.rates, 'drain', 'weight'))}
