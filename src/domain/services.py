"""The use cases: submit, get and list jobs; process one claimed job."""

from __future__ import annotations

import asyncio
import enum
import traceback
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import attrs

from domain.errors import (
    FieldError,
    InvalidJobError,
    JobNotFoundError,
    NonRetryableError,
    QueueUnavailableError,
    UnknownJobTypeError,
    UnstorableResultError,
)
from domain.job_types import JobContext, JobType, JobTypeRegistry
from domain.jobs import ErrorKind, Job, JobError, JSONObject, Lease
from domain.ports import Clock, JobPage, JobQuery, JobQueue
from domain.retry import Random

_TRACEBACK_TAIL = 2000
_STORE_RETRY_FIRST = 0.05
_STORE_RETRY_CAP = 2.0


def new_job_id() -> str:
    return uuid.uuid4().hex


@attrs.frozen(kw_only=True)
class Submission:
    """A client's request for work, as decoded from the wire but not yet validated."""

    type: object
    payload: object
    max_attempts: object = None
    timeout: object = None


@attrs.define
class JobService:
    """Submitting and reading jobs: what the API and the CLI drive."""

    _queue: JobQueue
    _registry: JobTypeRegistry
    _clock: Clock
    _new_id: Callable[[], str] = new_job_id

    def validate(self, submission: Submission) -> Job:
        """The job this submission would create; raises on anything invalid, listing it all."""
        job_type = self._registry.resolve(submission.type)
        errors: list[FieldError] = []
        payload: dict[str, Any] = {}
        try:
            payload = job_type.schema.validate(submission.payload)
        except InvalidJobError as invalid:
            errors.extend(invalid.errors)
        max_attempts = _bounded_int(
            submission.max_attempts,
            "max_attempts",
            default=job_type.retry.max_attempts,
            limit=job_type.retry.max_attempts_limit,
            errors=errors,
        )
        timeout = _bounded_number(
            submission.timeout,
            "timeout",
            default=job_type.timeout,
            limit=job_type.timeout_limit,
            errors=errors,
        )
        if errors:
            raise InvalidJobError(errors)
        return Job.submitted(
            id=self._new_id(),
            type=job_type.name,
            payload=payload,
            queue=job_type.queue,
            priority=job_type.priority,
            max_attempts=max_attempts,
            timeout=timeout,
            now=self._clock.now(),
        )

    async def submit(self, submission: Submission) -> Job:
        """Validate and enqueue. Raises UnknownJobTypeError, InvalidJobError, or
        QueueUnavailableError; a job is stored whole or not at all."""
        job = self.validate(submission)
        await self._queue.enqueue(job)
        return job

    async def get(self, job_id: str) -> Job:
        job = await self._queue.get(job_id)
        if job is None:
            raise JobNotFoundError(job_id)
        return job

    async def list(self, query: JobQuery) -> JobPage:
        return await self._queue.list_jobs(query)

    async def retry(self, job_id: str) -> Job:
        """Send a dead or cancelled job back to the queue with fresh attempts."""
        return await self._queue.requeue(job_id)


def _bounded_int(
    value: object, name: str, *, default: int, limit: int, errors: list[FieldError]
) -> int:
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        errors.append(FieldError(name, "expected an integer"))
    elif not 1 <= value <= limit:
        errors.append(FieldError(name, f"expected 1 to {limit} for this job type"))
    else:
        return value
    return default


def _bounded_number(
    value: object, name: str, *, default: float, limit: float, errors: list[FieldError]
) -> float:
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float):
        errors.append(FieldError(name, "expected a number of seconds"))
    elif not 0 < value <= limit:
        errors.append(FieldError(name, f"expected more than 0 and at most {limit:g} seconds"))
    else:
        return float(value)
    return default


class Outcome(enum.StrEnum):
    SUCCEEDED = "succeeded"
    RETRYING = "retrying"  # failed; another attempt is scheduled
    DEAD = "dead"
    LEASE_LOST = "lease_lost"  # the backend refused our write: someone else owns the job now


@attrs.frozen
class ProcessResult:
    outcome: Outcome
    error: JobError | None = None
    retry_in: float | None = None
    # The handler did not stop when its attempt timed out and still runs somewhere.
    abandoned: bool = False


def error_from(exc: BaseException, kind: ErrorKind) -> JobError:
    tail = "".join(traceback.format_exception(exc))[-_TRACEBACK_TAIL:]
    return JobError(
        message=str(exc) or type(exc).__name__, type=type(exc).__name__, kind=kind, traceback=tail
    )


@attrs.define
class JobProcessor:
    """Runs one claimed job to the end of its attempt and records what happened."""

    _queue: JobQueue
    _registry: JobTypeRegistry
    _random: Random
    # How long a timed-out handler gets to stop once cancelled.
    _cancel_grace: float = 2.0

    async def process(self, lease: Lease, context: JobContext) -> ProcessResult:
        job = lease.job
        try:
            job_type = self._registry.resolve(job.type)
            payload = job_type.schema.validate(job.payload)
        except (UnknownJobTypeError, InvalidJobError) as exc:
            # Whatever sits in the backend is data, not code: a job we cannot vouch for is
            # dead-lettered without running anything.
            return await self._record_failure(lease, None, error_from(exc, ErrorKind.INVALID))
        handler = asyncio.ensure_future(context.observe(job_type.handler(payload, context)))
        try:
            done, _ = await asyncio.wait({handler}, timeout=job.timeout)
        except asyncio.CancelledError:  # the worker stops this attempt (its lease is gone)
            handler.cancel()
            raise
        if not done:
            handler.cancel()
            # A handler that ignores cancellation is left behind; the worker learns it from
            # `abandoned` and retires the process that still runs it.
            await asyncio.wait({handler}, timeout=self._cancel_grace)
            await context.settle()
            error = JobError(
                message=f"attempt exceeded its timeout of {job.timeout:g} s",
                type="TimeoutError",
                kind=ErrorKind.TIMED_OUT,
            )
            outcome = await self._record_failure(lease, job_type, error)
            return attrs.evolve(outcome, abandoned=not handler.done())
        await context.settle()
        if handler.cancelled():
            error = JobError(message="the handler cancelled itself", type="CancelledError")
            return await self._record_failure(lease, job_type, error)
        failure = handler.exception()
        if isinstance(failure, NonRetryableError):
            return await self._record_failure(
                lease, job_type, error_from(failure, ErrorKind.NON_RETRYABLE)
            )
        if failure is not None:
            return await self._record_failure(lease, job_type, error_from(failure, ErrorKind.ERROR))
        result = handler.result()
        try:
            stored = await _until_stored(lambda: self._queue.complete(lease, result))
        except UnstorableResultError as exc:
            # The handler will return the same thing next time: another attempt cannot help.
            return await self._record_failure(
                lease, job_type, error_from(exc, ErrorKind.NON_RETRYABLE)
            )
        return ProcessResult(Outcome.SUCCEEDED if stored else Outcome.LEASE_LOST)

    async def record_lost(self, lease: Lease, error: JobError) -> ProcessResult:
        """Record an attempt whose process died under it: retried per policy, or dead."""
        try:
            job_type: JobType | None = self._registry.resolve(lease.job.type)
        except UnknownJobTypeError:
            job_type = None
        return await self._record_failure(lease, job_type, error)

    async def _record_failure(
        self, lease: Lease, job_type: JobType | None, error: JobError
    ) -> ProcessResult:
        job = lease.job
        retry_in: float | None = None
        if job_type is not None and error.retryable and job.attempts_left > 0:
            retry_in = job_type.retry.delay(job.attempts, self._random)
        if not await _until_stored(lambda: self._queue.fail(lease, error, retry_in)):
            return ProcessResult(Outcome.LEASE_LOST, error)
        outcome = Outcome.DEAD if retry_in is None else Outcome.RETRYING
        return ProcessResult(outcome, error, retry_in)


async def _until_stored(write: Callable[[], Awaitable[bool]]) -> bool:
    """Retry an outcome write while the backend is unreachable.

    The result of work already done is worth waiting for; the lease's token decides whether
    the write still counts once the backend answers. The worker cancels this wait when it
    learns the lease is gone.
    """
    delay = _STORE_RETRY_FIRST
    while True:
        try:
            return await write()
        except QueueUnavailableError:
            await asyncio.sleep(delay)
            delay = min(delay * 2, _STORE_RETRY_CAP)


def describe(job: Job) -> JSONObject:
    """The fields every log line about a job carries; never the payload (it may hold secrets)."""
    return {"job_id": job.id, "type": job.type, "queue": job.queue, "attempt": job.attempts}
