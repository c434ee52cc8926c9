-- resume: claims hand out the queue's jobs again; wakes a claimer if it was paused (a
-- queue never paused keeps no marker: resuming random names leaves nothing behind).
--
-- KEYS: paused marker
-- ARGV: none
-- Returns 1 if the queue was paused, else 0.
-- Needs: wake
local was = redis.call('DEL', Q.paused)
if was == 1 then wake() end
return was
