-- deadline: a job's deadline as its hash stores it (us), against the clock.

-- The deadline in ms, for `Q.deadlines`.
local function deadline_ms(deadline) return int(math.ceil(tonumber(deadline) / 1000)) end

-- Has the deadline stored in a job's hash (us, or false) passed?
local function past(deadline)
  local at = tonumber(deadline)
  return at ~= nil and now_us >= at
end
