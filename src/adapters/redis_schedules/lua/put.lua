-- put: keep a schedule's definition; a new or changed one waits for its first tick.
--
-- KEYS[1] defs    hash: name -> "<version> <definition JSON>"
-- KEYS[2] next    zset: name -> its next tick, ms (the running schedules only)
-- KEYS[3] paused  set of the paused schedules' names
-- KEYS[4] changed counter of the puts, deletes, pauses and resumes: schedulers look again
--   when it moves
-- ARGV[1] name, ARGV[2] "<version> <definition JSON>", ARGV[3] version (16 characters),
-- ARGV[4] first tick ms or '' (none ahead), ARGV[5] '1' pause, '0' resume, '' as it is
-- Returns 'created', 'replaced' (another version was kept: its ticks start anew) or
-- 'unchanged' (the same version: it keeps its ticks).
local name, value, version, first, paused = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]

local function set_next()
  if first == '' then
    redis.call('ZREM', KEYS[2], name)
  else
    redis.call('ZADD', KEYS[2], first, name)
  end
end

redis.call('INCR', KEYS[4])
local old = redis.call('HGET', KEYS[1], name)
local outcome = 'unchanged'
if not old then
  outcome = 'created'
  redis.call('SREM', KEYS[3], name)
elseif string.sub(old, 1, 16) ~= version then
  outcome = 'replaced'
end
local is_paused = redis.call('SISMEMBER', KEYS[3], name) == 1
if outcome ~= 'unchanged' then
  redis.call('HSET', KEYS[1], name, value)
  if not is_paused then set_next() end
end
if paused == '1' and not is_paused then
  redis.call('SADD', KEYS[3], name)
  redis.call('ZREM', KEYS[2], name)
elseif paused == '0' and is_paused then
  redis.call('SREM', KEYS[3], name)
  set_next()
end
return outcome
