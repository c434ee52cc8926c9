"""How an attempt ends: the one rule that decides what becomes of its job.

Every backend settles attempts with this rule and nothing else: the memory backend applies
it to its `Job` values (`settle_job`), the RQ backend's worker asks it what RQ must do, and
the Redis backend's Lua (`adapters/redis_queue/lua/lib/decide.lua`) is a line-by-line
rendering of `decide` that a property test drives against this module.

The decision table, first match wins:

| the attempt ended        | and                                          | the job becomes       |
|--------------------------|----------------------------------------------|-----------------------|
| succeeded                |                                              | succeeded             |
| any other way            | a cancel was requested, or it was cancelled  | cancelled             |
| any other way            | its deadline has passed, or it was cut by it | expired               |
| released (worker stops)  |                                              | queued, at the head,  |
|                          |                                              | the attempt uncounted |
| failed, timed out, lost  | attempts left and a retry time is known      | expired if the retry  |
|                          |                                              | would be due at or    |
|                          |                                              | after the deadline;   |
|                          |                                              | else queued at the    |
|                          |                                              | head if it is due     |
|                          |                                              | now, else failed      |
|                          |                                              | until `retry_at`      |
| any other way            |                                              | dead                  |

The attempt's history record says how it really ended: the override (cancelled, expired)
when one applied, else the outcome reported.
"""

from __future__ import annotations

import math
from datetime import datetime, timedelta
from typing import Any, Final

import attrs

from domain.jobs import (
    HISTORY_LIMIT,
    LEASE_EXPIRED,
    AttemptOutcome,
    AttemptRecord,
    Job,
    JobError,
    JobStatus,
    JSONValue,
    error_summary,
)

S = JobStatus
O = AttemptOutcome  # noqa: E741 - the table reads better short

# Outcomes after which another attempt may help, when attempts are left.
RETRYABLE: Final = frozenset({O.FAILED, O.TIMED_OUT, O.WORKER_LOST})
# Outcomes that report a failure, and so carry the error that caused it.
FAILURES: Final = frozenset(
    {O.FAILED, O.NON_RETRYABLE, O.TIMED_OUT, O.WORKER_LOST, O.INVALID, O.EXPIRED}
)
# The statuses in which a job has finished: `finished_at` is set as it enters them.
FINISHED: Final = frozenset({S.SUCCEEDED, S.DEAD, S.CANCELLED, S.EXPIRED})


def _check_ending(ending: Ending, _: attrs.Attribute[Any], error: JobError | None) -> None:
    if ending.outcome in FAILURES:
        if error is None:
            raise ValueError(f"an attempt that ended {ending.outcome} needs its error")
        if AttemptOutcome.of(error.kind) is not ending.outcome:
            raise ValueError(
                f"an error of kind {error.kind} cannot end an attempt {ending.outcome}"
            )
    elif error is not None:
        raise ValueError(f"an attempt that ended {ending.outcome} carries no error")


@attrs.frozen(kw_only=True)
class Ending:
    """How an attempt ended, as the party that saw it end reports it."""

    outcome: AttemptOutcome
    error: JobError | None = attrs.field(default=None, validator=_check_ending)
    result: JSONValue = attrs.field(default=None, eq=False)  # what a success returned
    # Seconds until a retry when the outcome allows one (the job type's retry policy, drawn
    # by the caller); None when no retry time is known (the job's type is not registered).
    # Under half a microsecond: the job goes straight back to the head of its queue.
    retry_in: float | None = None

    @classmethod
    def succeeded(cls, result: JSONValue) -> Ending:
        return cls(outcome=O.SUCCEEDED, result=result)

    @classmethod
    def failed(cls, error: JobError, retry_in: float | None) -> Ending:
        """The handler raised, timed out, was found invalid, or its process died."""
        return cls(outcome=AttemptOutcome.of(error.kind), error=error, retry_in=retry_in)

    @classmethod
    def cancelled(cls) -> Ending:
        """The handler stopped on its job's cancel request."""
        return cls(outcome=O.CANCELLED)

    @classmethod
    def released(cls) -> Ending:
        """A stopping worker handed the job back before its attempt ended."""
        return cls(outcome=O.RELEASED)

    @classmethod
    def lease_expired(cls) -> Ending:
        """Nobody renewed the lease: the worker died or stalled. Retried at once."""
        return cls(outcome=O.WORKER_LOST, error=LEASE_EXPIRED, retry_in=0.0)


@attrs.frozen(kw_only=True)
class AttemptFacts:
    """What the rule needs to know of the job as its attempt ends, read by the backend in
    the same atomic step that writes the settlement."""

    attempts: int  # attempts counted so far, the ending one included
    max_attempts: int
    deadline: datetime | None
    cancel_requested: bool

    @classmethod
    def of(cls, job: Job) -> AttemptFacts:
        return cls(
            attempts=job.attempts,
            max_attempts=job.max_attempts,
            deadline=job.deadline,
            cancel_requested=job.cancel_requested_at is not None,
        )


@attrs.frozen(kw_only=True)
class Settlement:
    """What becomes of a job as its attempt ends."""

    status: JobStatus
    outcome: AttemptOutcome  # what the attempt's history record says
    attempts: int  # the job's attempts afterwards: a release gives its attempt back
    retry_at: datetime | None = None  # `failed`: when the next attempt is due
    # `queued`: first in line for its priority (a release, a retry due at once)
    head: bool = False

    @property
    def finished(self) -> bool:
        return self.status in FINISHED


def decide(ending: Ending, facts: AttemptFacts, now: datetime) -> Settlement:
    """The settlement of an attempt that ended as `ending`, for a job described by `facts`,
    at `now` on the backend's clock. Pure: same inputs, same answer."""
    attempts = facts.attempts
    if ending.outcome is O.SUCCEEDED:
        return Settlement(status=S.SUCCEEDED, outcome=O.SUCCEEDED, attempts=attempts)
    if facts.cancel_requested or ending.outcome is O.CANCELLED:
        return Settlement(status=S.CANCELLED, outcome=O.CANCELLED, attempts=attempts)
    deadline = facts.deadline
    if ending.outcome is O.EXPIRED or (deadline is not None and now >= deadline):
        return Settlement(status=S.EXPIRED, outcome=O.EXPIRED, attempts=attempts)
    if ending.outcome is O.RELEASED:
        return Settlement(
            status=S.QUEUED, outcome=O.RELEASED, attempts=max(0, attempts - 1), head=True
        )
    if (
        ending.outcome in RETRYABLE
        and ending.retry_in is not None
        and attempts < facts.max_attempts
    ):
        # Whole microseconds, rounded the way the Redis scripts round them.
        delay_us = math.floor(max(0.0, ending.retry_in) * 1_000_000 + 0.5)
        retry_at = now + timedelta(microseconds=delay_us)
        if deadline is not None and retry_at >= deadline:
            return Settlement(status=S.EXPIRED, outcome=O.EXPIRED, attempts=attempts)
        if delay_us <= 0:
            return Settlement(status=S.QUEUED, outcome=ending.outcome, attempts=attempts, head=True)
        return Settlement(
            status=S.FAILED, outcome=ending.outcome, attempts=attempts, retry_at=retry_at
        )
    return Settlement(status=S.DEAD, outcome=ending.outcome, attempts=attempts)


def history_record(
    job: Job, outcome: AttemptOutcome, error: JobError | None, now: datetime
) -> AttemptRecord:
    """The record of the job's current attempt, ended now."""
    return AttemptRecord(
        attempt=job.attempts,
        worker=job.worker,
        started_at=job.started_at,
        ended_at=now,
        outcome=outcome,
        error=None if error is None else error_summary(error),
    )


def settle_job(job: Job, ending: Ending, now: datetime) -> tuple[Job, Settlement]:
    """The job as it is once its active attempt has ended as `ending`, and the settlement
    that made it so: what a backend storing `Job` values writes.

    The job keeps its last error unless this ending brings one; a success stores its result
    and progress 100; a finished job gets `finished_at`; the history gains the attempt's
    record (the last HISTORY_LIMIT kept).
    """
    settlement = decide(ending, AttemptFacts.of(job), now)
    record = history_record(job, settlement.outcome, ending.error, now)
    changes: dict[str, Any] = {
        "attempts": settlement.attempts,
        "history": (*job.history, record)[-HISTORY_LIMIT:],
    }
    if ending.error is not None:
        changes["error"] = ending.error
    if settlement.status is S.SUCCEEDED:
        changes |= {"result": ending.result, "progress": 100}
    if settlement.finished:
        changes["finished_at"] = now
    if settlement.status is S.FAILED:
        changes["retry_at"] = settlement.retry_at
    return job.transition(settlement.status, **changes), settlement
