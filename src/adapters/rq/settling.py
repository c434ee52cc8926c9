"""Settling an attempt of a Conveyor job on RQ, by the one rule of `domain.settlement`.

Whoever sees an attempt end settles it here: the dispatcher in the work-horse (the handler
returned, raised, timed out, stopped on a cancel request), the worker (its work-horse died, or
was killed after a cancel request's grace), RQ's exception handling (RQ's hard time limit
struck) and RQ's abandoned-job sweep (the worker vanished). Each builds the attempt's facts
(its number from the job's meta, its attempts allowed from the stored call, its cancel request
from the job's hash; RQ jobs have no deadline), asks `decide`, and notes the result in the
job's meta and on the job object. RQ's own code then writes it, in the pipeline where it
retries or fails a job: `ConveyorRqJob.should_retry` and `retry` follow the settlement.

Retry times follow the settlement: the delay is drawn from the job type's policy at each
failure (jitter and all, as on the native backend) and the job waits in RQ's scheduled
registry until its `retry_at`; RQ's `Retry` intervals are not used.

What RQ cannot do: read the cancel request and write the settlement in one atomic step. A
cancel requested in the few milliseconds between the two finds the job retried with its
request standing, and its next attempt stops before it runs; or dead-lettered.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, Final

import attrs
import rq.job
from redis.exceptions import RedisError
from rq.exceptions import AbandonedJobError
from rq.job import JobStatus as RqStatus
from rq.timeouts import JobTimeoutException

from adapters.rq.client import text
from adapters.rq.codec import (
    ATTEMPT,
    CANCEL_REQUESTED_AT,
    PID,
    SERIALIZER,
    UndecodableJobError,
    aware,
    meta_attempt,
    noted,
    worker_lost,
)
from adapters.rq.jobs import ConveyorRqJob
from domain.errors import UnknownJobTypeError
from domain.job_types import JobTypeRegistry
from domain.jobs import ErrorKind, Job, JobError, JobStatus
from domain.retry import Random
from domain.settlement import AttemptFacts, Ending, Settlement, decide, history_record

log = logging.getLogger("conveyor.worker.rq")

# What an attempt that RQ's hard time limit stopped records.
HARD_LIMIT: Final = JobError(
    message="the attempt ran past its hard time limit and was stopped by RQ",
    type="TimeoutError",
    kind=ErrorKind.TIMED_OUT,
)


def cancel_requested(rq_job: rq.job.Job) -> bool:
    """Whether the job's cancellation was asked for, as Redis says now (False if it cannot
    say: the attempt goes on, and its worker asks again)."""
    try:
        return bool(rq_job.connection.hexists(rq_job.key, CANCEL_REQUESTED_AT))
    except RedisError as exc:
        log.warning("could not read the cancel request of job %s: %s", rq_job.id, exc)
        return False


def settle(
    rq_job: ConveyorRqJob, job: Job, ending: Ending, *, cancel_requested: bool, now: datetime
) -> Settlement:
    """Settle the attempt of `job` (its attempts counting this one) that ended as `ending`.

    The settlement is noted on `rq_job` (its meta, with the attempt's record, and the
    settlement RQ's move follows). A dead letter's meta is written now: RQ's move into its
    failed registry does not write the meta. A success leaves the meta alone (see
    `decode_job`).
    """
    facts = AttemptFacts(
        attempts=job.attempts,
        max_attempts=job.max_attempts,
        deadline=None,
        cancel_requested=cancel_requested,
    )
    settlement = decide(ending, facts, now)
    if settlement.status is not JobStatus.SUCCEEDED:
        attempt = attrs.evolve(job, worker=rq_job.worker_name, started_at=aware(rq_job.started_at))
        record = history_record(attempt, settlement.outcome, ending.error, now)
        rq_job.meta = noted(rq_job.conveyor_meta(), record, ending.error, settlement.attempts)
        if settlement.status is JobStatus.DEAD:
            save_meta(rq_job)
    rq_job.settlement = settlement
    return settlement


def settle_unstarted(rq_job: ConveyorRqJob, now: datetime) -> Settlement:
    """Settle an attempt that stopped before it ran, its job cancelled first: it does not
    count, and leaves no record (RQ had marked it started)."""
    meta = rq_job.conveyor_meta()
    earlier = max(0, meta_attempt(meta) - 1)
    facts = AttemptFacts(
        attempts=earlier,
        max_attempts=rq_job.stored_job().max_attempts,
        deadline=None,
        cancel_requested=True,
    )
    settlement = decide(Ending.cancelled(), facts, now)
    meta[ATTEMPT] = settlement.attempts
    meta.pop(PID, None)
    rq_job.meta = meta
    rq_job.settlement = settlement
    return settlement


@attrs.frozen
class StoredAttempt:
    """An attempt as Redis holds it now, read by a process other than the one that ran it."""

    job: Job  # the job, its attempts counting this one
    status: RqStatus | None
    worker_name: str
    cancel_requested: bool


def read_attempt(rq_job: ConveyorRqJob) -> StoredAttempt:
    """The job's current attempt as stored (its meta refreshed on `rq_job`), in one round
    trip. Raises UndecodableJobError for a job that is not ours."""
    stored = rq_job.stored_job()
    status, worker, meta, asked = rq_job.connection.hmget(
        rq_job.key, ["status", "worker_name", "meta", CANCEL_REQUESTED_AT]
    )
    rq_job.meta = SERIALIZER.loads(meta) if meta else {}
    attempts = max(1, meta_attempt(rq_job.conveyor_meta()))
    return StoredAttempt(
        job=attrs.evolve(stored, status=JobStatus.ACTIVE, attempts=attempts),
        status=RqStatus(text(status)) if status else None,
        worker_name=text(worker) if worker else "",
        cancel_requested=bool(asked),
    )


def lost(job: Job, error: JobError, registry: JobTypeRegistry, random: Random) -> Ending:
    """How an attempt ends that its process did not end: retried after the type's backoff
    when attempts are left, or dead (an unregistered type is never retried)."""
    try:
        policy = registry.resolve(job.type).retry
    except UnknownJobTypeError:
        return Ending.failed(error, None)
    return Ending.failed(error, policy.delay(job.attempts, random))


@attrs.frozen
class SettleUnsettled:
    """An RQ exception handler: settles a failed attempt the dispatcher could not settle
    itself. RQ's hard time limit struck in the work-horse, or RQ's sweep found the job
    abandoned (its worker stopped heartbeating), or something failed around the dispatcher.

    RQ's sweep chooses between `retry` and its failed registry by the job's `retries_left`,
    not `should_retry`: the handler sets it to match the settlement (it is never stored).
    """

    registry: JobTypeRegistry
    random: Random

    def __call__(
        self,
        job: Any,
        kind: type[BaseException],
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> bool:
        if not isinstance(job, ConveyorRqJob) or job.settlement is not None:
            return True
        try:
            stored = read_attempt(job)
        except UndecodableJobError:
            job.retries_left = 0  # not ours: dead-lettered, never retried
            return True
        # A RedisError goes up and stops RQ's failure path: the job stays started, and a
        # sweep settles it once Redis is back (unsettled, RQ would dead-letter it).
        if issubclass(kind, AbandonedJobError):
            error = worker_lost("the worker running this attempt stopped heartbeating")
        elif issubclass(kind, JobTimeoutException):
            error = HARD_LIMIT
        else:
            error = JobError(
                message=f"the attempt failed around its handler: {value or kind.__name__}",
                type=kind.__name__,
            )
        ending = lost(stored.job, error, self.registry, self.random)
        settle(
            job,
            stored.job,
            ending,
            cancel_requested=stored.cancel_requested,
            now=datetime.now(UTC),
        )
        job.retries_left = 1 if job.should_retry else 0
        return True


def save_meta(rq_job: rq.job.Job) -> None:
    try:
        rq_job.connection.hset(rq_job.key, "meta", SERIALIZER.dumps(rq_job.meta))
    except RedisError as exc:
        log.warning("could not record the attempt of job %s: %s", rq_job.id, exc)


def horse_death(ret_val: Any) -> JobError:
    """The WORKER_LOST error of a work-horse that ended with wait status `ret_val`."""
    code = ret_val if isinstance(ret_val, int) else None
    signal_name: str | None = None
    exit_code: int | None = None
    if code is not None and os.WIFSIGNALED(code):
        with contextlib.suppress(ValueError):
            signal_name = signal.Signals(os.WTERMSIG(code)).name
    elif code is not None and os.WIFEXITED(code):
        exit_code = os.WEXITSTATUS(code)
    return worker_lost(
        f"the work-horse running this attempt died ({signal_name or f'exit {exit_code}'})",
        exit_code=exit_code,
        signal=signal_name,
    )
