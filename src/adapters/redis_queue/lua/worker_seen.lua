-- worker_seen: what a live worker says of itself, kept until its presence lapses. When a
-- worker joins, the workers whose presence lapsed are forgotten (at most 100 per call: a
-- crash storm's many replaced processes go over a few joins); readers list only live ones.
--
-- KEYS (registry): workers seen
-- ARGV[1] the worker's id
-- ARGV[2] what it says of itself (JSON)
-- ARGV[3] ttl, ms
-- Returns nothing.
local clock = redis.call('TIME')
local now_ms = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
local joined = redis.call('ZADD', R.seen, string.format('%.0f', now_ms + tonumber(ARGV[3])),
                          ARGV[1])
if joined == 1 then
  local lapsed = redis.call('ZRANGEBYSCORE', R.seen, '-inf', now_ms, 'LIMIT', 0, 100)
  if #lapsed > 0 then
    redis.call('HDEL', R.workers, unpack(lapsed))
    redis.call('ZREM', R.seen, unpack(lapsed))
  end
end
redis.call('HSET', R.workers, ARGV[1], ARGV[2])
