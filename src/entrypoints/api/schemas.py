"""What the API puts on the wire: msgspec Structs, mapped explicitly from domain values."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import msgspec

from domain.job_types import JobType
from domain.jobs import AttemptOutcome, AttemptRecord, ErrorKind, Job, JobError, JobStatus
from domain.ports import JobPage


class JobErrorView(msgspec.Struct, frozen=True, kw_only=True):
    """What went wrong in the job's last failed attempt."""

    message: str
    type: str
    kind: ErrorKind
    traceback: str | None
    exit_code: int | None
    signal: str | None

    @classmethod
    def from_domain(cls, error: JobError) -> JobErrorView:
        return cls(
            message=error.message,
            type=error.type,
            kind=error.kind,
            traceback=error.traceback,
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
    progress: int | None
    result: Any
    error: JobErrorView | None
    worker: str | None
    history: list[AttemptView]

    @classmethod
    def from_domain(cls, job: Job) -> JobView:
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
            progress=job.progress,
            result=job.result,
            error=None if job.error is None else JobErrorView.from_domain(job.error),
            worker=job.worker,
            history=[AttemptView.from_domain(record) for record in job.history],
        )


class JobPageView(msgspec.Struct, frozen=True, kw_only=True):
    """One page of jobs, newest first; pass `next_cursor` back as `cursor` for the next."""

    jobs: list[JobView]
    next_cursor: str | None

    @classmethod
    def from_domain(cls, page: JobPage) -> JobPageView:
        return cls(
            jobs=[JobView.from_domain(job) for job in page.jobs], next_cursor=page.next_cursor
        )


class JobTypeView(msgspec.Struct, frozen=True, kw_only=True):
    """A registered job type: its defaults, the limits a submission may ask for, its payload."""

    name: str
    description: str
    queue: str
    priority: int
    max_attempts: int
    max_attempts_limit: int
    timeout: float
    timeout_limit: float
    payload_schema: dict[str, Any]

    @classmethod
    def from_domain(cls, job_type: JobType) -> JobTypeView:
        return cls(
            name=job_type.name,
            description=job_type.description,
            queue=job_type.queue,
            priority=job_type.priority,
            max_attempts=job_type.retry.max_attempts,
            max_attempts_limit=job_type.retry.max_attempts_limit,
            timeout=job_type.timeout,
            timeout_limit=job_type.timeout_limit,
            payload_schema=job_type.schema.json_schema(),
        )


class JobTypeList(msgspec.Struct, frozen=True, kw_only=True):
    job_types: list[JobTypeView]


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
