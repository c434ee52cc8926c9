-- submit: store new jobs; each submission all or nothing, in order.
--
-- The one script that may span queues: a run with several queues needs all their keys on
-- one Redis primary (Redis Cluster refuses a script whose keys span slots: there the
-- submitter sends each queue's part of a submission on its own, see `submission.py`). A
-- run of one queue touches that queue's keys only (its idempotency keys are under its
-- tag), but for the read-only older keys on a single server.
--
-- KEYS per queue: queued delayed deadlines seq marker rates
--   (one group per queue the submissions touch, queue 1 first), then every idempotency key
--   they carry (each under its queue's hash tag, `B idem:<digest>`), and on a single server
--   where an older Conveyor held each (`P:idem:<digest>`, read only, until it expires)
-- ARGV[1] idempotency retention, ms
-- ARGV[2] the most used_memory (bytes) new jobs are admitted under, or '' for no limit
-- ARGV[3] NQ, the number of queues, then per queue (numbered 1..NQ, as their KEYS groups):
--   the most jobs it may hold waiting (queued, scheduled, or due for a retry) or '', the
--   longest its oldest queued job may have waited (ms) or ''
-- then the number of submissions, then per submission: its number of jobs, then per job:
--   queue number, job id, the position in KEYS of its idempotency key or '', of its older
--   prefix-wide key or '', fingerprint,
--   run_at ms or '', deadline ms or '', priority, its unique key's digest or '', m, and m
--   hash field/value arguments (every one but status; `unique` among them with a digest)
-- Returns one answer per submission:
--   {1, flags, id, ...} stored; flags has one character per job: '1' stored, '0' not stored
--     (a job with its id exists), 'k' not stored: its idempotency key holds a job, 'u' not
--     stored: a job of its queue not finished holds its unique key (`unique`); the id of
--     that job follows (one id per 'k' or 'u', in order);
--   {0, 'conflict', i}: job i (from 0) reuses an idempotency key with another fingerprint;
--   {0, 'depth', base, jobs waiting with these, limit}, {0, 'age', base, oldest queued job's
--     age ms, limit}: the queue of key base `base` is over a limit;
--   {0, 'memory', used_memory (-1: INFO refused), limit}: the server is over its limit.
-- A submission refused writes nothing. A job whose run_at is still ahead is `scheduled`,
-- in `delayed` until then; any other is `queued`. The hashes (and idempotency keys) are
-- written submission by submission; each queue's sets take the jobs of every submission at
-- the end, in one command per set, and each queue's rate in counts its new jobs.
-- A unique key is checked and taken here, in its queue's hash slot: the idempotency key is
-- looked at first, then the unique key; a job answered with the holder of its unique key
-- stores its idempotency key naming that holder, so a repeat is answered the same.
-- A claimer waits on the marker until the earliest due job or deadline it knew of: new
-- jobs queued wake one, and so do scheduled jobs or deadlines earlier than those (`wake`).
-- Needs: wake order batch rates unique
local idem_ttl = ARGV[1]
local max_memory = tonumber(ARGV[2])
local nq = tonumber(ARGV[3])
local queues = {}
local limited = max_memory ~= nil  -- any admission limit to check?
local i = 4
for q = 1, nq do
  local keys = queue_keys((q - 1) * $GROUP_SIZE)
  queues[q] = {base = string.match(keys.queued, '^(%b{}:)'), keys = keys,
               depth = tonumber(ARGV[i]), age = tonumber(ARGV[i + 1])}
  limited = limited or queues[q].depth ~= nil or queues[q].age ~= nil
  i = i + 2
end
-- The queue the shared helpers (`line_up`, `index_all`, ...) work on.
local function use(q) base, Q = queues[q].base, queues[q].keys end

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
      -- Every job waiting in the queue counts: queued, scheduled however far ahead, or
      -- waiting for a retry (the last two are in `delayed`).
      local w = writes[qn]
      local depth = redis.call('ZCARD', q.keys.queued) + redis.call('ZCARD', q.keys.delayed)
        + #w.queued + #w.scheduled + n
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

-- The idempotency key of the job at offset `o`, or nil; and where an older Conveyor held
-- it (prefix-wide, on a single server only), or nil.
local function idempotency_key(o)
  local at = tonumber(ARGV[o + 2])
  return at and KEYS[at]
end
local function legacy_idempotency_key(o)
  local at = tonumber(ARGV[o + 3])
  return at and KEYS[at]
end

-- One submission: the ARGV offsets of its jobs.
local function submit(jobs)
  -- What its earlier jobs take: idempotency keys, job keys, unique keys.
  local held, seen, uniques = {}, {}, {}
  local fresh, flags, answer = {}, {}, {1, ''}
  local replays = {}  -- idempotency key, value: requests answered with a unique key's holder
  for k, o in ipairs(jobs) do
    local id, idem, fingerprint = ARGV[o + 1], idempotency_key(o), ARGV[o + 4]
    local b = queues[tonumber(ARGV[o])].base
    local prior = false
    if idem then
      prior = held[idem] or redis.call('GET', idem)
      local legacy = not prior and legacy_idempotency_key(o)
      if legacy then prior = redis.call('GET', legacy) end
    end
    local unique, holder = nil, nil
    if not prior and ARGV[o + 8] ~= '' then
      unique = unique_key(b, ARGV[o + 8])
      holder = uniques[unique] or unique_holder(b, unique)
    end
    if prior then
      local first, earlier = string.match(prior, '^(.*) (%x+)$$')
      if first ~= fingerprint then return {0, 'conflict', k - 1} end
      flags[k] = 'k'
      answer[#answer + 1] = earlier
    elseif holder then
      flags[k] = 'u'
      answer[#answer + 1] = holder
      if idem then
        held[idem] = fingerprint .. ' ' .. holder
        replays[#replays + 1] = idem
        replays[#replays + 1] = held[idem]
      end
    else
      local key = b .. 'job:' .. id
      if seen[key] or redis.call('EXISTS', key) == 1 then
        flags[k] = '0'
      else
        seen[key] = true
        fresh[#fresh + 1] = o
        if idem then held[idem] = fingerprint .. ' ' .. id end
        if unique then uniques[unique] = id end
        flags[k] = '1'
      end
    end
  end
  answer[2] = table.concat(flags)
  if #fresh > 0 and limited then
    local refused = admit(fresh)
    if refused then return refused end
  end
  for r = 1, #replays, 2 do
    redis.call('SET', replays[r], replays[r + 1], 'PX', idem_ttl)
  end
  for _, o in ipairs(fresh) do
    local qn = tonumber(ARGV[o])
    local w, id, run_at = writes[qn], ARGV[o + 1], tonumber(ARGV[o + 5])
    local status = $QUEUED
    if run_at and run_at > now_ms then status = $SCHEDULED end
    redis.call('HSET', queues[qn].base .. 'job:' .. id, 'status', status,
               unpack(ARGV, o + 10, o + 9 + tonumber(ARGV[o + 9])))
    if ARGV[o + 8] ~= '' then redis.call('SET', unique_key(queues[qn].base, ARGV[o + 8]), id) end
    if status == $SCHEDULED then
      w.scheduled[#w.scheduled + 1] = id
      w.delayed[#w.delayed + 1] = int(run_at)
      w.delayed[#w.delayed + 1] = id
    else
      w.queued[#w.queued + 1] = o
    end
    if ARGV[o + 6] ~= '' then
      w.deadlines[#w.deadlines + 1] = ARGV[o + 6]
      w.deadlines[#w.deadlines + 1] = id
    end
    local idem = idempotency_key(o)
    if idem then redis.call('SET', idem, ARGV[o + 4] .. ' ' .. id, 'PX', idem_ttl) end
  end
  return answer
end

-- The earliest score of (score, member) pairs.
local function earliest(pairs_)
  local first = tonumber(pairs_[1])
  for k = 3, #pairs_, 2 do first = math.min(first, tonumber(pairs_[k])) end
  return first
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
    i = i + 10 + tonumber(ARGV[i + 9])
  end
  answers[s] = submit(jobs)
end

for qn, w in ipairs(writes) do
  use(qn)
  local n = #w.queued
  if n > 0 then
    -- In line in the order submitted, behind the jobs of their priority.
    local seq = redis.call('INCRBY', Q.seq, n) - n
    local order, ids = {}, {}
    for k, o in ipairs(w.queued) do
      order[#order + 1] = claim_order(ARGV[o + 7], seq + k, false)
      order[#order + 1] = ARGV[o + 1]
      ids[k] = ARGV[o + 1]
    end
    zadd_all(Q.queued, order)
    index_all(ids, $QUEUED)
    wake()
  end
  if #w.scheduled > 0 then
    wake_before(Q.delayed, earliest(w.delayed))
    zadd_all(Q.delayed, w.delayed)
    index_all(w.scheduled, $SCHEDULED)
  end
  if #w.deadlines > 0 then
    -- With jobs queued a claimer is woken already, and sees every deadline when it looks.
    if n == 0 then wake_before(Q.deadlines, earliest(w.deadlines)) end
    zadd_all(Q.deadlines, w.deadlines)
  end
  if n + #w.scheduled > 0 then rates_in(n + #w.scheduled) end
end
return answers
