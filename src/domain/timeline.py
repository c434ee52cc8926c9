"""Explainable state: what happened to a job so far, and why it is not running now.

Both are derived from what the job records (its times, attempt history and status) and, for
the waiting reason, from its situation in its queue. Nothing here is stored: a timeline costs
no write on the hot path.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Final

import attrs

from domain.jobs import AttemptOutcome, Job, JobStatus
from domain.limits import LimitKind
from domain.ports import JobSituation

# A timeline shows at most this many events: the first few and the most recent.
TIMELINE_LIMIT: Final = 100
_TIMELINE_HEAD: Final = 4


class EventKind(enum.StrEnum):
    """What happened. Shown to clients: never change a value."""

    SUBMITTED = "submitted"
    SCHEDULED = "scheduled"  # waits until `until`
    CLAIMED = "claimed"  # a worker started an attempt
    HEARTBEAT = "heartbeat"  # the latest lease renewal of the running attempt
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    NON_RETRYABLE = "non_retryable"
    TIMED_OUT = "timed_out"
    WORKER_LOST = "worker_lost"
    INVALID = "invalid"
    RELEASED = "released"
    RETRY_SCHEDULED = "retry_scheduled"  # the next attempt is due at `until`
    CANCEL_REQUESTED = "cancel_requested"
    CANCELLED = "cancelled"
    EXPIRED = "expired"
    DEAD = "dead"


@attrs.frozen(kw_only=True)
class TimelineEvent:
    at: datetime | None
    kind: EventKind
    attempt: int | None = None
    worker: str | None = None
    until: datetime | None = None
    detail: str | None = None


class WaitingKind(enum.StrEnum):
    """Why a job that is not running waits. Shown to clients: never change a value."""

    SCHEDULED = "scheduled"  # its run_at has not come
    RETRY_BACKOFF = "retry_backoff"  # its next attempt is due later
    QUEUE_PAUSED = "queue_paused"
    NO_WORKER = "no_worker"  # no live worker serves its queue
    BEHIND_JOBS = "behind_jobs"  # `ahead` jobs will be claimed before it
    NEXT = "next"  # first in line: the next free worker takes it
    RATE_LIMITED = "rate_limited"  # its type's rate limit allows no start until `until`
    CONCURRENCY_LIMITED = "concurrency_limited"  # its type's running attempts are at the limit
    QUEUED = "queued"  # waiting its turn (the backend cannot say more)


@attrs.frozen(kw_only=True)
class WaitingReason:
    kind: WaitingKind
    message: str
    until: datetime | None = None
    ahead: int | None = None
    # When it should start: its due time when it waits for one; for a queued job, now plus
    # its place in line over its queue's drain rate. None when no estimate can be made (no
    # rate measured yet, a paused queue, no live worker).
    estimated_start: datetime | None = None
    drain_rate: float | None = None  # jobs/s its queue drains while it has jobs waiting


def waiting_reason(job: Job, situation: JobSituation | None, now: datetime) -> WaitingReason | None:
    """Why `job` is not running, or None when it is running or finished."""
    if job.status is JobStatus.SCHEDULED:
        when = "" if job.run_at is None else f" until {_iso(job.run_at)}"
        return WaitingReason(
            kind=WaitingKind.SCHEDULED,
            message=f"scheduled{when}",
            until=job.run_at,
            estimated_start=job.run_at,
        )
    if job.status is JobStatus.FAILED:
        when = "" if job.retry_at is None else f" at {_iso(job.retry_at)}"
        return WaitingReason(
            kind=WaitingKind.RETRY_BACKOFF,
            message=f"attempt {job.attempts} failed; the next is due{when}",
            until=job.retry_at,
            estimated_start=job.retry_at,
        )
    if job.status is not JobStatus.QUEUED:
        return None
    if situation is None:
        return WaitingReason(kind=WaitingKind.QUEUED, message="queued")
    ahead = situation.ahead
    behind = "" if ahead is None else f" ({ahead} jobs ahead)"
    if situation.paused:
        return WaitingReason(
            kind=WaitingKind.QUEUE_PAUSED,
            message=f"queue {job.queue!r} is paused{behind}; no estimate until it is resumed",
            ahead=ahead,
        )
    if situation.workers == 0:
        return WaitingReason(
            kind=WaitingKind.NO_WORKER,
            message=f"no live worker serves queue {job.queue!r}{behind}; "
            "it cannot start until one does",
            ahead=ahead,
        )
    throttle = situation.throttle
    if throttle is not None and throttle.kind is LimitKind.RATE:
        when = "" if throttle.until is None else f" until {_iso(throttle.until)}"
        return WaitingReason(
            kind=WaitingKind.RATE_LIMITED,
            message=f"job type {job.type!r} is at its rate limit: no start allowed{when}",
            until=throttle.until,
            ahead=ahead,
        )
    if throttle is not None:
        return WaitingReason(
            kind=WaitingKind.CONCURRENCY_LIMITED,
            message=f"job type {job.type!r} is at its concurrency limit: it starts when one "
            "of its running attempts ends",
            ahead=ahead,
        )
    rate = situation.drain_rate
    start = estimated_start(ahead, rate, now)
    if start is None or rate is None:
        estimate = "; no drain rate measured yet, so no estimate"
    else:
        wait = (start - now).total_seconds()
        estimate = (
            f"; at its drain rate of {rate:.3g} jobs/s it should start in about "
            f"{_duration(wait)} ({_iso(start)})"
        )
    if ahead:
        return WaitingReason(
            kind=WaitingKind.BEHIND_JOBS,
            message=f"behind {ahead} jobs in queue {job.queue!r}{estimate}",
            ahead=ahead,
            estimated_start=start,
            drain_rate=rate,
        )
    return WaitingReason(
        kind=WaitingKind.NEXT,
        message=f"next in line for a free worker{estimate}",
        ahead=ahead,
        estimated_start=start,
        drain_rate=rate,
    )


def estimated_start(ahead: int | None, drain_rate: float | None, now: datetime) -> datetime | None:
    """When a queued job with `ahead` jobs before it should be claimed, its queue draining
    `drain_rate` jobs a second: once those and itself have been taken. None without both."""
    if ahead is None or drain_rate is None or drain_rate <= 0:
        return None
    return now + timedelta(seconds=(ahead + 1) / drain_rate)


def _duration(seconds: float) -> str:
    if seconds < 1:
        return "1 s" if seconds > 0.5 else "a moment"
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def timeline(job: Job) -> Sequence[TimelineEvent]:
    """What happened to `job`, oldest first, at most TIMELINE_LIMIT events."""
    events = [TimelineEvent(at=job.created_at, kind=EventKind.SUBMITTED, detail=job.queue)]
    if job.run_at is not None:
        events.append(TimelineEvent(at=job.created_at, kind=EventKind.SCHEDULED, until=job.run_at))
    recorded_final = False
    for record in job.history:
        events.append(
            TimelineEvent(
                at=record.started_at,
                kind=EventKind.CLAIMED,
                attempt=record.attempt,
                worker=record.worker,
            )
        )
        events.append(
            TimelineEvent(
                at=record.ended_at,
                kind=EventKind(record.outcome.value),
                attempt=record.attempt,
                worker=record.worker,
                detail=record.error,
            )
        )
        recorded_final = record.outcome in (
            AttemptOutcome.SUCCEEDED,
            AttemptOutcome.CANCELLED,
            AttemptOutcome.EXPIRED,
        )
    if job.status is JobStatus.ACTIVE:
        events.append(
            TimelineEvent(
                at=job.started_at, kind=EventKind.CLAIMED, attempt=job.attempts, worker=job.worker
            )
        )
        if job.heartbeat_at is not None:
            events.append(
                TimelineEvent(
                    at=job.heartbeat_at,
                    kind=EventKind.HEARTBEAT,
                    attempt=job.attempts,
                    worker=job.worker,
                )
            )
    if job.cancel_requested_at is not None:
        events.append(TimelineEvent(at=job.cancel_requested_at, kind=EventKind.CANCEL_REQUESTED))
    if job.status is JobStatus.FAILED and job.retry_at is not None:
        last = job.history[-1].ended_at if job.history else None
        events.append(
            TimelineEvent(
                at=last,
                kind=EventKind.RETRY_SCHEDULED,
                attempt=job.attempts + 1,
                until=job.retry_at,
            )
        )
    final = {
        JobStatus.SUCCEEDED: EventKind.SUCCEEDED,
        JobStatus.CANCELLED: EventKind.CANCELLED,
        JobStatus.EXPIRED: EventKind.EXPIRED,
        JobStatus.DEAD: EventKind.DEAD,
    }.get(job.status)
    if final is not None and not (recorded_final and final is not EventKind.DEAD):
        detail = None
        if job.error is not None and final in (EventKind.DEAD, EventKind.EXPIRED):
            detail = f"{job.error.type}: {job.error.message}"[:200]
        events.append(TimelineEvent(at=job.finished_at, kind=final, detail=detail))
    events = _by_time(events)
    if len(events) > TIMELINE_LIMIT:
        tail = TIMELINE_LIMIT - _TIMELINE_HEAD
        events = events[:_TIMELINE_HEAD] + events[-tail:]
    return events


def _by_time(events: list[TimelineEvent]) -> list[TimelineEvent]:
    """Oldest first; events of one time keep the order they were derived in, and an event
    without a time stays after the one before it."""
    keyed: list[tuple[datetime | None, int, TimelineEvent]] = []
    last: datetime | None = None
    for position, event in enumerate(events):
        last = event.at if event.at is not None else last
        keyed.append((last, position, event))
    if any(at is None for at, _, _ in keyed):
        return events
    keyed.sort(key=lambda item: (item[0], item[1]))
    return [event for _, _, event in keyed]


def _iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")
