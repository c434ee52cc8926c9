-- finished: the ids of the jobs this script finished (a FINISHED status), published once at
-- its end on the prefix's channel (`keys.finished_channel`), so readers waiting for them
-- (`watch.py`) wake. Pub/sub is not a key: it spans no hash slot. A finished job lets go of
-- its unique key (`unique`; `digest` as `release_unique` takes it).
-- Needs: unique
local finished = {}
local function finish(id, digest)
  release_unique(id, digest)
  finished[#finished + 1] = id
end
local function publish_finished()
  if #finished > 0 then
    -- The prefix is what the key base holds before the queue's name (which has no colon).
    local prefix = string.match(base, '^{(.*):[^:]*}:$$')
    redis.call('PUBLISH', prefix .. ':finished', table.concat(finished, ' '))
  end
end
