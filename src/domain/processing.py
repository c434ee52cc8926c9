"""Running one claimed attempt to its end, and reporting how it ended."""

from __future__ import annotations

import asyncio
import traceback
from collections.abc import Awaitable, Callable
from typing import Final, TypeVar

import attrs

from domain.eager import start_eagerly
from domain.errors import (
    InvalidJobError,
    JobCancelledError,
    NonRetryableError,
    NotReplicatedError,
    QueueUnavailableError,
    UnknownJobTypeError,
    UnstorableResultError,
)
from domain.job_types import JobContext, JobType, JobTypeRegistry
from domain.jobs import ErrorKind, Job, JobError, JobStatus, JSONObject, Lease
from domain.ports import AttemptReporter, Clock
from domain.retry import Random
from domain.settlement import Ending

T = TypeVar("T")

_TRACEBACK_TAIL: Final = 2000
_STORE_RETRY_FIRST: Final = 0.05
_STORE_RETRY_CAP: Final = 2.0


@attrs.frozen
class ProcessResult:
    """How an attempt ended, and what its settlement stored."""

    ending: Ending
    # The status the backend gave the job; None when the lease was lost (someone else owns
    # the job now, and nothing was written).
    status: JobStatus | None
    # The handler did not stop when its attempt timed out and still runs somewhere.
    abandoned: bool = False
    # What the handler raised, for the worker's log: its traceback is the operator's to read,
    # and is kept on the job only when the processor is told to expose it.
    failure: BaseException | None = attrs.field(default=None, eq=False, repr=False)
    # The settlement is on the primary, but fewer replicas than required confirmed it in
    # time (the backend must confirm writes on replicas): a failover before it reaches one
    # runs the job again.
    unreplicated: NotReplicatedError | None = attrs.field(default=None, eq=False, repr=False)

    @property
    def error(self) -> JobError | None:
        return self.ending.error


def error_from(exc: BaseException, kind: ErrorKind, *, with_traceback: bool = False) -> JobError:
    """What a job keeps of an exception: its type and message, which clients see; and the
    tail of its traceback only `with_traceback` (it names the server's files)."""
    tail = None
    if with_traceback:
        tail = "".join(traceback.format_exception(exc))[-_TRACEBACK_TAIL:]
    return JobError(
        message=str(exc) or type(exc).__name__, type=type(exc).__name__, kind=kind, traceback=tail
    )


@attrs.define
class JobProcessor:
    """Runs one claimed job to the end of its attempt and reports how it ended."""

    _reporter: AttemptReporter
    _registry: JobTypeRegistry
    _random: Random
    # How long a timed-out handler gets to stop once cancelled.
    _cancel_grace: float = 2.0
    # Reads deadlines; without it, attempts are bounded by their timeout alone.
    _clock: Clock | None = None
    # Keep the tail of a handler's traceback on the job (`CONVEYOR_EXPOSE_TRACEBACKS`).
    _expose_tracebacks: bool = False

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
            return await self._failed(lease, None, error_from(exc, ErrorKind.INVALID))
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
            result = await self._failed(lease, job_type, _timed_out(job, deadline_bound))
            return attrs.evolve(result, abandoned=not handler.done())
        await context.settle()
        if handler.cancelled():
            error = JobError(message="the handler cancelled itself", type="CancelledError")
            return await self._failed(lease, job_type, error)
        failure = handler.exception()
        if isinstance(failure, JobCancelledError):
            return await self.record(lease, Ending.cancelled())
        if failure is not None:
            retryable = not isinstance(failure, NonRetryableError)
            kind = ErrorKind.ERROR if retryable else ErrorKind.NON_RETRYABLE
            error = error_from(failure, kind, with_traceback=self._expose_tracebacks)
            result = await self._failed(lease, job_type, error)
            return attrs.evolve(result, failure=failure)
        try:
            return await self.record(lease, Ending.succeeded(handler.result()))
        except UnstorableResultError as exc:
            # The handler will return the same thing next time: another attempt cannot help.
            return await self._failed(lease, job_type, error_from(exc, ErrorKind.NON_RETRYABLE))

    async def record(self, lease: Lease, ending: Ending) -> ProcessResult:
        """Settle the attempt as `ending` says, waiting out a backend outage.

        A settlement the replicas did not confirm in time is not written again (its token
        would be refused as stale): it stands on the primary, and the result says so."""
        try:
            status = await _until_stored(lambda: self._reporter.settle(lease, ending))
        except NotReplicatedError as exc:
            return ProcessResult(ending, exc.settled, unreplicated=exc)
        return ProcessResult(ending, status)

    async def record_lost(self, lease: Lease, error: JobError) -> ProcessResult:
        """Record an attempt whose process died under it: retried per policy, or dead."""
        try:
            job_type: JobType | None = self._registry.resolve(lease.job.type)
        except UnknownJobTypeError:
            job_type = None
        return await self._failed(lease, job_type, error)

    async def _failed(
        self, lease: Lease, job_type: JobType | None, error: JobError
    ) -> ProcessResult:
        retry_in = None
        if job_type is not None:
            retry_in = job_type.retry.delay(lease.job.attempts, self._random)
        return await self.record(lease, Ending.failed(error, retry_in))


def _timed_out(job: Job, deadline_bound: bool) -> JobError:
    if deadline_bound:
        return JobError(
            message="the job's deadline passed while it ran",
            type="DeadlineExceeded",
            kind=ErrorKind.EXPIRED,
        )
    return JobError(
        message=f"attempt exceeded its timeout of {job.timeout:g} s",
        type="TimeoutError",
        kind=ErrorKind.TIMED_OUT,
    )


async def _until_stored(write: Callable[[], Awaitable[T]]) -> T:
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
    """The fields every log line about a job carries; never the payload (it may hold secrets).

    With the trace the job joined (its submitter traced), the trace's id too, so a log line
    leads to the trace and back.
    """
    fields = {"job_id": job.id, "type": job.type, "queue": job.queue, "attempt": job.attempts}
    if job.trace_context is not None:
        fields["trace_id"] = trace_id_of(job.trace_context)
    return fields


def trace_id_of(traceparent: str) -> str:
    """The trace id of a W3C `traceparent` (`00-<trace id>-<span id>-<flags>`)."""
    return traceparent[3:35]
