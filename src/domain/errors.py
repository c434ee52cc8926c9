"""Errors the domain raises. Entry points map them to their own vocabulary (HTTP, exit codes)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import attrs

if TYPE_CHECKING:  # domain.jobs imports this module
    from domain.jobs import JobStatus


class DomainError(Exception):
    """Base of every error the domain raises on purpose."""


class JobNotFoundError(DomainError):
    def __init__(self, job_id: str) -> None:
        super().__init__(f"no job with id {job_id!r}")
        self.job_id = job_id


class UnknownJobTypeError(DomainError):
    def __init__(self, name: str, known: Sequence[str]) -> None:
        super().__init__(f"unknown job type {name!r}; known types: {', '.join(sorted(known))}")
        self.name = name
        self.known = tuple(sorted(known))


@attrs.frozen
class FieldError:
    """One invalid field: where it is (JSON-pointer-like path) and what is wrong with it."""

    path: str
    message: str


class InvalidJobError(DomainError):
    """The submission is invalid; `errors` names every bad field, not just the first."""

    def __init__(self, errors: Sequence[FieldError]) -> None:
        self.errors = tuple(errors)
        summary = "; ".join(f"{e.path or '(root)'}: {e.message}" for e in self.errors)
        super().__init__(f"invalid job: {summary}")


class InvalidTransitionError(DomainError):
    def __init__(self, job_id: str, current: str, target: str) -> None:
        super().__init__(f"job {job_id} cannot go from {current} to {target}")
        self.job_id = job_id
        self.current = current
        self.target = target


class UniqueKeyHeldError(InvalidTransitionError):
    """A job cannot go back to its queue: another job, not finished, holds its unique key."""

    def __init__(self, job_id: str, current: str, key: str, holder: str) -> None:
        DomainError.__init__(
            self,
            f"job {job_id} cannot be requeued: job {holder} holds its unique key {key!r}"
            " and has not finished",
        )
        self.job_id = job_id
        self.current = current
        self.target = "queued"
        self.key = key
        self.holder = holder


class QueueUnavailableError(DomainError):
    """The queue backend cannot be reached right now; the caller may retry later."""

    def __init__(self, reason: str, retry_after: float = 1.0) -> None:
        super().__init__(f"queue backend unavailable: {reason}")
        self.reason = reason
        self.retry_after = retry_after


class NotReplicatedError(DomainError):
    """A write reached the primary but fewer replicas than required confirmed it in time.

    Unlike `QueueUnavailableError`, something may have been stored: a failover now could
    lose it, or it may already be on the replicas and only the confirmation came late.
    `settled`: for a settlement, the status it wrote on the primary (None for a submission).
    """

    def __init__(
        self,
        acknowledged: int,
        required: int,
        timeout: float,
        *,
        settled: JobStatus | None = None,
        retry_after: float = 1.0,
    ) -> None:
        super().__init__(
            f"the write is on the primary, but {acknowledged} of the {required} replicas"
            f" required confirmed it within {timeout:g} s"
        )
        self.acknowledged = acknowledged
        self.required = required
        self.timeout = timeout
        self.settled = settled
        self.retry_after = retry_after


class UnsafeBackendError(DomainError):
    """The backend is configured so that it could lose jobs; refuse to run on it."""


class UnsupportedOperationError(DomainError):
    """The backend cannot do this at all: it does not play the role it needs, or cannot take
    an option of the request; `capability` names which (`ports.ROLE_NAMES`, or the
    `SubmitTraits` field).

    Raised at once, before anything is read or written, so a caller can rely on nothing having
    happened.
    """

    def __init__(self, operation: str, capability: str, reason: str) -> None:
        super().__init__(f"{operation} is not supported by this backend ({capability}): {reason}")
        self.operation = operation
        self.capability = capability
        self.reason = reason


class UnstorableResultError(DomainError):
    """A handler returned something the backend cannot store as JSON."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"the job's result cannot be stored as JSON: {reason}")


class ResultTooLargeError(UnstorableResultError):
    """A handler returned a result larger, as JSON, than the backend keeps."""

    def __init__(self, size: int, limit: int) -> None:
        DomainError.__init__(
            self,
            f"the job's result is {size} bytes as JSON, over the limit of {limit} bytes"
            " (CONVEYOR_MAX_RESULT_BYTES); return less, or store it elsewhere and return"
            " where",
        )
        self.size = size
        self.limit = limit


class NonRetryableError(Exception):
    """Raised by a handler when another attempt cannot succeed; the job goes straight to dead."""


class IdempotencyConflictError(DomainError):
    """An idempotency key already names a submission with a different body."""

    def __init__(self, key: str, index: int | None = None) -> None:
        where = "" if index is None else f" (batch item {index})"
        super().__init__(
            f"idempotency key {key!r}{where} was already used for a different submission"
        )
        self.key = key
        self.index = index


class AdmissionRefusedError(DomainError):
    """A limit refuses new work for now: nothing was stored; try again after `retry_after`."""

    def __init__(self, queue: str | None, reason: str, retry_after: float = 1.0) -> None:
        where = "the job store" if queue is None else f"queue {queue!r}"
        super().__init__(f"{where} is over its admission limit: {reason}")
        self.queue = queue
        self.reason = reason
        self.retry_after = retry_after


class TooManyQueuesError(AdmissionRefusedError):
    """A job or a pause would open a queue past the most the backend keeps: nothing was
    stored. Queues that hold no job, are not paused and have no live worker are forgotten in
    time, which makes room."""

    def __init__(self, queue: str, limit: int, retry_after: float = 10.0) -> None:
        super().__init__(
            queue,
            f"there are {limit} queues, the most allowed (CONVEYOR_MAX_QUEUES); use one of"
            " them, or retry once unused ones have been forgotten",
            retry_after,
        )
        self.limit = limit


class PartialSubmissionError(DomainError):
    """A batch spanning queues was stored queue by queue (a backend that keeps queues apart,
    as Redis Cluster does), and some queues' parts were not stored: per job, in order,
    `stored` holds the id it was answered with (stored, or replayed) or None, and `errors`
    the error of its queue's part or None. Each queue's part was all or nothing."""

    def __init__(self, stored: Sequence[str | None], errors: Sequence[DomainError | None]) -> None:
        failed = sorted({str(e) for e in errors if e is not None})
        super().__init__(
            f"{sum(e is None for e in errors)} of {len(errors)} jobs were stored; the others"
            f" were not: {'; '.join(failed)}"
        )
        self.stored = tuple(stored)
        self.errors = tuple(errors)
        # A retry after the first of these that says when; 1 s when none does.
        waits = [getattr(e, "retry_after", None) for e in errors]
        self.retry_after: float = next((w for w in waits if isinstance(w, int | float)), 1.0)


class JobCancelledError(Exception):
    """Raised by a handler that saw its job's cancel request (`JobContext.cancel_requested`)
    and stopped: the job ends `cancelled`."""


class InvalidScheduleError(DomainError):
    """A schedule cannot be created as declared; `errors` names every bad field (`cron`,
    `timezone`, `payload.to`, `options.queue`), not just the first."""

    def __init__(self, errors: Sequence[FieldError]) -> None:
        self.errors = tuple(errors)
        summary = "; ".join(f"{e.path or '(root)'}: {e.message}" for e in self.errors)
        super().__init__(f"invalid schedule: {summary}")


class ScheduleNotFoundError(DomainError):
    def __init__(self, name: str) -> None:
        super().__init__(f"no schedule named {name!r}")
        self.name = name
