"""When to try a failed job again."""

from __future__ import annotations

from collections.abc import Callable

import attrs

# A source of uniform floats in [0, 1). Injected so tests can pin it.
Random = Callable[[], float]


@attrs.frozen(kw_only=True)
class RetryPolicy:
    """Exponential backoff with full jitter and a cap.

    The n-th retry waits a uniformly random time in [0, min(cap, base * factor**(n-1))):
    "full jitter", which spreads a burst of failures out instead of retrying them in lockstep.
    """

    max_attempts: int = attrs.field(default=3, validator=attrs.validators.ge(1))
    max_attempts_limit: int = attrs.field(default=25, validator=attrs.validators.ge(1))
    base: float = attrs.field(default=1.0, validator=attrs.validators.gt(0))
    factor: float = attrs.field(default=2.0, validator=attrs.validators.ge(1))
    cap: float = attrs.field(default=300.0, validator=attrs.validators.gt(0))

    def __attrs_post_init__(self) -> None:
        if self.max_attempts > self.max_attempts_limit:
            raise ValueError("max_attempts cannot exceed max_attempts_limit")

    def ceiling(self, attempt: int) -> float:
        """The longest wait before retry number `attempt` (1 for the first retry)."""
        exponent = max(0, attempt - 1)
        # Compare in log space so a large attempt number cannot overflow.
        if exponent >= 64 or self.base * self.factor**exponent >= self.cap:
            return self.cap
        return float(self.base * self.factor**exponent)

    def delay(self, attempt: int, random: Random) -> float:
        """Seconds to wait after failed attempt number `attempt` (1-based)."""
        return random() * self.ceiling(attempt)
