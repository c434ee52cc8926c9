-- decide: how an attempt that ended ends its job. A line-by-line rendering of
-- `domain.settlement.decide` (its docstring has the decision table), checked against it by
-- a property test (tests/*/test_settlement_agreement.py): change both or neither.
--
-- `outcome` is how the attempt ended (an AttemptOutcome), `retry_in` the seconds until a
-- retry (nil when no retry time is known); the facts come from the job's hash: `attempts`
-- (counted so far, the ending one included), `max_attempts`, `deadline` (us, or nil) and
-- `cancel_requested` (a boolean). Pure: reads nothing but its arguments and the clock.
-- Answers the status, the outcome its history record says, the attempts afterwards,
-- `retry_at` (us, for `failed`; else nil) and `head` (a `queued` job goes first in line).
local RETRYABLE = $RETRYABLE
local function decide(outcome, retry_in, attempts, max_attempts, deadline, cancel_requested)
  if outcome == $OUT_SUCCEEDED then
    return $SUCCEEDED, $OUT_SUCCEEDED, attempts, nil, false
  end
  if cancel_requested or outcome == $OUT_CANCELLED then
    return $CANCELLED, $OUT_CANCELLED, attempts, nil, false
  end
  if outcome == $OUT_EXPIRED or (deadline ~= nil and now_us >= deadline) then
    return $EXPIRED, $OUT_EXPIRED, attempts, nil, false
  end
  if outcome == $OUT_RELEASED then
    return $QUEUED, $OUT_RELEASED, math.max(0, attempts - 1), nil, true
  end
  if RETRYABLE[outcome] and retry_in ~= nil and attempts < max_attempts then
    local delay_us = math.floor(math.max(0, retry_in) * 1000000 + 0.5)
    local retry_at = now_us + delay_us
    if deadline ~= nil and retry_at >= deadline then
      return $EXPIRED, $OUT_EXPIRED, attempts, nil, false
    end
    if delay_us <= 0 then
      return $QUEUED, outcome, attempts, nil, true
    end
    return $FAILED, outcome, attempts, retry_at, false
  end
  return $DEAD, outcome, attempts, nil, false
end
