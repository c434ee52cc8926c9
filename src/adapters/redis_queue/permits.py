"""Rate and concurrency limits on Redis Cluster, where their keys (`{P}:limit:*`, see
`keys.py`) live in a slot of their own, apart from every queue's: no one script can check a
type's limits and claim its jobs, as the claim script does on one server.

A claim that may start a limited job is three script calls instead of one:

1. `reserve`, on the limits' slot: per limited type, as many permits as its limits have
   room for now (at most the claim's limit). A permit holds that room as a start or a slot
   would, and lapses with the lease asked for (concurrency) or leaves the rate's window.
2. `claim`, on the queue's slot, with the counts granted in ARGV: it parks the jobs past
   them and starts at most that many of each type, exactly as on one server.
3. `convert`, on the limits' slot: the permits used become the started jobs' slots, the
   rest are given back, and the rate's start entry is cut down to the jobs started.

A claimer that dies between the steps, or whose later step fails, leaves its permits to
lapse: the type runs below its limits for at most one lease or window, never above them. A
failed claim is not converted (it may have run), and a failed conversion fails the claim
(its jobs are not run: their leases lapse as a dead worker's would), so no job ever runs
without its slot counted. A renewal extends the slots on the limits' slot first, then the
leases; a settlement settles first, then frees the slots (and wakes a claimer of the queue
when jobs wait parked there): either way a failure in between only holds a slot longer.

Costs: a claim makes two round trips more, a renewal of jobs of a concurrency-limited type
one more, a settlement of such a job two more (both batched per event-loop tick), and a
`situation` of a queued job of a limited type one more read; nothing at all when no type is
limited, and nothing on one server.
"""

from __future__ import annotations

import secrets
from collections import defaultdict
from collections.abc import Sequence
from typing import Final

from adapters.redis_client import redis_errors
from adapters.redis_queue import calls
from adapters.redis_queue.calls import Grant
from adapters.redis_queue.codec import FIELDS_WITH_TOKEN, RawFields
from adapters.redis_queue.core import RedisCore, log
from adapters.redis_queue.keys import QueueKeys
from adapters.redis_queue.limits import LimitArgs
from domain.errors import QueueUnavailableError
from domain.jobs import Lease

_TYPE: Final = FIELDS_WITH_TOKEN.index("type")


class ClusterPermits:
    """The limits' steps around a claim, a renewal and a settlement on Redis Cluster."""

    def __init__(self, core: RedisCore, limits: LimitArgs) -> None:
        self._core = core
        self._limits = limits
        self._names = {t.name.encode(): t.name for t in limits.types}
        self._concurrent = frozenset(t.name for t in limits.types if t.concurrency)

    async def claim(
        self, keys: QueueKeys, *, limit: int, lease_ms: int, worker_id: str
    ) -> tuple[list[RawFields], int]:
        """CLAIM's answer (the claimed jobs' fields, wake_in), between a reservation of the
        room and its conversion into the started jobs' slots."""
        core = self._core
        reservation = "r" + secrets.token_hex(12)
        reserved = calls.reserve(
            self._limits, most=limit, lease_ms=lease_ms, reservation=reservation
        )
        answer = await core.run(reserved)
        granted = [
            Grant(t.name, int(answer[2 * n]), int(answer[2 * n + 1]))
            for n, t in enumerate(self._limits.types)
        ]
        claimed, wake_ms = await core.run(
            calls.claim(
                keys,
                limit=limit,
                lease_ms=lease_ms,
                worker_id=worker_id,
                retention=core.retention,
                grants=granted,
            )
        )
        if any(grant.permits > 0 for grant in granted):
            # Which permits the claim used: its jobs' ids by type, as the script compared
            # the stored types with the limited names.
            started: dict[str, list[bytes]] = defaultdict(list)
            for raw in claimed:
                name = self.type_of(raw)
                if name is not None and raw[0] is not None:
                    started[name].append(raw[0])
            await core.run(
                calls.convert(
                    self._limits,
                    reservation=reservation,
                    lease_ms=lease_ms,
                    granted=granted,
                    started=started,
                )
            )
        return claimed, int(wake_ms)

    async def extend(self, leases: Sequence[Lease], lease_ms: int) -> None:
        """Before the leases are renewed: their slots lapse a lease from now."""
        call = calls.extend(self._limits, lease_ms, leases)
        if call is not None:
            await self._core.run(call)

    async def release(self, job_type: str, job_id: str, queue: str | None) -> None:
        """After an attempt of `job_id` was settled: its slot is free, and a claimer of
        `queue` (None: none) is woken if jobs wait parked there. A failure is logged, not
        raised: the settlement stands, and the slot lapses with its lease."""
        if job_type not in self._concurrent:
            return
        try:
            with redis_errors():
                if await self._core.release(job_type, job_id) and queue is not None:
                    await self._core.wake_parked(queue, job_id)
        except QueueUnavailableError as exc:
            log.warning("the slot of job %s is held until its lease lapses: %s", job_id, exc.reason)

    def type_of(self, raw: RawFields) -> str | None:
        """The limited type named by a claimed job's raw fields, or None."""
        return self._names.get(raw[_TYPE] or b"")
