"""The flow limits as the scripts take them: their keys and their values (ARGV), made once
per process (see `lua/lib/limits.lua`). On one server a queue's scripts get the keys after
the queue's fixed keys; on Redis Cluster only the limits' own scripts get them (`permits.py`).
"""

from __future__ import annotations

from typing import Final

import attrs

from adapters.redis_queue.keys import LIMIT_NAMES
from domain.limits import FlowLimits


def limit_key(prefix: str, kind: str, job_type: str) -> str:
    """A limit's key: under the prefix's own hash tag, which no queue's tag equals."""
    return f"{{{prefix}}}:limit:{kind}:{job_type}"


@attrs.frozen
class LimitedType:
    """One limited job type: its limits as the scripts take them (0: not set) and its keys
    (`keys.LIMIT_NAMES`: starts, started, slots)."""

    name: str
    rate: int
    per_ms: int
    concurrency: int
    keys: tuple[bytes, bytes, bytes]

    @property
    def args(self) -> tuple[str, int, int, int]:
        return (self.name, self.rate, self.per_ms, self.concurrency)

    @property
    def slots(self) -> bytes:
        return self.keys[2]


@attrs.frozen
class LimitArgs:
    """What the scripts get of the limits; all empty when no type is limited."""

    names: tuple[str, ...] = ()
    # Per limited type, its starts, started and slots keys (claim, situation).
    keys: tuple[bytes, ...] = ()
    # How many types are limited, then per type: name, rate count, window ms, concurrency.
    args: tuple[str | int, ...] = (0,)
    # The slots keys of the concurrency-limited types (settle, renew).
    slots: tuple[bytes, ...] = ()
    # The limited types one by one (the limits' own scripts, on Redis Cluster).
    types: tuple[LimitedType, ...] = ()

    @classmethod
    def of(cls, prefix: str, limits: FlowLimits) -> LimitArgs:
        if not limits:
            return NO_LIMITS
        types: list[LimitedType] = []
        for name, limit in limits:
            rate = limit.rate
            keys = tuple(limit_key(prefix, kind, name).encode() for kind in LIMIT_NAMES)
            types.append(
                LimitedType(
                    name,
                    0 if rate is None else rate.count,
                    0 if rate is None else rate.per_ms,
                    limit.concurrency or 0,
                    (keys[0], keys[1], keys[2]),
                )
            )
        return cls(
            tuple(limits.by_type),
            tuple(key for t in types for key in t.keys),
            (len(types), *(arg for t in types for arg in t.args)),
            tuple(t.slots for t in types if t.concurrency),
            tuple(types),
        )

    def names_only(self) -> LimitArgs:
        """What a queue's scripts get on Redis Cluster: the limited types' names (`recover`
        puts back in line the jobs parked of any other type), no key of the limits' slot."""
        return LimitArgs(names=self.names) if self.names else NO_LIMITS


NO_LIMITS: Final = LimitArgs()
