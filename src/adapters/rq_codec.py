"""How a Conveyor job looks inside RQ, shared by `RqJobQueue` and the RQ worker.

Every job is a call of one fixed dispatcher, named by the string `DISPATCHER` (the adapter never
imports the worker), with three plain-JSON arguments: the job type, the payload and an
envelope holding the rest of our `Job` (queue, attempts allowed, timeout, creation time,
priority, and when given its run_at and idempotency key). Everything RQ stores for us goes
through `StrictJSONSerializer`; nothing is ever unpickled. The job's RQ `meta` carries what RQ
has no field for: the attempt number, progress, our error, and the pid of the process running
the attempt. Two fields of the job's hash, written by nobody but us, carry cancellation (see
`CANCELLED_AT` and `CANCEL_REQUESTED_AT`): not the meta, which the running attempt rewrites
whole as it reports progress.

`ConveyorRqJob` is RQ's job class with every door to code closed: it never resolves the
callable it names (the worker's subclass resolves only the dispatcher), never runs callbacks
and never sends webhooks. `refusal()` says why a stored job is not one of ours.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Final

import attrs
import rq.job
from rq.exceptions import DeserializationError
from rq.job import JobStatus as RqStatus
from rq.results import Result
from rq.serializers import JSONSerializer

from domain.jobs import (
    HISTORY_LIMIT,
    AttemptOutcome,
    AttemptRecord,
    ErrorKind,
    Job,
    JobError,
    JobStatus,
    JSONValue,
    error_summary,
    is_job_id,
    is_name,
)

DISPATCHER: Final = "entrypoints.worker.rq_tasks.execute"

# Keys of the job's RQ meta.
ATTEMPT: Final = "attempt"  # the attempt running or last run, 1-based; absent: never started
PROGRESS: Final = "progress"
ERROR: Final = "error"
PID: Final = "pid"  # the process running the attempt (the forked work-horse)
HISTORY: Final = "history"  # the attempts that failed, oldest first (a success is RQ's own)

# Fields of the job's hash (beside RQ's own; RQ never writes or clears them).
# Set when a waiting job is cancelled: an attempt that starts anyway (a worker had already
# taken the job off its queue) sees it and stops before the handler runs.
CANCELLED_AT: Final = "conveyor_cancelled_at"
# Set when cancelling an active job: its attempt is asked to stop (`JobContext.cancel_requested`),
# and is stopped by its worker after a grace period.
CANCEL_REQUESTED_AT: Final = "conveyor_cancel_requested_at"


class UndecodableJobError(ValueError):
    """What RQ holds for a job is not a Conveyor job we can read."""


# One encoder for every write (json.dumps with options builds a new one per call).
_ENCODER: Final = json.JSONEncoder(allow_nan=False, separators=(",", ":"))


class StrictJSONSerializer(JSONSerializer):
    """RQ's JSON serializer, stricter: no NaN or Infinity on the way out, UTF-8 JSON only on the
    way in. A pickle is just bytes that do not parse."""

    @staticmethod
    def dumps(obj: Any, *args: Any, **kwargs: Any) -> bytes:
        return _ENCODER.encode(obj).encode()

    @staticmethod
    def loads(s: bytes, *args: Any, **kwargs: Any) -> Any:
        return json.loads(s.decode("utf-8"))


SERIALIZER: Final = StrictJSONSerializer


def rq_queue_name(prefix: str, queue: str) -> str:
    """RQ's name for our queue: namespaced, so jobs of other RQ users never mix with ours."""
    return f"{prefix}:{queue}"


def job_args(job: Job) -> list[JSONValue]:
    """The dispatcher's arguments for `job`: plain JSON only."""
    envelope = {
        "id": job.id,
        "queue": job.queue,
        "max_attempts": job.max_attempts,
        "timeout": job.timeout,
        "created_at": job.created_at.isoformat(),
        "priority": job.priority,
    }
    if job.run_at is not None:
        envelope["run_at"] = job.run_at.isoformat()
    if job.idempotency_key is not None:
        envelope["idempotency_key"] = job.idempotency_key
    return [job.type, dict(job.payload), envelope]


def job_from_args(
    job_id: str, args: Any, *, status: JobStatus = JobStatus.QUEUED, attempts: int = 0
) -> Job:
    """The `Job` the dispatcher's arguments describe; raises UndecodableJobError."""
    if not (isinstance(args, list | tuple) and len(args) == 3):
        raise UndecodableJobError("its arguments are not (type, payload, envelope)")
    type_, payload, envelope = args
    if not (isinstance(type_, str) and isinstance(payload, dict) and isinstance(envelope, dict)):
        raise UndecodableJobError("its arguments are not (type, payload, envelope)")
    if envelope.get("id") != job_id:
        raise UndecodableJobError("its envelope names another job id")
    try:
        key = envelope.get("idempotency_key")
        return Job(
            id=job_id,
            type=type_,
            payload=payload,
            queue=envelope["queue"],
            status=status,
            max_attempts=envelope["max_attempts"],
            timeout=float(envelope["timeout"]),
            created_at=datetime.fromisoformat(envelope["created_at"]),
            priority=int(envelope.get("priority", 0)),
            attempts=attempts,
            run_at=_moment(envelope.get("run_at")),
            idempotency_key=key if isinstance(key, str) else None,
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise UndecodableJobError(f"its envelope is invalid: {type(exc).__name__}: {exc}") from exc


def encode_error(error: JobError) -> dict[str, JSONValue]:
    encoded: dict[str, JSONValue] = {
        "message": error.message,
        "type": error.type,
        "kind": error.kind.value,
    }
    if error.traceback is not None:
        encoded["traceback"] = error.traceback
    if error.exit_code is not None:
        encoded["exit_code"] = error.exit_code
    if error.signal is not None:
        encoded["signal"] = error.signal
    return encoded


def decode_error(raw: Mapping[str, Any]) -> JobError:
    return JobError(
        message=str(raw["message"]),
        type=str(raw["type"]),
        kind=ErrorKind(raw.get("kind", ErrorKind.ERROR.value)),
        traceback=raw.get("traceback"),
        exit_code=raw.get("exit_code"),
        signal=raw.get("signal"),
    )


def error_from_rq(exc_string: str) -> JobError:
    """Our error for a failure RQ recorded as text only (a lost work-horse, an abandoned job)."""
    lines = [line for line in exc_string.strip().splitlines() if line.strip()]
    last = lines[-1] if lines else "unknown failure"
    name, _, message = last.partition(": ")
    if not message or not name.replace(".", "").replace("_", "").isalnum():
        name, message = "RqFailure", last
    type_ = name.rsplit(".", 1)[-1]
    kind = ErrorKind.ERROR
    if "Work-horse terminated unexpectedly" in exc_string or "AbandonedJobError" in exc_string:
        kind, type_ = ErrorKind.WORKER_LOST, "WorkerLost"
    elif "JobTimeoutException" in exc_string:
        kind = ErrorKind.TIMED_OUT
    elif "ForeignJobError" in exc_string:
        kind = ErrorKind.INVALID
    return JobError(message=message, type=type_, kind=kind, traceback=exc_string[-2000:])


def worker_lost(
    message: str, *, exit_code: int | None = None, signal: str | None = None
) -> JobError:
    return JobError(
        message=message,
        type="WorkerLost",
        kind=ErrorKind.WORKER_LOST,
        exit_code=exit_code,
        signal=signal,
    )


class ForeignJobError(Exception):
    """A job in Redis that is not a call of our dispatcher: it is dead-lettered, never run."""


class AttemptEnd(enum.Enum):
    """How the dispatcher ended an attempt that did not succeed (known in its process only)."""

    FAILED = "failed"
    CANCELLED = "cancelled"


class ConveyorRqJob(rq.job.Job):
    """An RQ job that never resolves what it names, never calls back and never calls out."""

    # Known only in the worker's process, never stored: the job was cancelled before this
    # attempt started (the worker reads it as the attempt starts), and how the dispatcher
    # ended the attempt (None: it did not, e.g. its work-horse died).
    cancelled_before_start: bool = False
    attempt_end: AttemptEnd | None = None
    # The `Job` its next attempt runs, made by the worker before it forks (see `plan_attempt`).
    planned_attempt: Job | None = None
    # The `Job` it describes, as stored, once `refusal()` found nothing to refuse.
    _conveyor_job: Job | None = None

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

    def refusal(self) -> str | None:
        """Why this stored job is not a Conveyor job (so must not run), or None.

        Worked out once per fetched job (the worker asks before it forks, the work-horse
        again before it runs anything).
        """
        cached: tuple[str | None] | None = getattr(self, "_conveyor_refusal", None)
        if cached is None:
            cached = (self._refusal(),)
            self._conveyor_refusal: tuple[str | None] | None = cached
        return cached[0]

    def restore(self, raw_data: Any) -> Any:
        self._conveyor_refusal = None
        self._conveyor_job = None
        self.planned_attempt = None
        return super().restore(raw_data)

    def next_attempt(self) -> int:
        """The number of the attempt that starts next, from the meta as fetched."""
        previous = self.conveyor_meta().get(ATTEMPT)
        return (previous if isinstance(previous, int) and previous > 0 else 0) + 1

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
        if func_name != DISPATCHER:
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

    def conveyor_meta(self) -> dict[str, Any]:
        meta = self.meta
        return meta if isinstance(meta, dict) else {}


def note_failure(rq_job: rq.job.Job, error: JobError) -> dict[str, Any]:
    """The job's meta with a failed attempt noted: the error, and a record in the history.

    The caller saves it (and sets it on the job object, which RQ may save again)."""
    meta = _noted(rq_job, AttemptOutcome.of(error.kind), error_summary(error))
    meta[ERROR] = encode_error(error)
    return meta


def note_cancelled(rq_job: rq.job.Job) -> dict[str, Any]:
    """The job's meta with its attempt recorded as stopped on a cancel request."""
    return _noted(rq_job, AttemptOutcome.CANCELLED, None)


def _noted(rq_job: rq.job.Job, outcome: AttemptOutcome, error: str | None) -> dict[str, Any]:
    meta = rq_job.meta if isinstance(rq_job.meta, dict) else {}
    attempt = meta.get(ATTEMPT)
    record = AttemptRecord(
        attempt=attempt if isinstance(attempt, int) and attempt > 0 else 1,
        worker=rq_job.worker_name,
        started_at=_aware(rq_job.started_at),
        ended_at=datetime.now(UTC),
        outcome=outcome,
        error=error,
    )
    history = meta.get(HISTORY)
    records = [*(history if isinstance(history, list) else []), _encode_record(record)]
    meta[HISTORY] = records[-HISTORY_LIMIT:]
    return meta


def _encode_record(record: AttemptRecord) -> dict[str, JSONValue]:
    return {
        "attempt": record.attempt,
        "worker": record.worker,
        "started_at": record.started_at.isoformat() if record.started_at else None,
        "ended_at": record.ended_at.isoformat() if record.ended_at else None,
        "outcome": record.outcome.value,
        "error": record.error,
    }


def _decode_history(meta: Mapping[str, Any]) -> list[AttemptRecord]:
    raw = meta.get(HISTORY)
    records: list[AttemptRecord] = []
    for item in raw if isinstance(raw, list) else []:
        try:
            records.append(
                AttemptRecord(
                    attempt=int(item["attempt"]),
                    worker=item.get("worker"),
                    started_at=_moment(item.get("started_at")),
                    ended_at=_moment(item.get("ended_at")),
                    outcome=AttemptOutcome(item["outcome"]),
                    error=item.get("error"),
                )
            )
        except (KeyError, TypeError, ValueError):
            continue  # a record we cannot read is left out, not the whole job
    return records


def _moment(raw: object) -> datetime | None:
    return datetime.fromisoformat(raw) if isinstance(raw, str) else None


def read_meta_error(meta: Mapping[str, Any]) -> JobError | None:
    raw = meta.get(ERROR)
    if not isinstance(raw, Mapping):
        return None
    try:
        return decode_error(raw)
    except (KeyError, TypeError, ValueError):
        return None


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
    """
    reason = rq_job.refusal()
    if reason is not None:
        raise UndecodableJobError(reason)
    meta = rq_job.conveyor_meta()
    attempt = meta.get(ATTEMPT, 0)
    attempts = attempt if isinstance(attempt, int) and attempt >= 0 else 0
    rq_status = rq_job.get_status(refresh=False)
    status = _STATUSES.get(rq_status, JobStatus.QUEUED)
    if rq_status is RqStatus.SCHEDULED and attempts > 0:
        status = JobStatus.FAILED  # a retry waits for its time
    if cancelled_at is not None and status.is_waiting:
        status = JobStatus.CANCELLED
    job = job_from_args(rq_job.id, rq_job.args, status=status, attempts=attempts)
    if not is_name(job.queue):  # pragma: no cover - job_from_args validated it
        raise UndecodableJobError("invalid queue")
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
        finished_at = _aware(rq_job.ended_at) or _result_time(latest)
    elif status in (JobStatus.DEAD, JobStatus.CANCELLED):
        if error is None and latest is not None and latest.exc_string:
            error = error_from_rq(latest.exc_string)
        finished_at = (
            _aware(rq_job.ended_at)
            or (cancelled_at if status is JobStatus.CANCELLED else None)
            or _result_time(latest)
            or _aware(rq_job.enqueued_at)
        ) or job.created_at
    started = _aware(rq_job.started_at) if attempts > 0 else None
    history = _decode_history(meta)
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
    return Job(
        id=job.id,
        type=job.type,
        payload=job.payload,
        queue=job.queue,
        status=status,
        max_attempts=job.max_attempts,
        timeout=job.timeout,
        created_at=job.created_at,
        priority=job.priority,
        attempts=attempts,
        started_at=started,
        finished_at=finished_at,
        progress=progress,
        result=result,
        error=error,
        worker=rq_job.worker_name if attempts > 0 else None,
        history=tuple(history[-HISTORY_LIMIT:]),
        run_at=job.run_at,
        cancel_requested_at=cancel_requested_at,
        heartbeat_at=_aware(rq_job.last_heartbeat) if status is JobStatus.ACTIVE else None,
        idempotency_key=job.idempotency_key,
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
    RqStatus.STOPPED: JobStatus.CANCELLED,  # stopped by an operator (`rq` stop command)
    RqStatus.CANCELED: JobStatus.CANCELLED,
}


def _aware(moment: datetime | None) -> datetime | None:
    if moment is None:
        return None
    return moment if moment.utcoffset() is not None else moment.replace(tzinfo=UTC)


def _result_time(latest: Result | None) -> datetime | None:
    return _aware(latest.created_at) if latest is not None else None
