-- retain: a job that reached a status it is kept in for a while: its hash expires after
-- `ttl_ms` (kept for good when not positive).
local function retain(key, ttl_ms)
  if ttl_ms > 0 then redis.call('PEXPIRE', key, ttl_ms) end
end
