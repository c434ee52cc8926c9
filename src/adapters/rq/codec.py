"""How a Conveyor job is written inside RQ: the call RQ stores, and the meta beside it.

Every job is a call of one fixed dispatcher, named by the string `DISPATCHER` (what stores a
job never imports the dispatcher), with three plain-JSON arguments: the job type, the payload
and an envelope holding the rest of our `Job` (queue, attempts allowed, timeout, creation
time, priority, and when given its run_at, idempotency key and trace context). Everything RQ
stores for us goes through `StrictJSONSerializer`; nothing is ever unpickled. The job's RQ
`meta` carries what RQ has no field for: the attempt number, progress, our error, the attempt
history and the pid of the process running the attempt. Two fields of the job's hash,
written by nobody but us, carry cancellation (see `CANCELLED_AT` and `CANCEL_REQUESTED_AT`):
not the meta, which the running attempt rewrites whole as it reports progress.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Final

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
)

# The dotted name every job stored from now on calls; only ever compared with what a stored
# job names (nothing named by data is imported or called).
DISPATCHER: Final = "adapters.rq.dispatcher.execute"
# The names the dispatcher had before: jobs stored then still name them, and are ours.
FORMER_DISPATCHERS: Final = ("entrypoints.worker.rq_tasks.execute",)
DISPATCHERS: Final = frozenset({DISPATCHER, *FORMER_DISPATCHERS})

# Keys of the job's RQ meta.
ATTEMPT: Final = "attempt"  # the attempt running or last run, 1-based; absent: never started
PROGRESS: Final = "progress"
ERROR: Final = "error"
PID: Final = "pid"  # the process running the attempt (the forked work-horse)
HISTORY: Final = "history"  # the attempts that did not succeed, oldest first (see decode_job)

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
    def loads(s: bytes | str, *args: Any, **kwargs: Any) -> Any:
        return json.loads(s.decode("utf-8") if isinstance(s, bytes) else s)


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
    if job.trace_context is not None:
        envelope["trace_context"] = job.trace_context
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
        trace = envelope.get("trace_context")
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
            run_at=moment(envelope.get("run_at")),
            idempotency_key=key if isinstance(key, str) else None,
            trace_context=trace if isinstance(trace, str) else None,
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


def read_meta_error(meta: Mapping[str, Any]) -> JobError | None:
    raw = meta.get(ERROR)
    if not isinstance(raw, Mapping):
        return None
    try:
        return decode_error(raw)
    except (KeyError, TypeError, ValueError):
        return None


def error_from_rq(exc_string: str) -> JobError:
    """Our error for a failure RQ recorded as text only (a refused job, an RQ `stop-job`)."""
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


def meta_attempt(meta: Mapping[str, Any]) -> int:
    """The attempt number the meta holds (0: none started)."""
    attempt = meta.get(ATTEMPT)
    return attempt if isinstance(attempt, int) and attempt > 0 else 0


def noted(
    meta: Mapping[str, Any], record: AttemptRecord, error: JobError | None, attempts: int
) -> dict[str, Any]:
    """The meta once an attempt has been settled: its record last in the history (the last
    HISTORY_LIMIT kept), its error (if it brings one) as the job's, and the attempts the job
    has used afterwards."""
    history = meta.get(HISTORY)
    records = [*(history if isinstance(history, list) else []), encode_record(record)]
    changed = {**meta, ATTEMPT: attempts, HISTORY: records[-HISTORY_LIMIT:]}
    if error is not None:
        changed[ERROR] = encode_error(error)
    return changed


def encode_record(record: AttemptRecord) -> dict[str, JSONValue]:
    return {
        "attempt": record.attempt,
        "worker": record.worker,
        "started_at": record.started_at.isoformat() if record.started_at else None,
        "ended_at": record.ended_at.isoformat() if record.ended_at else None,
        "outcome": record.outcome.value,
        "error": record.error,
    }


def decode_history(meta: Mapping[str, Any]) -> list[AttemptRecord]:
    raw = meta.get(HISTORY)
    records: list[AttemptRecord] = []
    for item in raw if isinstance(raw, list) else []:
        try:
            records.append(
                AttemptRecord(
                    attempt=int(item["attempt"]),
                    worker=item.get("worker"),
                    started_at=moment(item.get("started_at")),
                    ended_at=moment(item.get("ended_at")),
                    outcome=AttemptOutcome(item["outcome"]),
                    error=item.get("error"),
                )
            )
        except (KeyError, TypeError, ValueError):
            continue  # a record we cannot read is left out, not the whole job
    return records


def moment(raw: object) -> datetime | None:
    """An ISO 8601 time as stored (str or bytes), or None."""
    if isinstance(raw, bytes):
        raw = raw.decode()
    return datetime.fromisoformat(raw) if isinstance(raw, str) and raw else None


def aware(value: datetime | None) -> datetime | None:
    """RQ's times are naive UTC: ours are aware."""
    if value is None:
        return None
    return value if value.utcoffset() is not None else value.replace(tzinfo=UTC)
