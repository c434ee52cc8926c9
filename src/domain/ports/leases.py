"""The worker's side: claiming attempts under leases, reporting on them, settling them."""

from __future__ import annotations

import abc
from collections.abc import Sequence

import attrs

from domain.jobs import JobStatus, Lease
from domain.settlement import Ending


@attrs.frozen(kw_only=True)
class ClaimRequest:
    """What a worker asks for when it claims work."""

    queues: tuple[str, ...]  # earlier queues first
    worker_id: str
    limit: int = attrs.field(validator=attrs.validators.ge(1))  # most jobs handed out
    lease_seconds: float = attrs.field(validator=attrs.validators.gt(0))
    # How long to wait for work when there is none (0: answer at once).
    wait_seconds: float = attrs.field(default=0.0, validator=attrs.validators.ge(0))


class AttemptReporter(abc.ABC):
    """Where one running attempt reports its progress and how it ended."""

    @abc.abstractmethod
    async def set_progress(self, lease: Lease, progress: int) -> bool:
        """Record progress (0-100). False if the lease is no longer current."""

    @abc.abstractmethod
    async def settle(self, lease: Lease, ending: Ending) -> JobStatus | None:
        """End the attempt as `ending` says, by the one rule of `domain.settlement`, applied to
        the job as it is stored at this moment (its cancel request, its deadline, its
        attempts), in one atomic step. Answers the status the job was given, or None when the
        lease is no longer current (nothing is written, and the stale write is counted).

        Raises UnstorableResultError for a success whose result cannot be stored, and
        NotReplicatedError (its `settled` the status written) when the backend must confirm
        writes on replicas and fewer confirmed this one in time: the settlement stands on
        the primary; a failover before it reaches a replica would run the job again.
        """


class LeaseQueue(AttemptReporter):
    """Hands queued jobs to workers under leases, and takes them back.

    A lease expires on the backend's clock unless renewed, and its token fences every write
    about the attempt: a write whose lease is no longer current changes nothing.
    """

    @abc.abstractmethod
    async def claim(self, request: ClaimRequest) -> Sequence[Lease]:
        """Up to `request.limit` queued jobs from its queues (earlier queues first), each now
        active under a new lease; none from a paused queue. Waits up to
        `request.wait_seconds` for work when there is none."""

    @abc.abstractmethod
    async def stop_waiting(self, worker_id: str, queues: Sequence[str]) -> None:
        """End the waiting claim `worker_id` makes on `queues` now (or its next one, if none
        waits), answering what it has: a worker asked to stop does not sit out the wait."""

    @abc.abstractmethod
    async def renew(self, leases: Sequence[Lease], lease_seconds: float) -> set[str]:
        """Extend leases (and record the heartbeat); answers the ids of the jobs whose lease
        is still held."""

    @abc.abstractmethod
    async def cancel_requested(self, leases: Sequence[Lease]) -> set[str]:
        """The ids, among these leased jobs, whose cancellation was asked for."""

    @abc.abstractmethod
    async def held_by(self, worker_id: str, queues: Sequence[str]) -> Sequence[Lease]:
        """The leases `worker_id` holds now: what to settle when that worker has died."""

    @abc.abstractmethod
    async def recover(self, queues: Sequence[str]) -> int:
        """Promote due retries and scheduled jobs, expire waiting jobs past their deadline,
        settle expired leases (`Ending.lease_expired`), and forget finished jobs past their
        retention; answers how many jobs moved.

        Claims do this too; calling it on a timer covers queues nobody is claiming from.
        Safe to run from many workers at once.
        """
