-- fired: a tick's job is stored (or never can be): it is no longer a firing, and the
-- schedule's latest job is noted.
--
-- KEYS[1] firing, KEYS[2] last, KEYS[3] defs (see put.lua and delete.lua)
-- ARGV[1] member, ARGV[2] name, ARGV[3] tick ms, ARGV[4] job id or '' (no job)
-- Returns 1.
local name, tick, job = ARGV[2], tonumber(ARGV[3]), ARGV[4]
redis.call('ZREM', KEYS[1], ARGV[1])
if job ~= '' and redis.call('HEXISTS', KEYS[3], name) == 1 then
  local last = redis.call('HGET', KEYS[2], name)
  if not last or tonumber(string.match(last, '^(%d+)')) <= tick then
    redis.call('HSET', KEYS[2], name, ARGV[3] .. ' ' .. job)
  end
end
return 1
