"""The ports: what the domain needs from the outside world, as small abstract classes.

Abstract base classes rather than Protocols, so a framework that checks dependency types at
run time (Litestar does) can check them.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping, Sequence
from datetime import datetime

import attrs

from domain.errors import UnsupportedOperationError
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
    # What the job lifecycle API needs; an operation a false flag rules out raises
    # UnsupportedOperationError before anything is read or written.
    idempotency: bool = False  # NewJob.idempotency_key is honoured, atomically
    scheduling: bool = False  # jobs with a future run_at wait `scheduled` until then
    deadlines: bool = False  # Job.deadline is enforced (waiting jobs expire, retries too)
    pause: bool = False  # pause()/resume() of a queue
    cancel_queued: bool = False  # cancel() of a waiting job
    cancel_active: bool = False  # cancel() of an active job: a request its worker acts on
    admission: bool = False  # submit() checks AdmissionPolicy atomically with the write
    queue_stats: bool = False  # queue_stats() and situation() answer
    worker_presence: bool = False  # heartbeat(): queue_stats() counts live workers


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


@attrs.frozen(kw_only=True)
class NewJob:
    """One job to store: `queued`, or `scheduled` with a `run_at` (stored queued if that time
    has passed on the backend's clock)."""

    job: Job
    # Repeats under the same key answer the job stored first, while the key is retained.
    idempotency_key: str | None = None
    # Identifies the request's body: a repeat under the same key with another fingerprint
    # is refused (IdempotencyConflictError).
    fingerprint: str = ""


@attrs.frozen
class Submitted:
    job_id: str
    created: bool  # False: an earlier submission under the same idempotency key made it


@attrs.frozen(kw_only=True)
class QueueLimits:
    """Admission limits of one queue; None means no limit."""

    max_depth: int | None = None  # jobs queued (ready to claim)
    max_age: float | None = None  # seconds the oldest queued job has waited


@attrs.frozen(kw_only=True)
class AdmissionPolicy:
    """When to refuse new work (`AdmissionRefusedError`) rather than store it."""

    default: QueueLimits = QueueLimits()
    queues: Mapping[str, QueueLimits] = attrs.field(factory=dict)
    max_memory: int | None = None  # bytes the backend may use before refusing new jobs
    retry_after: float = 1.0  # what a refused client is told to wait

    def limits(self, queue: str) -> QueueLimits:
        return self.queues.get(queue, self.default)

    @property
    def enabled(self) -> bool:
        limits = (self.default, *self.queues.values())
        return self.max_memory is not None or any(
            lim.max_depth is not None or lim.max_age is not None for lim in limits
        )


@attrs.frozen(kw_only=True)
class QueueStats:
    name: str
    counts: Mapping[JobStatus, int]  # jobs by status (terminal ones while retained)
    oldest_queued_age: float | None  # seconds the oldest queued job has waited
    paused: bool
    workers: int | None  # live workers serving it; None when the backend cannot tell


@attrs.frozen(kw_only=True)
class JobSituation:
    """A job and what decides when it runs: what `waiting_reason` is derived from."""

    job: Job
    ahead: int | None  # jobs claimed before it, when it is queued
    paused: bool  # its queue is paused
    workers: int | None  # live workers serving its queue; None when unknown


class JobQueue(abc.ABC):
    """Stores jobs and hands them to workers. Every state change is atomic in the backend.

    A worker's writes about a job (progress, completion, failure) carry the lease it got from
    `claim`; a backend with `capabilities.leases` rejects a write whose lease is no longer
    current, and the call answers False.
    """

    capabilities: Capabilities

    async def enqueue(self, job: Job) -> None:
        """Store one new job, without idempotency key. Raises ValueError if its id exists."""
        (submitted,) = await self.submit([NewJob(job=job)])
        if not submitted.created:
            raise ValueError(f"job {job.id} already exists")

    @abc.abstractmethod
    async def submit(self, jobs: Sequence[NewJob]) -> Sequence[Submitted]:
        """Store new jobs, all or nothing, in one atomic step; one answer per job, in order.

        A job whose idempotency key is held answers the job stored under it (created False);
        with a different fingerprint, IdempotencyConflictError and nothing is stored. With
        an admission policy, AdmissionRefusedError and nothing is stored. A job whose id
        exists is not stored again (created False). QueueUnavailableError if the backend is
        down.
        """

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
        """Extend leases (and record the heartbeat); answers the ids of the jobs whose lease
        is still held."""

    @abc.abstractmethod
    async def set_progress(self, lease: Lease, progress: int) -> bool:
        """Record progress (0-100). False if the lease is no longer current."""

    @abc.abstractmethod
    async def complete(self, lease: Lease, result: JSONValue) -> bool:
        """Mark the attempt succeeded with its result. False if the lease is no longer current."""

    @abc.abstractmethod
    async def fail(self, lease: Lease, error: JobError, retry_in: float | None) -> bool:
        """Record a failed attempt: retry after `retry_in` seconds, or dead when None.

        With `capabilities.deadlines`, a job whose deadline has passed, or whose retry
        would be due after it, ends `expired` instead. False if the lease is no longer
        current.
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
        """Promote due retries and scheduled jobs, expire waiting jobs past their deadline,
        reclaim expired leases (a job with a cancel request ends `cancelled` instead), and
        forget finished jobs past their retention; answers how many jobs moved.

        Claims do this too; calling it on a timer covers queues nobody is claiming from.
        Safe to run from many workers at once.
        """

    @abc.abstractmethod
    async def requeue(self, job_id: str) -> Job:
        """Send a dead or cancelled job back to the queue with its attempts reset.

        Raises JobNotFoundError, or InvalidTransitionError for a job in any other status.
        """

    async def cancel(self, job_id: str) -> Job:
        """Cancel a job. A waiting one (scheduled, queued, failed) becomes `cancelled` at once
        and never runs; an active one keeps running with `cancel_requested_at` set until its
        worker stops it (`cancelled`). Answers the job as it is now.

        Raises JobNotFoundError, or InvalidTransitionError for a finished job.
        """
        raise UnsupportedOperationError("cancel", "cancel_queued", "not implemented")

    async def cancel_requested(self, leases: Sequence[Lease]) -> set[str]:
        """The ids, among these leased jobs, whose cancellation was asked for."""
        return set()

    async def cancelled(self, lease: Lease) -> bool:
        """The attempt stopped on a cancel request: the job becomes `cancelled`.

        False if the lease is no longer current.
        """
        raise UnsupportedOperationError("cancelled", "cancel_active", "not implemented")

    async def pause(self, queue: str) -> None:
        """Stop claims from `queue` (it still accepts jobs) until `resume`."""
        raise UnsupportedOperationError("pause", "pause", "not implemented")

    async def resume(self, queue: str) -> None:
        raise UnsupportedOperationError("resume", "pause", "not implemented")

    async def queue_stats(self, queues: Sequence[str] | None = None) -> Sequence[QueueStats]:
        """Figures per queue, by name; every queue the backend knows of when None."""
        raise UnsupportedOperationError("queue_stats", "queue_stats", "not implemented")

    async def situation(self, job_id: str) -> JobSituation | None:
        """The job and what decides when it runs, or None if there is no such job."""
        raise UnsupportedOperationError("situation", "queue_stats", "not implemented")

    async def heartbeat(self, worker_id: str, queues: Sequence[str], ttl: float) -> None:
        """Say that `worker_id` is alive and serves `queues`, for the next `ttl` seconds."""
        return None

    async def forget_worker(self, worker_id: str) -> None:
        """`worker_id` has stopped: it no longer counts as serving its queues."""
        return None

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
