from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st

from domain.errors import InvalidTransitionError
from domain.jobs import TRANSITIONS, Job, JobStatus, can_transition, sources_of


def a_job(**changes: Any) -> Job:
    job = Job.submitted(
        id="0" * 32,
        type="dummy",
        payload={"mode": "succeed"},
        queue="default",
        max_attempts=3,
        timeout=10.0,
        now=datetime(2026, 1, 1, tzinfo=UTC),
    )
    return attrs.evolve(job, **changes)


def test_a_submitted_job_is_queued_with_no_attempts() -> None:
    job = a_job()
    assert job.status is JobStatus.QUEUED
    assert job.attempts == 0
    assert job.attempts_left == 3


def test_every_status_has_an_entry_in_the_transition_table() -> None:
    assert set(TRANSITIONS) == set(JobStatus)


def test_finished_states_are_terminal_and_waiting_states_are_not() -> None:
    terminal = {s for s in JobStatus if s.is_terminal}
    assert terminal == {JobStatus.SUCCEEDED, JobStatus.DEAD, JobStatus.CANCELLED, JobStatus.EXPIRED}


def test_succeeded_is_final() -> None:
    assert TRANSITIONS[JobStatus.SUCCEEDED] == frozenset()


def test_sources_of_is_the_inverse_of_the_table() -> None:
    for target in JobStatus:
        for source in JobStatus:
            assert (source in sources_of(target)) == can_transition(source, target)


@given(st.sampled_from(JobStatus), st.sampled_from(JobStatus))
def test_transition_obeys_the_table(source: JobStatus, target: JobStatus) -> None:
    job = a_job(status=source)
    if target in TRANSITIONS[source]:
        assert job.transition(target).status is target
    else:
        with pytest.raises(InvalidTransitionError):
            job.transition(target)


def test_transition_revalidates_the_new_value() -> None:
    with pytest.raises(ValueError, match="progress"):
        a_job(status=JobStatus.ACTIVE).transition(JobStatus.SUCCEEDED, progress=101)


@pytest.mark.parametrize("bad_id", ["", "x" * 32, "0" * 31, "0" * 33, "A" * 32, "../etc"])
def test_job_ids_are_32_lowercase_hex_characters(bad_id: str) -> None:
    with pytest.raises(ValueError, match="id"):
        a_job(id=bad_id)


def test_timestamps_must_be_timezone_aware() -> None:
    with pytest.raises(ValueError, match="timezone"):
        a_job(created_at=datetime(2026, 1, 1))


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("type", "Not A Name"),
        ("queue", ""),
        ("max_attempts", 0),
        ("timeout", 0.0),
        ("priority", 101),
        ("priority", -101),
        ("attempts", -1),
        ("progress", -1),
        ("progress", 101),
    ],
)
def test_a_job_refuses_each_value_out_of_its_range_naming_the_field(field: str, value: Any) -> None:
    with pytest.raises(ValueError, match=field):
        a_job(**{field: value})


@pytest.mark.parametrize(
    "field",
    [
        "created_at",
        "started_at",
        "finished_at",
        "run_at",
        "deadline",
        "retry_at",
        "cancel_requested_at",
        "heartbeat_at",
    ],
)
def test_each_time_of_a_job_must_be_aware_and_may_be_in_any_zone(field: str) -> None:
    with pytest.raises(ValueError, match=f"{field} must be timezone-aware"):
        a_job(**{field: datetime(2026, 1, 1)})
    elsewhere = datetime(2026, 1, 1, tzinfo=timezone(timedelta(hours=2)))
    assert getattr(a_job(**{field: elsewhere}), field) == elsewhere
