-- held_by: the leases one worker holds on this queue (reads only). Scans `active`, whose
-- size is bounded by the workers' total concurrency.
--
-- KEYS: active
-- ARGV[1] the worker's id
-- Returns one array per job held (the FIELDS values, then its token).
-- Needs: fields
local held = {}
for _, id in ipairs(redis.call('ZRANGE', Q.active, 0, -1)) do
  local key = job_key(id)
  local f = redis.call('HMGET', key, 'worker', 'status', 'token')
  if f[1] == ARGV[1] and f[2] == $ACTIVE and f[3] then
    held[#held + 1] = job_fields(id, key)
  end
end
return held
