-- reserve: on Redis Cluster, the first of a claim's three steps when job types are limited
-- (`limits`): on the limits' own slot, grant each limited type as many permits as its
-- limits have room for now (`room`, as a claim on one server computes it), at most the
-- claim's limit. The claim then runs on its queue's slot with the counts granted (`claim`,
-- `parking`) and `convert` turns the permits it used into slots and gives back the rest.
--
-- A permit holds room as a start or a slot would: for a concurrency, an entry
-- `$PERMIT<reservation>:<n>` in the type's slots, lapsing with the lease it was asked for
-- (`room` drops it then, like a lapsed slot); for a rate, one start entry
-- `$PERMIT<reservation>:<granted>` counted in `started`, as a claim's starts are. So a
-- claimer that dies (or loses Redis) between the steps leaves permits that hold room for at
-- most one lease (concurrency) or one window (rate): the type runs below its limits for
-- that long, never above them.
--
-- KEYS (limits): starts started slots
-- of each limited job type (ARGV[4] of them), in the order of the types in ARGV
-- ARGV[1] the most permits per type: the claim's limit
-- ARGV[2] the lease's length, ms: when a concurrency permit lapses
-- ARGV[3] the reservation's id, unique per claim
-- ARGV[4] how many job types are limited, then per type 4 values (`limits`): its name, its
--   rate's count and window in ms (0 0: no rate), its concurrency (0: none)
-- Returns 2 values per type, in order: the permits granted, and when none: the ms until the
-- claim should look again (its rate's next start, or soon when other claims' permits hold
-- the room: they are given back within a round trip or two), else -1.
-- Needs: room
local most, lease_ms, reservation = tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3]
local expires = int(now_ms + lease_ms)
local permit = $PERMIT .. reservation

-- Whether a permit not yet converted holds some of `key`'s room after `since` (its scores).
local function in_flight(key, since)
  for _, entry in ipairs(redis.call('ZRANGEBYSCORE', key, since, '+inf')) do
    if string.sub(entry, 1, $PERMIT_LENGTH) == $PERMIT then return true end
  end
  return false
end

local answer = {}
for i = 0, tonumber(ARGV[4]) - 1 do
  local l = limit_of(5 + i * 4, 1 + i * 3)
  room(l)
  local granted = math.max(0, math.min(l.free, most))
  local wait = -1
  if granted > 0 then
    if l.rate > 0 then started(l, granted, permit) end
    if l.conc > 0 then
      for first = 1, granted, 1000 do
        local args = {}
        for n = first, math.min(first + 999, granted) do
          args[#args + 1] = expires
          args[#args + 1] = permit .. ':' .. n
        end
        redis.call('ZADD', l.slots, unpack(args))
      end
    end
  else
    if l.until_ms then wait = math.max(0, l.until_ms - now_ms) end
    if (l.rate > 0 and in_flight(l.starts, '(' .. int(now_us - l.per * 1000)))
        or (l.conc > 0 and in_flight(l.slots, '(' .. now_ms)) then
      wait = wait < 0 and $PERMIT_RETRY_MS or math.min(wait, $PERMIT_RETRY_MS)
    end
  end
  answer[#answer + 1] = granted
  answer[#answer + 1] = wait
end
return answer
