-- settle: end attempts, each by the one rule (`decide`) applied to its job as stored now:
-- what `LeaseQueue.settle` does, for the calls of one event-loop tick on one queue.
--
-- KEYS: active queued delayed deadlines cancelling marker seq stale limited
-- then the slots key of each concurrency-limited job type (ARGV[3] of them, `limits`)
-- ARGV[1] result retention, ms (succeeded, cancelled and expired jobs expire then)
-- ARGV[2] dead retention, ms (not positive: kept for good)
-- ARGV[3] how many slots keys follow the fixed keys
-- then per attempt, 4 values for a success and 6 for any other ending:
--   job id, token,
--   outcome: how the attempt ended (an AttemptOutcome),
--   data: the result JSON of a success, the error JSON of an ending with an error, or '',
--   and unless it succeeded:
--   retry in: seconds until a retry (a decimal number), or '' when no retry time is known,
--   summary: the error's line in the job's history, or ''
-- Returns one value per attempt, in order: the status the job was given, or 0 (counted as
-- a stale write) when the token is not the job's current lease. Publishes the ids of the
-- jobs it finished (`finished`). Releases the slots the ended attempts held, and wakes a
-- claimer when one was released while jobs of a limited type are parked.
-- Needs: settlement batch forget wake limits
local result_ttl, dead_ttl = tonumber(ARGV[1]), tonumber(ARGV[2])
local answers, ended_ids, to, stale, succeeded = {}, {}, {}, 0, 0
read_slots(3)
local i = 4
while i <= #ARGV do
  local id, outcome = ARGV[i], ARGV[i + 2]
  local retry_in, summary, width = nil, '', 4
  if outcome ~= $OUT_SUCCEEDED then
    retry_in, summary, width = tonumber(ARGV[i + 4]), ARGV[i + 5], 6
  end
  local key = job_key(id)
  local f = attempt_facts(key)
  -- Taken out of `active` as the last check: a job not there holds no lease to settle.
  if SETTLES_FROM[f[1]] and f[2] == ARGV[i + 1] and redis.call('ZREM', Q.active, id) == 1 then
    local status = settle(id, key, f, outcome, retry_in, ARGV[i + 3], summary, result_ttl,
                          dead_ttl)
    ended_ids[#ended_ids + 1] = id
    note(to, status, id)
    if status == $SUCCEEDED then succeeded = succeeded + 1 end
    answers[#answers + 1] = status
  else
    stale = stale + 1
    answers[#answers + 1] = 0
  end
  i = i + width
end
reindex_from($ACTIVE, to)
local released = release_slots(ended_ids)
if to[$QUEUED] or (released and redis.call('EXISTS', Q.limited) == 1) then wake() end
if stale > 0 then redis.call('INCRBY', Q.stale, stale) end
-- Forget the results past their retention, a few per success (recover does the rest).
if succeeded > 0 then forget($SUCCEEDED, result_ttl, $INDEX_TRIM_BATCH * succeeded) end
publish_finished()
return answers
