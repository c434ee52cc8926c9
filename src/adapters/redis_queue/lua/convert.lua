-- convert: on Redis Cluster, the last of a claim's three steps (`reserve`): on the limits'
-- own slot, the permits the claim used become its jobs' slots (job id -> when the slot
-- lapses, as on one server), the others are given back, and the reservation's start entry
-- is cut down to the starts the claim made (`started` cut by as much, so it still counts
-- the entries, as `room` expects). A permit that already lapsed (or a start entry that left
-- its window) is not counted again; a claimed job still takes its slot: it runs.
--
-- KEYS (limits): starts started slots
-- of each job type granted permits (ARGV[3] of them), in the order of the types in ARGV
-- ARGV[1] the reservation's id, as `reserve` had it
-- ARGV[2] the lease's length, ms: when a job's slot lapses unless its lease is renewed
-- ARGV[3] how many job types follow, then per type: its concurrency (0: none), the permits
--   granted it, how many of its jobs the claim started, then their ids
-- Returns how many slots the claimed jobs took.
local reservation, lease_ms = ARGV[1], tonumber(ARGV[2])
local expires = int(now_ms + lease_ms)
local permit = $PERMIT .. reservation
local taken = 0
local a = 4
for i = 0, tonumber(ARGV[3]) - 1 do
  local starts, started, slots = KEYS[1 + i * 3], KEYS[2 + i * 3], KEYS[3 + i * 3]
  local conc, granted, used = tonumber(ARGV[a]), tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2])
  local entry = permit .. ':' .. granted
  local score = redis.call('ZSCORE', starts, entry)
  if score then
    redis.call('ZREM', starts, entry)
    if used > 0 then redis.call('ZADD', starts, score, reservation .. ':' .. used) end
    if used < granted then redis.call('DECRBY', started, granted - used) end
  end
  if conc > 0 then
    for first = 1, granted, 1000 do
      local permits = {}
      for n = first, math.min(first + 999, granted) do
        permits[#permits + 1] = permit .. ':' .. n
      end
      redis.call('ZREM', slots, unpack(permits))
    end
    for n = a + 3, a + 2 + used do redis.call('ZADD', slots, expires, ARGV[n]) end
    taken = taken + used
  end
  a = a + 3 + used
end
return taken
