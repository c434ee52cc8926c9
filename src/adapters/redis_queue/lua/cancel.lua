-- cancel: a waiting job is cancelled at once (it leaves the line, and is kept for the
-- result retention); an active one gets its cancel request (once), for its worker to act
-- on.
--
-- KEYS: queued delayed deadlines cancelling limited
-- ARGV[1] job id
-- ARGV[2] result retention, ms
-- Returns {1, fields} (the FIELDS values, then its token) cancelled or asked to stop;
-- {0, status} refused, the job has finished; {0} no such job.
-- Publishes the id of a job it cancelled (`finished`).
-- Needs: retain finished limits fields
local id = ARGV[1]
local key = job_key(id)
local CANCELLABLE = $CANCELLABLE
local STOPS_FROM = $STOPS_FROM
local f = redis.call('HMGET', key, 'status', 'cancel_requested_at', 'type')
if not f[1] then return {0} end
if CANCELLABLE[f[1]] then
  if redis.call('ZREM', Q.queued, id) == 0 then unpark_one(id, f[1], f[3]) end
  redis.call('ZREM', Q.delayed, id)
  redis.call('ZREM', Q.deadlines, id)
  redis.call('HSET', key, 'status', $CANCELLED, 'finished_at', now)
  reindex(id, f[1], $CANCELLED)
  retain(key, tonumber(ARGV[2]))
  finish(id)
elseif STOPS_FROM[f[1]] then
  if not f[2] then
    redis.call('HSET', key, 'cancel_requested_at', now)
    redis.call('SADD', Q.cancelling, id)
  end
else
  return {0, f[1]}
end
publish_finished()
return {1, job_fields(id, key)}
