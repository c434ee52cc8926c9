"""Running one claimed attempt to its end, and what its settlement stored, on the memory
backend."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, TypeVar

import attrs
import pytest

from adapters.memory import memory_backend
from domain.errors import NotReplicatedError
from domain.job_service import JobService
from domain.job_types import JobContext, JobType, JobTypeRegistry
from domain.job_types.registry import default_registry
from domain.jobs import AttemptOutcome, ErrorKind, Job, JobError, JobStatus, Lease
from domain.ports import AttemptReporter, ClaimRequest, LeaseQueue
from domain.processing import JobProcessor, ProcessResult
from domain.retry import Random
from domain.schema import PayloadSchema
from domain.settlement import Ending
from domain.submission import Submission
from tests.fakes import FakeClock, RecordingEmailSender

T = TypeVar("T")
S = JobStatus


class Ctx(JobContext):
    def __init__(self, lease: Lease, *, cancel_requested: bool = False) -> None:
        self._lease = lease
        self._cancel_requested = cancel_requested

    @property
    def job_id(self) -> str:
        return self._lease.job_id

    @property
    def attempt(self) -> int:
        return self._lease.attempt

    @property
    def cancel_requested(self) -> bool:
        return self._cancel_requested

    def report_progress(self, percent: int) -> None:
        pass

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(0)

    async def run_blocking(self, fn: Callable[..., T], *args: Any) -> T:
        return fn(*args)


class RealSleep(Ctx):
    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


class World:
    """The processor and the job service on the memory backend, as the container wires them.

    Retries are drawn halfway up their backoff (`draw`), so a failed job waits `failed`."""

    def __init__(
        self,
        registry: JobTypeRegistry | None = None,
        draw: Random = lambda: 0.5,
        expose_tracebacks: bool = False,
    ) -> None:
        self.clock = FakeClock()
        self.backend = memory_backend(self.clock)
        assert self.backend.leases is not None
        self.leases: LeaseQueue = self.backend.leases
        self.registry = registry or default_registry(RecordingEmailSender())
        self.service = JobService(self.backend, self.registry, self.clock)
        self.processor = JobProcessor(
            self.leases,
            self.registry,
            draw,
            clock=self.clock,
            expose_tracebacks=expose_tracebacks,
        )

    async def submit(self, type_: str, payload: object, **extra: object) -> Job:
        return (await self.service.submit(Submission(type=type_, payload=payload, **extra))).job

    async def claim(self) -> Lease:
        request = ClaimRequest(queues=("default",), worker_id="w", limit=1, lease_seconds=30)
        leases = await self.leases.claim(request)
        assert len(leases) == 1, "expected one job ready to claim"
        return leases[0]

    async def run_next(self, context: type[Ctx] = Ctx) -> ProcessResult:
        lease = await self.claim()
        return await self.processor.process(lease, context(lease))

    async def retry_due(self) -> None:
        self.clock.advance(3600)  # past any retry the tests draw


def test_a_success_stores_the_result() -> None:
    world = World()

    async def scenario() -> None:
        job = await world.submit("dummy", {"mode": "succeed", "result": 42})
        result = await world.run_next()
        assert (result.status, result.ending.outcome) == (S.SUCCEEDED, AttemptOutcome.SUCCEEDED)
        done = await world.service.get(job.id)
        assert (done.status, done.result, done.attempts) == (S.SUCCEEDED, 42, 1)

    asyncio.run(scenario())


class Unconfirmed(AttemptReporter):
    """Settles through `leases`, then says the replicas did not confirm it, as the Redis
    backend does with CONVEYOR_MIN_REPLICAS when a replica lags."""

    def __init__(self, leases: LeaseQueue) -> None:
        self.leases = leases
        self.settles = 0

    async def set_progress(self, lease: Lease, progress: int) -> bool:
        return await self.leases.set_progress(lease, progress)

    async def settle(self, lease: Lease, ending: Ending) -> JobStatus | None:
        self.settles += 1
        status = await self.leases.settle(lease, ending)
        raise NotReplicatedError(0, 1, 0.5, settled=status)


def test_a_settlement_the_replicas_did_not_confirm_stands_and_is_not_written_twice() -> None:
    world = World()
    reporter = Unconfirmed(world.leases)
    processor = JobProcessor(reporter, world.registry, lambda: 0.5, clock=world.clock)

    async def scenario() -> None:
        job = await world.submit("dummy", {"mode": "succeed", "result": 42})
        lease = await world.claim()
        result = await processor.process(lease, Ctx(lease))
        assert result.status is S.SUCCEEDED
        assert result.unreplicated is not None
        assert (result.unreplicated.acknowledged, result.unreplicated.required) == (0, 1)
        assert reporter.settles == 1
        assert (await world.service.get(job.id)).status is S.SUCCEEDED

    asyncio.run(scenario())


def test_fail_twice_then_succeed_on_the_third_attempt() -> None:
    world = World()

    async def scenario() -> None:
        job = await world.submit("dummy", {"mode": "fail", "times": 2})
        assert (await world.run_next()).status is S.FAILED
        assert (await world.service.get(job.id)).status is S.FAILED
        await world.retry_due()
        assert (await world.run_next()).status is S.FAILED
        await world.retry_due()
        assert (await world.run_next()).status is S.SUCCEEDED
        done = await world.service.get(job.id)
        assert (done.status, done.attempts) == (S.SUCCEEDED, 3)

    asyncio.run(scenario())


def test_a_retry_drawn_as_due_at_once_queues_the_job_again() -> None:
    world = World(draw=lambda: 0.0)

    async def scenario() -> None:
        job = await world.submit("dummy", {"mode": "fail", "times": 1})
        result = await world.run_next()
        assert (result.status, result.ending.retry_in) == (S.QUEUED, 0.0)
        assert (await world.service.get(job.id)).status is S.QUEUED

    asyncio.run(scenario())


def test_fatal_goes_dead_after_one_attempt() -> None:
    world = World()

    async def scenario() -> None:
        job = await world.submit("dummy", {"mode": "fatal"})
        assert (await world.run_next()).status is S.DEAD
        dead = await world.service.get(job.id)
        assert (dead.status, dead.attempts) == (S.DEAD, 1)
        assert dead.error is not None
        assert dead.error.kind is ErrorKind.NON_RETRYABLE

    asyncio.run(scenario())


def test_an_always_failing_job_goes_dead_after_max_attempts() -> None:
    world = World()

    async def scenario() -> None:
        job = await world.submit("dummy", {"mode": "fail"}, max_attempts=4)
        statuses = []
        for _ in range(4):
            statuses.append((await world.run_next()).status)
            await world.retry_due()
        assert statuses == [S.FAILED] * 3 + [S.DEAD]
        dead = await world.service.get(job.id)
        assert (dead.status, dead.attempts) == (S.DEAD, 4)
        assert dead.error is not None
        assert "attempt 4" in dead.error.message

    asyncio.run(scenario())


def test_a_handlers_exception_is_kept_as_its_type_and_message_and_its_traceback_is_not() -> None:
    world = World()

    async def scenario() -> None:
        job = await world.submit("dummy", {"mode": "fail"}, max_attempts=1)
        result = await world.run_next()
        dead = await world.service.get(job.id)
        assert dead.error is not None
        assert (dead.error.type, dead.error.message) == (
            "DummyFailureError",
            "dummy failure on attempt 1",
        )
        assert dead.error.traceback is None
        # The worker logs it: the exception travels with the result, traceback and all.
        assert type(result.failure).__name__ == "DummyFailureError"
        assert result.failure is not None
        assert result.failure.__traceback__ is not None

    asyncio.run(scenario())


def test_the_traceback_is_kept_on_the_job_when_the_operator_exposes_tracebacks() -> None:
    world = World(expose_tracebacks=True)

    async def scenario() -> None:
        job = await world.submit("dummy", {"mode": "fatal"})
        await world.run_next()
        dead = await world.service.get(job.id)
        assert dead.error is not None
        assert dead.error.traceback is not None
        assert dead.error.traceback.startswith("Traceback") or "dummy.py" in dead.error.traceback
        assert "NonRetryableError: dummy fatal error" in dead.error.traceback

    asyncio.run(scenario())


def test_an_attempt_over_its_timeout_is_recorded_timed_out() -> None:
    world = World()

    async def scenario() -> None:
        job = await world.submit("dummy", {"mode": "sleep", "seconds": 5}, timeout=0.05)
        result = await world.run_next(RealSleep)
        assert result.status is S.FAILED
        assert result.error is not None
        assert result.error.kind is ErrorKind.TIMED_OUT
        assert (await world.service.get(job.id)).status is S.FAILED

    asyncio.run(scenario())


def test_a_stored_job_of_an_unknown_type_is_dead_lettered_without_running() -> None:
    world = World()

    async def scenario() -> None:
        job = await world.submit("dummy", {"mode": "succeed"})
        lease = await world.claim()
        forged = Lease(attrs.evolve(lease.job, type="os-system"), lease.token)
        result = await world.processor.process(forged, Ctx(forged))
        assert result.status is S.DEAD
        stored = await world.service.get(job.id)
        assert stored.error is not None
        assert stored.error.kind is ErrorKind.INVALID

    asyncio.run(scenario())


def test_a_result_that_cannot_be_stored_ends_the_job_dead_not_the_worker() -> None:
    async def returns_a_set(payload: object, context: JobContext) -> object:
        return {1, 2}

    odd = JobType(name="odd", description="", schema=PayloadSchema(()), handler=returns_a_set)
    world = World(JobTypeRegistry([odd]))

    async def scenario() -> None:
        job = await world.submit("odd", {})
        assert (await world.run_next()).status is S.DEAD
        stored = await world.service.get(job.id)
        assert stored.error is not None
        assert stored.error.kind is ErrorKind.NON_RETRYABLE

    asyncio.run(scenario())


def test_an_attempt_is_cut_at_the_jobs_deadline_and_the_job_expires() -> None:
    world = World()

    async def scenario() -> None:
        job = await world.submit("dummy", {"mode": "sleep", "seconds": 5}, deadline=0.05)
        lease = await world.claim()
        world.clock.advance(0.05)  # the deadline passes while it runs
        result = await world.processor.process(lease, RealSleep(lease))
        assert result.error is not None
        assert result.error.kind is ErrorKind.EXPIRED
        assert result.status is S.EXPIRED
        assert (await world.service.get(job.id)).status is S.EXPIRED

    asyncio.run(scenario())


def test_a_handler_that_sees_its_cancel_request_ends_the_job_cancelled() -> None:
    world = World()

    async def scenario() -> None:
        job = await world.submit("report", {"name": "r", "rows": 1, "seconds": 1})
        lease = await world.claim()
        requested = await world.service.cancel(job.id)
        assert requested.status is S.ACTIVE
        assert requested.cancel_requested_at is not None
        result = await world.processor.process(lease, Ctx(lease, cancel_requested=True))
        assert result.status is S.CANCELLED
        assert (await world.service.get(job.id)).status is S.CANCELLED

    asyncio.run(scenario())


# -- the status stored is the one reported ------------------------------------------------------


def test_a_failure_after_the_deadline_passed_is_reported_expired_not_as_a_retry() -> None:
    world = World()

    async def scenario() -> None:
        job = await world.submit("dummy", {"mode": "fail"}, deadline=60)
        lease = await world.claim()
        world.clock.advance(61)
        result = await world.processor.process(lease, Ctx(lease))
        stored = await world.service.get(job.id)
        assert result.error is not None
        assert result.error.kind is ErrorKind.ERROR
        assert result.status is stored.status is S.EXPIRED
        assert [r.outcome for r in stored.history] == [AttemptOutcome.EXPIRED]

    asyncio.run(scenario())


def test_a_retry_that_would_be_due_after_the_deadline_is_reported_expired() -> None:
    world = World(draw=lambda: 0.99)  # a retry about half a second later

    async def scenario() -> None:
        job = await world.submit("dummy", {"mode": "fail"}, deadline=0.25)
        result = await world.run_next()
        assert result.status is (await world.service.get(job.id)).status is S.EXPIRED

    asyncio.run(scenario())


def test_a_failure_of_a_job_whose_cancel_was_requested_is_reported_cancelled() -> None:
    world = World()

    async def scenario() -> None:
        job = await world.submit("dummy", {"mode": "fail"})
        lease = await world.claim()
        await world.service.cancel(job.id)
        result = await world.processor.process(lease, Ctx(lease))
        assert result.status is (await world.service.get(job.id)).status is S.CANCELLED

    asyncio.run(scenario())


def test_an_attempt_whose_lease_was_lost_writes_nothing_and_says_so() -> None:
    world = World()

    async def scenario() -> None:
        job = await world.submit("dummy", {"mode": "succeed"})
        lease = await world.claim()
        stale = Lease(lease.job, "someone-elses-token")
        result = await world.processor.process(stale, Ctx(stale))
        assert result.status is None
        assert (await world.service.get(job.id)).status is S.ACTIVE

    asyncio.run(scenario())


@pytest.mark.parametrize(("job_type", "status"), [("dummy", S.FAILED), ("gone", S.DEAD)])
def test_a_job_lost_with_its_process_is_retried_by_its_types_policy_or_dead(
    job_type: str, status: JobStatus
) -> None:
    world = World()
    lost = JobError(message="worker died", type="WorkerLost", kind=ErrorKind.WORKER_LOST)

    async def scenario() -> None:
        await world.submit("dummy", {"mode": "succeed"})
        lease = await world.claim()
        lease = Lease(attrs.evolve(lease.job, type=job_type), lease.token)
        result = await world.processor.record_lost(lease, lost)
        assert result.status is status
        assert result.ending.outcome is AttemptOutcome.WORKER_LOST

    asyncio.run(scenario())


def test_a_stored_fault_job_is_dead_lettered_unrun_where_fault_modes_are_off() -> None:
    """A `crash` job stored while the fault modes were on (or by another deployment) meets a
    worker where they are off: it is refused like any payload that does not validate."""
    world = World(registry=default_registry(RecordingEmailSender(), dummy_faults=False))
    on = JobService(
        world.backend, default_registry(RecordingEmailSender(), dummy_faults=True), world.clock
    )

    async def scenario() -> None:
        job = (await on.submit(Submission(type="dummy", payload={"mode": "crash"}))).job
        result = await world.run_next()  # a crash here would end the test process
        assert result.status is S.DEAD
        dead = await world.service.get(job.id)
        assert dead.error is not None
        assert dead.error.kind is ErrorKind.INVALID
        assert "CONVEYOR_DUMMY_FAULTS=1" in dead.error.message

    asyncio.run(scenario())
