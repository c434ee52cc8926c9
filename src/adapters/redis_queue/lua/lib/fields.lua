-- fields: a job's hash read as the FIELDS values, as `codec.decode_job` takes them.
-- The FIELDS values of job `id` (then its token), all false when it has no hash. A hash in
-- the compact layout (`codec.encode_job`) holds neither its id nor its queue, which its key
-- says: they are filled in here.
local FIELD_PLACES = $FIELD_PLACES
local function job_fields(id, key)
  key = key or job_key(id)
  -- One pass over the hash: an HMGET of every field looks each up in turn, and a job's hash
  -- is small enough to be a listpack, where each look-up is a scan of the whole hash.
  local all = redis.pcall('HGETALL', key)
  local f
  if all.err then
    -- Refused: an ACL user set up by a rule from before HGETALL was in it ("Deploying
    -- safely" in the README). Each field is looked up instead.
    f = redis.call('HMGET', key, $FIELDS)
  else
    f = {$NO_FIELDS}
    for i = 1, #all, 2 do
      local place = FIELD_PLACES[all[i]]
      if place then f[place] = all[i + 1] end
    end
  end
  if f[$STATUS_FIELD] then
    f[$ID_FIELD] = f[$ID_FIELD] or id
    f[$QUEUE_FIELD] = f[$QUEUE_FIELD] or queue_name()
  end
  return f
end
