"""Storing new jobs: all or nothing, with idempotency keys and admission limits."""

from __future__ import annotations

import abc
from collections.abc import Mapping, Sequence

import attrs

from domain.jobs import Job


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
    # The job is the live one holding the submitted job's unique key (created False).
    unique: bool = False


@attrs.frozen(kw_only=True)
class QueueLimits:
    """Admission limits of one queue; None means no limit."""

    # Jobs waiting in the queue: queued, scheduled (however far ahead), or waiting for a
    # retry. Not the ones running or finished.
    max_depth: int | None = None
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
class SubmitTraits:
    """What a submitter does with the options a job may carry. Every submitter stores a job's
    idempotency key, `run_at` and priority; these say what it makes of the rest."""

    # A job's deadline is enforced (a waiting job expires, an attempt and its retries are cut
    # at it). Without it a job that has a deadline cannot be stored: the service refuses it.
    deadlines: bool
    # A job's priority orders claims within its queue (else it is stored, and claims are FIFO).
    priorities: bool
    # A job's unique key holds while the job is not finished (see `JobSubmitter.submit`).
    # Without it a job that has one cannot be stored: the service refuses it.
    unique_keys: bool = False
    # A batch spanning queues is stored all or nothing. Without it (queues kept apart, as on
    # Redis Cluster) each queue's part is all or nothing on its own, and a batch only partly
    # stored raises PartialSubmissionError saying what happened to each job.
    atomic_across_queues: bool = True


class JobSubmitter(abc.ABC):
    """Stores new jobs."""

    traits: SubmitTraits

    @abc.abstractmethod
    async def submit(self, jobs: Sequence[NewJob]) -> Sequence[Submitted]:
        """Store new jobs, all or nothing, in one atomic step; one answer per job, in order.

        A job whose idempotency key is held answers the job stored under it (created False);
        with a different fingerprint, IdempotencyConflictError and nothing is stored. With
        an admission policy, AdmissionRefusedError and nothing is stored; past the backend's
        most queues, TooManyQueuesError (an AdmissionRefusedError) for a job that would open
        one, and nothing is stored. A job whose id
        exists is not stored again (created False). QueueUnavailableError if the backend is
        down. NotReplicatedError when the backend must confirm writes on replicas and fewer
        confirmed these in time: they may be stored, and may be lost in a failover.

        A job with a `unique_key` (with `traits.unique_keys`) is not stored while a job of its
        queue under the same key is not finished (scheduled, queued, active, or failed and due
        for a retry): it answers that job (created False, unique True), checked and taken in
        the same atomic step. The key is let go the moment its job finishes in any way. An
        idempotency key is looked at first: a repeat answers what the first request was
        answered, and a request answered with the holder of its unique key stores its
        idempotency key naming that job.
        """


async def store_new(submitter: JobSubmitter, job: Job) -> None:
    """Store one new job with no idempotency key; ValueError if its id exists already."""
    (submitted,) = await submitter.submit([NewJob(job=job)])
    if not submitted.created:
        raise ValueError(f"job {job.id} already exists")
