-- fields: a job's hash as the adapter reads it, FIELDS in order (false where absent), as
-- HMGET of FIELDS answers, from one pass over the hash: HMGET looks up each of the fields
-- on its own, and a small hash (a listpack) is scanned from its start for each, to its end
-- for each field the job does not have; most jobs have fewer than half of them.
local FIELD_AT = $FIELD_AT

local function job_fields(key)
  local all = redis.call('HGETALL', key)
  local f = {$FIELDS_ABSENT}
  for n = 1, #all, 2 do
    local at = FIELD_AT[all[n]]
    if at then f[at] = all[n + 1] end
  end
  return f
end
