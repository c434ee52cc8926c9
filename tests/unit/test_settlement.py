"""The settlement rule (`domain.settlement`): its decision table, row by row, and properties
that hold for every input."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from domain.jobs import (
    LEASE_EXPIRED,
    AttemptOutcome,
    ErrorKind,
    Job,
    JobError,
    JobStatus,
    can_transition,
)
from domain.settlement import (
    FAILURES,
    AttemptFacts,
    Ending,
    Settlement,
    decide,
    settle_job,
)

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
O = AttemptOutcome  # noqa: E741
S = JobStatus
BOOM = JobError(message="boom", type="RuntimeError")


def facts(
    *,
    attempts: int = 1,
    max_attempts: int = 3,
    deadline: datetime | None = None,
    cancel_requested: bool = False,
) -> AttemptFacts:
    return AttemptFacts(
        attempts=attempts,
        max_attempts=max_attempts,
        deadline=deadline,
        cancel_requested=cancel_requested,
    )


def error_of(outcome: AttemptOutcome) -> JobError:
    kind = ErrorKind.ERROR if outcome is O.FAILED else ErrorKind(outcome.value)
    return JobError(message=f"ended {outcome}", type="X", kind=kind)


def ending_of(outcome: AttemptOutcome, retry_in: float | None) -> Ending:
    if outcome is O.SUCCEEDED:
        return Ending.succeeded({"ok": True})
    if outcome in FAILURES:
        return Ending.failed(error_of(outcome), retry_in)
    return Ending(outcome=outcome)


# -- the table, row by row -------------------------------------------------------------------


def test_a_success_succeeds_whatever_else_holds() -> None:
    past = NOW - timedelta(seconds=1)
    settled = decide(Ending.succeeded(1), facts(deadline=past, cancel_requested=True), NOW)
    assert settled == Settlement(status=S.SUCCEEDED, outcome=O.SUCCEEDED, attempts=1)


@pytest.mark.parametrize("outcome", [o for o in O if o is not O.SUCCEEDED])
def test_a_cancel_request_ends_any_other_attempt_cancelled(outcome: AttemptOutcome) -> None:
    past = NOW - timedelta(seconds=1)
    settled = decide(ending_of(outcome, 5.0), facts(deadline=past, cancel_requested=True), NOW)
    assert (settled.status, settled.outcome) == (S.CANCELLED, O.CANCELLED)


def test_a_handler_that_stopped_on_its_own_cancel_is_cancelled() -> None:
    assert decide(Ending.cancelled(), facts(), NOW).status is S.CANCELLED


@pytest.mark.parametrize("outcome", [O.FAILED, O.TIMED_OUT, O.WORKER_LOST, O.RELEASED])
def test_a_passed_deadline_ends_the_job_expired(outcome: AttemptOutcome) -> None:
    settled = decide(ending_of(outcome, 5.0), facts(deadline=NOW), NOW)
    assert (settled.status, settled.outcome) == (S.EXPIRED, O.EXPIRED)


def test_an_attempt_cut_by_its_deadline_expires_even_on_a_clock_that_lags() -> None:
    cut = Ending.failed(JobError("late", "DeadlineExceeded", ErrorKind.EXPIRED), 1.0)
    later = NOW + timedelta(seconds=1)
    assert decide(cut, facts(deadline=later), NOW).status is S.EXPIRED


def test_a_release_requeues_at_the_head_and_gives_the_attempt_back() -> None:
    settled = decide(Ending.released(), facts(attempts=2), NOW)
    assert settled == Settlement(status=S.QUEUED, outcome=O.RELEASED, attempts=1, head=True)


def test_a_failure_with_attempts_left_waits_for_its_retry() -> None:
    settled = decide(Ending.failed(BOOM, 2.5), facts(attempts=1), NOW)
    assert settled == Settlement(
        status=S.FAILED, outcome=O.FAILED, attempts=1, retry_at=NOW + timedelta(seconds=2.5)
    )


def test_a_lapsed_lease_with_attempts_left_goes_straight_back_to_the_head() -> None:
    settled = decide(Ending.lease_expired(), facts(attempts=1), NOW)
    assert settled == Settlement(status=S.QUEUED, outcome=O.WORKER_LOST, attempts=1, head=True)


def test_a_retry_due_at_or_after_the_deadline_expires_instead() -> None:
    deadline = NOW + timedelta(seconds=2)
    assert decide(Ending.failed(BOOM, 2.0), facts(deadline=deadline), NOW).status is S.EXPIRED
    assert decide(Ending.failed(BOOM, 1.9), facts(deadline=deadline), NOW).status is S.FAILED


@pytest.mark.parametrize(
    ("ending", "why"),
    [
        (Ending.failed(BOOM, 1.0), "out of attempts"),
        (Ending.failed(BOOM, None), "no retry time: the type is unknown"),
        (Ending.failed(error_of(O.NON_RETRYABLE), 1.0), "non-retryable"),
        (Ending.failed(error_of(O.INVALID), 1.0), "invalid"),
    ],
)
def test_anything_else_is_dead(ending: Ending, why: str) -> None:
    attempts = 3 if why == "out of attempts" else 1
    settled = decide(ending, facts(attempts=attempts), NOW)
    assert (settled.status, settled.outcome) == (S.DEAD, ending.outcome), why


def test_an_ending_must_carry_the_error_its_outcome_names() -> None:
    with pytest.raises(ValueError, match="needs its error"):
        Ending(outcome=O.FAILED)
    with pytest.raises(ValueError, match="carries no error"):
        Ending(outcome=O.RELEASED, error=BOOM)
    with pytest.raises(ValueError, match="cannot end an attempt"):
        Ending(outcome=O.TIMED_OUT, error=BOOM)


# -- properties ------------------------------------------------------------------------------

outcomes = st.sampled_from(list(O))
delays = st.one_of(st.none(), st.floats(min_value=-1.0, max_value=1e6, allow_nan=False))
deadlines = st.one_of(
    st.none(),
    st.integers(min_value=-3600, max_value=10**6).map(lambda s: NOW + timedelta(seconds=s)),
)
fact_sets = st.builds(
    lambda attempts, extra, deadline, cancel: facts(
        attempts=attempts,
        max_attempts=max(1, attempts + extra),
        deadline=deadline,
        cancel_requested=cancel,
    ),
    st.integers(min_value=0, max_value=30),
    st.integers(min_value=-5, max_value=5),
    deadlines,
    st.booleans(),
)


@given(outcome=outcomes, retry_in=delays, facts_=fact_sets)
def test_every_settlement_is_one_the_state_machine_allows(
    outcome: AttemptOutcome, retry_in: float | None, facts_: AttemptFacts
) -> None:
    settled = decide(ending_of(outcome, retry_in), facts_, NOW)
    assert can_transition(S.ACTIVE, settled.status)
    assert (settled.retry_at is not None) == (settled.status is S.FAILED)
    assert settled.head == (settled.status is S.QUEUED)
    if settled.retry_at is not None:
        assert settled.retry_at > NOW
        assert facts_.deadline is None or settled.retry_at < facts_.deadline
    # Only a release gives an attempt back; nothing else changes the count.
    if settled.outcome is O.RELEASED:
        assert settled.attempts == max(0, facts_.attempts - 1)
    else:
        assert settled.attempts == facts_.attempts
    # A job is retried only with attempts left, and never past its cancel request.
    if settled.status in (S.FAILED, S.QUEUED) and settled.outcome is not O.RELEASED:
        assert facts_.attempts < facts_.max_attempts
        assert not facts_.cancel_requested


@given(outcome=outcomes, retry_in=delays, facts_=fact_sets)
def test_the_rule_is_pure(
    outcome: AttemptOutcome, retry_in: float | None, facts_: AttemptFacts
) -> None:
    ending = ending_of(outcome, retry_in)
    assert decide(ending, facts_, NOW) == decide(ending, facts_, NOW)


def test_settle_job_records_the_attempt_and_keeps_the_error_it_brought() -> None:
    job = Job.submitted(
        id="a" * 32,
        type="dummy",
        payload={},
        queue="default",
        max_attempts=1,
        timeout=5.0,
        now=NOW,
    ).transition(S.ACTIVE, attempts=1, started_at=NOW, worker="w1")
    dead, settlement = settle_job(job, Ending.lease_expired(), NOW + timedelta(seconds=30))
    assert settlement.status is S.DEAD
    assert dead.status is S.DEAD
    assert dead.error == LEASE_EXPIRED
    assert dead.finished_at == NOW + timedelta(seconds=30)
    (record,) = dead.history
    assert (record.attempt, record.worker, record.outcome) == (1, "w1", O.WORKER_LOST)
    assert record.error == "LeaseExpired: lease expired: the worker stopped renewing it"
