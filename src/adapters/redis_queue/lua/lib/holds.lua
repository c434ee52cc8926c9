-- holds: is `token` the current lease of job `id`? (its hash holds the token and it is
-- active)
local function holds(id, token)
  return redis.call('HGET', job_key(id), 'token') == token
    and redis.call('ZSCORE', Q.active, id) ~= false
end
