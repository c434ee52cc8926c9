"""What the API (and the CLI) says of its queues, job types and schedules: msgspec Structs,
mapped explicitly from domain values, in a module without Litestar, so the CLI can import
them without it."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import msgspec

from domain.job_types import JobType
from domain.jobs import JobStatus
from domain.limits import FlowLimits, TypeLimits
from domain.ports import QueueStats
from domain.ports.schedules import StoredSchedule
from domain.schedules import MisfirePolicy
from entrypoints.api.schemas import rounded


class QueueView(msgspec.Struct, frozen=True, kw_only=True):
    """One queue: its jobs by status, how long the oldest queued one has waited, whether it is
    paused, how many live workers serve it (null when the backend cannot tell), and its rates
    in jobs per second: `rate_in` submitted and `rate_out` claimed over about the last 10 s,
    `drain_rate` claimed while it had jobs waiting over about the last 30 s of such time
    (what a waiting job's `estimated_start` is made from); null when not measured."""

    name: str
    counts: dict[str, int]
    oldest_queued_age: float | None
    paused: bool
    workers: int | None
    rate_in: float | None
    rate_out: float | None
    drain_rate: float | None

    @classmethod
    def from_domain(cls, stats: QueueStats) -> QueueView:
        return cls(
            name=stats.name,
            # Every status, so a client never has to tell "none" from "not reported".
            counts={str(status): stats.counts.get(status, 0) for status in JobStatus},
            oldest_queued_age=stats.oldest_queued_age,
            paused=stats.paused,
            workers=stats.workers,
            rate_in=rounded(stats.rate_in),
            rate_out=rounded(stats.rate_out),
            drain_rate=rounded(stats.drain_rate),
        )


class TypeLimitView(msgspec.Struct, frozen=True, kw_only=True):
    """The flow limits of one job type, across every worker and queue: `rate` the most
    attempts started in any window of its interval (`10/s`, `100/min`, `5/2s`),
    `concurrency` the most running at once; null when not set."""

    job_type: str
    rate: str | None
    concurrency: int | None

    @classmethod
    def from_domain(cls, job_type: str, limits: TypeLimits) -> TypeLimitView:
        rate = None if limits.rate is None else str(limits.rate)
        return cls(job_type=job_type, rate=rate, concurrency=limits.concurrency)


class QueueList(msgspec.Struct, frozen=True, kw_only=True):
    """The queues, and the flow limits per job type that hold their jobs back
    (`CONVEYOR_RATE_LIMITS`, `CONVEYOR_CONCURRENCY_LIMITS`)."""

    queues: list[QueueView]
    limits: list[TypeLimitView] = msgspec.field(default_factory=list)

    @classmethod
    def from_domain(
        cls, stats: Sequence[QueueStats], limits: FlowLimits | None = None
    ) -> QueueList:
        return cls(
            queues=[QueueView.from_domain(queue) for queue in stats],
            limits=[TypeLimitView.from_domain(n, t) for n, t in limits or FlowLimits()],
        )


class JobTypeView(msgspec.Struct, frozen=True, kw_only=True):
    """A registered job type: its defaults, the limits a submission may ask for, its payload,
    and its flow limits across every worker (`rate_limit`: the most attempts started in any
    window of its interval, e.g. `10/s`; `concurrency_limit`: the most running at once;
    null when not set)."""

    name: str
    description: str
    queue: str
    priority: int
    max_attempts: int
    max_attempts_limit: int
    timeout: float
    timeout_limit: float
    payload_schema: dict[str, Any]
    rate_limit: str | None = None
    concurrency_limit: int | None = None

    @classmethod
    def from_domain(cls, job_type: JobType, limits: TypeLimits | None = None) -> JobTypeView:
        rate = None if limits is None or limits.rate is None else str(limits.rate)
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
            rate_limit=rate,
            concurrency_limit=None if limits is None else limits.concurrency,
        )


class JobTypeList(msgspec.Struct, frozen=True, kw_only=True):
    job_types: list[JobTypeView]


class ScheduleView(msgspec.Struct, frozen=True, kw_only=True):
    """A schedule as a client sees it. The payload is left out, as from jobs: it may hold
    secrets."""

    name: str
    type: str
    cron: str | None
    timezone: str | None
    every: float | None
    options: dict[str, Any]
    misfire: MisfirePolicy
    misfire_grace: float
    paused: bool
    next_tick: datetime | None
    last_tick: datetime | None
    last_job_id: str | None
    # What the idempotency key of each of its jobs starts with (`GET /jobs/{id}` shows it).
    job_key_prefix: str

    @classmethod
    def from_domain(cls, stored: StoredSchedule) -> ScheduleView:
        schedule = stored.schedule
        return cls(
            name=schedule.name,
            type=schedule.type,
            cron=schedule.cron,
            timezone=schedule.timezone if schedule.cron is not None else None,
            every=schedule.every,
            options=dict(schedule.options),
            misfire=schedule.misfire,
            misfire_grace=schedule.misfire_grace,
            paused=stored.paused,
            next_tick=stored.next_tick,
            last_tick=stored.last_tick,
            last_job_id=stored.last_job_id,
            job_key_prefix=f"schedule:{schedule.name}:",
        )


class ScheduleList(msgspec.Struct, frozen=True, kw_only=True):
    schedules: list[ScheduleView]
