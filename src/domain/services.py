"""The use cases: submit, read, cancel and explain jobs, manage queues; process one claimed job."""

from __future__ import annotations

import asyncio
import enum
import hashlib
import json
import math
import traceback
import uuid
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime, timedelta
from typing import Any, Final

import attrs

from domain.eager import start_eagerly
from domain.errors import (
    FieldError,
    InvalidJobError,
    JobCancelledError,
    JobNotFoundError,
    NonRetryableError,
    QueueUnavailableError,
    UnknownJobTypeError,
    UnstorableResultError,
)
from domain.job_types import JobContext, JobType, JobTypeRegistry
from domain.jobs import (
    PRIORITY_MAX,
    PRIORITY_MIN,
    ErrorKind,
    Job,
    JobError,
    JSONObject,
    Lease,
    is_idempotency_key,
    is_name,
)
from domain.ports import (
    Clock,
    JobPage,
    JobQuery,
    JobQueue,
    JobSituation,
    NewJob,
    QueueStats,
)
from domain.retry import Random
from domain.timeline import TimelineEvent, WaitingReason, timeline, waiting_reason

_TRACEBACK_TAIL = 2000
_STORE_RETRY_FIRST = 0.05
_STORE_RETRY_CAP = 2.0
# How far ahead a job may be scheduled, and its deadline set.
MAX_SCHEDULE_AHEAD: Final = 366 * 86400.0
# Jobs in one batch submission.
MAX_BATCH: Final = 1000
# How often a waiting read (`JobService.wait`) looks at the job again.
_WAIT_POLL: Final = 0.1


def new_job_id() -> str:
    return uuid.uuid4().hex


@attrs.frozen(kw_only=True)
class Submission:
    """A client's request for work, as decoded from the wire but not yet validated."""

    type: object
    payload: object
    max_attempts: object = None
    timeout: object = None
    queue: object = None  # default: the job type's
    priority: object = None  # default: the job type's
    delay: object = None  # seconds from now; or
    run_at: object = None  # an RFC 3339 time
    deadline: object = None  # an RFC 3339 time, or seconds from now

    def fingerprint(self) -> str:
        """Identifies what was asked for, so a repeat under an idempotency key can be told
        apart from a different request reusing it."""
        document = {
            "type": self.type,
            "payload": self.payload,
            "max_attempts": self.max_attempts,
            "timeout": self.timeout,
            "queue": self.queue,
            "priority": self.priority,
            "delay": self.delay,
            "run_at": self.run_at,
            "deadline": self.deadline,
        }
        canonical = json.dumps(document, sort_keys=True, separators=(",", ":"), default=repr)
        return hashlib.sha256(canonical.encode()).hexdigest()


@attrs.frozen
class Accepted:
    """A submission's answer: the job, and whether this request created it."""

    job: Job
    created: bool


@attrs.frozen(kw_only=True)
class JobDetails:
    """A job with what explains it: why it is not running, and what happened to it so far."""

    job: Job
    waiting_reason: WaitingReason | None
    timeline: Sequence[TimelineEvent]


@attrs.define
class JobService:
    """Submitting, reading and cancelling jobs, and managing queues: what the API and the
    CLI drive."""

    _queue: JobQueue
    _registry: JobTypeRegistry
    _clock: Clock
    _new_id: Callable[[], str] = new_job_id

    def validate(self, submission: Submission, *, idempotency_key: str | None = None) -> Job:
        """The job this submission would create; raises on anything invalid, listing it all."""
        job_type = self._registry.resolve(submission.type)
        now = self._clock.now()
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
        queue = job_type.queue
        if submission.queue is not None:
            if isinstance(submission.queue, str) and is_name(submission.queue):
                queue = submission.queue
            else:
                errors.append(FieldError("queue", "expected a name of 1-64 a-z, 0-9, '_' or '-'"))
        priority = job_type.priority
        if submission.priority is not None:
            value = submission.priority
            if isinstance(value, int) and not isinstance(value, bool):
                if PRIORITY_MIN <= value <= PRIORITY_MAX:
                    priority = value
                else:
                    errors.append(
                        FieldError("priority", f"expected {PRIORITY_MIN} to {PRIORITY_MAX}")
                    )
            else:
                errors.append(FieldError("priority", "expected an integer"))
        run_at = _run_at(submission, now, errors)
        deadline = _deadline(submission.deadline, now, errors)
        if deadline is not None and deadline <= max(now, run_at or now):
            errors.append(FieldError("deadline", "expected a time after the job may start"))
        if errors:
            raise InvalidJobError(errors)
        return Job.submitted(
            id=self._new_id(),
            type=job_type.name,
            payload=payload,
            queue=queue,
            priority=priority,
            max_attempts=max_attempts,
            timeout=timeout,
            now=now,
            run_at=run_at,
            deadline=deadline,
            idempotency_key=idempotency_key,
        )

    async def submit(
        self, submission: Submission, *, idempotency_key: str | None = None
    ) -> Accepted:
        """Validate and store one job. Raises UnknownJobTypeError, InvalidJobError,
        IdempotencyConflictError, AdmissionRefusedError or QueueUnavailableError; a job is
        stored whole or not at all. A repeat under `idempotency_key` answers the job the
        first request made (created False)."""
        (accepted,) = await self.submit_batch([submission], [idempotency_key])
        return accepted

    async def submit_batch(
        self, submissions: Sequence[Submission], keys: Sequence[str | None] | None = None
    ) -> list[Accepted]:
        """Validate every submission, then store them all in one step, or none.

        Raises InvalidJobError listing every bad field of every item (paths start with
        `[index].`), or what `submit` raises.
        """
        if keys is None:
            keys = [None] * len(submissions)
        if len(keys) != len(submissions):
            raise ValueError("one idempotency key (or None) per submission")
        jobs: list[Job] = []
        errors: list[FieldError] = []
        single = len(submissions) == 1
        for index, (submission, key) in enumerate(zip(submissions, keys, strict=True)):
            try:
                if key is not None and not is_idempotency_key(key):
                    raise InvalidJobError(
                        [FieldError("idempotency_key", "expected 1-200 printable ASCII")]
                    )
                jobs.append(self.validate(submission, idempotency_key=key))
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
        stored = await self._queue.submit(
            [
                NewJob(job=job, idempotency_key=key, fingerprint=submission.fingerprint())
                for job, key, submission in zip(jobs, keys, submissions, strict=True)
            ]
        )
        accepted: list[Accepted] = []
        for job, answer in zip(jobs, stored, strict=True):
            if answer.created or answer.job_id == job.id:
                accepted.append(Accepted(job, answer.created))
                continue
            earlier = await self._queue.get(answer.job_id)
            # The first request's job may be past its retention while its key is not: the
            # answer keeps its id, described as this request would have made it.
            accepted.append(Accepted(earlier or attrs.evolve(job, id=answer.job_id), False))
        return accepted

    async def get(self, job_id: str) -> Job:
        job = await self._queue.get(job_id)
        if job is None:
            raise JobNotFoundError(job_id)
        return job

    async def wait(self, job_id: str, seconds: float) -> Job:
        """The job once it is finished (terminal), or as it is after `seconds`."""
        loop = asyncio.get_running_loop()
        until = loop.time() + seconds
        while True:
            job = await self.get(job_id)
            left = until - loop.time()
            if job.status.is_terminal or left <= 0:
                return job
            await asyncio.sleep(min(_WAIT_POLL, left))

    async def details(self, job_id: str, *, wait: float = 0.0) -> JobDetails:
        """The job (after waiting up to `wait` seconds for it to finish), its waiting reason
        and timeline."""
        job = await self.wait(job_id, wait) if wait > 0 else await self.get(job_id)
        situation: JobSituation | None = None
        if job.status.is_waiting and self._queue.capabilities.queue_stats:
            situation = await self._queue.situation(job_id)
            if situation is not None:
                job = situation.job
        now = self._clock.now()
        return JobDetails(
            job=job, waiting_reason=waiting_reason(job, situation, now), timeline=timeline(job)
        )

    async def list(self, query: JobQuery) -> JobPage:
        return await self._queue.list_jobs(query)

    async def retry(self, job_id: str) -> Job:
        """Send a dead or cancelled job back to the queue with fresh attempts."""
        return await self._queue.requeue(job_id)

    async def cancel(self, job_id: str) -> Job:
        """Cancel a waiting job at once, or ask an active one's worker to stop it."""
        return await self._queue.cancel(job_id)

    async def queues(self, names: Sequence[str] | None = None) -> Sequence[QueueStats]:
        return await self._queue.queue_stats(names)

    async def pause(self, queue: str) -> QueueStats:
        await self._queue.pause(queue)
        return await self._one_queue(queue)

    async def resume(self, queue: str) -> QueueStats:
        await self._queue.resume(queue)
        return await self._one_queue(queue)

    async def _one_queue(self, queue: str) -> QueueStats:
        (stats,) = await self._queue.queue_stats([queue])
        return stats


def _run_at(submission: Submission, now: datetime, errors: list[FieldError]) -> datetime | None:
    if submission.delay is not None and submission.run_at is not None:
        errors.append(FieldError("run_at", "give either delay or run_at, not both"))
        return None
    if submission.delay is not None:
        delay = submission.delay
        if (
            isinstance(delay, bool)
            or not isinstance(delay, int | float)
            or not math.isfinite(delay)
        ):
            errors.append(FieldError("delay", "expected a number of seconds"))
        elif not 0 <= delay <= MAX_SCHEDULE_AHEAD:
            errors.append(FieldError("delay", f"expected 0 to {MAX_SCHEDULE_AHEAD:g} seconds"))
        else:
            return now + timedelta(seconds=delay) if delay > 0 else None
        return None
    if submission.run_at is not None:
        moment = _moment(submission.run_at, "run_at", errors)
        if moment is not None and moment > now + timedelta(seconds=MAX_SCHEDULE_AHEAD):
            errors.append(FieldError("run_at", "expected a time within a year"))
            return None
        # A time already past runs now.
        return moment if moment is not None and moment > now else None
    return None


def _deadline(value: object, now: datetime, errors: list[FieldError]) -> datetime | None:
    if value is None:
        return None
    if isinstance(value, int | float) and not isinstance(value, bool):
        if math.isfinite(value) and 0 < value <= MAX_SCHEDULE_AHEAD:
            return now + timedelta(seconds=value)
        errors.append(
            FieldError("deadline", f"expected more than 0 and at most {MAX_SCHEDULE_AHEAD:g} s")
        )
        return None
    moment = _moment(value, "deadline", errors, what="an RFC 3339 time or seconds from now")
    if moment is not None and moment > now + timedelta(seconds=MAX_SCHEDULE_AHEAD):
        errors.append(FieldError("deadline", "expected a time within a year"))
        return None
    return moment


def _moment(
    value: object, name: str, errors: list[FieldError], *, what: str = "an RFC 3339 time"
) -> datetime | None:
    """An RFC 3339 date-time with its offset (`2026-01-02T03:04:05Z`), as an aware datetime."""
    if isinstance(value, str) and 20 <= len(value) <= 40 and value[10:11] in ("T", "t"):
        try:
            moment = datetime.fromisoformat(value.replace("z", "Z"))
        except ValueError:
            moment = None
        if moment is not None and moment.utcoffset() is not None:
            return moment
    errors.append(FieldError(name, f"expected {what} with a UTC offset"))
    return None


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
    DEAD = "dead"  # failed for good (or expired: its deadline passed)
    CANCELLED = "cancelled"  # the handler stopped on a cancel request
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
    # Reads deadlines; without it, attempts are bounded by their timeout alone.
    _clock: Clock | None = None

    async def process(self, lease: Lease, context: JobContext) -> ProcessResult:
        job = lease.job
        timeout, deadline_bound = job.timeout, False
        if self._clock is not None:
            remaining = job.remaining(self._clock.now())
            if remaining is not None and remaining < timeout:
                timeout, deadline_bound = max(remaining, 0.001), True
        try:
            job_type = self._registry.resolve(job.type)
            payload = job_type.schema.validate(job.payload)
        except (UnknownJobTypeError, InvalidJobError) as exc:
            # Whatever sits in the backend is data, not code: a job we cannot vouch for is
            # dead-lettered without running anything.
            return await self._record_failure(lease, None, error_from(exc, ErrorKind.INVALID))
        # Most short handlers never wait: those end here, without a task or a turn of the loop.
        handler = start_eagerly(context.observe(job_type.handler(payload, context)))
        if not handler.done():
            try:
                await asyncio.wait({handler}, timeout=timeout)
            except asyncio.CancelledError:  # the worker stops this attempt (its lease is gone)
                handler.cancel()
                raise
        if not handler.done():
            handler.cancel()
            # A handler that ignores cancellation is left behind; the worker learns it from
            # `abandoned` and retires the process that still runs it.
            await asyncio.wait({handler}, timeout=self._cancel_grace)
            await context.settle()
            if deadline_bound:
                error = JobError(
                    message="the job's deadline passed while it ran",
                    type="DeadlineExceeded",
                    kind=ErrorKind.EXPIRED,
                )
            else:
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
        if isinstance(failure, JobCancelledError):
            return await self.record_cancelled(lease)
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

    async def record_cancelled(self, lease: Lease) -> ProcessResult:
        """Record an attempt that stopped on its job's cancel request."""
        if not await _until_stored(lambda: self._queue.cancelled(lease)):
            return ProcessResult(Outcome.LEASE_LOST)
        return ProcessResult(Outcome.CANCELLED)

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
