"""Explainable state: the timeline and waiting reason derived from a job."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import attrs

from domain.jobs import HISTORY_LIMIT, AttemptOutcome, AttemptRecord, Job, JobError, JobStatus
from domain.limits import LimitKind, Throttle
from domain.ports import JobSituation
from domain.timeline import TIMELINE_LIMIT, EventKind, WaitingKind, timeline, waiting_reason

T0 = datetime(2026, 1, 1, tzinfo=UTC)
S = JobStatus


def _at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def _job(**changes: Any) -> Job:
    job = Job.submitted(
        id="a" * 32,
        type="report",
        payload={},
        queue="default",
        max_attempts=3,
        timeout=10,
        now=T0,
    )
    return attrs.evolve(job, **changes)


def _record(attempt: int, outcome: AttemptOutcome, error: str | None = None) -> AttemptRecord:
    return AttemptRecord(
        attempt=attempt,
        worker="w1",
        started_at=_at(attempt * 10),
        ended_at=_at(attempt * 10 + 5),
        outcome=outcome,
        error=error,
    )


def _situation(job: Job, **fields: object) -> JobSituation:
    return JobSituation(job=job, **{"ahead": 0, "paused": False, "workers": 1, **fields})  # type: ignore[arg-type]


def test_a_scheduled_job_waits_for_its_time() -> None:
    job = _job(status=S.SCHEDULED, run_at=_at(60))
    reason = waiting_reason(job, None, T0)
    assert reason is not None
    assert (reason.kind, reason.until) == (WaitingKind.SCHEDULED, _at(60))
    assert [e.kind for e in timeline(job)] == [EventKind.SUBMITTED, EventKind.SCHEDULED]
    assert timeline(job)[1].until == _at(60)


def test_a_failed_job_waits_for_its_retry() -> None:
    job = _job(
        status=S.FAILED,
        attempts=1,
        retry_at=_at(30),
        history=(_record(1, AttemptOutcome.FAILED, "ValueError: boom"),),
    )
    reason = waiting_reason(job, None, T0)
    assert reason is not None
    assert (reason.kind, reason.until) == (WaitingKind.RETRY_BACKOFF, _at(30))
    events = timeline(job)
    assert [e.kind for e in events] == [
        EventKind.SUBMITTED,
        EventKind.CLAIMED,
        EventKind.FAILED,
        EventKind.RETRY_SCHEDULED,
    ]
    assert events[2].detail == "ValueError: boom"
    assert (events[3].attempt, events[3].until) == (2, _at(30))


def test_a_queued_job_is_explained_by_its_situation_most_blocking_first() -> None:
    job = _job()
    kinds = [
        waiting_reason(job, _situation(job, **fields), T0)
        for fields in (
            {"paused": True, "workers": 0, "ahead": 5},
            {"workers": 0, "ahead": 5},
            {"ahead": 5},
            {"ahead": 0},
        )
    ]
    assert [k.kind for k in kinds if k] == [
        WaitingKind.QUEUE_PAUSED,
        WaitingKind.NO_WORKER,
        WaitingKind.BEHIND_JOBS,
        WaitingKind.NEXT,
    ]
    assert kinds[2] is not None
    assert kinds[2].ahead == 5
    assert "behind 5 jobs" in kinds[2].message
    unknown = waiting_reason(job, None, T0)
    assert unknown is not None
    assert unknown.kind is WaitingKind.QUEUED


def test_a_queued_job_held_by_its_types_limit_says_which_and_until_when() -> None:
    job = _job()
    rated = waiting_reason(job, _situation(job, throttle=Throttle(LimitKind.RATE, _at(2))), T0)
    assert rated is not None
    assert (rated.kind, rated.until) == (WaitingKind.RATE_LIMITED, _at(2))
    assert "rate limit" in rated.message
    held = waiting_reason(job, _situation(job, throttle=Throttle(LimitKind.CONCURRENCY)), T0)
    assert held is not None
    assert (held.kind, held.until) == (WaitingKind.CONCURRENCY_LIMITED, None)
    # A pause still comes first: nothing starts from a paused queue, limit or not.
    paused = waiting_reason(
        job, _situation(job, paused=True, throttle=Throttle(LimitKind.CONCURRENCY)), T0
    )
    assert paused is not None
    assert paused.kind is WaitingKind.QUEUE_PAUSED


def test_running_and_finished_jobs_have_no_waiting_reason() -> None:
    for status in (S.ACTIVE, S.SUCCEEDED, S.DEAD, S.CANCELLED, S.EXPIRED):
        assert waiting_reason(_job(status=status), None, T0) is None


def test_an_active_job_shows_its_claim_heartbeat_and_cancel_request() -> None:
    job = _job(
        status=S.ACTIVE,
        attempts=1,
        worker="w9",
        started_at=_at(1),
        heartbeat_at=_at(11),
        cancel_requested_at=_at(12),
    )
    events = timeline(job)
    assert [e.kind for e in events] == [
        EventKind.SUBMITTED,
        EventKind.CLAIMED,
        EventKind.HEARTBEAT,
        EventKind.CANCEL_REQUESTED,
    ]
    assert (events[1].worker, events[1].attempt) == ("w9", 1)


def test_final_status_appears_once() -> None:
    succeeded = _job(
        status=S.SUCCEEDED,
        attempts=1,
        finished_at=_at(15),
        history=(_record(1, AttemptOutcome.SUCCEEDED),),
    )
    kinds = [e.kind for e in timeline(succeeded)]
    assert kinds.count(EventKind.SUCCEEDED) == 1
    cancelled_waiting = _job(status=S.CANCELLED, finished_at=_at(3))
    assert [e.kind for e in timeline(cancelled_waiting)][-1] is EventKind.CANCELLED
    dead = _job(
        status=S.DEAD,
        attempts=1,
        finished_at=_at(15),
        error=JobError("boom", "ValueError"),
        history=(_record(1, AttemptOutcome.FAILED, "ValueError: boom"),),
    )
    last = timeline(dead)[-1]
    assert (last.kind, last.detail) == (EventKind.DEAD, "ValueError: boom")


def test_the_timeline_is_bounded_and_keeps_the_start_and_the_latest() -> None:
    history = tuple(_record(n, AttemptOutcome.RELEASED) for n in range(1, HISTORY_LIMIT + 1))
    job = _job(status=S.QUEUED, attempts=0, history=history)
    events = timeline(job)
    assert len(events) == TIMELINE_LIMIT
    assert events[0].kind is EventKind.SUBMITTED
    assert events[-1].attempt == HISTORY_LIMIT


def test_events_are_in_time_order() -> None:
    record = AttemptRecord(
        attempt=1,
        worker="w1",
        started_at=_at(10),
        ended_at=_at(20),
        outcome=AttemptOutcome.CANCELLED,
    )
    job = _job(
        status=S.CANCELLED,
        attempts=1,
        finished_at=_at(20),
        cancel_requested_at=_at(18),
        history=(record,),
    )
    assert [e.kind for e in timeline(job)] == [
        EventKind.SUBMITTED,
        EventKind.CLAIMED,
        EventKind.CANCEL_REQUESTED,
        EventKind.CANCELLED,
    ]
