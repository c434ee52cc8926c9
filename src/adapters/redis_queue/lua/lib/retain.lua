-- retain: a job that reached a status it is kept in for a while: its hash expires after
-- `ttl_ms` (kept for good when not positive).
local retain_text = {}  -- each ttl as PEXPIRE's argument, written once a run
local function retain(key, ttl_ms)
  if ttl_ms > 0 then
    -- Given as text: Redis formats a number a script passes with printf, on every call.
    local text = retain_text[ttl_ms]
    if not text then
      text = int(ttl_ms)
      retain_text[ttl_ms] = text
    end
    redis.call('PEXPIRE', key, text)
  end
end
