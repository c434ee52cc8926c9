import asyncio
from collections.abc import Callable
from typing import Any, TypeVar

import pytest

from adapters.memory_queue import InMemoryJobQueue
from domain.errors import InvalidJobError, JobNotFoundError, UnknownJobTypeError
from domain.job_types import JobContext, JobTypeRegistry
from domain.job_types.registry import default_registry
from domain.jobs import ErrorKind, JobStatus, Lease
from domain.ports import JobQuery
from domain.services import JobProcessor, JobService, Outcome, Submission
from tests.fakes import FakeClock, RecordingEmailSender

T = TypeVar("T")


class Ctx(JobContext):
    def __init__(self, lease: Lease) -> None:
        self._lease = lease

    @property
    def job_id(self) -> str:
        return self._lease.job_id

    @property
    def attempt(self) -> int:
        return self._lease.attempt

    def report_progress(self, percent: int) -> None:
        pass

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(0)

    async def run_blocking(self, fn: Callable[..., T], *args: Any) -> T:
        return fn(*args)


class World:
    """The use cases wired to the in-memory queue, as the container would wire them."""

    def __init__(self) -> None:
        self.clock = FakeClock()
        self.queue = InMemoryJobQueue(self.clock)
        registry = default_registry(RecordingEmailSender())
        self.service = JobService(self.queue, registry, self.clock)
        self.processor = JobProcessor(self.queue, registry, lambda: 0.0)

    async def run_next(self) -> Outcome:
        leases = await self.queue.claim(
            ["default"], worker_id="w", limit=1, lease_seconds=30, wait_seconds=0
        )
        assert len(leases) == 1, "expected one job ready to claim"
        result = await self.processor.process(leases[0], Ctx(leases[0]))
        return result.outcome


def submit(world: World, type_: str, payload: object, **extra: object) -> str:
    job = asyncio.run(world.service.submit(Submission(type=type_, payload=payload, **extra)))
    return job.id


def test_submit_stores_a_queued_job_with_the_types_defaults() -> None:
    world = World()
    job_id = submit(world, "report", {"name": "r", "rows": 3})
    job = asyncio.run(world.service.get(job_id))
    assert job.status is JobStatus.QUEUED
    assert job.payload == {"name": "r", "rows": 3, "seconds": 2.0}
    assert job.max_attempts == 3
    assert job.queue == "default"


def test_submit_refuses_an_unknown_type_and_stores_nothing() -> None:
    world = World()
    with pytest.raises(UnknownJobTypeError):
        submit(world, "os.system", {})
    assert asyncio.run(world.queue.list_jobs(JobQuery())).jobs == []


def test_submit_lists_payload_and_envelope_errors_together() -> None:
    world = World()
    with pytest.raises(InvalidJobError) as caught:
        submit(world, "email", {"to": "x"}, max_attempts=100, timeout=-1)
    paths = {e.path for e in caught.value.errors}
    assert paths == {"payload.to", "payload.subject", "payload.body", "max_attempts", "timeout"}


@pytest.mark.parametrize("max_attempts", [0, 26, True, "3", 2.5])
def test_max_attempts_must_be_an_integer_within_the_types_limit(max_attempts: object) -> None:
    with pytest.raises(InvalidJobError, match="max_attempts"):
        submit(World(), "dummy", {"mode": "succeed"}, max_attempts=max_attempts)


def test_get_of_an_unknown_id_raises_not_found() -> None:
    with pytest.raises(JobNotFoundError):
        asyncio.run(World().service.get("f" * 32))


def test_success_stores_the_result() -> None:
    world = World()

    async def scenario() -> None:
        job_id = (
            await world.service.submit(
                Submission(type="dummy", payload={"mode": "succeed", "result": 42})
            )
        ).id
        assert await world.run_next() is Outcome.SUCCEEDED
        job = await world.service.get(job_id)
        assert (job.status, job.result, job.attempts) == (JobStatus.SUCCEEDED, 42, 1)

    asyncio.run(scenario())


def test_fail_twice_then_succeed_on_the_third_attempt() -> None:
    world = World()

    async def scenario() -> None:
        job = await world.service.submit(
            Submission(type="dummy", payload={"mode": "fail", "times": 2})
        )
        assert await world.run_next() is Outcome.RETRYING
        assert (await world.service.get(job.id)).status is JobStatus.FAILED
        assert await world.run_next() is Outcome.RETRYING
        assert await world.run_next() is Outcome.SUCCEEDED
        done = await world.service.get(job.id)
        assert (done.status, done.attempts) == (JobStatus.SUCCEEDED, 3)

    asyncio.run(scenario())


def test_fatal_goes_dead_after_one_attempt() -> None:
    world = World()

    async def scenario() -> None:
        job = await world.service.submit(Submission(type="dummy", payload={"mode": "fatal"}))
        assert await world.run_next() is Outcome.DEAD
        dead = await world.service.get(job.id)
        assert dead.status is JobStatus.DEAD
        assert dead.attempts == 1
        assert dead.error is not None
        assert dead.error.kind is ErrorKind.NON_RETRYABLE

    asyncio.run(scenario())


def test_always_failing_job_goes_dead_after_max_attempts() -> None:
    world = World()

    async def scenario() -> None:
        job = await world.service.submit(
            Submission(type="dummy", payload={"mode": "fail"}, max_attempts=4)
        )
        outcomes = [await world.run_next() for _ in range(4)]
        assert outcomes == [Outcome.RETRYING] * 3 + [Outcome.DEAD]
        dead = await world.service.get(job.id)
        assert (dead.status, dead.attempts) == (JobStatus.DEAD, 4)
        assert dead.error is not None
        assert "attempt 4" in dead.error.message

    asyncio.run(scenario())


def test_an_attempt_over_its_timeout_is_recorded_timed_out() -> None:
    world = World()

    async def scenario() -> None:
        job = await world.service.submit(
            Submission(type="dummy", payload={"mode": "sleep", "seconds": 5}, timeout=0.05)
        )
        leases = await world.queue.claim(
            ["default"], worker_id="w", limit=1, lease_seconds=30, wait_seconds=0
        )

        class RealSleep(Ctx):
            async def sleep(self, seconds: float) -> None:
                await asyncio.sleep(seconds)

        result = await world.processor.process(leases[0], RealSleep(leases[0]))
        assert result.outcome is Outcome.RETRYING
        assert result.error is not None
        assert result.error.kind is ErrorKind.TIMED_OUT
        assert (await world.service.get(job.id)).status is JobStatus.FAILED

    asyncio.run(scenario())


def test_a_stored_job_of_an_unknown_type_is_dead_lettered_without_running() -> None:
    import attrs

    world = World()

    async def scenario() -> None:
        job = await world.service.submit(Submission(type="dummy", payload={"mode": "succeed"}))
        leases = await world.queue.claim(
            ["default"], worker_id="w", limit=1, lease_seconds=30, wait_seconds=0
        )
        forged = Lease(attrs.evolve(leases[0].job, type="os-system"), leases[0].token)
        result = await world.processor.process(forged, Ctx(forged))
        assert result.outcome is Outcome.DEAD
        stored = await world.service.get(job.id)
        assert stored.error is not None
        assert stored.error.kind is ErrorKind.INVALID

    asyncio.run(scenario())


def test_a_result_that_cannot_be_stored_ends_the_job_dead_not_the_worker() -> None:
    from domain.job_types import JobType
    from domain.schema import PayloadSchema

    async def returns_a_set(payload: object, context: JobContext) -> object:
        return {1, 2}

    async def scenario() -> None:
        clock = FakeClock()
        queue = InMemoryJobQueue(clock)
        registry = JobTypeRegistry(
            [JobType(name="odd", description="", schema=PayloadSchema(()), handler=returns_a_set)]
        )
        service = JobService(queue, registry, clock)
        job = await service.submit(Submission(type="odd", payload={}))
        leases = await queue.claim(
            ["default"], worker_id="w", limit=1, lease_seconds=30, wait_seconds=0
        )
        result = await JobProcessor(queue, registry, lambda: 0.0).process(leases[0], Ctx(leases[0]))
        assert result.outcome is Outcome.DEAD
        stored = await service.get(job.id)
        assert stored.error is not None
        assert stored.error.kind is ErrorKind.NON_RETRYABLE

    asyncio.run(scenario())
