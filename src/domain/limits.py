"""Flow limits per job type: how many attempts may start per interval (a rate), and how many
may run at once (a concurrency), across every worker of a deployment.

Both are checked when a job is claimed, so a job over its type's limit is simply not claimed:
it stays `queued`, and its `waiting_reason` says which limit holds it and, for a rate, when
the next start is allowed.

- A rate `N/interval` is a sliding window of starts: no window of `interval` seconds, wherever
  it falls, holds more than N starts (not a fixed window, which allows 2N around its edge).
- A concurrency K counts the attempts holding a slot. A slot is taken with the lease and
  lapses with it (renewing the lease extends it), and is released wherever the attempt ends,
  so a worker that dies holds its slots no longer than its leases.

`FlowGate` keeps that state in memory, for the in-memory backend; the Redis backend keeps the
same state in Redis (`adapters/redis_queue/lua/lib/limits.lua`).
"""

from __future__ import annotations

import enum
import json
import re
from collections import deque
from collections.abc import Collection, Iterator, Mapping
from datetime import UTC, datetime
from typing import Any, Final

import attrs

# `10/s`, `100/min`, `5/h`, `5/2s`, `30/1.5min`.
_RATE: Final = re.compile(r"^\s*(\d+)\s*/\s*(\d+(?:\.\d+)?)?\s*(s|sec|min|m|h)\s*$")
_UNIT_SECONDS: Final = {"s": 1.0, "sec": 1.0, "min": 60.0, "m": 60.0, "h": 3600.0}


@attrs.frozen
class RateLimit:
    """At most `count` starts in any window of `per_seconds`."""

    count: int = attrs.field(validator=attrs.validators.gt(0))
    per_seconds: float = attrs.field(validator=attrs.validators.gt(0))

    @classmethod
    def parse(cls, text: str) -> RateLimit:
        """`N/s`, `N/min`, `N/h`, or `N/<k>s` (`5/2s`: 5 every 2 seconds). Raises
        ValueError for anything else, or a count or interval that is not positive."""
        found = _RATE.match(text)
        if found is None:
            raise ValueError(f"{text!r} is not a rate like 10/s, 100/min, 5/h or 5/2s")
        count, factor, unit = found.groups()
        per = (float(factor) if factor else 1.0) * _UNIT_SECONDS[unit]
        if int(count) <= 0 or per <= 0:
            raise ValueError(f"{text!r}: the count and the interval must be greater than 0")
        if per < 0.001:
            raise ValueError(f"{text!r}: the interval must be at least 1 ms")
        return cls(int(count), per)

    @property
    def per_ms(self) -> int:
        return max(1, round(self.per_seconds * 1000))

    def __str__(self) -> str:
        per = self.per_seconds
        if per == 3600:
            return f"{self.count}/h"
        if per == 60:
            return f"{self.count}/min"
        if per == 1:
            return f"{self.count}/s"
        return f"{self.count}/{per:g}s"


def _positive_or_none(_: object, attribute: attrs.Attribute[int | None], value: int | None) -> None:
    if value is not None and value <= 0:
        raise ValueError(f"{attribute.name} must be greater than 0, got {value}")


@attrs.frozen
class TypeLimits:
    """The limits of one job type; None: that kind of limit is not set."""

    rate: RateLimit | None = None
    concurrency: int | None = attrs.field(default=None, validator=_positive_or_none)


def _sorted(limits: Mapping[str, TypeLimits]) -> dict[str, TypeLimits]:
    return dict(sorted(limits.items()))


@attrs.frozen
class FlowLimits:
    """Job type -> its limits. Empty (falsy) when no type has any."""

    by_type: Mapping[str, TypeLimits] = attrs.field(factory=dict, converter=_sorted)

    @classmethod
    def of(cls, rates: Mapping[str, RateLimit], concurrency: Mapping[str, int]) -> FlowLimits:
        return cls(
            {
                name: TypeLimits(rates.get(name), concurrency.get(name))
                for name in {*rates, *concurrency}
            }
        )

    def __bool__(self) -> bool:
        return bool(self.by_type)

    def __iter__(self) -> Iterator[tuple[str, TypeLimits]]:
        return iter(self.by_type.items())

    def get(self, job_type: str) -> TypeLimits | None:
        return self.by_type.get(job_type)


def _limits_object(raw: str, example: str, known: Collection[str]) -> dict[str, Any]:
    document: Any = json.loads(raw)
    if not isinstance(document, dict):
        raise ValueError(f"expected an object like {example}")
    for name in document:
        if name not in known:
            raise ValueError(f"{name!r} is not a job type (known: {', '.join(sorted(known))})")
    return document


def parse_rate_limits(raw: str, known: Collection[str]) -> dict[str, RateLimit]:
    """JSON: job type (one of `known`) -> its rate, `"N/s"`, `"N/min"`, `"N/h"` or
    `"N/<k>s"` (`CONVEYOR_RATE_LIMITS`). Raises ValueError naming what is wrong."""
    limits: dict[str, RateLimit] = {}
    for name, rate in _limits_object(raw, '{"email": "10/s"}', known).items():
        if not isinstance(rate, str):
            raise ValueError(f'{name}: expected a rate like "10/s"')
        try:
            limits[name] = RateLimit.parse(rate)
        except ValueError as exc:
            raise ValueError(f"{name}: {exc}") from None
    return limits


def parse_concurrency_limits(raw: str, known: Collection[str]) -> dict[str, int]:
    """JSON: job type (one of `known`) -> the most attempts of it running at once, an integer
    greater than 0 (`CONVEYOR_CONCURRENCY_LIMITS`). Raises ValueError naming what is wrong."""
    limits: dict[str, int] = {}
    for name, most in _limits_object(raw, '{"report": 2}', known).items():
        if isinstance(most, bool) or not isinstance(most, int) or most <= 0:
            raise ValueError(f"{name}: expected an integer greater than 0")
        limits[name] = most
    return limits


class LimitKind(enum.StrEnum):
    """Which limit holds a queued job back."""

    RATE = "rate"
    CONCURRENCY = "concurrency"


@attrs.frozen
class Throttle:
    """A limit that holds a queued job back now; for a rate, when its next start is allowed
    (None when not known)."""

    kind: LimitKind
    until: datetime | None = None


class FlowGate:
    """The limits' state in one process (the in-memory backend): the recent starts of each
    rate-limited type, and the slots held in each concurrency-limited one (job id -> when the
    slot lapses, with its lease). Times are seconds since the epoch."""

    def __init__(self, limits: FlowLimits) -> None:
        self.limits = limits
        self._starts: dict[str, deque[float]] = {}
        self._slots: dict[str, dict[str, float]] = {}
        self._slot_of: dict[str, str] = {}  # job id -> the type whose slot it holds

    def throttle(self, job_type: str, now: float) -> Throttle | None:
        """What holds a job of `job_type` back at `now`, or None if one may start."""
        limits = self.limits.get(job_type)
        if limits is None:
            return None
        if limits.rate is not None:
            starts = self._trimmed(job_type, limits.rate, now)
            if len(starts) >= limits.rate.count:
                until = starts[0] + limits.rate.per_seconds
                return Throttle(LimitKind.RATE, datetime.fromtimestamp(until, UTC))
        concurrency = limits.concurrency
        if concurrency is not None and len(self._live_slots(job_type, now)) >= concurrency:
            return Throttle(LimitKind.CONCURRENCY)
        return None

    def take(self, job_type: str, job_id: str, now: float, expires: float) -> bool:
        """Start an attempt of `job_id` if its type's limits allow it now: counts the start
        and takes a slot held until `expires`. Answers whether it may start."""
        limits = self.limits.get(job_type)
        if limits is None:
            return True
        if self.throttle(job_type, now) is not None:
            return False
        if limits.rate is not None:
            self._starts.setdefault(job_type, deque()).append(now)
        if limits.concurrency is not None:
            self._slots.setdefault(job_type, {})[job_id] = expires
            self._slot_of[job_id] = job_type
        return True

    def extend(self, job_id: str, expires: float) -> None:
        """The attempt's lease was renewed: its slot lapses with it."""
        job_type = self._slot_of.get(job_id)
        if job_type is not None:
            self._slots[job_type][job_id] = expires

    def release(self, job_id: str) -> None:
        """The attempt ended: its slot is free."""
        job_type = self._slot_of.pop(job_id, None)
        if job_type is not None:
            self._slots[job_type].pop(job_id, None)

    def held(self, job_type: str, now: float) -> int:
        """Slots of `job_type` held at `now`."""
        return len(self._live_slots(job_type, now))

    def _trimmed(self, job_type: str, rate: RateLimit, now: float) -> deque[float]:
        starts = self._starts.setdefault(job_type, deque())
        while starts and starts[0] <= now - rate.per_seconds:
            starts.popleft()
        return starts

    def _live_slots(self, job_type: str, now: float) -> dict[str, float]:
        slots = self._slots.setdefault(job_type, {})
        for job_id in [j for j, expires in slots.items() if expires <= now]:
            del slots[job_id]
            self._slot_of.pop(job_id, None)
        return slots
