-- settlement: end an active attempt by `decide`, and store what `domain.settlement.settle_job`
-- makes of the job, plus the queue's own bookkeeping (its lines, sets and retention).
-- Needs: decide retain deadline order history finished wake
local FINISHED = $FINISHED
local WAITING = $WAITING
local SETTLES_FROM = $SETTLES_FROM

-- What `settle` needs of job hash `key`: its status and token (to check the lease), the
-- facts `decide` reads, then its unique key's digest (to let go of it).
local function attempt_facts(key)
  return redis.call('HMGET', key, 'status', 'token', 'attempts', 'max_attempts', 'deadline',
                    'cancel_requested_at', 'unique')
end

-- End the attempt of job `id` (hash `key`, `f` its `attempt_facts`), whose lease the caller
-- has checked and takes out of `Q.active`: it ended as `outcome` (retry in `retry_in`
-- seconds, or nil); `data` is the result JSON of a success, else the error JSON or '';
-- `summary` the error's line in the history, or ''. The caller moves the job's index entry
-- (it left `active`). Answers the status stored.
local function settle(id, key, f, outcome, retry_in, data, summary, result_ttl, dead_ttl)
  local attempts = tonumber(f[3]) or 0
  local deadline = tonumber(f[5])
  local status, recorded, left, retry_at, head =
    decide(outcome, retry_in, attempts, tonumber(f[4]) or 0, deadline, f[6] ~= false)
  redis.call('HDEL', key, 'token')
  if f[6] then redis.call('SREM', Q.cancelling, id) end
  if status == $SUCCEEDED then
    -- The `succeeded` history record is not written: `succeeded` is final, so the record
    -- is implied by the hash (attempts, worker, started_at, finished_at) and `codec` adds it
    -- when it reads the job. Writing it would push the hash past hash-max-listpack-value
    -- (64 bytes) and more than double the memory of every result kept.
    redis.call('HSET', key, 'status', status, 'result', data, 'progress', '100',
               'finished_at', now)
    retain(key, result_ttl)
    finish(id, f[7])
    return status
  end
  local w = {'status', status, 'history', ended(key, recorded, summary)}
  if left ~= attempts then
    w[#w + 1] = 'attempts'
    w[#w + 1] = left
  end
  if data ~= '' then
    w[#w + 1] = 'error'
    w[#w + 1] = data
  end
  if FINISHED[status] then
    w[#w + 1] = 'finished_at'
    w[#w + 1] = now
  elseif status == $FAILED then
    w[#w + 1] = 'retry_at'
    w[#w + 1] = int(retry_at)
  end
  redis.call('HSET', key, unpack(w))
  if status == $FAILED then
    local due = int(math.ceil(retry_at / 1000))
    wake_before(Q.delayed, due)
    redis.call('ZADD', Q.delayed, due, id)
  elseif status == $QUEUED then
    line_up(id, redis.call('HGET', key, 'priority'), head)
  end
  if WAITING[status] and deadline then
    wake_before(Q.deadlines, deadline_ms(deadline))
    redis.call('ZADD', Q.deadlines, deadline_ms(deadline), id)
  end
  if FINISHED[status] then
    retain(key, status == $DEAD and dead_ttl or result_ttl)
    finish(id, f[7])
  end
  return status
end
