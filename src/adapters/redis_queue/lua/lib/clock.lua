-- clock: the time of the script's run, first in every script (the loader puts it there).
-- Times come from the Redis clock, so every process agrees on them; scripts are replicated
-- by effects, so TIME is safe. (A read-only script may say `-- Clock: caller`: it then
-- takes the time, in us, from its last ARGV and asks no TIME; see `scripts.py`.)
local now_us = $CLOCK
local now_ms = math.floor(now_us / 1000)
local function int(x) return string.format('%.0f', x) end
local now = int(now_us)
