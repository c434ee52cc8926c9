-- situation: a job and, when it is queued, what decides when it runs (reads only).
--
-- KEYS: queued paused workers rates
-- then, per limited job type (ARGV[2] of them), its starts, started and slots keys (`limits`)
-- ARGV[1] job id
-- ARGV[2] how many job types are limited, then per type 4 values, as for claim
-- ARGV[3] the caller's time, us (what counts a worker's presence as lapsed): the last one,
--   after the limits' values when there are some
-- Returns {fields, ahead, paused, workers, drain, throttle}: fields the FIELDS values (then
-- its token), all nil when there is no such job; for a queued job, ahead how many jobs are
-- claimed before it (-1 when its type's limit has set it aside), paused 1 or 0, workers the
-- live workers serving the queue (-1 when paused: the pause is the reason it waits), drain
-- the queue's drain rate (jobs/s, a decimal string; false until measured, or when paused),
-- and throttle what limit of its type holds it now: 'rate <ms>' (when its rate next allows
-- a start), 'concurrency', or false (always false on Redis Cluster, which passes no limits
-- here: `throttled` reads them on their own slot); for any other, {fields, -1, 0, -1,
-- false, false}. Asks no more than it needs: a GET of a job reads it here, and nowhere else.
-- Clock: caller
-- Needs: rates throttle fields
local id = ARGV[1]
local fields = job_fields(id)
if fields[$STATUS_FIELD] ~= $QUEUED then return {fields, -1, 0, -1, false, false} end
local ahead = redis.call('ZRANK', Q.queued, id) or -1
if redis.call('EXISTS', Q.paused) == 1 then return {fields, ahead, 1, -1, false, false} end
local throttle = false
local n = tonumber(ARGV[2]) or 0
for i = 0, n - 1 do
  local a, k = 3 + i * 4, $GROUP_SIZE + 1 + i * 3
  if ARGV[a] == fields[$TYPE_FIELD] then
    throttle = throttle_of(tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2]), tonumber(ARGV[a + 3]),
                           KEYS[k], KEYS[k + 2])
  end
end
return {fields, ahead, 0, redis.call('ZCOUNT', Q.workers, '(' .. now_ms, '+inf'),
        drain_rate(redis.call('HMGET', Q.rates, 'drain', 'weight')), throttle}
