"""Every Lua script the Redis queue runs, in one place.

Each script is atomic on the server and makes one of the job's moves; none reads state into
Python to write it back. Every key a script touches shares the queue's hash tag, so the
queue works on Redis Cluster. Scripts derive job hash and index keys from the key base they
are given (``{prefix:queue}:``) because the job ids are only known inside the script.

The status names and the sets of statuses each move starts from are rendered into the
scripts from `domain.jobs` at import time: the state machine is defined once, in the
domain, and this module refuses to load if a move it scripts is not in `TRANSITIONS`.

Keys of one queue (``B`` = ``{prefix:queue}:``):

- ``B job:<id>``          hash, one field per Job attribute (see `codec.FIELDS`) + ``token``;
                          ``worker`` names the lease's holder, ``history`` is a JSON array of
                          attempt records (see `codec`), the last HISTORY_LIMIT kept
- ``B ready``             list of job ids to claim, FIFO (retries and reclaims: see below)
- ``B active``            zset job id -> lease expiry, ms on the Redis clock
- ``B delayed``           zset job id -> when its retry is due, ms on the Redis clock
- ``B index:<status>``    zset job id -> when it entered that status, us on the Redis clock
- ``B marker``            list holding at most one element: wakes one blocked claimer
- ``B tokens``            counter behind the fencing tokens
- ``B stale``             counter of writes rejected for a stale lease token

Scripts, each documented (KEYS, ARGV, reply) at its top: ENQUEUE, CLAIM, RECOVER (claim's
maintenance on its own; both include `_MAINTAIN`), RENEW, SET_PROGRESS, COMPLETE, FAIL,
RELEASE, HELD_BY, REQUEUE.

Requires Redis >= 6.2 (LPOP with a count, BLPOP with a fractional timeout).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from string import Template
from typing import Final

import attrs

from adapters.redis_queue.codec import FIELDS_WITH_TOKEN
from domain.jobs import (
    HISTORY_LIMIT,
    REQUEUABLE,
    TRANSITIONS,
    AttemptOutcome,
    JobStatus,
    can_transition,
    sources_of,
)

S = JobStatus

# At most this many delayed jobs are promoted and expired leases reclaimed per claim call,
# so one call stays short however large a backlog is; the next call continues.
MAINTENANCE_BATCH: Final = 1000
# Index entries of expired results forgotten per completion (each completion adds one).
INDEX_TRIM_BATCH: Final = 10

# The moves the scripts make. Checked against the domain's state machine below.
_SCRIPTED_MOVES: Final = (
    (S.FAILED, S.QUEUED),  # claim/recover: a retry is due
    (S.SCHEDULED, S.QUEUED),  # claim/recover: a scheduled job is due
    (S.ACTIVE, S.QUEUED),  # claim/recover: lease expired, attempts left; release
    (S.ACTIVE, S.DEAD),  # claim/recover: lease expired, no attempts left; fail without retry
    (S.QUEUED, S.ACTIVE),  # claim
    (S.ACTIVE, S.SUCCEEDED),  # complete
    (S.ACTIVE, S.FAILED),  # fail with retry
    *((s, S.QUEUED) for s in sorted(REQUEUABLE)),  # requeue
)
for _source, _target in _SCRIPTED_MOVES:
    if not can_transition(_source, _target):  # pragma: no cover - guards a domain change
        raise RuntimeError(f"scripted move {_source} -> {_target} is not in TRANSITIONS")
# COMPLETE leaves the `succeeded` history record implied (see there): sound only while
# nothing can happen to a job after it succeeded.
if TRANSITIONS[S.SUCCEEDED]:  # pragma: no cover - guards a domain change
    raise RuntimeError("succeeded is no longer final: COMPLETE must store its history record")


def _lua_set(statuses: Iterable[JobStatus]) -> str:
    return "{" + ", ".join(f"['{s.value}'] = true" for s in sorted(statuses)) + "}"


_SUBSTITUTIONS: Final = {
    **{s.name: f"'{s.value}'" for s in JobStatus},
    "FIELDS": ", ".join(f"'{f}'" for f in FIELDS_WITH_TOKEN),
    "MAINTENANCE_BATCH": str(MAINTENANCE_BATCH),
    "INDEX_TRIM_BATCH": str(INDEX_TRIM_BATCH),
    # Which statuses each move may start from, per the domain.
    "PROMOTABLE": _lua_set(sources_of(S.QUEUED) & {s for s in S if s.is_waiting}),
    "CLAIMABLE": _lua_set(sources_of(S.ACTIVE)),
    "SUCCEEDS_FROM": _lua_set(sources_of(S.SUCCEEDED)),
    "FAILS_FROM": _lua_set(sources_of(S.FAILED)),
    "DIES_FROM": _lua_set(sources_of(S.DEAD)),
    "RELEASABLE": _lua_set(sources_of(S.QUEUED) & {S.ACTIVE}),
    "REQUEUABLE": _lua_set(REQUEUABLE),
    "HISTORY_LIMIT": str(HISTORY_LIMIT),
    # How attempts end, as the history records them.
    **{f"OUT_{o.name}": f"'{o.value}'" for o in AttemptOutcome},
}


@attrs.frozen
class Script:
    name: str
    source: str
    sha: str


def _script(name: str, body: str, *fragments: str) -> Script:
    source = Template(_PRELUDE + "".join(fragments) + body).substitute(_SUBSTITUTIONS)
    return Script(name, source, hashlib.sha1(source.encode()).hexdigest())  # noqa: S324


# Shared by every script. ARGV[1] is always the key base. Times come from the Redis clock so
# every process agrees on them; scripts are replicated by effects, so TIME is safe.
_PRELUDE: Final = """
local base = ARGV[1]
local t = redis.call('TIME')
local now_us = tonumber(t[1]) * 1000000 + tonumber(t[2])
local now_ms = math.floor(now_us / 1000)
local function int(x) return string.format('%.0f', x) end
local now = int(now_us)

local function job_key(id) return base .. 'job:' .. id end
local function index_key(status) return base .. 'index:' .. status end

-- Move a job between the listing indexes; the score is when it entered `to`.
local function reindex(id, from, to)
  if from then redis.call('ZREM', index_key(from), id) end
  redis.call('ZADD', index_key(to), now, id)
end

-- Make sure the marker holds one element, so one blocked claimer wakes.
local function wake(marker)
  if redis.call('LLEN', marker) == 0 then redis.call('RPUSH', marker, '1') end
end

-- Is `token` the current lease of job `id`? (its hash holds the token and it is active)
local function holds(active, id, token)
  return redis.call('HGET', job_key(id), 'token') == token
    and redis.call('ZSCORE', active, id) ~= false
end

-- The job's `history` (its JSON, or false) with the attempt that ends now appended, the
-- last $HISTORY_LIMIT kept; answers the new JSON. `attempt`, `worker` and `started_at` are
-- the hash's values (or false), `err` the error's summary or nil. A history that does not
-- decode (planted data) starts over rather than failing the whole script.
local function with_record(history, attempt, worker, started_at, outcome, err)
  if err == '' then err = nil end
  local records = {}
  if history then
    local ok, decoded = pcall(cjson.decode, history)
    if ok and type(decoded) == 'table' then records = decoded end
  end
  while #records >= $HISTORY_LIMIT do table.remove(records, 1) end
  records[#records + 1] = {
    attempt = tonumber(attempt) or 0,
    worker = worker or nil,
    started_at = started_at or nil,
    ended_at = now,
    outcome = outcome,
    error = err,
  }
  return cjson.encode(records)
end

-- The history of job hash `key` with its current attempt recorded as ended now.
local function ended(key, outcome, err)
  local f = redis.call('HMGET', key, 'attempts', 'worker', 'started_at', 'history')
  return with_record(f[4], f[1], f[2], f[3], outcome, err)
end
"""


ENQUEUE: Final = _script(
    "enqueue",
    """
-- enqueue: store new jobs and queue them, in order.
-- KEYS[1] ready list, KEYS[2] marker list
-- ARGV[1] key base, then per job: job id, n, and n hash field/value arguments
-- Returns one integer per job: 1 stored, 0 refused (a job with this id exists; nothing of
-- it is written).
local ready, marker = KEYS[1], KEYS[2]
local results = {}
local stored = false
local i = 2
while i <= #ARGV do
  local id, n = ARGV[i], tonumber(ARGV[i + 1])
  local key = job_key(id)
  if redis.call('EXISTS', key) == 1 then
    results[#results + 1] = 0
  else
    redis.call('HSET', key, unpack(ARGV, i + 2, i + 1 + n))
    reindex(id, nil, $QUEUED)
    redis.call('RPUSH', ready, id)
    results[#results + 1] = 1
    stored = true
  end
  i = i + 2 + n
end
if stored then wake(marker) end
return results
""",
)


# Claim's maintenance, shared by CLAIM and RECOVER (one Lua function, included in both).
_MAINTAIN: Final = """
-- Promote due retries and scheduled jobs, then reclaim expired leases: at most
-- $MAINTENANCE_BATCH of each per call, so a call stays short however large a backlog is (the
-- next call goes on). `lost` is the error JSON recorded on a job whose lease expired,
-- `lost_summary` its summary for the job's history. Answers how many jobs moved, and how
-- many of them are now queued.
local PROMOTABLE = $PROMOTABLE
local function maintain(ready, active, delayed, lost, lost_summary)
  local moved, queued = 0, 0
  -- Retries behind the queued work, like new jobs.
  for _, id in ipairs(redis.call('ZRANGEBYSCORE', delayed, '-inf', now_ms,
                                 'LIMIT', 0, $MAINTENANCE_BATCH)) do
    redis.call('ZREM', delayed, id)
    local status = redis.call('HGET', job_key(id), 'status')
    if PROMOTABLE[status] then
      redis.call('HSET', job_key(id), 'status', $QUEUED)
      reindex(id, status, $QUEUED)
      redis.call('RPUSH', ready, id)
      moved, queued = moved + 1, queued + 1
    end
  end
  -- A lease that expired: the attempt it had is spent. Reclaimed jobs go to the head.
  for _, id in ipairs(redis.call('ZRANGEBYSCORE', active, '-inf', now_ms,
                                 'LIMIT', 0, $MAINTENANCE_BATCH)) do
    redis.call('ZREM', active, id)
    local key = job_key(id)
    local f = redis.call('HMGET', key, 'status', 'attempts', 'max_attempts', 'worker',
                         'started_at', 'history')
    if f[1] == $ACTIVE then
      redis.call('HDEL', key, 'token')
      local history = with_record(f[6], f[2], f[4], f[5], $OUT_WORKER_LOST, lost_summary)
      if (tonumber(f[2]) or 0) < (tonumber(f[3]) or 0) then
        redis.call('HSET', key, 'status', $QUEUED, 'error', lost, 'history', history)
        reindex(id, $ACTIVE, $QUEUED)
        redis.call('LPUSH', ready, id)
        queued = queued + 1
      else
        redis.call('HSET', key, 'status', $DEAD, 'error', lost, 'finished_at', now,
                   'history', history)
        reindex(id, $ACTIVE, $DEAD)
      end
      moved = moved + 1
    end
  end
  return moved, queued
end
"""


CLAIM: Final = _script(
    "claim",
    """
-- claim: promote due retries, reclaim expired leases (`maintain`), then lease up to `limit`
-- queued jobs to one worker.
-- KEYS[1] ready list, KEYS[2] active zset, KEYS[3] delayed zset, KEYS[4] marker list,
-- KEYS[5] token counter
-- ARGV[1] key base, ARGV[2] limit, ARGV[3] lease length ms, ARGV[4] worker id,
-- ARGV[5] the error JSON recorded on a job whose lease expired, ARGV[6] its summary
-- Returns {jobs, wake_in}: jobs holds one array per claimed job (the FIELDS values, then
-- the new token); wake_in is the ms until the next retry is due or lease expires, -1 if
-- none (only computed when nothing was claimed).
-- Ids in `ready` whose hash is gone or whose status cannot be claimed are dropped.
local ready, active, delayed, marker, tokens = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local limit = tonumber(ARGV[2])
local lease_ms = tonumber(ARGV[3])
local worker = ARGV[4]
local CLAIMABLE = $CLAIMABLE

maintain(ready, active, delayed, ARGV[5], ARGV[6])

local jobs = {}
local expires = int(now_ms + lease_ms)
while #jobs < limit do
  local ids = redis.call('LPOP', ready, limit - #jobs)
  if not ids then break end
  for _, id in ipairs(ids) do
    local key = job_key(id)
    local f = redis.call('HMGET', key, 'status', 'attempts')
    if CLAIMABLE[f[1]] then
      -- The attempt is counted now, so a job that kills its worker still uses one up.
      local attempts = (tonumber(f[2]) or 0) + 1
      local token = redis.call('INCR', tokens) .. ':' .. attempts
      redis.call('HSET', key, 'status', $ACTIVE, 'attempts', attempts,
                 'started_at', now, 'token', token, 'worker', worker)
      redis.call('HDEL', key, 'progress')
      redis.call('ZADD', active, expires, id)
      reindex(id, f[1], $ACTIVE)
      jobs[#jobs + 1] = redis.call('HMGET', key, $FIELDS)
    end
  end
end

local wake_in = -1
if #jobs > 0 then
  -- Work left over: let another claimer in.
  if redis.call('LLEN', ready) > 0 then wake(marker) end
else
  local next_at = nil
  local d = redis.call('ZRANGE', delayed, 0, 0, 'WITHSCORES')
  if d[2] then next_at = tonumber(d[2]) end
  local a = redis.call('ZRANGE', active, 0, 0, 'WITHSCORES')
  if a[2] and (next_at == nil or tonumber(a[2]) < next_at) then next_at = tonumber(a[2]) end
  if next_at then wake_in = math.max(0, next_at - now_ms) end
end
return {jobs, wake_in}
""",
    _MAINTAIN,
)


RECOVER: Final = _script(
    "recover",
    """
-- recover: claim's maintenance on its own (`maintain`), for queues nobody claims from.
-- KEYS[1] ready list, KEYS[2] active zset, KEYS[3] delayed zset, KEYS[4] marker list
-- ARGV[1] key base, ARGV[2] the error JSON recorded on a job whose lease expired,
-- ARGV[3] its summary
-- Returns how many jobs moved (at most 2 x MAINTENANCE_BATCH); wakes a claimer if any
-- was queued.
local moved, queued = maintain(KEYS[1], KEYS[2], KEYS[3], ARGV[2], ARGV[3])
if queued > 0 then wake(KEYS[4]) end
return moved
""",
    _MAINTAIN,
)


RENEW: Final = _script(
    "renew",
    """
-- renew: extend the leases still held.
-- KEYS[1] active zset
-- ARGV[1] key base, ARGV[2] lease length ms, ARGV[3..] job id, token pairs
-- Returns the ids whose lease was held (current token, not yet expired) and is now extended.
local active = KEYS[1]
local expires = int(now_ms + tonumber(ARGV[2]))
local held = {}
for i = 3, #ARGV, 2 do
  local id, token = ARGV[i], ARGV[i + 1]
  local score = redis.call('ZSCORE', active, id)
  if score and tonumber(score) > now_ms and redis.call('HGET', job_key(id), 'token') == token then
    redis.call('ZADD', active, 'XX', expires, id)
    held[#held + 1] = id
  end
end
return held
""",
)


SET_PROGRESS: Final = _script(
    "set_progress",
    """
-- set_progress: record progress under a current lease.
-- KEYS[1] active zset, KEYS[2] stale counter
-- ARGV[1] key base, ARGV[2] job id, ARGV[3] token, ARGV[4] progress 0-100
-- Returns 1, or 0 (and counts a stale write) when the token is not the current lease.
if not holds(KEYS[1], ARGV[2], ARGV[3]) then
  redis.call('INCR', KEYS[2])
  return 0
end
redis.call('HSET', job_key(ARGV[2]), 'progress', ARGV[4])
return 1
""",
)


COMPLETE: Final = _script(
    "complete",
    """
-- complete: attempts that succeeded; their results are kept for a while.
-- The `succeeded` history record is not written: `succeeded` is final, so the record is
-- implied by the hash (attempts, worker, started_at, finished_at) and `codec` adds it when
-- it reads the job. Writing it would push the hash past hash-max-listpack-value (64 bytes)
-- and more than double the memory of every result kept.
-- KEYS[1] active zset, KEYS[2] stale counter
-- ARGV[1] key base, ARGV[2] result retention ms (the job hash expires then),
-- then per job: job id, token, result JSON
-- Returns one integer per job: 1 recorded, 0 refused (and counted as a stale write)
-- because the token is not the job's current lease.
local active, stale = KEYS[1], KEYS[2]
local ttl_ms = tonumber(ARGV[2])
local SUCCEEDS_FROM = $SUCCEEDS_FROM
local results = {}
for i = 3, #ARGV, 3 do
  local id, token = ARGV[i], ARGV[i + 1]
  local key = job_key(id)
  local f = redis.call('HMGET', key, 'status', 'token')
  if SUCCEEDS_FROM[f[1]] and f[2] == token and redis.call('ZSCORE', active, id) then
    redis.call('HSET', key, 'status', $SUCCEEDED, 'result', ARGV[i + 2], 'progress', 100,
               'finished_at', now)
    redis.call('HDEL', key, 'token')
    redis.call('ZREM', active, id)
    reindex(id, f[1], $SUCCEEDED)
    redis.call('PEXPIRE', key, ttl_ms)
    results[#results + 1] = 1
  else
    redis.call('INCR', stale)
    results[#results + 1] = 0
  end
end
-- Forget the index entries of results that have expired, a few per completion.
local done = index_key($SUCCEEDED)
local gone = redis.call('ZRANGEBYSCORE', done, '-inf', int(now_us - ttl_ms * 1000),
                        'LIMIT', 0, $INDEX_TRIM_BATCH * #results)
if #gone > 0 then redis.call('ZREM', done, unpack(gone)) end
return results
""",
)


FAIL: Final = _script(
    "fail",
    """
-- fail: the attempt failed; retry later, or dead-letter the job (kept, no expiry).
-- KEYS[1] active zset, KEYS[2] stale counter, KEYS[3] delayed zset
-- ARGV[1] key base, ARGV[2] job id, ARGV[3] token, ARGV[4] error JSON,
-- ARGV[5] retry in ms, or '' for no retry (dead), ARGV[6] the attempt's outcome and
-- ARGV[7] the error's summary, for the job's history
-- Returns 1, or 0 (and counts a stale write) when the token is not the current lease.
local id = ARGV[2]
local key = job_key(id)
local status = redis.call('HGET', key, 'status')
local retry = ARGV[5] ~= ''
local ALLOWED = retry and $FAILS_FROM or $DIES_FROM
if not (ALLOWED[status] and holds(KEYS[1], id, ARGV[3])) then
  redis.call('INCR', KEYS[2])
  return 0
end
local history = ended(key, ARGV[6], ARGV[7])
redis.call('HDEL', key, 'token')
redis.call('ZREM', KEYS[1], id)
if retry then
  redis.call('HSET', key, 'status', $FAILED, 'error', ARGV[4], 'history', history)
  reindex(id, status, $FAILED)
  redis.call('ZADD', KEYS[3], int(now_ms + tonumber(ARGV[5])), id)
else
  redis.call('HSET', key, 'status', $DEAD, 'error', ARGV[4], 'finished_at', now,
             'history', history)
  reindex(id, status, $DEAD)
end
return 1
""",
)


RELEASE: Final = _script(
    "release",
    """
-- release: a stopping worker hands an active job back. The attempt is not counted
-- (attempts - 1, a `released` history record) and the job is first in line.
-- KEYS[1] ready list, KEYS[2] active zset, KEYS[3] marker list, KEYS[4] stale counter
-- ARGV[1] key base, ARGV[2] job id, ARGV[3] token
-- Returns 1, or 0 (and counts a stale write) when the token is not the current lease.
local id = ARGV[2]
local key = job_key(id)
local RELEASABLE = $RELEASABLE
local status = redis.call('HGET', key, 'status')
if not (RELEASABLE[status] and holds(KEYS[2], id, ARGV[3])) then
  redis.call('INCR', KEYS[4])
  return 0
end
local history = ended(key, $OUT_RELEASED, nil)
local attempts = math.max(0, (tonumber(redis.call('HGET', key, 'attempts')) or 1) - 1)
redis.call('HDEL', key, 'token')
redis.call('ZREM', KEYS[2], id)
redis.call('HSET', key, 'status', $QUEUED, 'attempts', attempts, 'history', history)
reindex(id, status, $QUEUED)
redis.call('LPUSH', KEYS[1], id)
wake(KEYS[3])
return 1
""",
)


HELD_BY: Final = _script(
    "held_by",
    """
-- held_by: the leases one worker holds on this queue (reads only). Scans `active`, whose
-- size is bounded by the workers' total concurrency.
-- KEYS[1] active zset
-- ARGV[1] key base, ARGV[2] worker id
-- Returns one array per job held (the FIELDS values, then its token).
local held = {}
for _, id in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  local key = job_key(id)
  local f = redis.call('HMGET', key, 'worker', 'status', 'token')
  if f[1] == ARGV[2] and f[2] == $ACTIVE and f[3] then
    held[#held + 1] = redis.call('HMGET', key, $FIELDS)
  end
end
return held
""",
)


REQUEUE: Final = _script(
    "requeue",
    """
-- requeue: a dead or cancelled job goes back to the queue, last in line, with its attempts
-- reset; its error, result, progress and times are cleared, its history kept.
-- KEYS[1] ready list, KEYS[2] active zset, KEYS[3] delayed zset, KEYS[4] marker list
-- ARGV[1] key base, ARGV[2] job id
-- Returns {1, fields} requeued (fields: the FIELDS values, then no token);
-- {0, status} refused, the job's status cannot be requeued; {0} no such job.
local id = ARGV[2]
local key = job_key(id)
local REQUEUABLE = $REQUEUABLE
local status = redis.call('HGET', key, 'status')
if not status then return {0} end
if not REQUEUABLE[status] then return {0, status} end
redis.call('HDEL', key, 'error', 'result', 'progress', 'started_at', 'finished_at', 'token')
redis.call('HSET', key, 'status', $QUEUED, 'attempts', 0)
redis.call('PERSIST', key)
redis.call('ZREM', KEYS[2], id)
redis.call('ZREM', KEYS[3], id)
reindex(id, status, $QUEUED)
redis.call('RPUSH', KEYS[1], id)
wake(KEYS[4])
return {1, redis.call('HMGET', key, $FIELDS)}
""",
)


ALL: Final = (
    ENQUEUE,
    CLAIM,
    RECOVER,
    RENEW,
    SET_PROGRESS,
    COMPLETE,
    FAIL,
    RELEASE,
    HELD_BY,
    REQUEUE,
)
