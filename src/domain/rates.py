"""How fast a queue moves: jobs in and out per second, and how fast it drains when it has work.

Three exponentially weighted rates per queue, each kept as a couple of numbers and updated in
O(1) by the step that moves jobs (a submit, a claim), so they cost no scan and no timer:

- `in` and `out`: jobs submitted and claimed per second over roughly the last `SHOW_SECONDS`
  of wall time (a decaying count: each job adds ``1 / SHOW_SECONDS``, and the sum decays by
  ``exp(-dt / SHOW_SECONDS)``). They fall to zero when nothing happens: what `conveyor top`
  shows.
- `drain`: jobs claimed per second *while the queue had jobs waiting*, over roughly the last
  `DRAIN_SECONDS` of such time. Time when the queue was empty or paused is not counted, so an
  idle hour or a pause does not make the next backlog look slow: a queue claimed dry has
  shown only that its workers keep up with what arrives, not how fast they can go. It is a
  bias-corrected average (the weight it has seen is kept beside it), so the first interval
  measured already gives a rate rather than a fraction of one. A waiting job's estimated
  start is its place in line divided by this rate.

The Redis scripts compute the same numbers in Lua (`adapters/redis_queue/lua/lib/rates.lua`);
`tests/unit/test_rates.py` holds the two to the same figures.
"""

from __future__ import annotations

import math
from typing import Final

import attrs

SHOW_SECONDS: Final = 10.0
DRAIN_SECONDS: Final = 30.0


def decayed(rate: float, since: float, now: float, window: float = SHOW_SECONDS) -> float:
    """A decaying count's value at `now`, last updated at `since` (seconds)."""
    return rate * math.exp(-max(0.0, now - since) / window)


@attrs.define
class QueueRates:
    """One queue's rates, as the in-memory backend keeps them (times in seconds)."""

    in_rate: float = 0.0
    in_at: float = 0.0
    out_rate: float = 0.0
    out_at: float = 0.0
    drain_sum: float = 0.0
    drain_weight: float = 0.0
    # The last claim left jobs waiting: the time since it was spent draining.
    busy: bool = False

    def submitted(self, count: int, now: float) -> None:
        self.in_rate = decayed(self.in_rate, self.in_at, now) + count / SHOW_SECONDS
        self.in_at = now

    def claimed(self, count: int, left: bool, now: float) -> None:
        """`count` jobs left the line at `now`; `left`: some are still waiting."""
        if count <= 0:
            # Nothing to take: the queue is empty (or paused) and not draining.
            self.busy = False
            return
        if self.busy:
            dt = max(0.0, now - self.out_at)
            keep = math.exp(-dt / DRAIN_SECONDS)
            # (1 - keep) / dt tends to 1 / DRAIN_SECONDS as dt tends to 0.
            per_job = (1.0 - keep) / dt if dt > 0 else 1.0 / DRAIN_SECONDS
            self.drain_sum = self.drain_sum * keep + count * per_job
            self.drain_weight = self.drain_weight * keep + (1.0 - keep)
        self.out_rate = decayed(self.out_rate, self.out_at, now) + count / SHOW_SECONDS
        self.out_at = now
        self.busy = left

    def paused(self) -> None:
        """A paused queue is not draining: the time until its next claim is not counted."""
        self.busy = False

    def reading(self, now: float) -> RateReading:
        return RateReading(
            rate_in=decayed(self.in_rate, self.in_at, now),
            rate_out=decayed(self.out_rate, self.out_at, now),
            drain=self.drain_sum / self.drain_weight if self.drain_weight > 0 else None,
        )


@attrs.frozen(kw_only=True)
class RateReading:
    """A queue's rates now, in jobs per second; `drain` None until it has been measured."""

    rate_in: float
    rate_out: float
    drain: float | None
