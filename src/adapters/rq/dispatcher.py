"""The one function RQ runs for Conveyor: `execute(type, payload, envelope)`.

Every job is stored as a call of this function, by its dotted name (`codec.DISPATCHER`), with
plain-JSON arguments. It looks the type up in the registry (nothing named by data is ever
imported), and runs one attempt through the domain's `JobProcessor`, as the native worker
does: payload validation, the type's timeout (cancel, then a grace), non-retryable errors,
results that cannot be stored, a handler stopping on a cancel request. The attempt reports to
an `RqReporter`: progress to the job's meta as the handler reports it, and its end, settled by
the one rule of `domain.settlement` (see `settling`). What the settlement says goes back to
RQ the way RQ expects it: a return value on success; otherwise an exception, and RQ's failure
handling writes the move the settlement says (`ConveyorRqJob.retry`), or dead-letters the job.
The handler learns of a cancel request from the job's hash (`JobContext.cancel_requested`).

A job cancelled before its attempt started (a worker had taken it off its queue already) runs
nothing: the worker reads its cancel mark as the attempt starts, and `execute` stops at once.

It runs inside RQ's work-horse, a synchronous process, so it drives the attempt on an event
loop of its own (`loop`). The worker configures it (`configure`) before it forks.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Final

import attrs
import redis
from redis.exceptions import RedisError
from rq import get_current_job

from adapters.rq import loop
from adapters.rq.codec import PROGRESS, SERIALIZER, job_args, job_from_args, meta_attempt
from adapters.rq.context import RqJobContext
from adapters.rq.jobs import ConveyorRqJob
from adapters.rq.settling import cancel_requested, settle, settle_unstarted
from domain.errors import ResultTooLargeError, UnstorableResultError
from domain.job_types import JobContext, JobType, JobTypeRegistry
from domain.jobs import AttemptOutcome, Job, JobError, JobStatus, JSONObject, JSONValue, Lease
from domain.ports import AttemptReporter
from domain.processing import JobProcessor, ProcessResult
from domain.retry import Random
from domain.schema import Field, Kind, PayloadSchema
from domain.settlement import Ending

log = logging.getLogger("conveyor.worker.rq")


@attrs.frozen
class Runtime:
    registry: JobTypeRegistry
    random: Random
    # How long a timed-out handler gets to stop once cancelled (`JobProcessor`).
    timeout_grace: float
    # The longest result kept, as JSON (None: no limit).
    max_result_bytes: int | None = None
    # Keep a failed handler's traceback on the job (`JobProcessor`).
    expose_tracebacks: bool = False


_runtime: Runtime | None = None


def configure(
    registry: JobTypeRegistry,
    *,
    random: Random,
    timeout_grace: float,
    max_result_bytes: int | None = None,
    expose_tracebacks: bool = False,
) -> None:
    """Set what `execute` runs with; the worker calls it before it forks work-horses."""
    global _runtime
    _runtime = Runtime(registry, random, timeout_grace, max_result_bytes, expose_tracebacks)


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
    runtime = _runtime
    if runtime is None:
        raise RuntimeError("the dispatcher runs only in a worker made by build_worker")
    if rq_job.cancelled_before_start:
        settle_unstarted(rq_job, datetime.now(UTC))
        raise AttemptCancelledError("the job was cancelled before its attempt started")
    attempts = max(1, meta_attempt(rq_job.conveyor_meta()))
    job = rq_job.planned_attempt
    if job is None or job.attempts != attempts:
        job = attrs.evolve(rq_job.stored_job(), status=JobStatus.ACTIVE, attempts=attempts)
    reporter = RqReporter(rq_job, runtime.max_result_bytes)
    processor = JobProcessor(
        reporter,
        runtime.registry,
        runtime.random,
        cancel_grace=runtime.timeout_grace,
        expose_tracebacks=runtime.expose_tracebacks,
    )
    result = loop.run(_process(processor, reporter, rq_job, Lease(job, rq_job.id)))
    if result.status is JobStatus.SUCCEEDED:
        return result.ending.result
    if result.status is JobStatus.CANCELLED:
        raise AttemptCancelledError("the attempt ended on the job's cancel request")
    raise AttemptFailedError(result.error or JobError("the attempt failed", "AttemptFailed"))


class RqReporter(AttemptReporter):
    """Where one attempt running in RQ's work-horse reports.

    RQ has no leases: the job's own id serves as its lease token, and every report counts.
    """

    def __init__(self, rq_job: ConveyorRqJob, max_result_bytes: int | None = None) -> None:
        self._rq_job = rq_job
        self._max_result_bytes = max_result_bytes

    async def set_progress(self, lease: Lease, progress: int) -> bool:
        rq_job = self._rq_job
        meta = rq_job.conveyor_meta()
        meta[PROGRESS] = max(0, min(100, int(progress)))
        rq_job.meta = meta
        try:
            # On the loop, not in a thread: one short HSET, and no two writers of the meta.
            rq_job.connection.hset(rq_job.key, "meta", SERIALIZER.dumps(meta))
        except RedisError as exc:
            log.warning("progress of job %s not recorded: %s", lease.job_id, exc)
        return True

    async def settle(self, lease: Lease, ending: Ending) -> JobStatus:
        if ending.outcome is AttemptOutcome.SUCCEEDED:
            try:
                stored = SERIALIZER.dumps(ending.result)  # what RQ will store it with
            except (TypeError, ValueError) as exc:
                raise UnstorableResultError(str(exc)) from None
            limit = self._max_result_bytes
            if limit is not None and len(stored) > limit:
                raise ResultTooLargeError(len(stored), limit)
            # A success wins over a cancel request: no need to read one.
            asked = False
        else:
            asked = cancel_requested(self._rq_job)
        now = datetime.now(UTC)
        return settle(self._rq_job, lease.job, ending, cancel_requested=asked, now=now).status


async def _process(
    processor: JobProcessor, reporter: RqReporter, rq_job: ConveyorRqJob, lease: Lease
) -> ProcessResult:
    context = RqJobContext(lease, reporter, lambda: cancel_requested(rq_job))
    try:
        return await processor.process(lease, context)
    finally:
        context.close()


async def _rehearsal_handler(payload: JSONObject, context: JobContext) -> JSONValue:
    return None


_REHEARSAL: Final = JobType(
    name="rehearsal",
    description="A no-op the forking worker runs in itself before it forks.",
    schema=PayloadSchema(fields=(Field(name="n", kind=Kind.INTEGER, description="any"),)),
    handler=_rehearsal_handler,
)


def rehearse(connection: redis.Redis, *, times: int = 20) -> None:
    """Run the attempt machinery (decoding, validation, `JobProcessor`, settling a success) on
    a no-op job type of its own, in the forking worker before it forks. Python 3.11
    specializes bytecode as it first runs it: done here once, every work-horse inherits it
    done instead of redoing it (and copying each page it writes). No handler of the registry
    runs, nothing touches Redis."""
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
    arguments: Sequence[JSONValue] = job_args(stored)
    for _ in range(times):
        job = job_from_args(stored.id, arguments, status=JobStatus.ACTIVE, attempts=1)
        reporter = RqReporter(stand_in)
        processor = JobProcessor(reporter, registry, lambda: 0.0)
        loop.run(_process(processor, reporter, stand_in, Lease(job, job.id)))
