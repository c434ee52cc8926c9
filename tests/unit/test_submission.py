"""Turning what a client asks for into a valid job, or every reason it cannot be one."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from domain.errors import InvalidJobError, UnknownJobTypeError
from domain.job_types.registry import default_registry
from domain.jobs import Job, JobStatus
from domain.submission import Submission, validate
from tests.fakes import RecordingEmailSender

NOW = datetime(2026, 1, 1, tzinfo=UTC)
REGISTRY = default_registry(RecordingEmailSender())


def report(**fields: object) -> Job:
    return validate(
        Submission(type="report", payload={"name": "r", "rows": 1}, **fields), REGISTRY, NOW
    )


def errors_of(**fields: object) -> dict[str, str]:
    with pytest.raises(InvalidJobError) as caught:
        report(**fields)
    return {e.path: e.message for e in caught.value.errors}


def test_a_valid_submission_is_a_queued_job_with_the_types_defaults() -> None:
    job = validate(Submission(type="report", payload={"name": "r", "rows": 3}), REGISTRY, NOW)

    assert job.status is JobStatus.QUEUED
    assert job.payload == {"name": "r", "rows": 3, "seconds": 2.0}
    assert (job.max_attempts, job.queue, job.created_at) == (3, "default", NOW)


def test_an_unknown_type_is_refused_by_name() -> None:
    with pytest.raises(UnknownJobTypeError):
        validate(Submission(type="os.system", payload={}), REGISTRY, NOW)


def test_payload_and_envelope_errors_are_listed_together() -> None:
    with pytest.raises(InvalidJobError) as caught:
        validate(
            Submission(type="email", payload={"to": "x"}, max_attempts=100, timeout=-1),
            REGISTRY,
            NOW,
        )

    paths = {e.path for e in caught.value.errors}
    assert paths == {"payload.to", "payload.subject", "payload.body", "max_attempts", "timeout"}


@pytest.mark.parametrize("max_attempts", [0, 26, True, "3", 2.5])
def test_max_attempts_must_be_an_integer_within_the_types_limit(max_attempts: object) -> None:
    with pytest.raises(InvalidJobError, match="max_attempts"):
        validate(
            Submission(type="dummy", payload={"mode": "succeed"}, max_attempts=max_attempts),
            REGISTRY,
            NOW,
        )


def test_a_delay_schedules_the_job_and_a_past_run_at_queues_it() -> None:
    delayed = report(delay=5)
    assert delayed.status is JobStatus.SCHEDULED
    assert delayed.run_at == NOW + timedelta(seconds=5)
    at = report(run_at="2026-01-01T00:01:00+00:00")
    assert (at.status, at.run_at) == (JobStatus.SCHEDULED, NOW + timedelta(minutes=1))
    past = report(run_at="2025-12-31T23:00:00Z")
    assert (past.status, past.run_at) == (JobStatus.QUEUED, None)
    assert report(delay=0).status is JobStatus.QUEUED


def test_queue_priority_and_deadline_override_the_types_defaults() -> None:
    job = report(queue="reports", priority=7, deadline=60)
    assert (job.queue, job.priority) == ("reports", 7)
    assert job.deadline == NOW + timedelta(seconds=60)
    dated = report(deadline="2026-01-01T01:00:00Z")
    assert dated.deadline == datetime(2026, 1, 1, 1, tzinfo=UTC)


def test_every_bad_option_is_named_at_once() -> None:
    errors = errors_of(queue="Not A Name", priority=101, delay=-1, deadline="tomorrow")
    assert set(errors) == {"queue", "priority", "delay", "deadline"}
    assert set(errors_of(delay=1, run_at="2026-01-01T00:01:00Z")) == {"run_at"}
    assert set(errors_of(run_at="2026-01-01T00:01:00")) == {"run_at"}  # no offset
    assert set(errors_of(priority=True, delay=float("nan"))) == {"priority", "delay"}
    # A deadline before the job may even start cannot be met.
    assert set(errors_of(delay=120, deadline=60)) == {"deadline"}


def test_the_fingerprint_ignores_key_order_but_not_values() -> None:
    a = Submission(type="t", payload={"a": 1, "b": [1, 2]}, delay=3)
    b = Submission(type="t", payload={"b": [1, 2], "a": 1}, delay=3)
    c = Submission(type="t", payload={"a": 1, "b": [2, 1]}, delay=3)
    assert a.fingerprint() == b.fingerprint() != c.fingerprint()
    assert a.fingerprint() != Submission(type="t", payload={"a": 1, "b": [1, 2]}).fingerprint()


def test_unique_for_keys_on_the_type_and_the_named_values_only() -> None:
    def key(payload: dict[str, object], fields: list[str], type_: str = "report") -> str | None:
        job = validate(Submission(type=type_, payload=payload, unique_for=fields), REGISTRY, NOW)
        return job.unique_key

    base = key({"name": "q3", "rows": 1}, ["name"])
    assert base == key({"name": "q3", "rows": 99, "seconds": 1}, ["name"])
    assert base != key({"name": "q4", "rows": 1}, ["name"])
    assert key({"name": "q3", "rows": 1}, ["name", "rows"]) == key(
        {"rows": 1, "name": "q3"}, ["rows", "name"]
    )
    # The payload's defaults count: `seconds` is 2.0 when not given.
    assert key({"name": "q3", "rows": 1}, ["seconds"]) == key(
        {"name": "q4", "rows": 2, "seconds": 2.0}, ["seconds"]
    )
    assert base is not None
    assert base.startswith("report:")


def test_a_unique_key_is_kept_as_given_and_changes_the_fingerprint() -> None:
    assert report(unique_key="rebuild q3").unique_key == "rebuild q3"
    plain = Submission(type="report", payload={})
    keyed = Submission(type="report", payload={}, unique_key="k")
    assert plain.fingerprint() != keyed.fingerprint()
    assert plain.fingerprint() == Submission(type="report", payload={}).fingerprint()


def test_unique_for_is_checked_only_against_a_valid_payload() -> None:
    submission = Submission(type="report", payload={"rows": "x"}, unique_for=["name", "owner"])
    with pytest.raises(InvalidJobError) as caught:
        validate(submission, REGISTRY, NOW)
    errors = {e.path: e.message for e in caught.value.errors}
    assert "unique_for[0]" not in errors  # the payload's own error says what is wrong
    assert errors["unique_for[1]"] == "report payloads have no field 'owner'"
