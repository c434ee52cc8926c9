"""The one function RQ runs for Conveyor: `execute(type, payload, envelope)`.

The adapter stores every job as a call of this function, by its dotted name, with plain-JSON
arguments. It looks the type up in the registry (nothing named by data is ever imported), and
runs one attempt through the domain's `JobProcessor`, as the native worker does: payload
validation, the type's timeout (cancel, then a grace), non-retryable errors, results that
cannot be stored, a handler stopping on a cancel request. The attempt's outcome goes back to
RQ the way RQ expects it: a return value on success; an exception otherwise, after the job's
`retries_left` is zeroed when another attempt cannot help, so RQ dead-letters it instead of
retrying (a cancelled attempt is settled by the worker, see `rq_worker`). Progress goes to the
job's meta as the handler reports it; the handler learns of a cancel request from the job's
hash (`JobContext.cancel_requested`).

A job cancelled before its attempt started (a worker had taken it off its queue already) runs
nothing: the worker reads its cancel mark as the attempt starts, and `execute` stops at once.

It runs inside RQ's work-horse, a synchronous process, so it drives the attempt on an event loop
of its own (one per process and thread, kept between attempts).
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import threading
import time
import uuid
from collections.abc import Callable, Coroutine, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any, Final, TypeVar

import attrs
from redis import Redis
from redis.exceptions import RedisError
from rq import get_current_job

from adapters.rq_codec import (
    ATTEMPT,
    CANCEL_REQUESTED_AT,
    PROGRESS,
    SERIALIZER,
    AttemptEnd,
    ConveyorRqJob,
    UndecodableJobError,
    job_args,
    job_from_args,
    note_failure,
)
from domain.eager import start_eagerly
from domain.errors import UnstorableResultError, UnsupportedOperationError
from domain.job_types import JobContext, JobType, JobTypeRegistry
from domain.jobs import ErrorKind, Job, JobError, JobStatus, JSONObject, JSONValue, Lease
from domain.ports import Capabilities, JobPage, JobQuery, JobQueue, NewJob, Submitted
from domain.schema import Field, Kind, PayloadSchema
from domain.services import JobProcessor, Outcome, ProcessResult

T = TypeVar("T")
log = logging.getLogger("conveyor.worker.rq")

_RANDOM: Final = 0.0  # the retry delays were fixed at submission (RQ's Retry intervals)
# A handler asking whether its job's cancellation was requested reads Redis at most this often.
CANCEL_POLL_SECONDS: Final = 0.25


@attrs.frozen
class Runtime:
    registry: JobTypeRegistry
    cancel_grace: float = 2.0


_runtime: Runtime | None = None


def configure(registry: JobTypeRegistry, *, cancel_grace: float = 2.0) -> None:
    """Set what `execute` runs with; the RQ worker calls it once, before it forks work-horses."""
    global _runtime
    _runtime = Runtime(registry, cancel_grace)


def _current_runtime() -> Runtime:
    if _runtime is None:
        # A horse of a worker that did not configure us (should not happen): build the same
        # registry the container would.
        from entrypoints.container import build_container
        from entrypoints.settings import Settings

        configure(build_container(Settings.from_env()).registry())
    assert _runtime is not None
    return _runtime


class AttemptFailedError(Exception):
    """What RQ sees when an attempt failed; the job's meta holds the real error."""

    def __init__(self, error: JobError) -> None:
        super().__init__(f"{error.type}: {error.message}")
        self.error = error


class AttemptCancelledError(Exception):
    """What RQ sees when an attempt stopped on its job's cancellation (or never started)."""


def execute(type_name: object, payload: object, envelope: object) -> JSONValue:
    """Run one attempt of a Conveyor job inside RQ; answers its result or raises."""
    rq_job = get_current_job()
    if not isinstance(rq_job, ConveyorRqJob):
        raise RuntimeError("execute() runs only inside Conveyor's RQ worker")
    if rq_job.cancelled_before_start:
        _give_up(rq_job)
        rq_job.attempt_end = AttemptEnd.CANCELLED
        raise AttemptCancelledError("the job was cancelled before its attempt started")
    meta = rq_job.conveyor_meta()
    attempt = meta.get(ATTEMPT)
    attempts = attempt if isinstance(attempt, int) and attempt > 0 else 1
    try:
        job = rq_job.planned_attempt
        if job is None or job.attempts != attempts:
            job = job_from_args(
                rq_job.id,
                [type_name, payload, envelope],
                status=JobStatus.ACTIVE,
                attempts=attempts,
            )
    except UndecodableJobError as exc:
        _give_up(rq_job)
        error = JobError(
            f"stored job cannot be decoded: {exc}", "UndecodableJob", ErrorKind.INVALID
        )
        _record_error(rq_job, error)
        raise AttemptFailedError(error) from None
    runtime = _current_runtime()
    attempt_record = RqAttempt(rq_job)
    processor = JobProcessor(
        attempt_record, runtime.registry, lambda: _RANDOM, cancel_grace=runtime.cancel_grace
    )
    result = _run(_process(processor, Lease(job, rq_job.id), attempt_record))
    if result.outcome is Outcome.SUCCEEDED:
        return attempt_record.result
    if result.outcome is Outcome.CANCELLED:
        _give_up(rq_job)
        rq_job.attempt_end = AttemptEnd.CANCELLED
        raise AttemptCancelledError("the handler stopped on the job's cancel request")
    error = result.error or JobError("the attempt failed", "AttemptFailed")
    if result.outcome is not Outcome.RETRYING:
        _give_up(rq_job)
    _record_error(rq_job, error)
    raise AttemptFailedError(error)


# One event loop per process and thread, kept between attempts: a simple worker reuses its loop
# instead of building one per job; a forked work-horse uses the one its worker made before
# forking (see `prepare_horse_loop`).
_loops: dict[tuple[int, int], asyncio.AbstractEventLoop] = {}
_horse_loop: tuple[int, asyncio.AbstractEventLoop] | None = None


def prepare_horse_loop() -> None:
    """Make, in the forking worker, the event loop its work-horses will run on.

    Building a loop (a selector, a self-pipe) and first running one cost a fresh process over a
    millisecond; made once here, every horse inherits it ready. The worker itself never runs
    it, and its horses run one at a time (RQ waits for each before forking the next), each
    exiting after its one attempt, so no two processes ever use the loop (or its selector) at
    once.
    """
    global _horse_loop
    _horse_loop = (os.getpid(), asyncio.new_event_loop())


def _loop() -> asyncio.AbstractEventLoop:
    key = (os.getpid(), threading.get_ident())
    loop = _loops.get(key)
    if loop is None or loop.is_closed():
        inherited = _horse_loop
        if (
            inherited is not None
            and inherited[0] == os.getppid()
            and threading.current_thread() is threading.main_thread()
            and not inherited[1].is_closed()
        ):
            loop = inherited[1]
        else:
            loop = asyncio.new_event_loop()
        _loops[key] = loop
    return loop


def _run(main: Coroutine[Any, Any, T]) -> T:
    """Run `main` to its end on this thread's loop. It starts eagerly, with the loop marked
    running: an attempt that never waits (most short jobs) ends there, without a task or a
    turn of the loop; one that waits carries on where it stopped, on the loop."""
    loop = _loop()
    try:
        asyncio._set_running_loop(loop)
        try:
            attempt = start_eagerly(main)
        finally:
            asyncio._set_running_loop(None)
        if not attempt.done():
            loop.run_until_complete(attempt)
        return attempt.result()
    finally:
        # Like asyncio.run: nothing of this attempt may run on into the next one.
        leftover = asyncio.all_tasks(loop)
        for task in leftover:
            task.cancel()
        if leftover:
            loop.run_until_complete(asyncio.gather(*leftover, return_exceptions=True))


async def _rehearsal_handler(payload: JSONObject, context: JobContext) -> JSONValue:
    return None


_REHEARSAL = JobType(
    name="rehearsal",
    description="A no-op the forking worker runs in itself before it forks.",
    schema=PayloadSchema(fields=(Field(name="n", kind=Kind.INTEGER, description="any"),)),
    handler=_rehearsal_handler,
)


def rehearse(connection: Redis, *, times: int = 20) -> None:
    """Run the attempt machinery (decoding, validation, `JobProcessor`, recording) on a no-op
    job type of its own, in the forking worker before it forks. Python 3.11 specializes
    bytecode as it first runs it: done here once, every work-horse inherits it done instead of
    redoing it (and copying each page it writes). No handler of the registry runs, nothing
    touches Redis."""
    registry = JobTypeRegistry([_REHEARSAL])
    stored = Job.submitted(
        id=uuid.uuid4().hex,
        type=_REHEARSAL.name,
        payload={"n": 1},
        queue="rehearsal",
        max_attempts=1,
        timeout=1.0,
        now=datetime.now(UTC),
    )
    stand_in = ConveyorRqJob(id=stored.id, connection=connection)
    for _ in range(times):
        job = job_from_args(stored.id, job_args(stored), status=JobStatus.ACTIVE, attempts=1)
        attempt = RqAttempt(stand_in)
        processor = JobProcessor(attempt, registry, lambda: _RANDOM)
        _run(_process(processor, Lease(job, job.id), attempt))


async def _process(processor: JobProcessor, lease: Lease, attempt: RqAttempt) -> ProcessResult:
    context = RqJobContext(lease, attempt)
    try:
        return await processor.process(lease, context)
    finally:
        context.close()


def _give_up(rq_job: ConveyorRqJob) -> None:
    # Read by RQ's failure handling in this same process, right after we raise.
    rq_job.retries_left = 0


def _record_error(rq_job: ConveyorRqJob, error: JobError) -> None:
    rq_job.attempt_end = AttemptEnd.FAILED
    rq_job.meta = note_failure(rq_job, error)
    try:
        rq_job.save_meta()  # type: ignore[no-untyped-call]
    except RedisError as exc:
        log.warning("could not record the error of job %s: %s", rq_job.id, exc)


class RqAttempt(JobQueue):
    """One attempt, seen by `JobProcessor` as the queue it reports to.

    Only the calls about this attempt work: progress (to the job's meta), complete and fail
    (kept here, for `execute` to hand to RQ), cancelled, and reading the job's cancel request.
    The job's own id serves as its lease token: RQ has no fencing.
    """

    capabilities = Capabilities(
        leases=False,
        shared_across_processes=False,
        blocking_claim=False,
        worker_claims=True,
        batch_claims=False,
        priorities=False,
    )

    def __init__(self, rq_job: ConveyorRqJob) -> None:
        self._rq_job = rq_job
        self.result: JSONValue = None
        self.error: JobError | None = None

    async def set_progress(self, lease: Lease, progress: int) -> bool:
        meta = self._rq_job.conveyor_meta()
        meta[PROGRESS] = max(0, min(100, int(progress)))
        self._rq_job.meta = meta
        try:
            # On the loop, not in a thread: one short HSET, and no two writers of the meta.
            self._rq_job.save_meta()  # type: ignore[no-untyped-call]
        except RedisError as exc:
            log.warning("progress of job %s not recorded: %s", lease.job_id, exc)
        return True

    async def complete(self, lease: Lease, result: JSONValue) -> bool:
        try:
            SERIALIZER.dumps(result)  # what RQ will store it with
        except (TypeError, ValueError) as exc:
            raise UnstorableResultError(str(exc)) from None
        self.result = result
        return True

    async def fail(self, lease: Lease, error: JobError, retry_in: float | None) -> bool:
        self.error = error
        return True

    async def cancelled(self, lease: Lease) -> bool:
        return True  # `execute` learns it from the processor's outcome, and hands it to RQ

    def cancel_was_requested(self) -> bool:
        """Whether the job's cancellation was asked for, as Redis says now."""
        try:
            return bool(self._rq_job.connection.hexists(self._rq_job.key, CANCEL_REQUESTED_AT))
        except RedisError as exc:
            log.warning("could not read the cancel request of job %s: %s", self._rq_job.id, exc)
            return False

    async def submit(self, jobs: Sequence[NewJob]) -> Sequence[Submitted]:
        raise _outside("submit")

    async def get(self, job_id: str) -> Job | None:
        raise _outside("get")

    async def list_jobs(self, query: JobQuery) -> JobPage:
        raise _outside("list_jobs")

    async def claim(
        self,
        queues: Sequence[str],
        *,
        worker_id: str,
        limit: int,
        lease_seconds: float,
        wait_seconds: float,
    ) -> Sequence[Lease]:
        raise _outside("claim")

    async def renew(self, leases: Sequence[Lease], lease_seconds: float) -> set[str]:
        raise _outside("renew")

    async def release(self, lease: Lease) -> bool:
        raise _outside("release")

    async def held_by(self, worker_id: str, queues: Sequence[str]) -> Sequence[Lease]:
        raise _outside("held_by")

    async def recover(self, queues: Sequence[str]) -> int:
        raise _outside("recover")

    async def requeue(self, job_id: str) -> Job:
        raise _outside("requeue")

    async def ping(self) -> None:
        return None

    async def close(self) -> None:
        return None


def _outside(operation: str) -> UnsupportedOperationError:
    return UnsupportedOperationError(operation, "worker_claims", "not part of one RQ attempt")


class RqJobContext(JobContext):
    """The context a handler sees inside RQ's work-horse."""

    def __init__(self, lease: Lease, attempt: RqAttempt) -> None:
        self._lease = lease
        self._attempt = attempt
        self._loop = asyncio.get_running_loop()
        self._cancel_seen = False
        self._cancel_read_at = -math.inf
        self._writes: set[asyncio.Task[bool]] = set()
        self._pending: int | None = None
        # Its own threads (made on first use), never joined: a handler stuck in one must not
        # keep the attempt from ending (the horse exits with os._exit; RQ's death penalty is
        # the backstop).
        self._executor: ThreadPoolExecutor | None = None

    @property
    def job_id(self) -> str:
        return self._lease.job_id

    @property
    def attempt(self) -> int:
        return self._lease.attempt

    @property
    def cancel_requested(self) -> bool:
        # Read lazily (a handler that never asks costs nothing), at most every
        # CANCEL_POLL_SECONDS; once seen, it stays.
        if not self._cancel_seen:
            now = time.monotonic()
            if now - self._cancel_read_at >= CANCEL_POLL_SECONDS:
                self._cancel_read_at = now
                self._cancel_seen = self._attempt.cancel_was_requested()
        return self._cancel_seen

    def report_progress(self, percent: int) -> None:
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self._loop:
            self._write(percent)
        else:  # from a handler's blocking function, in a thread
            self._loop.call_soon_threadsafe(self._write, percent)

    def _write(self, percent: int) -> None:
        # One write in flight; the latest value wins.
        if self._writes:
            self._pending = percent
            return
        task = self._loop.create_task(self._attempt.set_progress(self._lease, percent))
        self._writes.add(task)
        task.add_done_callback(self._written)

    def _written(self, task: asyncio.Task[bool]) -> None:
        self._writes.discard(task)
        if self._pending is not None:
            percent, self._pending = self._pending, None
            self._write(percent)

    async def settle(self) -> None:
        while self._writes:
            await asyncio.wait(set(self._writes))

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)

    async def run_blocking(self, fn: Callable[..., T], *args: Any) -> T:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=4, thread_name_prefix="rq-blocking")
        return await self._loop.run_in_executor(self._executor, fn, *args)

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
