-- unique: unique keys. `B unique:<digest>` (B a queue's key base) holds the id of the job
-- that holds the key, while that job is not finished; the job's hash names its key by
-- `unique` (the digest) and `unique_key` (the client's key). A key naming a job that is
-- gone or finished is free, whatever let go of it.
local UNIQUE_DONE = $FINISHED

-- The key of `digest` in the queue of key base `b`.
local function unique_key(b, digest) return b .. 'unique:' .. digest end

-- The job holding `key` (of the queue of key base `b`), or nil when it is free.
local function unique_holder(b, key)
  local holder = redis.call('GET', key)
  if not holder then return nil end
  local status = redis.call('HGET', b .. 'job:' .. holder, 'status')
  if not status or UNIQUE_DONE[status] then return nil end
  return holder
end

-- Let go of the unique key of job `id` (of the queue the script works on), if it has one
-- that still names it. `digest` is its hash's `unique` when the caller has read it (false:
-- none); nil, and it is read here.
local function release_unique(id, digest)
  if digest == nil then digest = redis.call('HGET', job_key(id), 'unique') end
  if digest then
    local key = unique_key(base, digest)
    if redis.call('GET', key) == id then redis.call('DEL', key) end
  end
end
