-- forget: what is left of finished jobs past their retention.
-- Needs: batch

-- Finished jobs of `status` past their retention `ttl_ms` (at most `n`): their hashes have
-- expired (any left, from before they had an expiry, goes now), so their index entries go
-- too.
local function forget(status, ttl_ms, n)
  if ttl_ms <= 0 then return end
  local index = index_key(status)
  local gone = redis.call('ZRANGEBYSCORE', index, '-inf', int(now_us - ttl_ms * 1000),
                          'LIMIT', 0, n)
  for _, id in ipairs(gone) do
    if redis.call('HGET', job_key(id), 'status') == status then
      redis.call('DEL', job_key(id))
    end
  end
  zrem_all(index, gone)
end
