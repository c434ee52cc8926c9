-- resume: claims hand out the queue's jobs again; wakes a claimer.
--
-- KEYS: paused marker
-- ARGV: none
-- Returns 1 if the queue was paused, else 0.
-- Needs: wake
local was = redis.call('DEL', Q.paused)
wake()
return was
