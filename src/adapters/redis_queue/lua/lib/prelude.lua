-- prelude: what every script of a queue starts with (the loader puts it after the clock,
-- then the fragments the script needs, then the script's body).
--
-- The queue's fixed keys come in KEYS, in the order the script's header names them:
-- `Q.active` is the key named `active` (`keys.NAMES`). The queue's key base
-- (`{prefix:queue}:`) is read off the first of them, and the keys of its jobs and indexes
-- are derived from it, so every key a script touches shares the queue's hash tag.

-- The keys of the queue whose KEYS start after position `at`.
local function queue_keys(at) return $QUEUE_KEYS end
local Q = queue_keys(0)
local base = string.match(KEYS[1], '^(%b{}:)')

local function job_key(id) return base .. 'job:' .. id end
local function index_key(status) return base .. 'index:' .. status end

-- The queue's name, read off its key base once per call (a name holds no ':'): a pattern
-- match per job cost a claim some 26,000 instructions a job.
local queue_names = {}
local function queue_name()
  local name = queue_names[base]
  if not name then
    name = string.match(base, '^{.*:([^:]*)}:$$')
    queue_names[base] = name
  end
  return name
end

-- Move a job between the listing indexes; the score is when it entered `to`.
local function reindex(id, from, to)
  if from then redis.call('ZREM', index_key(from), id) end
  redis.call('ZADD', index_key(to), now, id)
end
