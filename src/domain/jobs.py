"""The job: a value describing one submission and where it is in its life."""

from __future__ import annotations

import enum
import functools
import hashlib
import re
import secrets
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Final

import attrs

from domain.errors import InvalidTransitionError

# JSON as it crosses every boundary: payloads, results.
JSONValue = Any
JSONObject = Mapping[str, Any]

_ID_PATTERN: Final = re.compile(r"[0-9a-f]{32}")
_NAME_PATTERN: Final = re.compile(r"[a-z][a-z0-9_\-]{0,63}")
# The shape of job type and queue names, for documents that describe it (JSON Schema, OpenAPI).
NAME_PATTERN: Final = f"^{_NAME_PATTERN.pattern}$"


class JobStatus(enum.StrEnum):
    """Where a job is. The values are the wire and storage format: never change one."""

    SCHEDULED = "scheduled"  # waiting for its time
    QUEUED = "queued"  # ready to be claimed
    ACTIVE = "active"  # claimed by a worker that holds its lease
    SUCCEEDED = "succeeded"
    FAILED = "failed"  # an attempt failed and a retry is scheduled
    DEAD = "dead"  # out of attempts or non-retryable: in the dead-letter set
    CANCELLED = "cancelled"
    EXPIRED = "expired"  # its deadline passed before it finished

    @property
    def is_terminal(self) -> bool:
        return not TRANSITIONS[self] or self in _PARKED

    @property
    def is_waiting(self) -> bool:
        return self in (JobStatus.SCHEDULED, JobStatus.QUEUED, JobStatus.FAILED)


S = JobStatus

# The one definition of the job state machine. Every adapter obeys it; the contract suite
# checks the transitions adapters make against this table.
TRANSITIONS: Final[Mapping[JobStatus, frozenset[JobStatus]]] = {
    S.SCHEDULED: frozenset({S.QUEUED, S.CANCELLED, S.EXPIRED}),
    S.QUEUED: frozenset({S.ACTIVE, S.CANCELLED, S.EXPIRED}),
    # ACTIVE -> QUEUED: the lease expired, or a draining worker released the job.
    S.ACTIVE: frozenset({S.SUCCEEDED, S.FAILED, S.DEAD, S.QUEUED, S.CANCELLED, S.EXPIRED}),
    S.FAILED: frozenset({S.QUEUED, S.CANCELLED, S.EXPIRED}),
    # DEAD and CANCELLED are parked, not gone: an operator may send them back to the queue.
    S.DEAD: frozenset({S.QUEUED}),
    S.CANCELLED: frozenset({S.QUEUED}),
    S.SUCCEEDED: frozenset(),
    S.EXPIRED: frozenset(),
}
_PARKED: Final = frozenset({S.DEAD, S.CANCELLED})


def can_transition(current: JobStatus, target: JobStatus) -> bool:
    return target in TRANSITIONS[current]


def sources_of(target: JobStatus) -> frozenset[JobStatus]:
    """Every status from which `target` may be reached (adapters guard their scripts with it)."""
    return frozenset(s for s, targets in TRANSITIONS.items() if target in targets)


def valid_name(_: object, attribute: attrs.Attribute[str], value: str) -> None:
    if not _NAME_PATTERN.fullmatch(value):
        raise ValueError(_name_error(attribute.name, value))


def _name_error(name: str, value: str) -> str:
    return f"{name} must be 1-64 of a-z, 0-9, '_' or '-', starting with a letter; got {value!r}"


def _refuse_naive_times(job: Job) -> None:
    for name, value in attrs.asdict(job, recurse=False).items():
        if isinstance(value, datetime) and value.utcoffset() is None:
            raise ValueError(f"{name} must be timezone-aware")


def _as_status(value: JobStatus | str) -> JobStatus:
    return value if type(value) is JobStatus else JobStatus(value)


def is_name(value: str) -> bool:
    """Is `value` a well-formed job type or queue name?"""
    return bool(_NAME_PATTERN.fullmatch(value))


def is_job_id(value: str) -> bool:
    return bool(_ID_PATTERN.fullmatch(value))


# A job id minted here starts with its queue's tag, so a backend that keeps each queue's jobs
# apart (the Redis one, under the queue's hash tag) finds a job from its id alone. The rest is
# random: 96 bits.
QUEUE_TAG_LENGTH: Final = 8


@functools.lru_cache(maxsize=1024)
def queue_tag(queue: str) -> str:
    """The first hex digits of the ids of `queue`'s jobs: a hash of its name (sha256), so any
    process can compute it; two names may share a tag."""
    return hashlib.sha256(queue.encode()).hexdigest()[:QUEUE_TAG_LENGTH]


def new_job_id(queue: str) -> str:
    """A new job id for a job of `queue`: 32 lowercase hex digits, its queue's tag first.

    Ids made before tags existed (uuid4 hex), and ids a caller chose, are still valid ids;
    a backend finds those jobs another way (see `adapters.redis_queue.registry`).
    """
    return queue_tag(queue) + secrets.token_hex(16 - QUEUE_TAG_LENGTH // 2)


class ErrorKind(enum.StrEnum):
    """Why an attempt ended badly. Stored and shown: never change a value."""

    ERROR = "error"  # the handler raised
    NON_RETRYABLE = "non_retryable"  # the handler said another attempt cannot help
    TIMED_OUT = "timed_out"
    WORKER_LOST = "worker_lost"  # the process running it died
    INVALID = "invalid"  # what was stored cannot be run (unknown type, bad payload)
    EXPIRED = "expired"  # the job's deadline passed


# The longest error message a job keeps, in characters: a longer one is cut, and says so.
ERROR_MESSAGE_LIMIT: Final = 4096


def bounded_message(message: str) -> str:
    """`message`, cut to ERROR_MESSAGE_LIMIT characters (its start kept, with how long it
    was), so one exception cannot fill the store or every answer that shows it."""
    if len(message) <= ERROR_MESSAGE_LIMIT:
        return message
    marker = f"\u2026 [cut from {len(message)} characters]"
    return message[: ERROR_MESSAGE_LIMIT - len(marker)] + marker


@attrs.frozen
class JobError:
    """What went wrong in the last failed attempt."""

    message: str = attrs.field(converter=bounded_message)
    type: str
    kind: ErrorKind = ErrorKind.ERROR
    traceback: str | None = None
    # When the process running the attempt died: its exit code, or the signal that killed it.
    exit_code: int | None = None
    signal: str | None = None

    @property
    def retryable(self) -> bool:
        return self.kind in (ErrorKind.ERROR, ErrorKind.TIMED_OUT, ErrorKind.WORKER_LOST)


class AttemptOutcome(enum.StrEnum):
    """How one attempt ended. Stored and shown: never change a value."""

    SUCCEEDED = "succeeded"
    FAILED = "failed"  # the handler raised
    NON_RETRYABLE = "non_retryable"
    TIMED_OUT = "timed_out"
    WORKER_LOST = "worker_lost"  # its process died, or its lease lapsed
    INVALID = "invalid"
    RELEASED = "released"  # a stopping worker handed it back; the attempt does not count
    CANCELLED = "cancelled"  # stopped on a cancel request
    EXPIRED = "expired"  # stopped, or not retried, because the job's deadline passed

    @classmethod
    def of(cls, kind: ErrorKind) -> AttemptOutcome:
        return cls.FAILED if kind is ErrorKind.ERROR else cls(kind.value)


@attrs.frozen(kw_only=True)
class AttemptRecord:
    """One attempt in a job's history."""

    attempt: int
    worker: str | None
    started_at: datetime | None
    ended_at: datetime | None
    outcome: AttemptOutcome
    error: str | None = None  # the error's type and message, for the failed outcomes


# A job's priority orders claims within its queue: higher first, FIFO within one priority.
PRIORITY_MIN: Final = -100
PRIORITY_MAX: Final = 100
# Idempotency keys: printable ASCII without spaces, as HTTP header values allow.
IDEMPOTENCY_KEY_MAX: Final = 200
_IDEMPOTENCY_KEY: Final = re.compile(rf"[\x21-\x7e]{{1,{IDEMPOTENCY_KEY_MAX}}}")


def is_idempotency_key(value: str) -> bool:
    return bool(_IDEMPOTENCY_KEY.fullmatch(value))


# Unique keys: at most one live (not finished) job per key and queue. A client's key is any
# text of 1-200 characters without control characters; one derived from payload fields
# (`unique_for`) is the job type and a digest of their values.
UNIQUE_KEY_MAX: Final = 200
_UNIQUE_KEY: Final = re.compile(rf"[^\x00-\x1f\x7f]{{1,{UNIQUE_KEY_MAX}}}")


def is_unique_key(value: str) -> bool:
    return bool(_UNIQUE_KEY.fullmatch(value))


# A job keeps at most this many attempts in its history, the most recent ones.
HISTORY_LIMIT: Final = 50
# An attempt's error in its history record: "<type>: <message>", cut to this many characters.
ERROR_SUMMARY_LIMIT: Final = 200


def error_summary(error: JobError) -> str:
    """How a failed attempt's error reads in its history record."""
    text = f"{error.type}: {error.message}"
    if len(text) > ERROR_SUMMARY_LIMIT:
        text = text[: ERROR_SUMMARY_LIMIT - 1] + "\u2026"
    return text


# What a lapsed lease records: the worker holding it stopped renewing it (died or stalled).
LEASE_EXPIRED: Final = JobError(
    message="lease expired: the worker stopped renewing it",
    type="LeaseExpired",
    kind=ErrorKind.WORKER_LOST,
)


@attrs.frozen(kw_only=True)
class Job:
    """One submission of work. A value: adapters store it, use cases reason about it."""

    # Every field's check is in `__attrs_post_init__`, one call instead of one per field.
    id: str
    type: str
    payload: JSONObject = attrs.field(eq=False, hash=False)
    queue: str
    status: JobStatus = attrs.field(converter=_as_status)
    max_attempts: int
    timeout: float
    created_at: datetime
    priority: int = 0
    attempts: int = 0
    started_at: datetime | None = None
    finished_at: datetime | None = None
    progress: int | None = None
    result: JSONValue = attrs.field(default=None, eq=False, hash=False)
    error: JobError | None = None
    worker: str | None = None  # the worker holding (or last holding) its lease
    history: tuple[AttemptRecord, ...] = ()
    # Not to start before this time (a scheduled job); kept once it has started.
    run_at: datetime | None = None
    # Across all attempts: a job not finished by then ends `expired`.
    deadline: datetime | None = None
    # When the retry of a `failed` job is due.
    retry_at: datetime | None = None
    # A cancel was asked for while the job was active; its worker stops it cooperatively.
    cancel_requested_at: datetime | None = None
    # The last lease renewal of the current attempt: the worker was alive then.
    heartbeat_at: datetime | None = None
    idempotency_key: str | None = None
    # While the job is not finished, no other job of its queue is stored under this key: a
    # submit naming it answers this job instead.
    unique_key: str | None = None
    # The W3C `traceparent` of the request that submitted it (when that process traced): its
    # attempts' spans join that trace. Opaque here; only what a tracer made is ever stored.
    trace_context: str | None = None

    def __attrs_post_init__(self) -> None:
        """Refuses a job no store may hold: raises ValueError naming the field. A job is
        built for every claim and every answer, so this is one call, with the common case
        (every time decoded from a store is in UTC) decided without another."""
        if not _ID_PATTERN.fullmatch(self.id):
            raise ValueError(f"id must be 32 lowercase hex characters, got {self.id!r}")
        if not _NAME_PATTERN.fullmatch(self.type):
            raise ValueError(_name_error("type", self.type))
        if not _NAME_PATTERN.fullmatch(self.queue):
            raise ValueError(_name_error("queue", self.queue))
        if not self.max_attempts >= 1:
            raise ValueError(f"max_attempts must be >= 1: {self.max_attempts!r}")
        if not self.timeout > 0:
            raise ValueError(f"timeout must be > 0: {self.timeout!r}")
        if not PRIORITY_MIN <= self.priority <= PRIORITY_MAX:
            raise ValueError(
                f"priority must be between {PRIORITY_MIN} and {PRIORITY_MAX}: {self.priority!r}"
            )
        if not self.attempts >= 0:
            raise ValueError(f"attempts must be >= 0: {self.attempts!r}")
        if self.progress is not None and not 0 <= self.progress <= 100:
            raise ValueError(f"progress must be between 0 and 100: {self.progress!r}")
        moments = self.created_at, self.started_at, self.finished_at, self.run_at, self.deadline
        for moment in (*moments, self.retry_at, self.cancel_requested_at, self.heartbeat_at):
            if moment is not None and moment.tzinfo is not UTC:
                _refuse_naive_times(self)

    @classmethod
    def submitted(
        cls,
        *,
        id: str,
        type: str,
        payload: JSONObject,
        queue: str,
        max_attempts: int,
        timeout: float,
        now: datetime,
        priority: int = 0,
        run_at: datetime | None = None,
        deadline: datetime | None = None,
        idempotency_key: str | None = None,
        unique_key: str | None = None,
        trace_context: str | None = None,
    ) -> Job:
        """A new job: `scheduled` when it has a `run_at` in the future of `now`, else
        `queued`. (The backend decides again on its own clock when it stores the job.)"""
        scheduled = run_at is not None and run_at > now
        return cls(
            id=id,
            type=type,
            payload=payload,
            queue=queue,
            status=JobStatus.SCHEDULED if scheduled else JobStatus.QUEUED,
            max_attempts=max_attempts,
            timeout=timeout,
            created_at=now,
            priority=priority,
            run_at=run_at,
            deadline=deadline,
            idempotency_key=idempotency_key,
            unique_key=unique_key,
            trace_context=trace_context,
        )

    @property
    def attempts_left(self) -> int:
        return max(0, self.max_attempts - self.attempts)

    def remaining(self, now: datetime) -> float | None:
        """Seconds left before the deadline (0 once passed), or None without one."""
        if self.deadline is None:
            return None
        return max(0.0, (self.deadline - now).total_seconds())

    def transition(self, target: JobStatus, **changes: Any) -> Job:
        """The job in `target` status, with `changes`; refuses a move the state machine forbids."""
        if not can_transition(self.status, target):
            raise InvalidTransitionError(self.id, self.status, target)
        return attrs.evolve(self, status=target, **changes)


@attrs.frozen
class Lease:
    """A worker's claim on one attempt of a job. The token fences every write about it."""

    job: Job
    token: str

    @property
    def job_id(self) -> str:
        return self.job.id

    @property
    def attempt(self) -> int:
        return self.job.attempts


# The statuses an operator may send back to the queue: parked, and allowed back.
REQUEUABLE: Final = frozenset(
    s for s in JobStatus if s.is_terminal and can_transition(s, JobStatus.QUEUED)
)
