"""The scheduler's scenarios (`tests/unit/test_scheduler.py`) with the schedule store on a
real Redis: the same Lua scripts fakeredis runs there, on the server they ship for."""

from __future__ import annotations

import uuid

import pytest
import redis.asyncio

from adapters.redis_schedules import RedisScheduleStore
from tests.unit.test_scheduler import (
    World,
    test_a_paused_schedule_makes_no_job_and_resumes_without_a_catch_up,
    test_a_removed_schedule_is_gone_and_makes_no_more_jobs,
    test_a_short_stall_within_the_grace_loses_no_tick,
    test_a_tick_submitted_before_its_scheduler_died_is_not_submitted_twice,
    test_a_tick_taken_by_a_scheduler_that_died_is_submitted_by_another,
    test_after_downtime_the_misfire_policy_is_honoured,
    test_declaring_the_same_schedule_again_keeps_its_ticks,
    test_each_tick_makes_one_job_however_many_schedulers_run,
    test_the_scheduler_knows_when_a_schedule_was_put_paused_resumed_or_removed,
    test_the_scheduler_sleeps_until_the_next_tick_at_most_a_minute,
    test_the_scheduler_wakes_when_a_taken_tick_would_go_stale,
)

__all__ = [
    "test_a_paused_schedule_makes_no_job_and_resumes_without_a_catch_up",
    "test_a_removed_schedule_is_gone_and_makes_no_more_jobs",
    "test_a_short_stall_within_the_grace_loses_no_tick",
    "test_a_tick_submitted_before_its_scheduler_died_is_not_submitted_twice",
    "test_a_tick_taken_by_a_scheduler_that_died_is_submitted_by_another",
    "test_after_downtime_the_misfire_policy_is_honoured",
    "test_declaring_the_same_schedule_again_keeps_its_ticks",
    "test_each_tick_makes_one_job_however_many_schedulers_run",
    "test_the_scheduler_knows_when_a_schedule_was_put_paused_resumed_or_removed",
    "test_the_scheduler_sleeps_until_the_next_tick_at_most_a_minute",
    "test_the_scheduler_wakes_when_a_taken_tick_would_go_stale",
]


@pytest.fixture
def world(redis_url: str) -> World:
    # A client per test: each scenario runs in its own event loop.
    client = redis.asyncio.Redis.from_url(redis_url)
    return World(RedisScheduleStore(client, prefix=f"test-{uuid.uuid4().hex[:12]}"))
