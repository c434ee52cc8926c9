-- requeue: a dead or cancelled job goes back to the queue, last in line for its priority,
-- with its attempts reset; its error, result, progress, times and cancel request are
-- cleared, its history kept, and it is kept for good again.
--
-- KEYS: queued active delayed deadlines cancelling marker seq
-- ARGV[1] job id
-- Returns {1, fields} requeued (fields: the FIELDS values, then no token);
-- {0, status} refused, the job's status cannot be requeued; {0, status, holder, unique key}
-- refused, another job not finished holds its unique key; {0} no such job.
-- A job with a unique key takes it again.
-- Needs: wake deadline order unique fields
local id = ARGV[1]
local key = job_key(id)
local REQUEUABLE = $REQUEUABLE
local f = redis.call('HMGET', key, 'status', 'priority', 'deadline', 'unique')
if not f[1] then return {0} end
if not REQUEUABLE[f[1]] then return {0, f[1]} end
if f[4] then
  local unique = unique_key(base, f[4])
  local holder = unique_holder(base, unique)
  if holder and holder ~= id then
    return {0, f[1], holder, redis.call('HGET', key, 'unique_key') or ''}
  end
  redis.call('SET', unique, id)
end
redis.call('HDEL', key, 'error', 'result', 'progress', 'started_at', 'finished_at', 'token',
           'retry_at', 'cancel_requested_at', 'heartbeat_at')
redis.call('HSET', key, 'status', $QUEUED, 'attempts', 0)
redis.call('PERSIST', key)
redis.call('ZREM', Q.active, id)
redis.call('ZREM', Q.delayed, id)
redis.call('SREM', Q.cancelling, id)
reindex(id, f[1], $QUEUED)
line_up(id, f[2], false)
if f[3] then redis.call('ZADD', Q.deadlines, deadline_ms(f[3]), id) end
wake()
return {1, job_fields(id, key)}
