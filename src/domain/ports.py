"""The ports: what the domain needs from the outside world, as small abstract classes.

Abstract base classes rather than Protocols, so a framework that checks dependency types at
run time (Litestar does) can check them.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from datetime import datetime

import attrs

from domain.jobs import Job, JobError, JobStatus, JSONValue, Lease


@attrs.frozen(kw_only=True)
class Capabilities:
    """What a queue backend can promise. The contract suite checks each flag either way."""

    leases: bool  # claims expire on the server's clock and are fenced by a token
    shared_across_processes: bool  # API and workers in different processes see one queue
    blocking_claim: bool  # claim() waits for work instead of returning at once
    # Workers drive jobs through this port: claim, then progress/complete/fail/release. Without
    # it the backend's own worker runs the jobs, and those calls raise UnsupportedOperationError.
    worker_claims: bool = True
    batch_claims: bool = True  # one claim() can hand out up to `limit` jobs
    priorities: bool = False  # a job's priority orders claims within its queue (else FIFO)


@attrs.frozen(kw_only=True)
class JobQuery:
    status: JobStatus | None = None
    type: str | None = None
    queue: str | None = None
    limit: int = attrs.field(
        default=50, validator=[attrs.validators.ge(1), attrs.validators.le(500)]
    )
    cursor: str | None = None


@attrs.frozen
class JobPage:
    jobs: Sequence[Job]
    next_cursor: str | None


class JobQueue(abc.ABC):
    """Stores jobs and hands them to workers. Every state change is atomic in the backend.

    A worker's writes about a job (progress, completion, failure) carry the lease it got from
    `claim`; a backend with `capabilities.leases` rejects a write whose lease is no longer
    current, and the call answers False.
    """

    capabilities: Capabilities

    @abc.abstractmethod
    async def enqueue(self, job: Job) -> None:
        """Store a new job, queued. Raises QueueUnavailableError if the backend is down."""

    @abc.abstractmethod
    async def get(self, job_id: str) -> Job | None:
        """The job as stored now, or None."""

    @abc.abstractmethod
    async def list_jobs(self, query: JobQuery) -> JobPage:
        """Jobs matching the query, newest first, one page at a time."""

    @abc.abstractmethod
    async def claim(
        self,
        queues: Sequence[str],
        *,
        worker_id: str,
        limit: int,
        lease_seconds: float,
        wait_seconds: float,
    ) -> Sequence[Lease]:
        """Up to `limit` queued jobs from `queues` (earlier queues first), each now active.

        Waits up to `wait_seconds` for work when there is none (backends that cannot wait
        answer at once: see `capabilities.blocking_claim`).
        """

    @abc.abstractmethod
    async def renew(self, leases: Sequence[Lease], lease_seconds: float) -> set[str]:
        """Extend leases; answers the ids of the jobs whose lease is still held."""

    @abc.abstractmethod
    async def set_progress(self, lease: Lease, progress: int) -> bool:
        """Record progress (0-100). False if the lease is no longer current."""

    @abc.abstractmethod
    async def complete(self, lease: Lease, result: JSONValue) -> bool:
        """Mark the attempt succeeded with its result. False if the lease is no longer current."""

    @abc.abstractmethod
    async def fail(self, lease: Lease, error: JobError, retry_in: float | None) -> bool:
        """Record a failed attempt: retry after `retry_in` seconds, or dead when None.

        False if the lease is no longer current.
        """

    @abc.abstractmethod
    async def release(self, lease: Lease) -> bool:
        """Hand an active job back to the queue, its attempt not counted (a stopping worker).

        False if the lease is no longer current.
        """

    @abc.abstractmethod
    async def held_by(self, worker_id: str, queues: Sequence[str]) -> Sequence[Lease]:
        """The leases `worker_id` holds now: what to settle when that worker has died."""

    @abc.abstractmethod
    async def recover(self, queues: Sequence[str]) -> int:
        """Promote due retries and reclaim expired leases now; answers how many jobs moved.

        Claims do this too; calling it on a timer covers queues nobody is claiming from.
        Safe to run from many workers at once.
        """

    @abc.abstractmethod
    async def requeue(self, job_id: str) -> Job:
        """Send a dead or cancelled job back to the queue with its attempts reset.

        Raises JobNotFoundError, or InvalidTransitionError for a job in any other status.
        """

    @abc.abstractmethod
    async def ping(self) -> None:
        """Raise QueueUnavailableError unless the backend answers."""

    async def verify(self) -> Sequence[str]:
        """Check the backend is safe to run on; answers warnings worth logging.

        Raises UnsafeBackendError when it could drop jobs (a Redis that evicts keys), and
        QueueUnavailableError when it cannot be asked right now.
        """
        return ()

    @abc.abstractmethod
    async def close(self) -> None:
        """Release connections. Idempotent."""


@attrs.frozen
class EmailMessage:
    to: str
    subject: str
    body: str


class EmailSender(abc.ABC):
    @abc.abstractmethod
    async def send(self, message: EmailMessage) -> str:
        """Send the message; answers the provider's message id."""


class Clock(abc.ABC):
    @abc.abstractmethod
    def now(self) -> datetime:
        """The current time, timezone-aware UTC."""
