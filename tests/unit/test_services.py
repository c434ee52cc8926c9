import asyncio
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import pytest

from adapters.memory_queue import InMemoryJobQueue
from domain.errors import (
    IdempotencyConflictError,
    InvalidJobError,
    JobNotFoundError,
    UnknownJobTypeError,
)
from domain.job_types import JobContext, JobTypeRegistry
from domain.job_types.registry import default_registry
from domain.jobs import ErrorKind, Job, JobStatus, Lease
from domain.ports import JobQuery
from domain.services import JobProcessor, JobService, Outcome, Submission
from domain.timeline import EventKind, WaitingKind
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
        self.registry = registry = default_registry(RecordingEmailSender())
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
    accepted = asyncio.run(world.service.submit(Submission(type=type_, payload=payload, **extra)))
    return accepted.job.id


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
            (
                await world.service.submit(
                    Submission(type="dummy", payload={"mode": "succeed", "result": 42})
                )
            ).job
        ).id
        assert await world.run_next() is Outcome.SUCCEEDED
        job = await world.service.get(job_id)
        assert (job.status, job.result, job.attempts) == (JobStatus.SUCCEEDED, 42, 1)

    asyncio.run(scenario())


def test_fail_twice_then_succeed_on_the_third_attempt() -> None:
    world = World()

    async def scenario() -> None:
        job = (
            await world.service.submit(
                Submission(type="dummy", payload={"mode": "fail", "times": 2})
            )
        ).job
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
        job = (await world.service.submit(Submission(type="dummy", payload={"mode": "fatal"}))).job
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
        job = (
            await world.service.submit(
                Submission(type="dummy", payload={"mode": "fail"}, max_attempts=4)
            )
        ).job
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
        job = (
            await world.service.submit(
                Submission(type="dummy", payload={"mode": "sleep", "seconds": 5}, timeout=0.05)
            )
        ).job
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
        job = (
            await world.service.submit(Submission(type="dummy", payload={"mode": "succeed"}))
        ).job
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
        job = (await service.submit(Submission(type="odd", payload={}))).job
        leases = await queue.claim(
            ["default"], worker_id="w", limit=1, lease_seconds=30, wait_seconds=0
        )
        result = await JobProcessor(queue, registry, lambda: 0.0).process(leases[0], Ctx(leases[0]))
        assert result.outcome is Outcome.DEAD
        stored = await service.get(job.id)
        assert stored.error is not None
        assert stored.error.kind is ErrorKind.NON_RETRYABLE

    asyncio.run(scenario())


# -- lifecycle options ------------------------------------------------------------------------


def _validate(world: World, **fields: object) -> Job:
    return world.service.validate(
        Submission(type="report", payload={"name": "r", "rows": 1}, **fields)
    )


def _errors(world: World, **fields: object) -> dict[str, str]:
    with pytest.raises(InvalidJobError) as caught:
        _validate(world, **fields)
    return {e.path: e.message for e in caught.value.errors}


def test_a_delay_schedules_the_job_and_a_past_run_at_queues_it() -> None:
    world = World()
    now = world.clock.now()
    delayed = _validate(world, delay=5)
    assert delayed.status is JobStatus.SCHEDULED
    assert delayed.run_at == now + timedelta(seconds=5)
    at = _validate(world, run_at="2026-01-01T00:01:00+00:00")
    assert (at.status, at.run_at) == (JobStatus.SCHEDULED, now + timedelta(minutes=1))
    past = _validate(world, run_at="2025-12-31T23:00:00Z")
    assert (past.status, past.run_at) == (JobStatus.QUEUED, None)
    assert _validate(world, delay=0).status is JobStatus.QUEUED


def test_queue_priority_and_deadline_override_the_types_defaults() -> None:
    world = World()
    job = _validate(world, queue="reports", priority=7, deadline=60)
    assert (job.queue, job.priority) == ("reports", 7)
    assert job.deadline == world.clock.now() + timedelta(seconds=60)
    dated = _validate(world, deadline="2026-01-01T01:00:00Z")
    assert dated.deadline == datetime(2026, 1, 1, 1, tzinfo=UTC)


def test_every_bad_option_is_named_at_once() -> None:
    world = World()
    errors = _errors(
        world,
        queue="Not A Name",
        priority=101,
        delay=-1,
        deadline="tomorrow",
    )
    assert set(errors) == {"queue", "priority", "delay", "deadline"}
    assert set(_errors(world, delay=1, run_at="2026-01-01T00:01:00Z")) == {"run_at"}
    assert set(_errors(world, run_at="2026-01-01T00:01:00")) == {"run_at"}  # no offset
    assert set(_errors(world, priority=True, delay=float("nan"))) == {"priority", "delay"}
    # A deadline before the job may even start cannot be met.
    assert set(_errors(world, delay=120, deadline=60)) == {"deadline"}


def test_a_batch_is_validated_whole_and_names_each_bad_item_by_index() -> None:
    world = World()
    good = Submission(type="report", payload={"name": "r", "rows": 1})

    async def scenario() -> None:
        with pytest.raises(InvalidJobError) as caught:
            await world.service.submit_batch(
                [
                    good,
                    Submission(type="report", payload={"rows": -1}),
                    good,
                    Submission(type="nope", payload={}),
                ]
            )
        paths = {e.path for e in caught.value.errors}
        assert {"[1].payload.name", "[1].payload.rows", "[3].type"} <= paths
        assert not any(p.startswith(("[0]", "[2]")) for p in paths)
        assert (await world.queue.list_jobs(JobQuery())).jobs == []
        accepted = await world.service.submit_batch([good, good])
        assert [a.created for a in accepted] == [True, True]
        assert len({a.job.id for a in accepted}) == 2

    asyncio.run(scenario())


def test_a_repeat_under_an_idempotency_key_answers_the_first_job() -> None:
    world = World()
    body = Submission(type="report", payload={"name": "r", "rows": 1})

    async def scenario() -> None:
        first = await world.service.submit(body, idempotency_key="order-1")
        again = await world.service.submit(
            Submission(type="report", payload={"rows": 1, "name": "r"}), idempotency_key="order-1"
        )
        assert (first.created, again.created) == (True, False)
        assert again.job.id == first.job.id
        with pytest.raises(IdempotencyConflictError):
            await world.service.submit(
                Submission(type="report", payload={"name": "other", "rows": 1}),
                idempotency_key="order-1",
            )
        assert len((await world.queue.list_jobs(JobQuery())).jobs) == 1

    asyncio.run(scenario())


def test_the_fingerprint_ignores_key_order_but_not_values() -> None:
    a = Submission(type="t", payload={"a": 1, "b": [1, 2]}, delay=3)
    b = Submission(type="t", payload={"b": [1, 2], "a": 1}, delay=3)
    c = Submission(type="t", payload={"a": 1, "b": [2, 1]}, delay=3)
    assert a.fingerprint() == b.fingerprint() != c.fingerprint()
    assert a.fingerprint() != Submission(type="t", payload={"a": 1, "b": [1, 2]}).fingerprint()


def test_an_attempt_is_cut_at_the_jobs_deadline_and_the_job_expires() -> None:
    world = World()
    world.processor = JobProcessor(world.queue, world.registry, lambda: 0.0, clock=world.clock)

    async def scenario() -> None:
        job = (
            await world.service.submit(
                Submission(type="dummy", payload={"mode": "sleep", "seconds": 5}, deadline=0.05)
            )
        ).job
        leases = await world.queue.claim(
            ["default"], worker_id="w", limit=1, lease_seconds=30, wait_seconds=0
        )

        class RealSleep(Ctx):
            async def sleep(self, seconds: float) -> None:
                await asyncio.sleep(seconds)

        world.clock.advance(0.05)  # the deadline passes while it runs
        result = await world.processor.process(leases[0], RealSleep(leases[0]))
        assert result.error is not None
        assert result.error.kind is ErrorKind.EXPIRED
        assert (await world.service.get(job.id)).status is JobStatus.EXPIRED

    asyncio.run(scenario())


def test_a_handler_that_sees_its_cancel_request_ends_the_job_cancelled() -> None:
    world = World()

    async def scenario() -> None:
        job = (
            await world.service.submit(
                Submission(type="report", payload={"name": "r", "rows": 1, "seconds": 1})
            )
        ).job
        leases = await world.queue.claim(
            ["default"], worker_id="w", limit=1, lease_seconds=30, wait_seconds=0
        )
        requested = await world.service.cancel(job.id)
        assert requested.status is JobStatus.ACTIVE
        assert requested.cancel_requested_at is not None

        class Cancelling(Ctx):
            @property
            def cancel_requested(self) -> bool:
                return True

        result = await world.processor.process(leases[0], Cancelling(leases[0]))
        assert result.outcome is Outcome.CANCELLED
        assert (await world.service.get(job.id)).status is JobStatus.CANCELLED

    asyncio.run(scenario())


def test_details_explain_a_waiting_job_and_wait_returns_once_it_ends() -> None:
    world = World()

    async def scenario() -> None:
        job = (
            await world.service.submit(
                Submission(type="dummy", payload={"mode": "succeed"}, delay=10)
            )
        ).job
        details = await world.service.details(job.id)
        assert details.waiting_reason is not None
        assert details.waiting_reason.kind is WaitingKind.SCHEDULED
        assert [e.kind for e in details.timeline] == [EventKind.SUBMITTED, EventKind.SCHEDULED]
        now = await world.service.submit(Submission(type="dummy", payload={"mode": "succeed"}))

        async def finish() -> None:
            await asyncio.sleep(0.2)
            await world.run_next()

        runner = asyncio.create_task(finish())
        loop = asyncio.get_running_loop()
        started = loop.time()
        waited = await world.service.details(now.job.id, wait=5)
        assert waited.job.status is JobStatus.SUCCEEDED
        assert loop.time() - started < 2
        await runner

    asyncio.run(scenario())
