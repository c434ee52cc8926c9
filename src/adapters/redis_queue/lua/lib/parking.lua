-- parking: what claims do with the limits (`limits`): how many jobs of each limited type may
-- start, and the jobs put aside while their type is at its limit.
--
-- A claim reads the limits from ARGV (`read_limits`) in one of two forms:
-- - on one server: how many types, then per type its name, its rate's count and window (ms;
--   0 and 0: no rate) and its concurrency (0: none); its starts, started and slots keys
--   follow the queue's fixed keys in KEYS, in that order. The claim computes each type's
--   room (`room`) and counts its starts and slots itself.
-- - on Redis Cluster, where the limits' keys live in another slot: `granted`, how many
--   types, then per type its name, the permits `reserve` granted it on the limits' slot
--   (the most jobs of it this claim may start) and the ms until its rate allows a start
--   when none was granted (-1: not known). The claim touches no limit key: `convert`
--   turns the permits into slots afterwards, from the claimed jobs' ids and types.
-- Needs: limits batch room

-- The limits given from ARGV[at]: a table type -> {name, rate, per, conc, starts, started,
-- slots} (granted: {name, free, until_ms, granted}, with no rate nor concurrency of its own
-- to count), or nil when no type is limited (then a claim does nothing more than without
-- limits).
local function read_limits(at)
  local granted = ARGV[at] == 'granted'
  if granted then at = at + 1 end
  local n = tonumber(ARGV[at]) or 0
  if n == 0 then return nil end
  local limited = {}
  for i = 0, n - 1 do
    local l
    if granted then
      local a = at + 1 + i * 3
      local wait = tonumber(ARGV[a + 2])
      l = {name = ARGV[a], rate = 0, per = 0, conc = 0, free = tonumber(ARGV[a + 1]),
           until_ms = wait >= 0 and now_ms + wait or nil, granted = true}
    else
      l = limit_of(at + 1 + i * 4, $GROUP_SIZE + 1 + i * 3)
      if l.conc > 0 then SLOTS[#SLOTS + 1] = l.slots end
    end
    limited[l.name] = l
  end
  return limited
end

-- Put back in line up to `n` parked jobs of `job_type`, at their places; answers how many.
local function unpark(job_type, n)
  local key = parked_key(job_type)
  local popped = redis.call('ZPOPMIN', key, n)
  local args = {}
  for i = 1, #popped, 2 do
    args[#args + 1] = popped[i + 1]
    args[#args + 1] = popped[i]
  end
  zadd_all(Q.queued, args)
  if redis.call('EXISTS', key) == 0 then redis.call('SREM', Q.limited, job_type) end
  return #popped / 2
end
