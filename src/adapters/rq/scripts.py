"""The Lua scripts of the RQ backend, each run atomically on Redis over RQ's own keys.

Each says what its KEYS and ARGV hold and what it answers; the Python side that calls it
(`submitter`, `control`, `monitor`) builds them in that order.
"""

from __future__ import annotations

from typing import Final

# Store new jobs the way RQ's own enqueue and schedule do (its `save_unique_job` and
# `schedule_unique_job` scripts, for many jobs at once), all of them or none.
# KEYS[1] our submission counter, KEYS[2] our listing index, KEYS[3] RQ's set of queue keys,
#   KEYS[4] our set of queue names; then 4 per job: its hash, its RQ queue (a list), that
#   queue's scheduled registry, its idempotency key (its hash again when it has none).
# ARGV[1] idempotency key retention (ms), ARGV[2] number of jobs, ARGV[3] the most queues
#   ('' for no limit); then per job: id, run_at (Unix time, '' for none), enqueued_at (RQ's
#   format), '1' if it has an idempotency key, fingerprint, its queue's name, n, then n
#   strings: the field/value pairs of RQ's job hash (not its status).
# A queue is ours once a job was stored in it (or RQ knew its list before we kept the set);
# the jobs that would make more than the most are refused, all of them.
# A job whose run_at is still ahead on Redis's clock is stored `scheduled`, scored by run_at
# (RQ's scheduler takes jobs whose score is at most the current whole second: never early);
# any other, `queued` at the tail of its queue.
# Answers {-1, i} when job i's idempotency key holds another fingerprint, {-2, name} when
# queue `name` would be one too many (nothing is written either way); else per job: 1 if it
# was stored (0 if its id or its key named a job already), and the id of the job it names.
SUBMIT: Final = """
local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
local count = tonumber(ARGV[2])
local most = tonumber(ARGV[3])
local answers, stored = {}, {}
local new_ids, new_keys = {}, {}
local a = 4
for i = 1, count do
  local k = 4 + (i - 1) * 4
  local id, has_key, fingerprint = ARGV[a], ARGV[a + 3], ARGV[a + 4]
  local first, n = a + 7, tonumber(ARGV[a + 6])
  local held = nil
  if has_key == '1' then
    held = new_keys[KEYS[k + 4]] or redis.call('GET', KEYS[k + 4])
  end
  if held then
    local cut = string.find(held, '\\n', 1, true)
    if string.sub(held, cut + 1) ~= fingerprint then
      return {-1, i}
    end
    answers[#answers + 1] = 0
    answers[#answers + 1] = string.sub(held, 1, cut - 1)
  elseif new_ids[id] or redis.call('EXISTS', KEYS[k + 1]) == 1 then
    answers[#answers + 1] = 0
    answers[#answers + 1] = id
  else
    answers[#answers + 1] = 1
    answers[#answers + 1] = id
    new_ids[id] = true
    if has_key == '1' then
      new_keys[KEYS[k + 4]] = id .. '\\n' .. fingerprint
    end
    stored[#stored + 1] = {k, a, first, n}
  end
  a = first + n
end
if most then
  local queues, opened = redis.call('SCARD', KEYS[4]), {}
  for _, job in ipairs(stored) do
    local k, name = job[1], ARGV[job[2] + 5]
    if not opened[name] and redis.call('SISMEMBER', KEYS[4], name) == 0
        and redis.call('SISMEMBER', KEYS[3], KEYS[k + 2]) == 0 then
      opened[name] = true
      queues = queues + 1
      if queues > most then return {-2, name} end
    end
  end
end
for _, job in ipairs(stored) do
  local k, a, first, n = job[1], job[2], job[3], job[4]
  local id = ARGV[a]
  redis.call('HSET', KEYS[k + 1], unpack(ARGV, first, first + n - 1))
  local run_at = tonumber(ARGV[a + 1])
  if run_at and run_at > now then
    redis.call('HSET', KEYS[k + 1], 'status', 'scheduled')
    redis.call('ZADD', KEYS[k + 3], ARGV[a + 1], id)
  else
    redis.call('HSET', KEYS[k + 1], 'status', 'queued', 'enqueued_at', ARGV[a + 2])
    redis.call('RPUSH', KEYS[k + 2], id)
  end
  redis.call('SADD', KEYS[3], KEYS[k + 2])
  redis.call('SADD', KEYS[4], ARGV[a + 5])
  if ARGV[a + 3] == '1' then
    redis.call('SET', KEYS[k + 4], id .. '\\n' .. ARGV[a + 4], 'PX', ARGV[1])
  end
  redis.call('ZADD', KEYS[2], 'NX', redis.call('INCR', KEYS[1]), id)
end
return answers
"""

# Cancel a job: a waiting one (queued, or scheduled, including a retry waiting for its time)
# at once, a running one by asking for it to stop.
# KEYS[1] the job's hash, KEYS[2] its RQ queue, KEYS[3] its scheduled registry, KEYS[4] its
#   canceled registry.
# ARGV[1] job id, ARGV[2] now (RQ's format), ARGV[3] now (ISO 8601), ARGV[4] retention of a
#   cancelled job (s), ARGV[5] its canceled-registry score (now + retention), ARGV[6] the
#   waiting-cancel field, ARGV[7] the cancel-request field.
# A cancelled job keeps a mark (ARGV[6]) that survives RQ rewriting its status: a worker that
# had already taken it off its queue sees the mark as the attempt starts and runs nothing.
# Answers 'cancelled', 'requested' (it runs: its attempt is asked to stop), 'missing', or the
# RQ status that cannot be cancelled.
CANCEL: Final = """
local status = redis.call('HGET', KEYS[1], 'status')
if not status then
  return 'missing'
end
if status == 'queued' or status == 'scheduled' or status == 'created' then
  redis.call('LREM', KEYS[2], 0, ARGV[1])
  redis.call('ZREM', KEYS[3], ARGV[1])
  redis.call('HSET', KEYS[1], 'status', 'canceled', 'ended_at', ARGV[2], ARGV[6], ARGV[3])
  redis.call('ZADD', KEYS[4], ARGV[5], ARGV[1])
  redis.call('EXPIRE', KEYS[1], ARGV[4])
  return 'cancelled'
end
if status == 'started' then
  redis.call('HSETNX', KEYS[1], ARGV[7], ARGV[3])
  return 'requested'
end
return status
"""

# Forget one of our queues if nothing uses it: no job waiting, scheduled or running, no job
# still kept (RQ's finished, failed and canceled registries score each job by when it
# expires), no live worker (the caller has checked RQ's own; KEYS[10] is ours).
# KEYS[1] our set of queue names, KEYS[2] RQ's set of queue keys, KEYS[3] the RQ queue,
#   KEYS[4] its scheduled registry, KEYS[5] started, KEYS[6] finished, KEYS[7] failed,
#   KEYS[8] canceled, KEYS[9] RQ's set of its workers, KEYS[10] our presence zset, KEYS[11]
#   the set of our queues with presence entries.
# ARGV[1] the queue's name.
# Answers 1 if it was forgotten (its keys are gone), else 0.
IDLE: Final = """
local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
if redis.call('EXISTS', KEYS[3], KEYS[4], KEYS[5]) > 0 then return 0 end
for i = 6, 8 do
  if redis.call('ZCOUNT', KEYS[i], now, '+inf') > 0 then return 0 end
end
if redis.call('ZCOUNT', KEYS[10], '(' .. now, '+inf') > 0 then return 0 end
redis.call('SREM', KEYS[1], ARGV[1])
redis.call('SREM', KEYS[2], KEYS[3])
redis.call('SREM', KEYS[11], ARGV[1])
redis.call('DEL', KEYS[6], KEYS[7], KEYS[8], KEYS[9], KEYS[10])
return 1
"""

# Say that a worker is alive and serves some queues until now + ttl, on Redis's clock.
# KEYS[1] the set of our queues with presence entries, KEYS[2] our set of queue names (a
#   queue a worker serves is kept); then each queue's presence (a sorted set: worker id ->
#   when it lapses).
# ARGV[1] worker id, ARGV[2] ttl (s), then the queue names, in the order of their KEYS.
HEARTBEAT: Final = """
local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
for i = 3, #KEYS do
  redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', now)
  redis.call('ZADD', KEYS[i], now + tonumber(ARGV[2]), ARGV[1])
  redis.call('SADD', KEYS[1], ARGV[i])
  redis.call('SADD', KEYS[2], ARGV[i])
end
return #KEYS - 2
"""

# The workers whose presence has not lapsed on Redis's clock. KEYS[1] a queue's presence.
PRESENT: Final = """
local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
return redis.call('ZCOUNT', KEYS[1], '(' .. now, '+inf')
"""
