-- limits: rate and concurrency limits per job type (`domain.limits`), global across every
-- worker. Each limited type has two keys under the prefix's own hash tag, given in KEYS
-- after the queue's fixed keys (`limits.py` builds them; never derived here):
--   starts: zset start id -> when it started, us: the starts of its rate's sliding window
--   slots:  zset job id -> when the slot lapses, ms (its lease's expiry; renew extends it)
-- and, in each queue, the jobs of that type put aside by a claim while their type was at
-- its limit: `parked_key(type)`, zset job id -> its claim-order score. A parked job's status
-- stays `queued` (it is in the `queued` index, counted and listed as queued); `Q.limited`
-- is the set of the types that have parked jobs in the queue (`parking`).
--
-- This fragment is what every script that ends attempts or moves waiting jobs needs: the
-- slots keys (`read_slots`: ARGV[at] says how many follow the queue's fixed keys), to
-- release or extend slots, and taking a parked job out.

local function parked_key(job_type) return base .. 'limited:' .. job_type end

-- The slots keys of the concurrency-limited types, for `maintain` to release those of
-- lapsed leases; empty when the script has none.
local SLOTS = {}

-- The slots keys given after the queue's fixed keys, ARGV[at] of them.
local function read_slots(at)
  for n = 1, tonumber(ARGV[at]) do SLOTS[n] = KEYS[$GROUP_SIZE + n] end
end

-- Release the slots `ids` hold; answers whether any was held.
local function release_slots(ids)
  local released = false
  if #ids == 0 then return false end
  for _, key in ipairs(SLOTS) do
    for i = 1, #ids, 1000 do
      if redis.call('ZREM', key, unpack(ids, i, math.min(i + 999, #ids))) > 0 then
        released = true
      end
    end
  end
  return released
end

-- Take a parked job out (it is cancelled or expired): `status` and `job_type` are its own.
local function unpark_one(id, status, job_type)
  if status == $QUEUED and job_type then redis.call('ZREM', parked_key(job_type), id) end
end
