-- registry_scan: a slice of the registry's names (SSCAN), with each one's last use, for the
-- sweep of idle queues (`registry.py`).
--
-- KEYS (registry): queues touched
-- ARGV[1] the SSCAN cursor ('0' to start)
-- ARGV[2] how many names to ask for (SSCAN's COUNT: a hint)
-- Returns {next cursor ('0' when done), names, uses}: a use is nil for a name whose use was
-- never recorded (registered by an older Conveyor).
local reply = redis.call('SSCAN', R.queues, ARGV[1], 'COUNT', ARGV[2])
local names = reply[2]
local uses = {}
if #names > 0 then uses = redis.call('HMGET', R.touched, unpack(names)) end
return {reply[1], names, uses}
