-- history: a job's attempt history (a JSON array, see `codec`), extended as attempts end.

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
