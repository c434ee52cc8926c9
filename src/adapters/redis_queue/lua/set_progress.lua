-- set_progress: record progress under a current lease.
--
-- KEYS: active stale
-- ARGV[1] job id
-- ARGV[2] token
-- ARGV[3] progress, 0-100
-- Returns 1, or 0 (and counts a stale write) when the token is not the current lease.
-- Needs: holds
if not holds(ARGV[1], ARGV[2]) then
  redis.call('INCR', Q.stale)
  return 0
end
redis.call('HSET', job_key(ARGV[1]), 'progress', ARGV[3])
return 1
