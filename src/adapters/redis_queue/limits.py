"""The flow limits as the scripts take them: their keys (KEYS after a queue's fixed keys) and
their values (ARGV), made once per process (see `lua/lib/limits.lua`)."""

from __future__ import annotations

from typing import Final

import attrs

from domain.limits import FlowLimits


def limit_key(prefix: str, kind: str, job_type: str) -> str:
    """A limit's key: under the prefix's own hash tag, which no queue's tag equals."""
    return f"{{{prefix}}}:limit:{kind}:{job_type}"


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

    @classmethod
    def of(cls, prefix: str, limits: FlowLimits) -> LimitArgs:
        if not limits:
            return NO_LIMITS
        keys: list[bytes] = []
        args: list[str | int] = [len(limits.by_type)]
        slots: list[bytes] = []
        for name, limit in limits:
            starts = limit_key(prefix, "starts", name).encode()
            count = limit_key(prefix, "started", name).encode()
            held = limit_key(prefix, "slots", name).encode()
            keys += (starts, count, held)
            rate = limit.rate
            args += (
                name,
                0 if rate is None else rate.count,
                0 if rate is None else rate.per_ms,
                limit.concurrency or 0,
            )
            if limit.concurrency is not None:
                slots.append(held)
        return cls(tuple(limits.by_type), tuple(keys), tuple(args), tuple(slots))


NO_LIMITS: Final = LimitArgs()
