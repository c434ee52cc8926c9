-- extend: on Redis Cluster, a renewal's first step when jobs of a concurrency-limited type
-- are renewed: on the limits' own slot, their slots lapse a lease from now (`limits`). Then
-- the leases are renewed on their queues' slots (`renew`): a failure in between holds a
-- slot longer than its lease (the type runs below its limit until it lapses), never the
-- other way round.
--
-- KEYS (limits): slots
-- of each concurrency-limited job type whose jobs are renewed (ARGV[2] of them)
-- ARGV[1] the lease's new length, ms
-- ARGV[2] how many types follow, then per type (in the order of KEYS): how many job ids,
--   then the ids
-- Returns how many slots were held, and now lapse later.
--
-- Only a slot still held is moved (one given back stays free), and by ZREM, then ZADD: as
-- in `renew`, a script's first write may not grow memory when Redis is full.
local expires = int(now_ms + tonumber(ARGV[1]))
local moved = 0
local a = 3
for k = 1, tonumber(ARGV[2]) do
  local n = tonumber(ARGV[a])
  for i = a + 1, a + n do
    if redis.call('ZREM', KEYS[k], ARGV[i]) == 1 then
      redis.call('ZADD', KEYS[k], expires, ARGV[i])
      moved = moved + 1
    end
  end
  a = a + 1 + n
end
return moved
