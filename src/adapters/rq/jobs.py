"""`ConveyorRqJob`: RQ's job class with every door to code closed, and our view of its jobs.

It never resolves the callable it names (the worker's subclass resolves only the dispatcher),
never runs callbacks and never sends webhooks; `refusal()` says why a stored job is not one of
ours. Where RQ's worker or its abandoned-job sweep asks a job whether to retry it and how, a
Conveyor job answers what the settlement of its attempt says (`domain.settlement`), not RQ's
retry counters.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any, Final

import attrs
import rq.job
from redis.client import Pipeline
from rq.exceptions import DeserializationError
from rq.job import JobStatus as RqStatus
from rq.queue import Queue
from rq.results import Result

from adapters.rq.codec import (
    DISPATCHERS,
    PROGRESS,
    UndecodableJobError,
    aware,
    decode_history,
    error_from_rq,
    job_from_args,
    meta_attempt,
    read_meta_error,
)
from adapters.rq.moves import write_settlement
from domain.jobs import (
    HISTORY_LIMIT,
    AttemptOutcome,
    AttemptRecord,
    Job,
    JobStatus,
    JSONValue,
    is_job_id,
)
from domain.settlement import Settlement


class ForeignJobError(Exception):
    """A job in Redis that is not a call of our dispatcher: it is dead-lettered, never run."""


class ConveyorRqJob(rq.job.Job):
    """An RQ job that never resolves what it names, never calls back and never calls out."""

    # Known only in the process that holds this object, never stored:
    # the job was cancelled before this attempt started (read as the attempt starts);
    cancelled_before_start: bool = False
    # how its current attempt was settled, for RQ's worker or sweep to write;
    settlement: Settlement | None = None
    # a work-horse that died had already written its settlement: nothing is left to write;
    settled_elsewhere: bool = False
    # the `Job` its next attempt runs, made by the worker before it forks (`plan_attempt`).
    planned_attempt: Job | None = None
    # The `Job` it describes, as stored, once `refusal()` found nothing to refuse.
    _conveyor_job: Job | None = None
    _conveyor_refusal: tuple[str | None] | None = None

    @property
    def func(self) -> Any:
        raise ForeignJobError("this process does not run jobs")

    @property
    def success_callback(self) -> None:
        return None

    @property
    def failure_callback(self) -> None:
        return None

    @property
    def stopped_callback(self) -> None:
        return None

    def send_webhooks(self, *args: Any, **kwargs: Any) -> None:
        return None

    @property
    def should_retry(self) -> bool:
        """What RQ's worker asks of a failed attempt: true when its settlement keeps the job
        out of the dead-letter set (retried, back in line, or cancelled), and then RQ calls
        `retry` to write it. Without a settlement (a job refused as not ours) RQ
        dead-letters it."""
        if self.settled_elsewhere:
            return True
        return self.settlement is not None and self.settlement.status not in _RQS_OWN

    def retry(self, queue: Queue, pipeline: Pipeline) -> None:
        """RQ's hook for a job it does not dead-letter: the move the settlement says."""
        if self.settled_elsewhere:
            return
        settlement = self.settlement
        if settlement is None or settlement.status in _RQS_OWN:
            # Nothing decided this job may run again: into the dead-letter set, as RQ would.
            self.set_status(RqStatus.FAILED, pipeline=pipeline)
            registry: Any = self.failed_job_registry
            registry.add(self, ttl=self.failure_ttl, exc_string="not settled", pipeline=pipeline)
            return
        meta = self.conveyor_meta()
        write_settlement(
            self, meta, settlement, queue, pipeline, ran=not self.cancelled_before_start
        )

    def refusal(self) -> str | None:
        """Why this stored job is not a Conveyor job (so must not run), or None.

        Worked out once per fetched job (the worker asks before it forks, the work-horse
        again before it runs anything).
        """
        cached = self._conveyor_refusal
        if cached is None:
            cached = self._conveyor_refusal = (self._refusal(),)
        return cached[0]

    def restore(self, raw_data: Any) -> Any:
        self._conveyor_refusal = None
        self._conveyor_job = None
        self.planned_attempt = None
        self.cancelled_before_start = False
        self.settlement = None
        self.settled_elsewhere = False
        return super().restore(raw_data)

    def next_attempt(self) -> int:
        """The number of the attempt that starts next, from the meta as fetched."""
        return meta_attempt(self.conveyor_meta()) + 1

    def plan_attempt(self) -> None:
        """Decode, once and ahead, the `Job` the next attempt runs: the worker does it before it
        forks, so the work-horse (where every page it writes is copied) does not."""
        job = self._conveyor_job if self.refusal() is None else None
        if job is None:
            return
        try:
            self.planned_attempt = attrs.evolve(
                job, status=JobStatus.ACTIVE, attempts=self.next_attempt()
            )
        except (TypeError, ValueError):
            self.planned_attempt = None  # the dispatcher decodes it, and refuses what it must

    def stored_job(self) -> Job:
        """The `Job` the stored call describes (its attempts not counted); raises
        UndecodableJobError for a job that is not ours."""
        reason = self.refusal()
        if reason is not None or self._conveyor_job is None:
            raise UndecodableJobError(reason or "not decoded")
        return self._conveyor_job

    def conveyor_meta(self) -> dict[str, Any]:
        meta = self.meta
        return meta if isinstance(meta, dict) else {}

    def _refusal(self) -> str | None:
        try:
            func_name, instance, args, kwargs = (
                self.func_name,
                self.instance,
                self.args,
                self.kwargs,
            )
        except DeserializationError:
            return "its data is not JSON (a pickle?)"
        if func_name not in DISPATCHERS:
            return f"it names {func_name!r}, not the dispatcher"
        if instance is not None or kwargs:
            return "it carries an instance or keyword arguments"
        if (
            self._success_callback_name
            or self._failure_callback_name
            or self._stopped_callback_name
        ):
            return "it names callbacks"
        if not is_job_id(self.id):
            return "its id is not a Conveyor job id"
        try:
            self._conveyor_job = job_from_args(self.id, args)
        except UndecodableJobError as exc:
            return str(exc)
        return None


# Settlements whose move is RQ's own: a success (its finished registry) and a dead letter.
_RQS_OWN: Final = frozenset({JobStatus.SUCCEEDED, JobStatus.DEAD})


def decode_job(
    rq_job: ConveyorRqJob,
    latest: Result | None,
    *,
    cancelled_at: datetime | None = None,
    cancel_requested_at: datetime | None = None,
) -> Job:
    """Our view of an RQ job; raises UndecodableJobError for anything that is not ours.

    The cancel marks come separately (fields of the job's hash RQ's job object does not read).
    A job cancelled while it waited stays `cancelled` even if RQ's scheduler, racing the
    cancel, wrote it back as queued: no attempt of it can start. A pending retry's due time is
    the caller's to add: it is the job's score in RQ's scheduled registry.

    A success has no record in the meta's history (writing one would cost the worker a round
    trip per job): it is RQ's own, read from the job's start and end and its latest result.
    """
    stored = rq_job.stored_job()
    meta = rq_job.conveyor_meta()
    attempts = meta_attempt(meta)
    rq_status = rq_job.get_status(refresh=False)
    status = _STATUSES.get(rq_status, JobStatus.QUEUED)
    if rq_status is RqStatus.SCHEDULED and attempts > 0:
        status = JobStatus.FAILED  # a retry waits for its time
    if cancelled_at is not None and status.is_waiting:
        status = JobStatus.CANCELLED
    error = read_meta_error(meta)
    result: JSONValue = None
    progress = meta.get(PROGRESS)
    if not (isinstance(progress, int) and 0 <= progress <= 100):
        progress = None
    finished_at: datetime | None = None
    if status is JobStatus.SUCCEEDED:
        progress = 100
        if latest is not None and latest.type == Result.Type.SUCCESSFUL:
            result = latest.return_value
        finished_at = aware(rq_job.ended_at) or _result_time(latest)
    elif status in (JobStatus.DEAD, JobStatus.CANCELLED):
        if error is None and latest is not None and latest.exc_string:
            error = error_from_rq(latest.exc_string)
        finished_at = (
            aware(rq_job.ended_at)
            or (cancelled_at if status is JobStatus.CANCELLED else None)
            or _result_time(latest)
            or aware(rq_job.enqueued_at)
        ) or stored.created_at
    started = aware(rq_job.started_at) if attempts > 0 else None
    history = decode_history(meta)
    if status is JobStatus.SUCCEEDED and (not history or history[-1].attempt != attempts):
        history.append(
            AttemptRecord(
                attempt=attempts,
                worker=rq_job.worker_name,
                started_at=started,
                ended_at=finished_at,
                outcome=AttemptOutcome.SUCCEEDED,
            )
        )
    return attrs.evolve(
        stored,
        status=status,
        attempts=attempts,
        started_at=started,
        finished_at=finished_at,
        progress=progress,
        result=result,
        error=error,
        worker=rq_job.worker_name if attempts > 0 else None,
        history=tuple(history[-HISTORY_LIMIT:]),
        cancel_requested_at=cancel_requested_at,
        heartbeat_at=aware(rq_job.last_heartbeat) if status is JobStatus.ACTIVE else None,
    )


_STATUSES: Final[Mapping[RqStatus, JobStatus]] = {
    RqStatus.CREATED: JobStatus.QUEUED,
    RqStatus.QUEUED: JobStatus.QUEUED,
    RqStatus.RATE_LIMITED: JobStatus.QUEUED,
    RqStatus.READY_TO_ENQUEUE: JobStatus.QUEUED,
    RqStatus.DEFERRED: JobStatus.SCHEDULED,
    RqStatus.SCHEDULED: JobStatus.SCHEDULED,
    RqStatus.STARTED: JobStatus.ACTIVE,
    RqStatus.FINISHED: JobStatus.SUCCEEDED,
    RqStatus.FAILED: JobStatus.DEAD,  # retries pending are SCHEDULED or QUEUED in RQ, not FAILED
    RqStatus.STOPPED: JobStatus.CANCELLED,  # stopped by an operator (RQ's `stop-job` command)
    RqStatus.CANCELED: JobStatus.CANCELLED,
}


def _result_time(latest: Result | None) -> datetime | None:
    return aware(latest.created_at) if latest is not None else None
