-- register: make queue names known to the registry (see `keys.py`), recording each one's
-- tag and this use; refusing, when strict, the groups of names that would take it past its
-- most.
--
-- KEYS (registry): queues tags touched generation legacy
-- ARGV[1] the most names the registry may hold, or '' for no limit
-- ARGV[2] '1': strict, a group (the new queues of one submission) whose names not
--   registered yet would take the registry past the most is refused, none of its names
--   written; '0': every name is registered regardless (its queue holds jobs already)
-- then per name, groups in the order to admit them: its group (a number), the name, its
--   tag, and '1' if its queue may hold jobs whose ids do not start with its tag, else '0'
-- Returns the numbers of the groups refused (none when not strict).
local most = tonumber(ARGV[1])
local strict = ARGV[2] == '1' and most ~= nil
local admitted, refused = {}, {}
if strict then
  local count = redis.call('SCARD', R.queues)
  local taken = {}  -- names admitted by earlier groups of this call
  local i = 3
  while i <= #ARGV do
    local group, new, members = ARGV[i], 0, {}
    while i <= #ARGV and ARGV[i] == group do
      local name = ARGV[i + 1]
      if not taken[name] and redis.call('SISMEMBER', R.queues, name) == 0 then
        new = new + 1
      end
      members[#members + 1] = i
      i = i + 4
    end
    if new > 0 and count + new > most then
      refused[#refused + 1] = group
    else
      count = count + new
      for _, at in ipairs(members) do
        taken[ARGV[at + 1]] = true
        admitted[#admitted + 1] = at
      end
    end
  end
else
  for at = 3, #ARGV, 4 do admitted[#admitted + 1] = at end
end
if #admitted == 0 then return refused end
local clock = redis.call('TIME')
-- A use: when (ms, on Redis's clock) and which (the generation: unique to this call).
local use = string.format('%.0f', tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000))
  .. ' ' .. redis.call('INCR', R.generation)
for _, at in ipairs(admitted) do
  local name, tag = ARGV[at + 1], ARGV[at + 2]
  local added = redis.call('SADD', R.queues, name) == 1
  -- A name without a use recorded was registered by an older Conveyor: adopt it too.
  if added or not redis.call('HGET', R.touched, name) then
    local names = redis.call('HGET', R.tags, tag)
    local listed = false
    for other in string.gmatch(names or '', '%S+') do
      if other == name then listed = true end
    end
    if not listed then
      redis.call('HSET', R.tags, tag, names and (names .. ' ' .. name) or name)
    end
  end
  redis.call('HSET', R.touched, name, use)
  if ARGV[at + 3] == '1' then redis.call('SADD', R.legacy, name) end
end
return refused
