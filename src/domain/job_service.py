"""The use cases the API and the CLI drive: submitting, reading, cancelling and explaining
jobs, and managing queues."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Sequence
from typing import Final, TypeVar

import attrs

from domain.errors import (
    FieldError,
    InvalidJobError,
    JobNotFoundError,
    UnknownJobTypeError,
    UnsupportedOperationError,
)
from domain.job_types import JobTypeRegistry
from domain.jobs import Job, is_idempotency_key, new_job_id
from domain.ports import (
    ROLE_NAMES,
    Backend,
    Clock,
    JobControl,
    JobPage,
    JobQuery,
    JobSituation,
    NewJob,
    QueueMonitor,
    QueuePauser,
    QueueStats,
    Watch,
    WorkerInfo,
)
from domain.submission import Submission, validate
from domain.timeline import TimelineEvent, WaitingReason, timeline, waiting_reason
from domain.waiting import Waiters

P = TypeVar("P")

# How often a waiting read looks at the job again on a backend that cannot say when it
# finished (no `JobWatcher`): soon at first, then less and less often.
_POLL_FIRST: Final = 0.1
_POLL_GROWTH: Final = 1.5
_POLL_CAP: Final = 1.0
_NO_DEADLINES: Final = "this backend cannot enforce a deadline across attempts and retries"
_NO_UNIQUE_KEYS: Final = "this backend cannot hold a unique key atomically while its job lives"


@attrs.frozen
class Accepted:
    """A submission's answer: the job, and whether this request created it."""

    job: Job
    created: bool
    # Not created: the job is the live one holding the submission's unique key (else the
    # one its idempotency key names, or the one with its id).
    unique: bool = False


@attrs.frozen(kw_only=True)
class JobDetails:
    """A job with what explains it: why it is not running, and what happened to it so far."""

    job: Job
    waiting_reason: WaitingReason | None
    timeline: Sequence[TimelineEvent]


@attrs.define
class JobService:
    """Submitting, reading and cancelling jobs, and managing queues, on one backend.

    What needs a role the backend does not play raises UnsupportedOperationError naming it
    (the API answers 501) before anything is read or written.
    """

    _backend: Backend
    _registry: JobTypeRegistry
    _clock: Clock
    _new_id: Callable[[str], str] = new_job_id
    # The waits this process may hold at once (shared by every JobService of the process);
    # None: no limit.
    _waiters: Waiters | None = None

    def validate(
        self,
        submission: Submission,
        *,
        idempotency_key: str | None = None,
        trace_context: str | None = None,
    ) -> Job:
        """The job this submission would create; raises on anything invalid, listing it all."""
        return validate(
            submission,
            self._registry,
            self._clock.now(),
            idempotency_key=idempotency_key,
            trace_context=trace_context,
            new_id=self._new_id,
        )

    async def submit(
        self,
        submission: Submission,
        *,
        idempotency_key: str | None = None,
        trace_context: str | None = None,
    ) -> Accepted:
        """Validate and store one job. Raises UnknownJobTypeError, InvalidJobError,
        IdempotencyConflictError, AdmissionRefusedError, UnsupportedOperationError or
        QueueUnavailableError; a job is stored whole or not at all. A repeat under
        `idempotency_key` answers the job the first request made (created False); a
        submission whose `unique_key` (or `unique_for`) a job not finished holds answers that
        job (created False, unique True), and UnsupportedOperationError on a backend that
        cannot hold unique keys.
        `trace_context` (a W3C `traceparent`) is the trace the job's attempts join."""
        (accepted,) = await self.submit_batch(
            [submission], [idempotency_key], trace_context=trace_context
        )
        return accepted

    async def submit_batch(
        self,
        submissions: Sequence[Submission],
        keys: Sequence[str | None] | None = None,
        *,
        trace_context: str | None = None,
    ) -> list[Accepted]:
        """Validate every submission, then store them all in one step, or none.

        Raises InvalidJobError listing every bad field of every item (paths start with
        `[index].`), or what `submit` raises. Every job joins the trace `trace_context`.
        """
        if keys is None:
            keys = [None] * len(submissions)
        if len(keys) != len(submissions):
            raise ValueError("one idempotency key (or None) per submission")
        jobs = self._validate_all(submissions, keys, trace_context)
        submitter = self._backend.submitter
        if not submitter.traits.deadlines and any(job.deadline is not None for job in jobs):
            raise UnsupportedOperationError("submit", "deadlines", _NO_DEADLINES)
        if not submitter.traits.unique_keys and any(job.unique_key is not None for job in jobs):
            raise UnsupportedOperationError("submit", "unique_keys", _NO_UNIQUE_KEYS)
        stored = await submitter.submit(
            [
                # The fingerprint tells a repeat under an idempotency key from another
                # request reusing it: without a key there is nothing to tell apart.
                NewJob(
                    job=job,
                    idempotency_key=key,
                    fingerprint="" if key is None else submission.fingerprint(),
                )
                for job, key, submission in zip(jobs, keys, submissions, strict=True)
            ]
        )
        accepted: list[Accepted] = []
        for job, answer in zip(jobs, stored, strict=True):
            if answer.created or answer.job_id == job.id:
                accepted.append(Accepted(job, answer.created))
                continue
            earlier = await self._backend.store.get(answer.job_id)
            # The first request's job may be past its retention while its key is not: the
            # answer keeps its id, described as this request would have made it.
            accepted.append(
                Accepted(earlier or attrs.evolve(job, id=answer.job_id), False, answer.unique)
            )
        return accepted

    def _validate_all(
        self,
        submissions: Sequence[Submission],
        keys: Sequence[str | None],
        trace_context: str | None,
    ) -> list[Job]:
        jobs: list[Job] = []
        errors: list[FieldError] = []
        single = len(submissions) == 1
        for index, (submission, key) in enumerate(zip(submissions, keys, strict=True)):
            try:
                if key is not None and not is_idempotency_key(key):
                    raise InvalidJobError(
                        [FieldError("idempotency_key", "expected 1-200 printable ASCII")]
                    )
                jobs.append(
                    self.validate(submission, idempotency_key=key, trace_context=trace_context)
                )
            except InvalidJobError as invalid:
                if single:
                    raise
                errors.extend(
                    FieldError(f"[{index}]." + e.path if e.path else f"[{index}]", e.message)
                    for e in invalid.errors
                )
            except UnknownJobTypeError as unknown:
                if single:
                    raise
                errors.append(FieldError(f"[{index}].type", str(unknown)))
        if errors:
            raise InvalidJobError(errors)
        return jobs

    async def get(self, job_id: str) -> Job:
        job = await self._backend.store.get(job_id)
        if job is None:
            raise JobNotFoundError(job_id)
        return job

    async def wait(self, job_id: str, seconds: float) -> Job:
        """The job once it is finished (terminal), or as it is after `seconds`.

        Past the most waits this process holds at once (`Waiters`), the job as it is now.
        The backend's JobWatcher says when to look again; without one, the job is read
        again now and then.
        """
        waiters = self._waiters
        if waiters is not None and not waiters.take():
            return await self.get(job_id)
        try:
            watcher = self._backend.watcher
            if watcher is None:
                return await self._poll(job_id, seconds)
            with watcher.watch(job_id) as watch:
                return await self._watch(job_id, seconds, watch)
        finally:
            if waiters is not None:
                waiters.release()

    async def _watch(self, job_id: str, seconds: float, watch: Watch) -> Job:
        loop = asyncio.get_running_loop()
        until = loop.time() + seconds
        job = await self.get(job_id)
        while True:
            left = until - loop.time()
            if job.status.is_terminal or left <= 0:
                return job
            await watch.wait(left)
            waiters = self._waiters  # one of the many a notice may wake: it takes its turn
            async with waiters.reading() if waiters is not None else contextlib.nullcontext():
                job = await self.get(job_id)

    async def _poll(self, job_id: str, seconds: float) -> Job:
        loop = asyncio.get_running_loop()
        until = loop.time() + seconds
        interval = _POLL_FIRST
        while True:
            job = await self.get(job_id)
            left = until - loop.time()
            if job.status.is_terminal or left <= 0:
                return job
            await asyncio.sleep(min(interval, left))
            interval = min(interval * _POLL_GROWTH, _POLL_CAP)

    async def details(self, job_id: str, *, wait: float = 0.0) -> JobDetails:
        """The job (after waiting up to `wait` seconds for it to finish), its waiting reason
        and timeline."""
        situation: JobSituation | None = None
        if wait > 0:
            job = await self.wait(job_id, wait)
            if job.status.is_waiting:
                situation = await self._backend.store.situation(job_id)
        else:  # one read: the job and, if it waits, why
            situation = await self._backend.store.situation(job_id)
            if situation is None:
                raise JobNotFoundError(job_id)
        if situation is not None:
            job = situation.job
        now = self._clock.now()
        return JobDetails(
            job=job, waiting_reason=waiting_reason(job, situation, now), timeline=timeline(job)
        )

    async def list(self, query: JobQuery) -> JobPage:
        return await self._backend.store.list_jobs(query)

    async def retry(self, job_id: str) -> Job:
        """Send a dead or cancelled job back to the queue with fresh attempts."""
        return await _role(self._backend.control, JobControl, "retry").requeue(job_id)

    async def cancel(self, job_id: str) -> Job:
        """Cancel a waiting job at once, or ask an active one's worker to stop it."""
        return await _role(self._backend.control, JobControl, "cancel").cancel(job_id)

    async def queues(self, names: Sequence[str] | None = None) -> Sequence[QueueStats]:
        return await _role(self._backend.monitor, QueueMonitor, "queue_stats").queue_stats(names)

    async def workers(self) -> Sequence[WorkerInfo]:
        """The live workers: their hosts, queues, jobs in flight and done."""
        return await _role(self._backend.monitor, QueueMonitor, "queue_stats").workers()

    async def pause(self, queue: str) -> QueueStats:
        await _role(self._backend.pauser, QueuePauser, "pause").pause(queue)
        return await self._one_queue(queue)

    async def resume(self, queue: str) -> QueueStats:
        await _role(self._backend.pauser, QueuePauser, "resume").resume(queue)
        return await self._one_queue(queue)

    async def _one_queue(self, queue: str) -> QueueStats:
        (stats,) = await _role(self._backend.monitor, QueueMonitor, "queue_stats").queue_stats(
            [queue]
        )
        return stats


def _role(port: P | None, role: type, operation: str) -> P:
    """The backend's `role` port, or UnsupportedOperationError naming the role it lacks."""
    if port is None:
        reason = f"this backend has no {role.__name__}"
        raise UnsupportedOperationError(operation, ROLE_NAMES[role], reason)
    return port
