"""Every Lua script the Redis queue runs, in one place.

Each script is atomic on the server and makes one of the job's moves; none reads state into
Python to write it back. Times come from the Redis clock. The scripts of one queue derive
every key of that queue from the key base they are given (``{prefix:queue}:``, as ARGV[1]):
``Q.active`` is the key base followed by ``active`` (the suffixes of `keys.SUFFIXES`).
KEYS[1] names one key of the queue so that a Cluster client routes the call to the queue's
slot. SUBMIT is the one script that may touch several queues and the idempotency keys: a
submission spanning queues, or carrying an idempotency key, needs all its keys on one Redis
primary (not Redis Cluster, which refuses a script whose keys span slots).

The status names and the sets of statuses each move starts from are rendered into the
scripts from `domain.jobs` at import time: the state machine is defined once, in the
domain, and this module refuses to load if a move it scripts is not in `TRANSITIONS`.

Keys of one queue (``B`` = ``{prefix:queue}:``):

- ``B job:<id>``          hash, one field per Job attribute (see `codec.FIELDS`) + ``token``;
                          ``worker`` names the lease's holder, ``history`` is a JSON array of
                          attempt records (see `codec`), the last HISTORY_LIMIT kept. A job
                          that succeeded, was cancelled or expired expires after the result
                          retention, a dead one after the dead retention; PERSIST on requeue
- ``B queued``            zset of the jobs ready to claim, in claim order: higher priority
                          first, FIFO within a priority (see "Claim order" below)
- ``B active``            zset job id -> lease expiry, ms on the Redis clock
- ``B delayed``           zset job id -> when it is due, ms: retries, and scheduled jobs
- ``B deadlines``         zset job id -> its deadline, ms: the waiting jobs that have one
- ``B cancelling``        set of the active jobs whose cancellation was asked for
- ``B index:<status>``    zset job id -> when it entered that status, us on the Redis clock
- ``B marker``            list holding at most one element: wakes one blocked claimer
- ``B paused``            exists while the queue is paused: claims hand out nothing from it
- ``B seq``               counter behind the claim order; reset when the queue empties
- ``B tokens``            counter behind the fencing tokens
- ``B stale``             counter of writes rejected for a stale lease token
- ``B workers``           zset worker id -> when its presence lapses, ms (`heartbeat`)
- ``B ready``             the FIFO list of an earlier layout: RECOVER moves what is left in
                          it to ``B queued``, ahead of its priority

Keys of the whole prefix ``P``: ``P:queues`` (set of queue names) and ``P:idem:<sha256 of
the client's key>`` (string ``"<fingerprint> <job id>"``, expiring after the idempotency
retention).

Claim order: a job's score in ``B queued`` is ``(PRIORITY_MAX - priority) * 2^45 + 2^44 +
seq`` when it joins the end of its priority (new, due, requeued) and ``... + 2^44 - seq``
when it goes to the front (reclaimed, released), ``seq`` from ``B seq``: ZPOPMIN claims in
order, every score is exact in a double (< 2^53), and a priority's band holds 2^44 moves
between two moments the queue is empty (`seq` restarts then).

Maintenance (`_MAINTAIN`, run by every CLAIM and RECOVER) expires the waiting jobs past
their deadline, promotes due retries and scheduled jobs, and reclaims expired leases (the
job is requeued, or dead, or cancelled when a cancel was asked, or expired past its
deadline). RECOVER, which workers run on a timer, also tidies (`_TIDY`): it forgets the
index entries (and any hash left) of finished jobs past their retention and moves what is
left of ``B ready``; COMPLETE forgets a few expired results per completion, so the
succeeded index keeps pace with completions. Each step handles at most MAINTENANCE_BATCH
jobs per call, so a call stays short however large a backlog is.

Helpers that only some scripts use are fragments (`_WAKE`, `_HISTORY`, ...) that a script
includes when it needs them: each Lua function a script defines costs a closure on every
call, and the hot scripts (CLAIM, COMPLETE, RENEW, SUBMIT) run thousands of times a second.

Scripts, each documented (KEYS, ARGV, reply) at its top: SUBMIT, CLAIM, RECOVER, RENEW,
SET_PROGRESS, COMPLETE, FAIL, RELEASE, HELD_BY, REQUEUE, CANCEL, CANCELLED,
CANCEL_REQUESTED, RESUME, QUEUE_STATS, SITUATION, HEARTBEAT.

Requires Redis >= 6.2 (RPOP with a count, BLPOP with a fractional timeout).
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
    PRIORITY_MAX,
    PRIORITY_MIN,
    REQUEUABLE,
    TRANSITIONS,
    AttemptOutcome,
    JobStatus,
    can_transition,
    sources_of,
)

S = JobStatus

# At most this many jobs are moved per kind of maintenance (deadlines, due jobs, expired
# leases, each retention) per call, so one call stays short however large a backlog is; the
# next call continues.
MAINTENANCE_BATCH: Final = 1000
# Index entries of expired results forgotten per completion (each completion adds one).
INDEX_TRIM_BATCH: Final = 10
# A priority's band of scores in `B queued` is 2^45 wide (201 bands stay below 2^53).
_BAND: Final = 2**45
if (PRIORITY_MAX - PRIORITY_MIN + 1) * _BAND > 2**53:  # pragma: no cover - a domain change
    raise RuntimeError("the claim order's scores would not be exact in a double")

_WAITING: Final = frozenset(s for s in S if s.is_waiting)
_FROM_ACTIVE: Final = frozenset({S.ACTIVE})

# The moves the scripts make. Checked against the domain's state machine below.
_SCRIPTED_MOVES: Final = (
    *((s, S.QUEUED) for s in (S.FAILED, S.SCHEDULED)),  # maintenance: due
    *((s, S.EXPIRED) for s in _WAITING),  # maintenance, claim: past the deadline
    (S.ACTIVE, S.QUEUED),  # lease expired with attempts left; release
    (S.ACTIVE, S.DEAD),  # lease expired, no attempts left; fail without retry
    (S.ACTIVE, S.EXPIRED),  # lease expired or fail past the deadline
    (S.ACTIVE, S.CANCELLED),  # cancelled; lease expired, fail or release on a cancel request
    (S.QUEUED, S.ACTIVE),  # claim
    (S.ACTIVE, S.SUCCEEDED),  # complete
    (S.ACTIVE, S.FAILED),  # fail with retry
    *((s, S.CANCELLED) for s in _WAITING),  # cancel
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
    "STATUS_LIST": "{" + ", ".join(f"'{s.value}'" for s in JobStatus) + "}",
    "FIELDS": ", ".join(f"'{f}'" for f in FIELDS_WITH_TOKEN),
    "MAINTENANCE_BATCH": str(MAINTENANCE_BATCH),
    "INDEX_TRIM_BATCH": str(INDEX_TRIM_BATCH),
    "PRIORITY_MIN": str(PRIORITY_MIN),
    "PRIORITY_MAX": str(PRIORITY_MAX),
    "BAND": str(_BAND),
    "HALF_BAND": str(_BAND // 2),
    # Which statuses each move may start from, per the domain.
    "WAITING": _lua_set(_WAITING),
    "PROMOTABLE": _lua_set(sources_of(S.QUEUED) & _WAITING),
    "EXPIRABLE": _lua_set(sources_of(S.EXPIRED) & _WAITING),
    "CANCELLABLE": _lua_set(sources_of(S.CANCELLED) & _WAITING),
    "CLAIMABLE": _lua_set(sources_of(S.ACTIVE)),
    "SUCCEEDS_FROM": _lua_set(sources_of(S.SUCCEEDED)),
    "FAILS_FROM": _lua_set(sources_of(S.FAILED) & _FROM_ACTIVE),
    "DIES_FROM": _lua_set(sources_of(S.DEAD) & _FROM_ACTIVE),
    "EXPIRES_FROM": _lua_set(sources_of(S.EXPIRED) & _FROM_ACTIVE),
    "STOPS_FROM": _lua_set(sources_of(S.CANCELLED) & _FROM_ACTIVE),
    "RELEASABLE": _lua_set(sources_of(S.QUEUED) & _FROM_ACTIVE),
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
    """A script: the prelude, the fragments its body calls and those they call in turn (in
    the order they build on each other), then its body."""
    used: set[str] = set()
    wanted = list(fragments)
    while wanted:
        fragment = wanted.pop()
        if fragment not in used:
            used.add(fragment)
            wanted.extend(_NEEDS.get(fragment, ()))
    ordered = sorted(used, key=_FRAGMENTS.index)
    source = Template(_PRELUDE + "".join(ordered) + body).substitute(_SUBSTITUTIONS)
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

-- The keys of the queue whose key base is `b`, by suffix (`keys.SUFFIXES`): Q.active is
-- `b .. 'active'`. Each is made when first used.
local function keys_of(b)
  return setmetatable({}, {__index = function(keys, suffix)
    local key = b .. suffix
    rawset(keys, suffix, key)
    return key
  end})
end
local Q = keys_of(base)

local function job_key(id) return base .. 'job:' .. id end
local function index_key(status) return base .. 'index:' .. status end

-- Move a job between the listing indexes; the score is when it entered `to`.
local function reindex(id, from, to)
  if from then redis.call('ZREM', index_key(from), id) end
  redis.call('ZADD', index_key(to), now, id)
end
"""

# The helpers below are fragments a script includes when it uses them: each function a
# script defines costs it a closure on every run.

_WAKE: Final = """
-- Make sure the marker holds one element, so one blocked claimer wakes.
local function wake()
  if redis.call('LLEN', Q.marker) == 0 then redis.call('RPUSH', Q.marker, '1') end
end
"""

_HOLDS: Final = """
-- Is `token` the current lease of job `id`? (its hash holds the token and it is active)
local function holds(id, token)
  return redis.call('HGET', job_key(id), 'token') == token
    and redis.call('ZSCORE', Q.active, id) ~= false
end
"""

_RETAIN: Final = """
-- A job that reached a status it is kept in for a while: its hash expires after `ttl_ms`
-- (kept for good when not positive).
local function retain(key, ttl_ms)
  if ttl_ms > 0 then redis.call('PEXPIRE', key, ttl_ms) end
end
"""

_DEADLINE: Final = """
-- A job's deadline (us, as stored in its hash) in ms, for `B deadlines`.
local function deadline_ms(deadline) return int(math.ceil(tonumber(deadline) / 1000)) end

-- Has the deadline stored in a job's hash (us, or false) passed?
local function past(deadline)
  local at = tonumber(deadline)
  return at ~= nil and now_us >= at
end

-- How an ending attempt must end whatever its outcome, from its job's hash fields: its
-- cancellation was asked for -> cancelled; its deadline has passed, or will have by `due_ms`
-- (when a retry would be due) -> expired. Answers status and history outcome, or nil, nil.
local function overriding_end(cancel_requested_at, deadline, due_ms)
  if cancel_requested_at then return $CANCELLED, $OUT_CANCELLED end
  local at = tonumber(deadline)
  if at and (now_us >= at or (due_ms and due_ms * 1000 >= at)) then
    return $EXPIRED, $OUT_EXPIRED
  end
  return nil, nil
end
"""

_ORDER: Final = """
-- A job's score in `B queued`, from its priority and a `seq` from `B seq`: behind the jobs
-- of its priority, or at their `head`.
local function claim_order(priority, seq, head)
  local p = math.floor(tonumber(priority) or 0)
  p = math.max($PRIORITY_MIN, math.min($PRIORITY_MAX, p))
  local band = ($PRIORITY_MAX - p) * $BAND + $HALF_BAND
  return int(head and band - seq or band + seq)
end

-- Put job `id` in line to be claimed: behind the jobs of its priority, or at their `head`.
local function line_up(id, priority, head)
  redis.call('ZADD', Q.queued, claim_order(priority, redis.call('INCR', Q.seq), head), id)
end
"""

_BATCH: Final = """
-- ZADD (score, member, ...) and ZREM (members) of many at once, in chunks that stay within
-- what Lua's unpack can pass.
local function zadd_all(key, args)
  for i = 1, #args, 2000 do
    redis.call('ZADD', key, unpack(args, i, math.min(i + 1999, #args)))
  end
end
local function zrem_all(key, ids)
  for i = 1, #ids, 1000 do
    redis.call('ZREM', key, unpack(ids, i, math.min(i + 999, #ids)))
  end
end

-- Add many jobs to the index of status `to`, as entering it now.
local function index_all(ids, to)
  local args = {}
  for _, id in ipairs(ids) do
    args[#args + 1] = now
    args[#args + 1] = id
  end
  zadd_all(index_key(to), args)
end

-- `reindex` for many jobs at once: `from` maps each status they leave to their ids.
local function reindex_all(from, to)
  for status, ids in pairs(from) do
    zrem_all(index_key(status), ids)
    index_all(ids, to)
  end
end

-- Add `id` to the list of its status in `from` (for `reindex_all`).
local function note(from, status, id)
  local ids = from[status]
  if not ids then
    ids = {}
    from[status] = ids
  end
  ids[#ids + 1] = id
end
"""

_HISTORY: Final = """
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

_FORGET: Final = """
-- Finished jobs of `status` past their retention `ttl_ms` (at most `n`): their hashes have
-- expired (any left, from before they had an expiry, goes now), so their index entries go
-- too.
local function forget(status, ttl_ms, n)
  if ttl_ms <= 0 then return end
  local index = index_key(status)
  local gone = redis.call('ZRANGEBYSCORE', index, '-inf', int(now_us - ttl_ms * 1000),
                          'LIMIT', 0, n)
  for _, id in ipairs(gone) do
    if redis.call('HGET', job_key(id), 'status') == status then
      redis.call('DEL', job_key(id))
    end
  end
  zrem_all(index, gone)
end
"""


# Maintenance, shared by CLAIM and RECOVER (one Lua function, included in both).
_MAINTAIN: Final = """
-- Expire waiting jobs past their deadline, promote due retries and scheduled jobs, reclaim
-- expired leases: at most $MAINTENANCE_BATCH of each per call. `lost` is the error JSON
-- recorded on a job whose lease expired, `lost_summary` its summary for the job's history;
-- `result_ttl` and `dead_ttl` the retentions (ms). Answers how many jobs moved, and how
-- many of them are now queued.
local EXPIRABLE = $EXPIRABLE
local PROMOTABLE = $PROMOTABLE
local function maintain(lost, lost_summary, result_ttl, dead_ttl)
  local moved, queued = 0, 0
  -- Waiting jobs whose deadline passed never run.
  for _, id in ipairs(redis.call('ZRANGEBYSCORE', Q.deadlines, '-inf', now_ms,
                                 'LIMIT', 0, $MAINTENANCE_BATCH)) do
    redis.call('ZREM', Q.deadlines, id)
    local key = job_key(id)
    local status = redis.call('HGET', key, 'status')
    if EXPIRABLE[status] then
      redis.call('ZREM', Q.queued, id)
      redis.call('ZREM', Q.delayed, id)
      redis.call('HSET', key, 'status', $EXPIRED, 'finished_at', now)
      reindex(id, status, $EXPIRED)
      retain(key, result_ttl)
      moved = moved + 1
    end
  end
  -- Due retries and scheduled jobs join the end of their priority, like new jobs.
  for _, id in ipairs(redis.call('ZRANGEBYSCORE', Q.delayed, '-inf', now_ms,
                                 'LIMIT', 0, $MAINTENANCE_BATCH)) do
    redis.call('ZREM', Q.delayed, id)
    local f = redis.call('HMGET', job_key(id), 'status', 'priority')
    if PROMOTABLE[f[1]] then
      redis.call('HSET', job_key(id), 'status', $QUEUED)
      reindex(id, f[1], $QUEUED)
      line_up(id, f[2], false)
      moved, queued = moved + 1, queued + 1
    end
  end
  -- A lease that expired: the attempt it had is spent. Reclaimed jobs go to the head of
  -- their priority; one whose cancel was asked for stops, one past its deadline expires.
  for _, id in ipairs(redis.call('ZRANGEBYSCORE', Q.active, '-inf', now_ms,
                                 'LIMIT', 0, $MAINTENANCE_BATCH)) do
    redis.call('ZREM', Q.active, id)
    local key = job_key(id)
    local f = redis.call('HMGET', key, 'status', 'attempts', 'max_attempts', 'worker',
                         'started_at', 'history', 'priority', 'deadline',
                         'cancel_requested_at')
    if f[1] == $ACTIVE then
      redis.call('HDEL', key, 'token')
      local ending, outcome = overriding_end(f[9], f[8], nil)
      if f[9] then redis.call('SREM', Q.cancelling, id) end
      if ending then
        local history = with_record(f[6], f[2], f[4], f[5], outcome, lost_summary)
        redis.call('HSET', key, 'status', ending, 'error', lost, 'finished_at', now,
                   'history', history)
        reindex(id, $ACTIVE, ending)
        retain(key, result_ttl)
      elseif (tonumber(f[2]) or 0) < (tonumber(f[3]) or 0) then
        local history = with_record(f[6], f[2], f[4], f[5], $OUT_WORKER_LOST, lost_summary)
        redis.call('HSET', key, 'status', $QUEUED, 'error', lost, 'history', history)
        reindex(id, $ACTIVE, $QUEUED)
        line_up(id, f[7], true)
        if f[8] then redis.call('ZADD', Q.deadlines, deadline_ms(f[8]), id) end
        queued = queued + 1
      else
        local history = with_record(f[6], f[2], f[4], f[5], $OUT_WORKER_LOST, lost_summary)
        redis.call('HSET', key, 'status', $DEAD, 'error', lost, 'finished_at', now,
                   'history', history)
        reindex(id, $ACTIVE, $DEAD)
        retain(key, dead_ttl)
      end
      moved = moved + 1
    end
  end
  return moved, queued
end
"""

# What only RECOVER does, on its timer: claims stay short.
_TIDY: Final = """
-- Move what is left of the earlier layout's list to `queued`, forget finished jobs past
-- their retention (at most $MAINTENANCE_BATCH of each status), and restart the claim order
-- of an empty queue. Answers how many jobs it put in line.
local CLAIMABLE = $CLAIMABLE
local function tidy(result_ttl, dead_ttl)
  local queued = 0
  -- The earlier layout's FIFO list: its jobs were queued before any in `queued`, so they go
  -- to the head of their priority, taken from the list's end to keep their order.
  if redis.call('TYPE', Q.ready).ok == 'list' then
    for _, id in ipairs(redis.call('RPOP', Q.ready, $MAINTENANCE_BATCH) or {}) do
      local f = redis.call('HMGET', job_key(id), 'status', 'priority')
      if CLAIMABLE[f[1]] then
        line_up(id, f[2], true)
        queued = queued + 1
      end
    end
  end
  forget($SUCCEEDED, result_ttl, $MAINTENANCE_BATCH)
  forget($CANCELLED, result_ttl, $MAINTENANCE_BATCH)
  forget($EXPIRED, result_ttl, $MAINTENANCE_BATCH)
  forget($DEAD, dead_ttl, $MAINTENANCE_BATCH)
  if redis.call('ZCARD', Q.queued) == 0 then redis.call('DEL', Q.seq) end
  return queued
end
"""

# Each fragment may use the ones before it.
_FRAGMENTS: Final = (
    _WAKE,
    _HOLDS,
    _RETAIN,
    _DEADLINE,
    _ORDER,
    _BATCH,
    _HISTORY,
    _FORGET,
    _MAINTAIN,
    _TIDY,
)
# The fragments each fragment calls (a script names only those its own body calls).
_NEEDS: Final = {
    _FORGET: (_BATCH,),
    _MAINTAIN: (_RETAIN, _DEADLINE, _ORDER, _HISTORY),
    _TIDY: (_ORDER, _FORGET),
}


SUBMIT: Final = _script(
    "submit",
    """
-- submit: store new jobs; each submission all or nothing, in order.
-- KEYS: the `queued` zset of every queue the submissions touch, then every idempotency key
-- they carry (declared for routing only).
-- ARGV[1] the key base of the first queue, ARGV[2] idempotency retention ms,
-- ARGV[3] the most used_memory (bytes) new jobs are admitted under, or '' for no limit,
-- ARGV[4] NQ, the number of queues, then per queue (numbered 1..NQ): its key base, the most
-- jobs it may hold queued or '', the longest its oldest queued job may have waited (ms) or '';
-- then the number of submissions, then per submission: its number of jobs, then per job:
-- queue number, job id, idempotency key name or '', fingerprint, run_at ms or '',
-- deadline ms or '', priority, m, and m hash field/value arguments (every one but status).
-- Returns one answer per submission:
--   {1, flags, id, ...} stored; flags has one character per job: '1' stored, '0' not stored
--     (a job with its id exists), 'k' not stored: its idempotency key holds a job, whose id
--     follows (one id per 'k', in order);
--   {0, 'conflict', i}: job i (from 0) reuses an idempotency key with another fingerprint;
--   {0, 'depth', base, queued jobs with these, limit}, {0, 'age', base, oldest queued job's
--     age ms, limit}: the queue of key base `base` is over a limit;
--   {0, 'memory', used_memory (-1: INFO refused), limit}: the server is over its limit.
-- A submission refused writes nothing. A job whose run_at is still ahead is `scheduled`,
-- in `delayed` until then; any other is `queued`. The hashes (and idempotency keys) are
-- written submission by submission; each queue's sets take the jobs of every submission at
-- the end, in one command per set.
local function use(b, keys) base, Q = b, keys end
local idem_ttl = ARGV[2]
local max_memory = tonumber(ARGV[3])
local nq = tonumber(ARGV[4])
local queues = {}
local limited = max_memory ~= nil  -- any admission limit to check?
local i = 5
for q = 1, nq do
  local b = ARGV[i]
  queues[q] = {base = b, keys = keys_of(b), depth = tonumber(ARGV[i + 1]),
               age = tonumber(ARGV[i + 2])}
  limited = limited or queues[q].depth ~= nil or queues[q].age ~= nil
  i = i + 3
end

local used_memory = nil
local function memory_used()
  if used_memory == nil then
    used_memory = -1
    local info = redis.pcall('INFO', 'memory')
    if type(info) == 'string' then
      used_memory = tonumber(string.match(info, 'used_memory:(%d+)')) or -1
    end
  end
  return used_memory
end

-- What the submissions stored add to each queue's sets, written once all are in: per queue,
-- `queued` holds the ARGV offsets of its queued jobs; `scheduled` the ids of the others,
-- `delayed` and `deadlines` (score, id) pairs.
local writes = {}
for qn = 1, nq do writes[qn] = {queued = {}, scheduled = {}, delayed = {}, deadlines = {}} end

-- A job is described by its offset `o` in ARGV: ARGV[o] its queue number, ARGV[o + 1] its
-- id, and so on (see the top).
local function admit(fresh)
  local per_queue = {}
  for _, o in ipairs(fresh) do
    local qn = tonumber(ARGV[o])
    per_queue[qn] = (per_queue[qn] or 0) + 1
  end
  for qn = 1, nq do
    local n, q = per_queue[qn], queues[qn]
    if n and q.depth then
      local depth = redis.call('ZCARD', q.keys.queued) + #writes[qn].queued + n
      if depth > q.depth then return {0, 'depth', q.base, depth, q.depth} end
    end
    if n and q.age then
      local oldest = redis.call('ZRANGE', q.base .. 'index:' .. $QUEUED, 0, 0, 'WITHSCORES')
      if oldest[2] then
        local age = math.floor((now_us - tonumber(oldest[2])) / 1000)
        if age > q.age then return {0, 'age', q.base, age, q.age} end
      end
    end
  end
  if max_memory then
    local used = memory_used()
    if used < 0 or used > max_memory then return {0, 'memory', used, max_memory} end
  end
  return nil
end

-- One submission: the ARGV offsets of its jobs.
local function submit(jobs)
  local held, seen = {}, {}  -- what its earlier jobs take: idempotency keys, job keys
  local fresh, flags, answer = {}, {}, {1, ''}
  for k, o in ipairs(jobs) do
    local id, idem, fingerprint = ARGV[o + 1], ARGV[o + 2], ARGV[o + 3]
    local prior = false
    if idem ~= '' then prior = held[idem] or redis.call('GET', idem) end
    if prior then
      local first, holder = string.match(prior, '^(.*) (%x+)$$')
      if first ~= fingerprint then return {0, 'conflict', k - 1} end
      flags[k] = 'k'
      answer[#answer + 1] = holder
    else
      local key = queues[tonumber(ARGV[o])].base .. 'job:' .. id
      if seen[key] or redis.call('EXISTS', key) == 1 then
        flags[k] = '0'
      else
        seen[key] = true
        fresh[#fresh + 1] = o
        if idem ~= '' then held[idem] = fingerprint .. ' ' .. id end
        flags[k] = '1'
      end
    end
  end
  answer[2] = table.concat(flags)
  if #fresh == 0 then return answer end
  if limited then
    local refused = admit(fresh)
    if refused then return refused end
  end
  for _, o in ipairs(fresh) do
    local qn = tonumber(ARGV[o])
    local w, id, run_at = writes[qn], ARGV[o + 1], tonumber(ARGV[o + 4])
    local status = $QUEUED
    if run_at and run_at > now_ms then status = $SCHEDULED end
    redis.call('HSET', queues[qn].base .. 'job:' .. id, 'status', status,
               unpack(ARGV, o + 8, o + 7 + tonumber(ARGV[o + 7])))
    if status == $SCHEDULED then
      w.scheduled[#w.scheduled + 1] = id
      w.delayed[#w.delayed + 1] = int(run_at)
      w.delayed[#w.delayed + 1] = id
    else
      w.queued[#w.queued + 1] = o
    end
    if ARGV[o + 5] ~= '' then
      w.deadlines[#w.deadlines + 1] = ARGV[o + 5]
      w.deadlines[#w.deadlines + 1] = id
    end
    if ARGV[o + 2] ~= '' then
      redis.call('SET', ARGV[o + 2], ARGV[o + 3] .. ' ' .. id, 'PX', idem_ttl)
    end
  end
  return answer
end

local answers = {}
local submissions = tonumber(ARGV[i])
i = i + 1
for s = 1, submissions do
  local n = tonumber(ARGV[i])
  i = i + 1
  local jobs = {}
  for k = 1, n do
    jobs[k] = i
    i = i + 8 + tonumber(ARGV[i + 7])
  end
  answers[s] = submit(jobs)
end

for qn, w in ipairs(writes) do
  use(queues[qn].base, queues[qn].keys)
  local n = #w.queued
  if n > 0 then
    -- In line in the order submitted, behind the jobs of their priority.
    local seq = redis.call('INCRBY', Q.seq, n) - n
    local order, ids = {}, {}
    for k, o in ipairs(w.queued) do
      order[#order + 1] = claim_order(ARGV[o + 6], seq + k, false)
      order[#order + 1] = ARGV[o + 1]
      ids[k] = ARGV[o + 1]
    end
    zadd_all(Q.queued, order)
    index_all(ids, $QUEUED)
    wake()
  end
  if #w.scheduled > 0 then
    zadd_all(Q.delayed, w.delayed)
    index_all(w.scheduled, $SCHEDULED)
  end
  zadd_all(Q.deadlines, w.deadlines)
end
return answers
""",
    _WAKE,
    _ORDER,
    _BATCH,
)


CLAIM: Final = _script(
    "claim",
    """
-- claim: maintenance (`maintain`), then lease up to `limit` queued jobs to one worker, in
-- claim order; none while the queue is paused.
-- KEYS[1] the queue's `queued` zset
-- ARGV[1] key base, ARGV[2] limit, ARGV[3] lease length ms, ARGV[4] worker id,
-- ARGV[5] the error JSON recorded on a job whose lease expired, ARGV[6] its summary,
-- ARGV[7] result retention ms, ARGV[8] dead retention ms (not positive: kept for good)
-- Returns {jobs, wake_in}: jobs holds one array per claimed job (the FIELDS values, then
-- the new token); wake_in is the ms until the next due job or lease expiry, -1 if none
-- (only computed when nothing was claimed).
-- Ids in `queued` whose hash is gone or whose status cannot be claimed are dropped; a job
-- whose deadline has passed expires instead of being claimed.
local CLAIMABLE = $CLAIMABLE
local limit = tonumber(ARGV[2])
local lease_ms = tonumber(ARGV[3])
local worker = ARGV[4]
local result_ttl = tonumber(ARGV[7])

maintain(ARGV[5], ARGV[6], result_ttl, tonumber(ARGV[8]))

local jobs = {}
if redis.call('EXISTS', Q.paused) == 0 then
  local expires = int(now_ms + lease_ms)
  local leased, from = {}, {}
  while #jobs < limit do
    local popped = redis.call('ZPOPMIN', Q.queued, limit - #jobs)
    if #popped == 0 then break end
    -- A block of fencing tokens, one per job popped (those not claimed go unused).
    local token = redis.call('INCRBY', Q.tokens, #popped / 2) - #popped / 2
    for n = 1, #popped, 2 do
      local id = popped[n]
      local key = job_key(id)
      local f = redis.call('HMGET', key, 'status', 'attempts', 'deadline')
      if CLAIMABLE[f[1]] and past(f[3]) then
        redis.call('ZREM', Q.deadlines, id)
        redis.call('HSET', key, 'status', $EXPIRED, 'finished_at', now)
        reindex(id, f[1], $EXPIRED)
        retain(key, result_ttl)
      elseif CLAIMABLE[f[1]] then
        -- The attempt is counted now, so a job that kills its worker still uses one up.
        local attempts = (tonumber(f[2]) or 0) + 1
        token = token + 1
        redis.call('HSET', key, 'status', $ACTIVE, 'attempts', attempts,
                   'started_at', now, 'token', int(token) .. ':' .. attempts, 'worker', worker)
        redis.call('HDEL', key, 'progress', 'retry_at', 'heartbeat_at')
        if f[3] then redis.call('ZREM', Q.deadlines, id) end
        leased[#leased + 1] = expires
        leased[#leased + 1] = id
        note(from, f[1], id)
        jobs[#jobs + 1] = redis.call('HMGET', key, $FIELDS)
      end
    end
  end
  zadd_all(Q.active, leased)
  reindex_all(from, $ACTIVE)
end

local wake_in = -1
if #jobs > 0 then
  -- Work left over: let another claimer in. None: the claim order starts over.
  if redis.call('EXISTS', Q.queued) == 1 then wake() else redis.call('DEL', Q.seq) end
else
  local next_at = nil
  local d = redis.call('ZRANGE', Q.delayed, 0, 0, 'WITHSCORES')
  if d[2] then next_at = tonumber(d[2]) end
  local a = redis.call('ZRANGE', Q.active, 0, 0, 'WITHSCORES')
  if a[2] and (next_at == nil or tonumber(a[2]) < next_at) then next_at = tonumber(a[2]) end
  if next_at then wake_in = math.max(0, next_at - now_ms) end
end
return {jobs, wake_in}
""",
    _WAKE,
    _RETAIN,
    _DEADLINE,
    _BATCH,
    _MAINTAIN,
)


RECOVER: Final = _script(
    "recover",
    """
-- recover: claim's maintenance (`maintain`), for queues nobody claims from, and what claims
-- leave to it (`tidy`).
-- KEYS[1] the queue's `queued` zset
-- ARGV[1] key base, ARGV[2] the error JSON recorded on a job whose lease expired,
-- ARGV[3] its summary, ARGV[4] result retention ms, ARGV[5] dead retention ms
-- Returns how many jobs moved; wakes a claimer if any was queued.
local result_ttl, dead_ttl = tonumber(ARGV[4]), tonumber(ARGV[5])
local moved, queued = maintain(ARGV[2], ARGV[3], result_ttl, dead_ttl)
queued = queued + tidy(result_ttl, dead_ttl)
if queued > 0 then wake() end
return moved
""",
    _WAKE,
    _MAINTAIN,
    _TIDY,
)


RENEW: Final = _script(
    "renew",
    """
-- renew: extend the leases still held, and record the heartbeat on each job.
-- KEYS[1] the queue's `active` zset
-- ARGV[1] key base, ARGV[2] lease length ms, ARGV[3..] job id, token pairs
-- Returns the ids whose lease was held (current token, not yet expired) and is now extended.
local expires = int(now_ms + tonumber(ARGV[2]))
local held = {}
for i = 3, #ARGV, 2 do
  local id, token = ARGV[i], ARGV[i + 1]
  local score = redis.call('ZSCORE', Q.active, id)
  if score and tonumber(score) > now_ms and redis.call('HGET', job_key(id), 'token') == token then
    redis.call('ZADD', Q.active, 'XX', expires, id)
    redis.call('HSET', job_key(id), 'heartbeat_at', now)
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
-- KEYS[1] the queue's `active` zset
-- ARGV[1] key base, ARGV[2] job id, ARGV[3] token, ARGV[4] progress 0-100
-- Returns 1, or 0 (and counts a stale write) when the token is not the current lease.
if not holds(ARGV[2], ARGV[3]) then
  redis.call('INCR', Q.stale)
  return 0
end
redis.call('HSET', job_key(ARGV[2]), 'progress', ARGV[4])
return 1
""",
    _HOLDS,
)


COMPLETE: Final = _script(
    "complete",
    """
-- complete: attempts that succeeded; their results are kept for the result retention.
-- The `succeeded` history record is not written: `succeeded` is final, so the record is
-- implied by the hash (attempts, worker, started_at, finished_at) and `codec` adds it when
-- it reads the job. Writing it would push the hash past hash-max-listpack-value (64 bytes)
-- and more than double the memory of every result kept.
-- KEYS[1] the queue's `active` zset
-- ARGV[1] key base, ARGV[2] result retention ms (the job hash expires then),
-- then per job: job id, token, result JSON
-- Returns one integer per job: 1 recorded, 0 refused (and counted as a stale write)
-- because the token is not the job's current lease.
local ttl_ms = tonumber(ARGV[2])
local SUCCEEDS_FROM = $SUCCEEDS_FROM
local results, done, from, stale = {}, {}, {}, 0
for i = 3, #ARGV, 3 do
  local id, token = ARGV[i], ARGV[i + 1]
  local key = job_key(id)
  local f = redis.call('HMGET', key, 'status', 'token', 'cancel_requested_at')
  if SUCCEEDS_FROM[f[1]] and f[2] == token and redis.call('ZSCORE', Q.active, id) then
    redis.call('HSET', key, 'status', $SUCCEEDED, 'result', ARGV[i + 2], 'progress', 100,
               'finished_at', now)
    redis.call('HDEL', key, 'token')
    if f[3] then redis.call('SREM', Q.cancelling, id) end
    retain(key, ttl_ms)
    done[#done + 1] = id
    note(from, f[1], id)
    results[#results + 1] = 1
  else
    stale = stale + 1
    results[#results + 1] = 0
  end
end
zrem_all(Q.active, done)
reindex_all(from, $SUCCEEDED)
if stale > 0 then redis.call('INCRBY', Q.stale, stale) end
-- Forget the results past their retention, a few per completion (RECOVER does the rest).
forget($SUCCEEDED, ttl_ms, $INDEX_TRIM_BATCH * #results)
return results
""",
    _RETAIN,
    _BATCH,
    _FORGET,
)


FAIL: Final = _script(
    "fail",
    """
-- fail: the attempt failed; retry later, or dead-letter the job. A job whose cancel was
-- asked for is cancelled instead; one whose deadline has passed, or will have when the
-- retry is due, expires instead. Either way its history records that outcome.
-- KEYS[1] the queue's `active` zset
-- ARGV[1] key base, ARGV[2] job id, ARGV[3] token, ARGV[4] error JSON,
-- ARGV[5] retry in ms, or '' for no retry (dead), ARGV[6] the attempt's outcome and
-- ARGV[7] the error's summary, for the job's history, ARGV[8] result retention ms,
-- ARGV[9] dead retention ms
-- Returns 1, or 0 (and counts a stale write) when the token is not the current lease.
local id = ARGV[2]
local key = job_key(id)
local f = redis.call('HMGET', key, 'status', 'deadline', 'cancel_requested_at')
local retry = ARGV[5] ~= ''
local outcome = ARGV[6]
local due_ms = retry and now_ms + tonumber(ARGV[5]) or nil
local target, overridden = overriding_end(f[3], f[2], due_ms)
if target then
  outcome = overridden
elseif retry then
  target = $FAILED
else
  target = $DEAD
end
local FROM = {[$EXPIRED] = $EXPIRES_FROM, [$CANCELLED] = $STOPS_FROM,
              [$FAILED] = $FAILS_FROM, [$DEAD] = $DIES_FROM}
if not (FROM[target][f[1]] and holds(id, ARGV[3])) then
  redis.call('INCR', Q.stale)
  return 0
end
local history = ended(key, outcome, ARGV[7])
redis.call('HDEL', key, 'token')
redis.call('ZREM', Q.active, id)
if f[3] then redis.call('SREM', Q.cancelling, id) end
if target == $FAILED then
  redis.call('HSET', key, 'status', $FAILED, 'error', ARGV[4], 'history', history,
             'retry_at', int(due_ms * 1000))
  redis.call('ZADD', Q.delayed, int(due_ms), id)
  if f[2] then redis.call('ZADD', Q.deadlines, deadline_ms(f[2]), id) end
else
  redis.call('HSET', key, 'status', target, 'error', ARGV[4], 'finished_at', now,
             'history', history)
  retain(key, tonumber(target == $DEAD and ARGV[9] or ARGV[8]))
end
reindex(id, f[1], target)
return 1
""",
    _HOLDS,
    _RETAIN,
    _DEADLINE,
    _HISTORY,
)


RELEASE: Final = _script(
    "release",
    """
-- release: a stopping worker hands an active job back. The attempt is not counted
-- (attempts - 1, a `released` history record) and the job is first in line for its
-- priority. A job whose cancel was asked for is cancelled instead, one past its deadline
-- expires (its attempt counted, and recorded with that outcome).
-- KEYS[1] the queue's `active` zset
-- ARGV[1] key base, ARGV[2] job id, ARGV[3] token, ARGV[4] result retention ms
-- Returns 1, or 0 (and counts a stale write) when the token is not the current lease.
local id = ARGV[2]
local key = job_key(id)
local RELEASABLE = $RELEASABLE
local f = redis.call('HMGET', key, 'status', 'attempts', 'priority', 'deadline',
                     'cancel_requested_at')
if not (RELEASABLE[f[1]] and holds(id, ARGV[3])) then
  redis.call('INCR', Q.stale)
  return 0
end
redis.call('HDEL', key, 'token')
redis.call('ZREM', Q.active, id)
local ending, outcome = overriding_end(f[5], f[4], nil)
if f[5] then redis.call('SREM', Q.cancelling, id) end
if ending then
  local history = ended(key, outcome, nil)
  redis.call('HSET', key, 'status', ending, 'finished_at', now, 'history', history)
  reindex(id, f[1], ending)
  retain(key, tonumber(ARGV[4]))
  return 1
end
local history = ended(key, $OUT_RELEASED, nil)
local attempts = math.max(0, (tonumber(f[2]) or 1) - 1)
redis.call('HSET', key, 'status', $QUEUED, 'attempts', attempts, 'history', history)
reindex(id, f[1], $QUEUED)
line_up(id, f[3], true)
if f[4] then redis.call('ZADD', Q.deadlines, deadline_ms(f[4]), id) end
wake()
return 1
""",
    _WAKE,
    _HOLDS,
    _RETAIN,
    _DEADLINE,
    _ORDER,
    _HISTORY,
)


HELD_BY: Final = _script(
    "held_by",
    """
-- held_by: the leases one worker holds on this queue (reads only). Scans `active`, whose
-- size is bounded by the workers' total concurrency.
-- KEYS[1] the queue's `active` zset
-- ARGV[1] key base, ARGV[2] worker id
-- Returns one array per job held (the FIELDS values, then its token).
local held = {}
for _, id in ipairs(redis.call('ZRANGE', Q.active, 0, -1)) do
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
-- requeue: a dead or cancelled job goes back to the queue, last in line for its priority,
-- with its attempts reset; its error, result, progress, times and cancel request are
-- cleared, its history kept, and it is kept for good again.
-- KEYS[1] the queue's `queued` zset
-- ARGV[1] key base, ARGV[2] job id
-- Returns {1, fields} requeued (fields: the FIELDS values, then no token);
-- {0, status} refused, the job's status cannot be requeued; {0} no such job.
local id = ARGV[2]
local key = job_key(id)
local REQUEUABLE = $REQUEUABLE
local f = redis.call('HMGET', key, 'status', 'priority', 'deadline')
if not f[1] then return {0} end
if not REQUEUABLE[f[1]] then return {0, f[1]} end
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
return {1, redis.call('HMGET', key, $FIELDS)}
""",
    _WAKE,
    _DEADLINE,
    _ORDER,
)


CANCEL: Final = _script(
    "cancel",
    """
-- cancel: a waiting job is cancelled at once (it leaves the line, and is kept for the
-- result retention); an active one gets its cancel request (once), for its worker to act
-- on.
-- KEYS[1] the queue's `queued` zset
-- ARGV[1] key base, ARGV[2] job id, ARGV[3] result retention ms
-- Returns {1, fields} (the FIELDS values, then its token) cancelled or asked to stop;
-- {0, status} refused, the job has finished; {0} no such job.
local id = ARGV[2]
local key = job_key(id)
local CANCELLABLE = $CANCELLABLE
local STOPS_FROM = $STOPS_FROM
local f = redis.call('HMGET', key, 'status', 'cancel_requested_at')
if not f[1] then return {0} end
if CANCELLABLE[f[1]] then
  redis.call('ZREM', Q.queued, id)
  redis.call('ZREM', Q.delayed, id)
  redis.call('ZREM', Q.deadlines, id)
  redis.call('HSET', key, 'status', $CANCELLED, 'finished_at', now)
  reindex(id, f[1], $CANCELLED)
  retain(key, tonumber(ARGV[3]))
elseif STOPS_FROM[f[1]] then
  if not f[2] then
    redis.call('HSET', key, 'cancel_requested_at', now)
    redis.call('SADD', Q.cancelling, id)
  end
else
  return {0, f[1]}
end
return {1, redis.call('HMGET', key, $FIELDS)}
""",
    _RETAIN,
)


CANCELLED: Final = _script(
    "cancelled",
    """
-- cancelled: the attempt stopped on a cancel request; the job is cancelled (kept for the
-- result retention), with a `cancelled` history record.
-- KEYS[1] the queue's `active` zset
-- ARGV[1] key base, ARGV[2] job id, ARGV[3] token, ARGV[4] result retention ms
-- Returns 1, or 0 (and counts a stale write) when the token is not the current lease.
local id = ARGV[2]
local key = job_key(id)
local STOPS_FROM = $STOPS_FROM
local status = redis.call('HGET', key, 'status')
if not (STOPS_FROM[status] and holds(id, ARGV[3])) then
  redis.call('INCR', Q.stale)
  return 0
end
local history = ended(key, $OUT_CANCELLED, nil)
redis.call('HDEL', key, 'token')
redis.call('ZREM', Q.active, id)
redis.call('SREM', Q.cancelling, id)
redis.call('HSET', key, 'status', $CANCELLED, 'finished_at', now, 'history', history)
reindex(id, status, $CANCELLED)
retain(key, tonumber(ARGV[4]))
return 1
""",
    _HOLDS,
    _RETAIN,
    _HISTORY,
)


CANCEL_REQUESTED: Final = _script(
    "cancel_requested",
    """
-- cancel_requested: which of these leases' jobs were asked to stop (reads only).
-- KEYS[1] the queue's `cancelling` set
-- ARGV[1] key base, ARGV[2..] job id, token pairs
-- Returns the ids whose cancel was asked for and whose lease is the one given.
local asked = {}
for i = 2, #ARGV, 2 do
  local id = ARGV[i]
  if redis.call('SISMEMBER', Q.cancelling, id) == 1
      and redis.call('HGET', job_key(id), 'token') == ARGV[i + 1] then
    asked[#asked + 1] = id
  end
end
return asked
""",
)


RESUME: Final = _script(
    "resume",
    """
-- resume: claims hand out the queue's jobs again; wakes a claimer.
-- KEYS[1] the queue's `paused` key
-- ARGV[1] key base
-- Returns 1 if the queue was paused, else 0.
local was = redis.call('DEL', Q.paused)
wake()
return was
""",
    _WAKE,
)


QUEUE_STATS: Final = _script(
    "queue_stats",
    """
-- queue_stats: the queue's figures (reads only).
-- KEYS[1] the queue's `queued` zset
-- ARGV[1] key base
-- Returns {counts, oldest, paused, workers}: counts has one integer per status, in
-- STATUS_LIST order (the index sizes); oldest is how long (us) the oldest queued job has
-- waited, -1 if none; paused is 1 or 0; workers counts the live workers serving the queue.
local counts = {}
for _, status in ipairs($STATUS_LIST) do
  counts[#counts + 1] = redis.call('ZCARD', index_key(status))
end
local oldest = -1
local first = redis.call('ZRANGE', index_key($QUEUED), 0, 0, 'WITHSCORES')
if first[2] then oldest = math.max(0, now_us - tonumber(first[2])) end
return {counts, oldest, redis.call('EXISTS', Q.paused),
        redis.call('ZCOUNT', Q.workers, '(' .. now_ms, '+inf')}
""",
)


SITUATION: Final = _script(
    "situation",
    """
-- situation: a job and what decides when it runs (reads only).
-- KEYS[1] the queue's `queued` zset
-- ARGV[1] key base, ARGV[2] job id
-- Returns {fields, ahead, paused, workers}: fields the FIELDS values (then its token), all
-- nil when there is no such job; ahead how many jobs are claimed before it, -1 unless it
-- is queued; paused 1 or 0; workers the live workers serving the queue.
local id = ARGV[2]
local fields = redis.call('HMGET', job_key(id), $FIELDS)
local ahead = -1
if fields[4] == $QUEUED then
  local rank = redis.call('ZRANK', Q.queued, id)
  if rank then ahead = rank end
end
return {fields, ahead, redis.call('EXISTS', Q.paused),
        redis.call('ZCOUNT', Q.workers, '(' .. now_ms, '+inf')}
""",
)


HEARTBEAT: Final = _script(
    "heartbeat",
    """
-- heartbeat: a worker serving this queue is alive for the next `ttl` ms; workers whose
-- presence lapsed are dropped. The set itself expires when its last worker's does.
-- KEYS[1] the queue's `workers` zset
-- ARGV[1] key base, ARGV[2] worker id, ARGV[3] ttl ms
-- Returns how many workers serve the queue now.
local ttl = tonumber(ARGV[3])
redis.call('ZREMRANGEBYSCORE', Q.workers, '-inf', now_ms)
redis.call('ZADD', Q.workers, int(now_ms + ttl), ARGV[2])
if redis.call('PTTL', Q.workers) < ttl then redis.call('PEXPIRE', Q.workers, ttl) end
return redis.call('ZCARD', Q.workers)
""",
)


ALL: Final = (
    SUBMIT,
    CLAIM,
    RECOVER,
    RENEW,
    SET_PROGRESS,
    COMPLETE,
    FAIL,
    RELEASE,
    HELD_BY,
    REQUEUE,
    CANCEL,
    CANCELLED,
    CANCEL_REQUESTED,
    RESUME,
    QUEUE_STATS,
    SITUATION,
    HEARTBEAT,
)
