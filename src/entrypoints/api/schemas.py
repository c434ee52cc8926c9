"""What the API puts on the wire: msgspec Structs, mapped explicitly from domain values."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, Literal, Self

import msgspec

from domain.job_service import Accepted, JobDetails
from domain.jobs import AttemptOutcome, AttemptRecord, ErrorKind, Job, JobError, JobStatus
from domain.ports import JobPage
from domain.timeline import (
    EventKind,
    TimelineEvent,
    WaitingKind,
    WaitingReason,
    timeline,
    waiting_reason,
)


class JobErrorView(msgspec.Struct, frozen=True, kw_only=True):
    """What went wrong in the job's last failed attempt: the exception's type and message.
    `traceback` is null unless the server exposes tracebacks (`CONVEYOR_EXPOSE_TRACEBACKS`):
    they name the server's files, and are in its log."""

    message: str
    type: str
    kind: ErrorKind
    traceback: str | None
    exit_code: int | None
    signal: str | None

    @classmethod
    def from_domain(cls, error: JobError, *, tracebacks: bool = False) -> JobErrorView:
        return cls(
            message=error.message,
            type=error.type,
            kind=error.kind,
            # A traceback stored before the setting was turned off stays hidden too.
            traceback=error.traceback if tracebacks else None,
            exit_code=error.exit_code,
            signal=error.signal,
        )


class AttemptView(msgspec.Struct, frozen=True, kw_only=True):
    """One attempt of the job: who ran it, when, and how it ended."""

    attempt: int
    worker: str | None
    started_at: datetime | None
    ended_at: datetime | None
    outcome: AttemptOutcome
    error: str | None

    @classmethod
    def from_domain(cls, record: AttemptRecord) -> AttemptView:
        return cls(
            attempt=record.attempt,
            worker=record.worker,
            started_at=record.started_at,
            ended_at=record.ended_at,
            outcome=record.outcome,
            error=record.error,
        )


class WaitingReasonView(msgspec.Struct, frozen=True, kw_only=True):
    """Why a job that is not running waits, until when or behind how many jobs, and when it
    should start: its due time, or for a queued job now plus its place in line over its
    queue's drain rate (`drain_rate`, jobs/s while the queue had jobs waiting); null when no
    estimate can be made (no rate measured yet, the queue paused, no live worker)."""

    kind: WaitingKind
    message: str
    until: datetime | None
    ahead: int | None
    estimated_start: datetime | None
    drain_rate: float | None

    @classmethod
    def from_domain(cls, reason: WaitingReason) -> WaitingReasonView:
        return cls(
            kind=reason.kind,
            message=reason.message,
            until=reason.until,
            ahead=reason.ahead,
            estimated_start=reason.estimated_start,
            drain_rate=rounded(reason.drain_rate),
        )


class TimelineEventView(msgspec.Struct, frozen=True, kw_only=True):
    """One thing that happened to the job."""

    at: datetime | None
    kind: EventKind
    attempt: int | None
    worker: str | None
    until: datetime | None
    detail: str | None

    @classmethod
    def from_domain(cls, event: TimelineEvent) -> TimelineEventView:
        return cls(
            at=event.at,
            kind=event.kind,
            attempt=event.attempt,
            worker=event.worker,
            until=event.until,
            detail=event.detail,
        )


class JobView(msgspec.Struct, frozen=True, kw_only=True):
    """One job as a client sees it. The payload is left out: it may hold secrets."""

    id: str
    type: str
    status: JobStatus
    queue: str
    priority: int
    attempts: int
    max_attempts: int
    timeout: float
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    run_at: datetime | None
    deadline: datetime | None
    retry_at: datetime | None
    cancel_requested_at: datetime | None
    heartbeat_at: datetime | None
    unique_key: str | None
    progress: int | None
    result: Any
    error: JobErrorView | None
    worker: str | None
    history: list[AttemptView]
    waiting_reason: WaitingReasonView | None
    timeline: list[TimelineEventView]
    # The key it was submitted under; a schedule's jobs carry `schedule:<name>:<tick>`.
    idempotency_key: str | None = None

    @classmethod
    def from_details(cls, details: JobDetails, *, tracebacks: bool = False, **more: Any) -> Self:
        """The job with what explains it, as `JobService.details` found it; its error's
        traceback only with `tracebacks`; `more`: the fields a subclass adds."""
        job = details.job
        return cls(
            id=job.id,
            type=job.type,
            status=job.status,
            queue=job.queue,
            priority=job.priority,
            attempts=job.attempts,
            max_attempts=job.max_attempts,
            timeout=job.timeout,
            created_at=job.created_at,
            started_at=job.started_at,
            finished_at=job.finished_at,
            run_at=job.run_at,
            deadline=job.deadline,
            retry_at=job.retry_at,
            cancel_requested_at=job.cancel_requested_at,
            heartbeat_at=job.heartbeat_at,
            unique_key=job.unique_key,
            progress=job.progress,
            result=job.result,
            error=(
                None
                if job.error is None
                else JobErrorView.from_domain(job.error, tracebacks=tracebacks)
            ),
            worker=job.worker,
            history=[AttemptView.from_domain(record) for record in job.history],
            waiting_reason=(
                None
                if details.waiting_reason is None
                else WaitingReasonView.from_domain(details.waiting_reason)
            ),
            timeline=[TimelineEventView.from_domain(event) for event in details.timeline],
            idempotency_key=job.idempotency_key,
            **more,
        )

    @classmethod
    def from_domain(cls, job: Job, *, tracebacks: bool = False, **more: Any) -> Self:
        """The job explained by what it records alone: its waiting reason cannot say where it
        stands in its queue (`GET /jobs/{id}` asks the backend for that)."""
        reason = waiting_reason(job, None, datetime.now(UTC))
        details = JobDetails(job=job, waiting_reason=reason, timeline=timeline(job))
        return cls.from_details(details, tracebacks=tracebacks, **more)


class SubmittedJobView(JobView, frozen=True, kw_only=True):
    """A submission's answer: the job, and whether it was there before this request (an
    `Idempotency-Key` repeat, or a job not finished that holds the same `unique_key`; the
    answer's header says which)."""

    replayed: bool

    @classmethod
    def from_accepted(cls, accepted: Accepted, *, tracebacks: bool = False) -> SubmittedJobView:
        return cls.from_domain(accepted.job, tracebacks=tracebacks, replayed=not accepted.created)


class BatchEntryView(msgspec.Struct, frozen=True, kw_only=True):
    """One job of a batch: its id and status, and whether this request created it; if not,
    `replayed_by` says why: its `idempotency_key` named a job submitted before, or a job not
    finished holds its `unique_key`."""

    id: str
    status: JobStatus
    created: bool
    replayed_by: ReplayedBy | None
    location: str

    @classmethod
    def from_domain(cls, accepted: Accepted) -> BatchEntryView:
        job = accepted.job
        return cls(
            id=job.id,
            status=job.status,
            created=accepted.created,
            replayed_by=replayed_by(accepted),
            location=job_location(job),
        )


class BatchView(msgspec.Struct, frozen=True, kw_only=True):
    """A batch's jobs, one entry per submitted item, in the order they were sent."""

    jobs: list[BatchEntryView]

    @classmethod
    def from_domain(cls, accepted: Sequence[Accepted]) -> BatchView:
        return cls(jobs=[BatchEntryView.from_domain(item) for item in accepted])


ReplayedBy = Literal["idempotency_key", "unique_key"]


def replayed_by(accepted: Accepted) -> ReplayedBy | None:
    """Why a submission was answered with a job it did not create (None: it created it)."""
    if accepted.created:
        return None
    return "unique_key" if accepted.unique else "idempotency_key"


def job_location(job: Job) -> str:
    return f"/jobs/{job.id}"


class JobPageView(msgspec.Struct, frozen=True, kw_only=True):
    """One page of jobs, newest first; pass `next_cursor` back as `cursor` for the next."""

    jobs: list[JobView]
    next_cursor: str | None

    @classmethod
    def from_domain(cls, page: JobPage, *, tracebacks: bool = False) -> JobPageView:
        return cls(
            jobs=[JobView.from_domain(job, tracebacks=tracebacks) for job in page.jobs],
            next_cursor=page.next_cursor,
        )


def rounded(rate: float | None) -> float | None:
    # Four significant digits: the rest is noise, and a decaying rate is never quite zero.
    return None if rate is None else float(f"{rate:.4g}")


class HealthView(msgspec.Struct, frozen=True, kw_only=True):
    status: str


class FieldErrorView(msgspec.Struct, frozen=True, kw_only=True):
    """One invalid field: where it is (`payload.to`) and what is wrong with it."""

    path: str
    message: str


class Problem(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """An RFC 9457 problem detail (`application/problem+json`)."""

    type: str
    title: str
    status: int
    detail: str
    instance: str | msgspec.UnsetType = msgspec.UNSET
    errors: list[FieldErrorView] | msgspec.UnsetType = msgspec.UNSET
    known_types: list[str] | msgspec.UnsetType = msgspec.UNSET
    # A 501's missing backend capability: the role it lacks (`domain.ports.ROLE_NAMES`, e.g.
    # `pause`) or the option it cannot take (e.g. `deadlines`).
    capability: str | msgspec.UnsetType = msgspec.UNSET
