"""The scheduler on a fake clock, over each schedule store (memory, and Redis on fakeredis):
each tick makes one job whatever the number of schedulers, a scheduler that dies between
taking a tick and submitting it is taken over, and misfires follow their policy."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from datetime import timedelta
from typing import Any

import fakeredis
import pytest

from adapters.cron import CronsimParser
from adapters.memory import memory_backend
from adapters.memory.schedules import MemoryScheduleStore
from adapters.redis_schedules import RedisScheduleStore
from domain.errors import QueueUnavailableError, ScheduleNotFoundError, UnsupportedOperationError
from domain.job_service import JobService
from domain.job_types.registry import default_registry
from domain.jobs import Job
from domain.ports import JobQuery
from domain.ports.schedules import ScheduleStore, Upsert
from domain.schedules import ScheduleRequest
from domain.scheduling import FIRING_LEASE, Scheduler, ScheduleService
from tests.fakes import FakeClock, RecordingEmailSender

EMAIL = {"to": "ops@example.com", "subject": "Nightly", "body": "done"}


def memory_store() -> ScheduleStore:
    return MemoryScheduleStore()


def redis_store() -> ScheduleStore:
    server = fakeredis.FakeServer(version=(7,))
    return RedisScheduleStore(fakeredis.FakeAsyncRedis(server=server, version=(7,)), prefix="t")


class _DiesOnSubmit(JobService):
    async def submit(self, *args: Any, **kwargs: Any) -> Any:
        raise QueueUnavailableError("the process died here")


class World:
    def __init__(self, store: ScheduleStore) -> None:
        self.clock = FakeClock()
        self.backend = memory_backend(self.clock)
        registry = default_registry(RecordingEmailSender())
        self.jobs = JobService(self.backend, registry, self.clock)
        self.store = store
        self.cron = CronsimParser()
        self.service = ScheduleService(store, registry, self.cron, self.clock)

    def scheduler(self, jobs: JobService | None = None) -> Scheduler:
        return Scheduler(self.store, jobs or self.jobs, self.cron, self.clock, 86400.0)

    def dying_scheduler(self) -> Scheduler:
        """A scheduler whose process dies as it submits a tick it took."""
        registry = default_registry(RecordingEmailSender())
        return self.scheduler(_DiesOnSubmit(self.backend, registry, self.clock))

    async def every(self, seconds: float = 1, **extra: Any) -> None:
        fields: dict[str, Any] = {"name": "tick", "type": "email", "payload": EMAIL}
        await self.service.put(ScheduleRequest(**fields, every=seconds, **extra))

    async def jobs_made(self) -> list[Job]:
        page = await self.backend.store.list_jobs(JobQuery(limit=500))
        return sorted(page.jobs, key=lambda job: job.idempotency_key or "")

    async def run_for(
        self, seconds: float, schedulers: list[Scheduler], step: float = 0.25
    ) -> None:
        for _ in range(round(seconds / step)):
            self.clock.advance(step)
            for scheduler in schedulers:
                await scheduler.run_pass()


@pytest.fixture(params=[memory_store, redis_store], ids=["memory", "redis-fakeredis"])
def world(request: pytest.FixtureRequest) -> World:
    return World(request.param())


def run(scenario: Callable[[], Coroutine[Any, Any, None]]) -> None:
    asyncio.run(scenario())


def test_each_tick_makes_one_job_however_many_schedulers_run(world: World) -> None:
    async def scenario() -> None:
        await world.every(1)
        schedulers = [world.scheduler() for _ in range(5)]
        await world.run_for(30, schedulers)
        jobs = await world.jobs_made()
        keys = [job.idempotency_key for job in jobs]
        assert len(jobs) == 30
        assert len(set(keys)) == 30
        assert all(key and key.startswith("schedule:tick:") for key in keys)
        stored = await world.service.get("tick")
        assert stored.last_job_id == jobs[-1].id

    run(scenario)


def test_a_tick_taken_by_a_scheduler_that_died_is_submitted_by_another(world: World) -> None:
    async def scenario() -> None:
        await world.every(60)
        dying = world.dying_scheduler()
        world.clock.advance(60)
        report = await dying.run_pass()
        assert [o.error is not None for o in report.outcomes] == [True]
        healthy = world.scheduler()
        await healthy.run_pass()
        assert await world.jobs_made() == []  # its lease holds
        world.clock.advance(FIRING_LEASE + 0.1)
        await healthy.run_pass()
        await healthy.run_pass()
        assert len(await world.jobs_made()) == 1

    run(scenario)


def test_a_tick_submitted_before_its_scheduler_died_is_not_submitted_twice(world: World) -> None:
    class DiesAfterSubmit(JobService):
        async def submit(self, *args: Any, **kwargs: Any) -> Any:
            await super().submit(*args, **kwargs)
            raise QueueUnavailableError("the answer was lost")

    async def scenario() -> None:
        await world.every(60)
        dying = world.scheduler(
            DiesAfterSubmit(world.backend, default_registry(RecordingEmailSender()), world.clock)
        )
        world.clock.advance(60)
        await dying.run_pass()
        world.clock.advance(FIRING_LEASE + 0.1)
        report = await world.scheduler().run_pass()
        assert [(o.job_id is not None, o.created) for o in report.outcomes] == [(True, False)]
        assert len(await world.jobs_made()) == 1

    run(scenario)


@pytest.mark.parametrize(("policy", "catch_up"), [("run_once", 1), ("skip", 0)])
def test_after_downtime_the_misfire_policy_is_honoured(
    world: World, policy: str, catch_up: int
) -> None:
    async def scenario() -> None:
        await world.every(1, misfire=policy, misfire_grace=2)
        scheduler = world.scheduler()
        await world.run_for(5, [scheduler])
        world.clock.advance(10)  # every scheduler is down
        await world.run_for(5, [scheduler])
        # 5 before, the catch-up (or none), 5 after
        assert len(await world.jobs_made()) == 5 + catch_up + 5

    run(scenario)


def test_a_short_stall_within_the_grace_loses_no_tick(world: World) -> None:
    async def scenario() -> None:
        await world.every(1, misfire="skip", misfire_grace=5)
        scheduler = world.scheduler()
        await world.run_for(3, [scheduler])
        world.clock.advance(3)
        await world.run_for(3, [scheduler])
        assert len(await world.jobs_made()) == 9

    run(scenario)


def test_a_paused_schedule_makes_no_job_and_resumes_without_a_catch_up(world: World) -> None:
    async def scenario() -> None:
        await world.every(1, misfire="run_once", misfire_grace=2)
        scheduler = world.scheduler()
        await world.run_for(2, [scheduler])
        paused = await world.service.pause("tick")
        assert paused.paused
        assert paused.next_tick is None
        await world.run_for(10, [scheduler])
        assert len(await world.jobs_made()) == 2
        await world.service.resume("tick")
        await world.run_for(2, [scheduler])
        assert len(await world.jobs_made()) == 4

    run(scenario)


def test_declaring_the_same_schedule_again_keeps_its_ticks(world: World) -> None:
    async def scenario() -> None:
        fields: dict[str, Any] = {"name": "n", "type": "email", "payload": EMAIL, "every": 60}
        first, created = await world.service.put(ScheduleRequest(**fields))
        world.clock.advance(30)
        again, unchanged = await world.service.put(ScheduleRequest(**fields))
        changed, replaced = await world.service.put(ScheduleRequest(**{**fields, "every": 120}))
        assert (created, unchanged, replaced) == (Upsert.CREATED, Upsert.UNCHANGED, Upsert.REPLACED)
        assert again.next_tick == first.next_tick
        assert changed.next_tick == world.clock.now() + timedelta(seconds=120)

    run(scenario)


def test_a_removed_schedule_is_gone_and_makes_no_more_jobs(world: World) -> None:
    async def scenario() -> None:
        await world.every(1)
        scheduler = world.scheduler()
        await world.run_for(2, [scheduler])
        await world.service.delete("tick")
        await world.run_for(3, [scheduler])
        assert len(await world.jobs_made()) == 2
        with pytest.raises(ScheduleNotFoundError):
            await world.service.get("tick")
        with pytest.raises(ScheduleNotFoundError):
            await world.service.delete("tick")
        assert await world.service.list() == []

    run(scenario)


def test_the_scheduler_sleeps_until_the_next_tick_at_most_a_minute(world: World) -> None:
    async def scenario() -> None:
        scheduler = world.scheduler()
        assert (await scheduler.run_pass()).sleep == 60.0  # nothing declared
        await world.every(60)
        world.clock.advance(59.7)
        assert (await scheduler.run_pass()).sleep == pytest.approx(0.3, abs=0.01)

    run(scenario)


def test_the_scheduler_knows_when_a_schedule_was_put_paused_resumed_or_removed(
    world: World,
) -> None:
    async def scenario() -> None:
        scheduler = world.scheduler()
        assert await scheduler.changed()  # no pass yet
        await scheduler.run_pass()
        assert not await scheduler.changed()
        for change in (
            world.every(60),
            world.service.pause("tick"),
            world.service.resume("tick"),
            world.service.delete("tick"),
        ):
            await change
            assert await scheduler.changed()
            await scheduler.run_pass()
            assert not await scheduler.changed()

    run(scenario)


def test_the_scheduler_wakes_when_a_taken_tick_would_go_stale(world: World) -> None:
    async def scenario() -> None:
        await world.every(3600)
        dying = world.dying_scheduler()
        world.clock.advance(3600)
        await dying.run_pass()
        # The next tick is an hour away, but the taken one is stale once its lease lapses.
        report = await world.scheduler().run_pass()
        assert report.sleep == pytest.approx(FIRING_LEASE, abs=0.01)

    run(scenario)


def test_a_backend_without_a_store_answers_unsupported() -> None:
    service = ScheduleService(
        None, default_registry(RecordingEmailSender()), CronsimParser(), FakeClock()
    )
    with pytest.raises(UnsupportedOperationError):
        asyncio.run(service.list())
