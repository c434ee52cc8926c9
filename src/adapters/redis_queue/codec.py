"""Job <-> the fields of its Redis hash.

One hash field per attribute, so scripts change a status or a counter without decoding
anything. Numbers are decimal strings, timestamps are integer microseconds since the Unix
epoch (UTC), and payload, result and error are JSON (msgspec). Nothing is ever unpickled:
whatever sits in Redis is data, and data that does not decode is reported, not run. A field
that is None is not stored, so a hash written before a field existed (``run_at``,
``deadline``, ``retry_at``, ``cancel_requested_at``, ``heartbeat_at``, ``idempotency_key``,
``trace_context``, ``unique_key``) still decodes. A job with a unique key also has ``unique``,
the digest its key is held under (`keys.unique_digest`), for the scripts that let go of it.
A `priority` or `attempts` of 0 is not stored either: absent, both read as 0.

Two layouts. The full one stores ``id`` and ``queue`` as fields; the compact one does not,
since the hash's key says both, and saves about a third of a queued job's hash (`MEMORY USAGE` of a
no-op job's: 232 bytes rather than 328). Every reader of this version reads both: the
scripts that answer a job's fields fill the two in (`job_fields`), and so do the adapter's
own HMGETs. A version before the compact layout cannot read it, so which one submits write
is the prefix's to say (`keys.layout_key`), learned at start-up.

``history`` is a JSON array of attempt records, oldest first, that the scripts extend (with
cjson) as each attempt ends, except the final `succeeded` one: it is implied by the hash's
``attempts``, ``worker``, ``started_at`` and ``finished_at`` and added here when a
succeeded job is read (storing it would cost a retained result its compact encoding). A
record:
``{"attempt": 2, "worker": "w1", "started_at": "<us>", "ended_at": "<us>",
"outcome": "failed", "error": "ValueError: ..."}``; absent keys are None. Its timestamps are
*strings* of microseconds: cjson writes numbers with 14 significant digits, fewer than a
microsecond timestamp has.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Final

import msgspec

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

# The hash fields a Job is read from, in the order scripts return them (HMGET). The lease
# token rides along last so a claim needs no second round trip.
FIELDS: Final = (
    "id",
    "type",
    "queue",
    "status",
    "payload",
    "max_attempts",
    "timeout",
    "created_at",
    "priority",
    "attempts",
    "started_at",
    "finished_at",
    "progress",
    "result",
    "error",
    "worker",
    "history",
    "run_at",
    "deadline",
    "retry_at",
    "cancel_requested_at",
    "heartbeat_at",
    "idempotency_key",
    "trace_context",
    "unique_key",
)
TOKEN_FIELD: Final = "token"  # noqa: S105 - a field name, not a secret
FIELDS_WITH_TOKEN: Final = (*FIELDS, TOKEN_FIELD)

_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND: Final = timedelta(microseconds=1)

RawFields = Sequence[bytes | None]

_STATUSES: Final = {s.value.encode(): s for s in JobStatus}


class UndecodableJobError(ValueError):
    """What Redis holds for a job cannot be turned into a Job."""


class _ErrorWire(msgspec.Struct, omit_defaults=True, forbid_unknown_fields=False):
    message: str
    type: str
    kind: str = ErrorKind.ERROR.value
    traceback: str | None = None
    exit_code: int | None = None
    signal: str | None = None


class _AttemptWire(msgspec.Struct, omit_defaults=True, forbid_unknown_fields=False):
    attempt: int
    outcome: str
    worker: str | None = None
    started_at: str | int | None = None
    ended_at: str | int | None = None
    error: str | None = None


_json_encode = msgspec.json.Encoder().encode
_json_decode = msgspec.json.Decoder().decode
_error_decode = msgspec.json.Decoder(_ErrorWire).decode
_history_decode = msgspec.json.Decoder(list[_AttemptWire]).decode


def encode_json(value: JSONValue) -> bytes:
    return _json_encode(value)


def encode_error(error: JobError) -> bytes:
    return _json_encode(
        _ErrorWire(
            error.message,
            error.type,
            error.kind.value,
            error.traceback,
            error.exit_code,
            error.signal,
        )
    )


def encode_history(history: Sequence[AttemptRecord]) -> bytes:
    return _json_encode(
        [
            _AttemptWire(
                attempt=r.attempt,
                outcome=r.outcome.value,
                worker=r.worker,
                started_at=None if r.started_at is None else str(to_micros(r.started_at)),
                ended_at=None if r.ended_at is None else str(to_micros(r.ended_at)),
                error=r.error,
            )
            for r in history
        ]
    )


def to_micros(moment: datetime) -> int:
    return (moment - _EPOCH) // _MICROSECOND


def from_micros(raw: bytes) -> datetime:
    return _EPOCH + timedelta(0, 0, int(raw))  # (days, seconds, microseconds): no keywords


def encode_job(job: Job, *, with_status: bool = True, compact: bool = False) -> list[str | bytes]:
    """HSET arguments (field, value, field, value, ...) for a job; None fields are omitted,
    and so are a `priority` and `attempts` of 0 (what their absence reads as).

    Without `with_status` the status is left out, for a script that decides it. `compact`
    leaves out `id` and `queue` too, which the hash's key says (``{prefix:queue}:job:<id>``):
    the compact layout, which only a reader that knows the key can decode (see the module's
    docstring and `keys.layout_key`).
    """
    args: list[str | bytes] = [] if compact else ["id", job.id, "queue", job.queue]
    args += (
        "type",
        job.type,
        "payload",
        _json_encode(job.payload),
        "max_attempts",
        str(job.max_attempts),
        "timeout",
        repr(job.timeout),
        "created_at",
        str(to_micros(job.created_at)),
    )
    if job.priority:
        args += ("priority", str(job.priority))
    if job.attempts:
        args += ("attempts", str(job.attempts))
    if with_status:
        args += ("status", job.status.value)
    if job.started_at is not None:
        args += ("started_at", str(to_micros(job.started_at)))
    if job.finished_at is not None:
        args += ("finished_at", str(to_micros(job.finished_at)))
    if job.progress is not None:
        args += ("progress", str(job.progress))
    if job.result is not None:
        args += ("result", _json_encode(job.result))
    if job.error is not None:
        args += ("error", encode_error(job.error))
    if job.worker is not None:
        args += ("worker", job.worker)
    history = job.history
    if history and job.status is JobStatus.SUCCEEDED:
        history = history[:-1]  # implied by the other fields (see the module's docstring)
    if history:
        args += ("history", encode_history(history))
    if job.run_at is not None:
        args += ("run_at", str(to_micros(job.run_at)))
    if job.deadline is not None:
        args += ("deadline", str(to_micros(job.deadline)))
    if job.retry_at is not None:
        args += ("retry_at", str(to_micros(job.retry_at)))
    if job.cancel_requested_at is not None:
        args += ("cancel_requested_at", str(to_micros(job.cancel_requested_at)))
    if job.heartbeat_at is not None:
        args += ("heartbeat_at", str(to_micros(job.heartbeat_at)))
    if job.idempotency_key is not None:
        args += ("idempotency_key", job.idempotency_key)
    if job.trace_context is not None:
        args += ("trace_context", job.trace_context)
    if job.unique_key is not None:
        args += ("unique_key", job.unique_key)
    return args


def decode_job(
    raw: RawFields, *, job_id: str | None = None, queue_name: str | None = None
) -> Job | None:
    """The Job from HMGET values in FIELDS order; None when the hash does not exist.

    `job_id` and `queue_name` are what the hash's key says, for a hash in the compact
    layout, which stores neither (the scripts fill them in: `job_fields` in
    `lua/lib/prelude.lua`). Raises UndecodableJobError when the hash exists but does not
    hold a valid job.
    """
    (
        id_,
        type_,
        queue,
        status,
        payload,
        max_attempts,
        timeout,
        created_at,
        priority,
        attempts,
        started_at,
        finished_at,
        progress,
        result,
        error,
        worker,
        history,
        run_at,
        deadline,
        retry_at,
        cancel_requested_at,
        heartbeat_at,
        idempotency_key,
        trace_context,
        unique_key,
    ) = raw[: len(FIELDS)]
    if id_ is None and status is None:
        return None
    if status is not None:
        if id_ is None and job_id is not None:
            id_ = job_id.encode()
        if queue is None and queue_name is not None:
            queue = queue_name.encode()
    try:
        if (
            id_ is None
            or type_ is None
            or queue is None
            or status is None
            or payload is None
            or max_attempts is None
            or timeout is None
            or created_at is None
        ):
            raise UndecodableJobError("a required field is missing")
        job_status = _STATUSES.get(status) or JobStatus(status.decode())
        worker_id = worker.decode() if worker is not None else None
        started = from_micros(started_at) if started_at is not None else None
        finished = from_micros(finished_at) if finished_at is not None else None
        attempts_made = int(attempts) if attempts is not None else 0
        records = _decode_history(history) if history is not None else ()
        if job_status is JobStatus.SUCCEEDED:
            final = AttemptRecord(
                attempt=attempts_made,
                worker=worker_id,
                started_at=started,
                ended_at=finished,
                outcome=AttemptOutcome.SUCCEEDED,
            )
            records = (*records, final)[-HISTORY_LIMIT:]
        return Job(
            id=id_.decode(),
            type=type_.decode(),
            payload=_json_decode(payload),
            queue=queue.decode(),
            status=job_status,
            max_attempts=int(max_attempts),
            timeout=float(timeout),
            created_at=from_micros(created_at),
            priority=int(priority) if priority is not None else 0,
            attempts=attempts_made,
            started_at=started,
            finished_at=finished,
            progress=int(progress) if progress is not None else None,
            result=_json_decode(result) if result is not None else None,
            error=_decode_error(error) if error is not None else None,
            worker=worker_id,
            history=records,
            run_at=_optional_moment(run_at),
            deadline=_optional_moment(deadline),
            retry_at=_optional_moment(retry_at),
            cancel_requested_at=_optional_moment(cancel_requested_at),
            heartbeat_at=_optional_moment(heartbeat_at),
            idempotency_key=idempotency_key.decode() if idempotency_key is not None else None,
            trace_context=trace_context.decode() if trace_context is not None else None,
            unique_key=unique_key.decode() if unique_key is not None else None,
        )
    except UndecodableJobError:
        raise
    except (ValueError, TypeError, OverflowError, msgspec.DecodeError) as exc:
        # UnicodeDecodeError and attrs' validator errors are ValueErrors.
        raise UndecodableJobError(f"{type(exc).__name__}: {exc}") from exc


def _optional_moment(raw: bytes | None) -> datetime | None:
    return from_micros(raw) if raw is not None else None


def _decode_error(raw: bytes) -> JobError:
    wire = _error_decode(raw)
    return JobError(
        wire.message,
        wire.type,
        ErrorKind(wire.kind),
        wire.traceback,
        exit_code=wire.exit_code,
        signal=wire.signal,
    )


def _moment(raw: str | int | None) -> datetime | None:
    if raw is None:
        return None
    return _EPOCH + timedelta(microseconds=int(raw))


def _decode_history(raw: bytes) -> tuple[AttemptRecord, ...]:
    return tuple(
        AttemptRecord(
            attempt=w.attempt,
            worker=w.worker,
            started_at=_moment(w.started_at),
            ended_at=_moment(w.ended_at),
            outcome=AttemptOutcome(w.outcome),
            error=w.error,
        )
        for w in _history_decode(raw)
    )
