-- due: what a scheduler has to do at `now`.
--
-- KEYS[1] defs, KEYS[2] next, KEYS[3] firing (see put.lua and delete.lua)
-- ARGV[1] now ms (the caller's clock: ticks are computed on it), ARGV[2] the most of each
-- Returns {due, stale, next}: due = {next tick ms, definition, ...} of the schedules whose
-- next tick has come; stale = {member, lease ms, definition, ...} of the firings whose lease
-- lapsed; next = the earliest next tick or firing's lease expiry after now (ms), or nil.
-- Entries whose schedule is gone are dropped.
local now, limit = ARGV[1], tonumber(ARGV[2])
local due = {}
local found = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now, 'WITHSCORES', 'LIMIT', 0, limit)
for i = 1, #found, 2 do
  local def = redis.call('HGET', KEYS[1], found[i])
  if def then
    due[#due + 1] = found[i + 1]
    due[#due + 1] = def
  else
    redis.call('ZREM', KEYS[2], found[i])
  end
end
local stale = {}
found = redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', now, 'WITHSCORES', 'LIMIT', 0, limit)
for i = 1, #found, 2 do
  local def = redis.call('HGET', KEYS[1], string.match(found[i], '^(%S+) '))
  if def then
    stale[#stale + 1] = found[i]
    stale[#stale + 1] = found[i + 1]
    stale[#stale + 1] = def
  else
    redis.call('ZREM', KEYS[3], found[i])
  end
end
local ahead = redis.call('ZRANGEBYSCORE', KEYS[2], '(' .. now, '+inf', 'WITHSCORES', 'LIMIT', 0, 1)
local lapses = redis.call('ZRANGEBYSCORE', KEYS[3], '(' .. now, '+inf', 'WITHSCORES',
                         'LIMIT', 0, 1)
local next_at = ahead[2]
if lapses[2] and (not next_at or tonumber(lapses[2]) < tonumber(next_at)) then
  next_at = lapses[2]
end
return {due, stale, next_at or false}
