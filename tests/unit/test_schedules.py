"""Schedules: what makes one valid, its ticks (cron in a time zone, or a fixed interval), and
which of them fire after downtime."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from adapters.cron import CronsimParser
from domain.errors import InvalidScheduleError
from domain.job_types.registry import default_registry
from domain.schedules import (
    Every,
    MisfirePolicy,
    Schedule,
    ScheduleRequest,
    define,
    plan,
    tick_key,
)
from tests.fakes import RecordingEmailSender

NOW = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)
EMAIL = {"to": "ops@example.com", "subject": "Nightly", "body": "done"}
REGISTRY = default_registry(RecordingEmailSender())
CRON = CronsimParser()


def request(**changes: Any) -> ScheduleRequest:
    fields: dict[str, Any] = {
        "name": "nightly",
        "type": "email",
        "payload": EMAIL,
        "cron": "0 2 * * *",
        "timezone": "Europe/Paris",
    }
    return ScheduleRequest(**{**fields, **changes})


def errors_of(req: ScheduleRequest) -> dict[str, str]:
    with pytest.raises(InvalidScheduleError) as caught:
        define(req, REGISTRY, CRON, NOW)
    return {error.path: error.message for error in caught.value.errors}


def test_a_valid_cron_schedule_is_defined_with_its_defaults() -> None:
    schedule = define(request(), REGISTRY, CRON, NOW)
    assert (schedule.name, schedule.cron, schedule.timezone) == (
        "nightly",
        "0 2 * * *",
        "Europe/Paris",
    )
    assert schedule.misfire is MisfirePolicy.RUN_ONCE
    assert schedule.every is None


@pytest.mark.parametrize(
    ("changes", "path"),
    [
        ({"cron": "61 * * * *"}, "cron"),
        ({"cron": "* * * *"}, "cron"),
        ({"cron": "* * * * * *"}, "cron"),  # seconds: not a standard 5-field expression
        ({"cron": "0 0 31 2 *"}, "cron"),  # never matches
        ({"cron": 5}, "cron"),
        ({"timezone": "Mars/Olympus_Mons"}, "timezone"),
        ({"timezone": "../../etc/passwd"}, "timezone"),
        ({"cron": None, "timezone": None, "every": 0}, "every"),
        ({"cron": None, "timezone": None, "every": -5}, "every"),
        ({"cron": None, "timezone": None, "every": True}, "every"),
        ({"every": 60}, "cron"),  # both
        ({"cron": None}, "cron"),  # neither
        ({"type": "os.system"}, "type"),
        ({"payload": {"to": "not an address", "subject": "x", "body": "y"}}, "payload.to"),
        ({"options": {"queue": "Not A Queue"}}, "options.queue"),
        ({"options": {"max_attempts": 0}}, "options.max_attempts"),
        ({"options": {"delay": 5}}, "options.delay"),
        ({"options": {"deadline": "2026-01-01T00:00:00Z"}}, "options.deadline"),
        ({"options": {"deadline": 0.5}}, "options.deadline"),
        ({"misfire": "sometimes"}, "misfire"),
        ({"misfire_grace": 0}, "misfire_grace"),
        ({"name": "Bad Name"}, "name"),
        ({"paused": "yes"}, "paused"),
    ],
)
def test_a_bad_schedule_is_refused_at_creation_naming_the_field(
    changes: dict[str, Any], path: str
) -> None:
    assert path in errors_of(request(**changes))


def test_every_bad_field_is_listed_not_just_the_first() -> None:
    errors = errors_of(request(cron="bad", timezone="Nowhere/City", payload={"to": "x"}))
    assert {"cron", "timezone", "payload.subject"} <= set(errors)


def test_an_every_schedule_ticks_on_a_grid_from_its_creation() -> None:
    schedule = define(request(cron=None, timezone=None, every=10), REGISTRY, CRON, NOW)
    every = Every(10, NOW)
    assert schedule.anchor == NOW
    assert every.next_after(NOW) == NOW + timedelta(seconds=10)
    assert every.next_after(NOW + timedelta(seconds=15)) == NOW + timedelta(seconds=20)
    assert every.latest_at_or_before(NOW + timedelta(seconds=20)) == NOW + timedelta(seconds=20)
    assert every.latest_at_or_before(NOW - timedelta(seconds=1)) is None


def test_the_same_declaration_later_is_the_same_version() -> None:
    first = define(request(cron=None, timezone=None, every=10), REGISTRY, CRON, NOW)
    later = define(
        request(cron=None, timezone=None, every=10), REGISTRY, CRON, NOW + timedelta(hours=1)
    )
    changed = define(request(cron=None, timezone=None, every=11), REGISTRY, CRON, NOW)
    assert first.version == later.version != changed.version
    assert Schedule.from_document(first.document()).version == first.version


def test_a_fixed_time_runs_once_on_the_night_clocks_go_back() -> None:
    recurrence = CRON.parse("30 2 * * *", "Europe/Paris")
    start = datetime(2026, 10, 24, 12, 0, tzinfo=UTC)
    ticks = [recurrence.next_after(start)]
    for _ in range(2):
        previous = ticks[-1]
        assert previous is not None
        ticks.append(recurrence.next_after(previous))
    assert [t.astimezone(UTC).isoformat() for t in ticks if t is not None] == [
        "2026-10-25T00:30:00+00:00",  # 02:30 summer time
        "2026-10-26T01:30:00+00:00",  # 02:30 winter time, the next day
        "2026-10-27T01:30:00+00:00",
    ]


def test_a_time_skipped_by_the_clocks_going_forward_runs_right_after() -> None:
    recurrence = CRON.parse("30 2 * * *", "Europe/Paris")
    tick = recurrence.next_after(datetime(2026, 3, 28, 12, 0, tzinfo=UTC))
    assert tick is not None
    assert tick.astimezone(UTC).isoformat() == "2026-03-29T01:00:00+00:00"  # 03:00 local


def test_the_latest_cron_tick_counts_the_moment_itself() -> None:
    recurrence = CRON.parse("*/5 * * * *", "UTC")
    at = datetime(2026, 1, 1, 0, 5, tzinfo=UTC)
    assert recurrence.latest_at_or_before(at) == at
    assert recurrence.latest_at_or_before(at - timedelta(milliseconds=1)) == at - timedelta(
        minutes=5
    )


def every_second(misfire: str = "run_once", grace: float = 2) -> Schedule:
    req = request(cron=None, timezone=None, every=1, misfire=misfire, misfire_grace=grace)
    return define(req, REGISTRY, CRON, NOW)


def test_ticks_due_within_the_grace_all_fire_once_each() -> None:
    schedule = every_second()
    recurrence = schedule.recurrence(CRON)
    first = NOW + timedelta(seconds=1)
    result = plan(schedule, recurrence, first, NOW + timedelta(seconds=2.5))
    assert result.ticks == (first, first + timedelta(seconds=1))
    assert result.next_tick == NOW + timedelta(seconds=3)
    assert not result.missed


@pytest.mark.parametrize(("policy", "fired"), [("run_once", 1), ("skip", 0)])
def test_after_downtime_the_misfire_policy_says_how_many_run(policy: str, fired: int) -> None:
    schedule = every_second(policy)
    recurrence = schedule.recurrence(CRON)
    now = NOW + timedelta(seconds=10.5)
    result = plan(schedule, recurrence, NOW + timedelta(seconds=1), now)
    assert result.missed
    assert len(result.ticks) == fired
    if fired:
        assert result.ticks == (NOW + timedelta(seconds=10),)  # the latest
    assert result.next_tick == NOW + timedelta(seconds=11)


def test_a_backlog_longer_than_a_pass_is_a_misfire_however_late() -> None:
    schedule = every_second(grace=86400)
    recurrence = schedule.recurrence(CRON)
    result = plan(schedule, recurrence, NOW + timedelta(seconds=1), NOW + timedelta(hours=1))
    assert result.missed
    assert result.ticks == (NOW + timedelta(hours=1),)


def test_a_ticks_key_names_its_schedule_and_time() -> None:
    tick = datetime(2026, 12, 6, 2, 0, 0, 250000, tzinfo=UTC)
    assert tick_key("nightly", tick) == "schedule:nightly:2026-12-06T02:00:00.250Z"
