"""Reading jobs: one job, a page of them, and where a waiting one stands."""

from __future__ import annotations

import abc
from collections.abc import Sequence

import attrs

from domain.jobs import Job, JobStatus
from domain.limits import Throttle


@attrs.frozen(kw_only=True)
class JobQuery:
    status: JobStatus | None = None
    type: str | None = None
    queue: str | None = None
    limit: int = attrs.field(
        default=50, validator=[attrs.validators.ge(1), attrs.validators.le(500)]
    )
    cursor: str | None = None


@attrs.frozen
class JobPage:
    jobs: Sequence[Job]
    next_cursor: str | None


@attrs.frozen(kw_only=True)
class JobSituation:
    """A job and what decides when it runs: what `waiting_reason` is derived from. Only a
    queued job's situation matters; for another, a backend may leave the rest unread."""

    job: Job
    ahead: int | None  # jobs claimed before it, when it is queued
    paused: bool  # its queue is paused
    workers: int | None  # live workers serving its queue; None when unknown (or not needed)
    # Jobs per second its queue drains while it has jobs waiting (`domain.rates`); None when
    # not measured (or not needed: it is not queued, or its queue is paused).
    drain_rate: float | None = None
    # The limit of its type that holds it back now (`domain.limits`), if any.
    throttle: Throttle | None = None


class JobStore(abc.ABC):
    """Where jobs are kept, as any process reads them."""

    @abc.abstractmethod
    async def get(self, job_id: str) -> Job | None:
        """The job as stored now, or None."""

    @abc.abstractmethod
    async def list_jobs(self, query: JobQuery) -> JobPage:
        """Jobs matching the query, newest first, one page at a time."""

    @abc.abstractmethod
    async def situation(self, job_id: str) -> JobSituation | None:
        """The job and what decides when it runs, or None if there is no such job: what a
        reader of one job asks for, in one read where the backend can."""
