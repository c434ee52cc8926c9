-- cancel_requested: which of these leases' jobs were asked to stop (reads only).
--
-- KEYS: cancelling
-- ARGV: per lease: job id, token
-- Returns the ids whose cancel was asked for and whose lease is the one given.
local asked = {}
for i = 1, #ARGV, 2 do
  local id = ARGV[i]
  if redis.call('SISMEMBER', Q.cancelling, id) == 1
      and redis.call('HGET', job_key(id), 'token') == ARGV[i + 1] then
    asked[#asked + 1] = id
  end
end
return asked
