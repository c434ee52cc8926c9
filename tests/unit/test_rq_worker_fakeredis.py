"""How Conveyor's RQ worker ends attempts, on fakeredis: every way an attempt can end is
settled by the domain's rule, and written the way RQ keeps jobs.

The forking worker's own paths (a work-horse that dies, one killed after a cancel request's
grace) are driven here by calling the hooks RQ's `monitor_work_horse` calls, in its order;
`tests/integration/test_rq_queue.py` kills real work-horses.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import attrs
import pytest
from redis.exceptions import ConnectionError as RedisConnectionError
from rq.job import JobStatus as RqStatus
from rq.registry import CanceledJobRegistry, StartedJobRegistry
from rq.timeouts import JobTimeoutException

from adapters.rq import ConveyorWorker
from adapters.rq.client import text
from adapters.rq.codec import ATTEMPT, CANCEL_REQUESTED_AT, rq_queue_name
from adapters.rq.dispatcher import RqReporter
from domain.job_types.dummy import dummy_job_type
from domain.jobs import AttemptOutcome, ErrorKind, Job, JobError, JobStatus, Lease
from domain.ports import Backend, JobControl
from domain.settlement import Ending
from tests.contracts.builders import enqueue, stored
from tests.contracts.driving import driven_job
from tests.unit.rq_support import RqFakeRedisFactory, registry_key, start_attempt

S = JobStatus
O = AttemptOutcome  # noqa: E741 - reads as the table does
QUEUE = rq_queue_name("test", "default")


@pytest.fixture
def factory() -> RqFakeRedisFactory:
    return RqFakeRedisFactory()


def run(coro: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 30))


def control(backend: Backend) -> JobControl:
    assert backend.control is not None
    return backend.control


def report_job(seconds: float, *, max_attempts: int = 3) -> Job:
    return Job.submitted(
        id=uuid.uuid4().hex,
        type="report",
        payload={"name": "q3", "rows": 10, "seconds": seconds},
        queue="default",
        max_attempts=max_attempts,
        timeout=30.0,
        now=datetime.now(UTC),
    )


def queued_ids(factory: RqFakeRedisFactory) -> list[str]:
    return [text(m) for m in factory.client().lrange(f"rq:queue:{QUEUE}", 0, -1)]


class KillRecordingWorker(ConveyorWorker):
    """The forking worker, recording the work-horse kills it asks for instead of sending them."""

    killed = 0

    def kill_horse(self, sig: signal.Signals = signal.SIGKILL) -> None:
        self.killed += 1


def sigkilled() -> int:
    """A wait status: killed by SIGKILL."""
    return int(signal.SIGKILL)


# -- attempts the dispatcher settles ----------------------------------------------------------


def test_a_failed_attempt_waits_in_rqs_scheduled_registry_until_the_retry_time_it_drew() -> None:
    factory = RqFakeRedisFactory(random=1.0)  # the longest delay the policy allows

    async def main() -> None:
        async with factory.open() as backend:
            job = driven_job({"mode": "fail", "times": 1})
            await enqueue(backend.submitter, job)
            failed_at = datetime.now(UTC)
            await factory.burst()
            waiting = await stored(backend.store, job.id)
            assert (waiting.status, waiting.attempts) == (S.FAILED, 1)
            assert waiting.retry_at is not None
            delay = (waiting.retry_at - failed_at).total_seconds()
            ceiling = dummy_job_type().retry.ceiling(1)  # what random() = 1 draws
            assert ceiling <= delay < ceiling + 1
            score = factory.client().zscore(registry_key("scheduled"), job.id)
            assert score == pytest.approx(waiting.retry_at.timestamp(), abs=1e-6)
            assert [(r.attempt, r.outcome) for r in waiting.history] == [(1, O.FAILED)]
            assert waiting.error is not None
            assert waiting.error.kind == ErrorKind.ERROR
            assert await factory.recover() == 0  # not due yet
            await asyncio.sleep((waiting.retry_at - datetime.now(UTC)).total_seconds() + 0.01)
            assert await factory.recover() == 1
            await factory.drain(backend, [job.id])
            done = await stored(backend.store, job.id)
            assert (done.status, done.attempts) == (S.SUCCEEDED, 2)
            assert done.started_at is not None
            assert done.started_at >= waiting.retry_at

    run(main())


def test_a_failed_attempt_whose_retry_is_due_at_once_goes_back_to_the_head_of_its_queue(
    factory: RqFakeRedisFactory,
) -> None:
    async def main() -> None:
        async with factory.open() as backend:
            flaky, behind = (
                driven_job({"mode": "fail", "times": 1}),
                driven_job({"mode": "succeed"}),
            )
            await enqueue(backend.submitter, flaky)
            await enqueue(backend.submitter, behind)
            worker = factory.worker()
            await asyncio.to_thread(worker.work, burst=True, max_jobs=1, logging_level="WARNING")
            assert queued_ids(factory) == [flaky.id, behind.id]
            retried = await stored(backend.store, flaky.id)
            assert (retried.status, retried.attempts, retried.retry_at) == (S.QUEUED, 1, None)

    run(main())


def test_a_single_attempt_job_that_fails_is_dead_after_its_one_attempt(
    factory: RqFakeRedisFactory,
) -> None:
    async def main() -> None:
        async with factory.open() as backend:
            job = driven_job({"mode": "fail"}, max_attempts=1)
            await enqueue(backend.submitter, job)
            await factory.drain(backend, [job.id])
            dead = await stored(backend.store, job.id)
            assert (dead.status, dead.attempts) == (S.DEAD, 1)
            assert [r.outcome for r in dead.history] == [O.FAILED]
            assert dead.finished_at is not None

    run(main())


def test_the_attempt_number_is_counted_by_the_worker_in_the_jobs_meta(
    factory: RqFakeRedisFactory,
) -> None:
    async def main() -> None:
        async with factory.open() as backend:
            job = driven_job({"mode": "fail", "times": 2}, max_attempts=3)
            await enqueue(backend.submitter, job)
            await factory.drain(backend, [job.id])
            raw = factory.client().hget(f"rq:job:{job.id}", "meta")
            assert isinstance(raw, bytes)
            meta = json.loads(raw)
            assert meta[ATTEMPT] == 3
            assert meta["pid"] == os.getpid()  # a simple worker runs jobs in its own process
            done = await stored(backend.store, job.id)
            assert [(r.attempt, r.outcome) for r in done.history] == [
                (1, O.FAILED),
                (2, O.FAILED),
                (3, O.SUCCEEDED),
            ]
            assert done.history[0].error == "DummyFailureError: dummy failure on attempt 1"
            assert done.history[-1].ended_at == done.finished_at
            assert {r.worker for r in done.history} == {done.worker}

    run(main())


def test_progress_is_visible_while_a_report_runs(factory: RqFakeRedisFactory) -> None:
    async def main() -> None:
        async with factory.open() as backend:
            job = report_job(1.0, max_attempts=1)
            await enqueue(backend.submitter, job)
            running = asyncio.create_task(factory.burst())
            seen: set[int] = set()
            while not running.done():
                now = await backend.store.get(job.id)
                if now is not None and now.status == S.ACTIVE and now.progress:
                    seen.add(now.progress)
                await asyncio.sleep(0.05)
            await running
            assert any(0 < p < 100 for p in seen), seen
            done = await stored(backend.store, job.id)
            assert (done.status, done.progress) == (S.SUCCEEDED, 100)
            assert done.result["rows"] == 10

    run(main())


def test_an_active_job_is_asked_to_stop_and_ends_cancelled(factory: RqFakeRedisFactory) -> None:
    async def main() -> None:
        async with factory.open() as backend:
            job = report_job(seconds=10.0)
            await enqueue(backend.submitter, job)
            started = time.monotonic()
            running = asyncio.create_task(factory.burst())
            deadline = time.monotonic() + 10
            while (await stored(backend.store, job.id)).status != S.ACTIVE:
                assert time.monotonic() < deadline, "it never started"
                await asyncio.sleep(0.02)
            asked = await control(backend).cancel(job.id)
            assert asked.status == S.ACTIVE
            assert asked.cancel_requested_at is not None
            await running
            assert time.monotonic() - started < 5  # it stopped, it did not run its 10 s
            final = await stored(backend.store, job.id)
            assert (final.status, final.attempts, final.result) == (S.CANCELLED, 1, None)
            assert final.progress is not None
            assert final.progress < 100
            assert [r.outcome for r in final.history] == [O.CANCELLED]
            assert final.finished_at is not None
            client = factory.client()
            assert StartedJobRegistry(QUEUE, connection=client).get_job_ids() == []
            assert client.zscore(CanceledJobRegistry(QUEUE, connection=client).key, job.id)
            # Cancelled, not failed: it is not retried, and a worker leaves it alone.
            await factory.burst()
            assert (await stored(backend.store, job.id)).status == S.CANCELLED
            requeued = await control(backend).requeue(job.id)
            assert (requeued.status, requeued.cancel_requested_at) == (S.QUEUED, None)

    run(main())


def test_a_failed_attempt_of_a_job_whose_cancel_was_requested_ends_it_cancelled(
    factory: RqFakeRedisFactory,
) -> None:
    async def main() -> None:
        async with factory.open() as backend:
            job = driven_job({"mode": "fail"}, max_attempts=3)
            await enqueue(backend.submitter, job)
            worker = factory.worker()
            rq_job, rq_queue, execution = start_attempt(worker)
            asked = await control(backend).cancel(job.id)
            assert asked.status == S.ACTIVE
            assert asked.cancel_requested_at is not None
            # Asking again, while no worker loop can honour it yet, keeps the first request's time.
            again = await control(backend).cancel(job.id)
            assert again.status == S.ACTIVE
            assert again.cancel_requested_at == asked.cancel_requested_at
            # The handler did not listen, and failed: settled, then written by RQ's failure path.
            attempt = attrs.evolve(rq_job.stored_job(), status=S.ACTIVE, attempts=1)
            failure = JobError("it broke", "RuntimeError")
            status = await RqReporter(rq_job).settle(
                Lease(attempt, job.id), Ending.failed(failure, retry_in=0.0)
            )
            worker.handle_job_failure(rq_job, rq_queue, exc_string="broke", execution=execution)
            final = await stored(backend.store, job.id)
            assert status == final.status == S.CANCELLED
            assert final.attempts == 1
            assert [r.outcome for r in final.history] == [O.CANCELLED]
            assert final.error == failure  # what the attempt raised is kept

    run(main())


# -- attempts settled by the worker or RQ -----------------------------------------------------


def test_a_work_horse_that_died_has_its_attempt_settled_worker_lost_by_its_worker(
    factory: RqFakeRedisFactory,
) -> None:
    async def main() -> None:
        async with factory.open() as backend:
            retried, spent, behind = (
                driven_job({"mode": "succeed"}, max_attempts=2),
                driven_job({"mode": "succeed"}, max_attempts=1),
                driven_job({"mode": "succeed"}),
            )
            worker = factory.worker()

            def horse_dies() -> str:  # as RQ's monitor_work_horse does when it sees it
                rq_job, rq_queue, execution = start_attempt(worker)
                worker.handle_work_horse_killed(rq_job, 1234, sigkilled(), None)
                worker.handle_job_failure(
                    rq_job, rq_queue, exc_string="killed", execution=execution
                )
                return rq_job.id

            await enqueue(backend.submitter, retried)
            await enqueue(backend.submitter, behind)
            assert horse_dies() == retried.id
            assert queued_ids(factory) == [retried.id, behind.id]  # due at once: at the head
            factory.client().delete(f"rq:queue:{QUEUE}")
            await enqueue(backend.submitter, spent)
            assert horse_dies() == spent.id
            again, dead = (
                await stored(backend.store, retried.id),
                await stored(backend.store, spent.id),
            )
            assert (again.status, again.attempts) == (S.QUEUED, 1)
            assert (dead.status, dead.attempts) == (S.DEAD, 1)
            for job in (again, dead):
                assert job.error is not None
                assert (job.error.kind, job.error.signal) == (ErrorKind.WORKER_LOST, "SIGKILL")
                assert [r.outcome for r in job.history] == [O.WORKER_LOST]

    run(main())


def test_a_work_horse_killed_after_its_cancel_grace_ends_the_job_cancelled(
    factory: RqFakeRedisFactory,
) -> None:
    async def main() -> None:
        async with factory.open() as backend:
            job = driven_job({"mode": "sleep", "seconds": 60}, max_attempts=3)
            await enqueue(backend.submitter, job)
            worker = factory.build(KillRecordingWorker)
            worker.cancel_grace = 0.0
            rq_job, rq_queue, execution = start_attempt(worker)
            worker.maintain_heartbeats(rq_job, execution)
            assert worker.killed == 0
            await control(backend).cancel(job.id)
            worker.maintain_heartbeats(rq_job, execution)  # the grace has passed
            assert worker.killed == 1
            worker.handle_work_horse_killed(rq_job, 1234, sigkilled(), None)
            worker.handle_job_failure(rq_job, rq_queue, exc_string="killed", execution=execution)
            final = await stored(backend.store, job.id)
            assert (final.status, final.attempts, final.error) == (S.CANCELLED, 1, None)
            assert [r.outcome for r in final.history] == [O.CANCELLED]
            client = factory.client()
            assert client.zscore(CanceledJobRegistry(QUEUE, connection=client).key, job.id)

    run(main())


def test_a_work_horse_that_wrote_its_settlement_before_dying_is_left_as_it_wrote_it(
    factory: RqFakeRedisFactory,
) -> None:
    async def main() -> None:
        async with factory.open() as backend:
            job = driven_job({"mode": "succeed"}, max_attempts=3)
            await enqueue(backend.submitter, job)
            worker = factory.worker()
            rq_job, rq_queue, execution = start_attempt(worker)
            # The horse put it back in line, then died before it could exit.
            client = factory.client()
            client.hset(rq_job.key, "status", RqStatus.QUEUED.value)
            client.rpush(f"rq:queue:{QUEUE}", job.id)
            worker.handle_work_horse_killed(rq_job, 1234, sigkilled(), None)
            worker.handle_job_failure(rq_job, rq_queue, exc_string="killed", execution=execution)
            left = await stored(backend.store, job.id)
            assert (left.status, left.history) == (S.QUEUED, ())
            assert queued_ids(factory) == [job.id]

    run(main())


def test_a_work_horse_that_died_while_redis_was_away_is_left_started_for_the_sweep(
    factory: RqFakeRedisFactory,
) -> None:
    async def main() -> None:
        async with factory.open() as backend:
            job = driven_job({"mode": "succeed"}, max_attempts=3)
            await enqueue(backend.submitter, job)
            worker = factory.worker()
            rq_job, _, _ = start_attempt(worker)
            factory.server.connected = False
            with pytest.raises(RedisConnectionError):
                worker.handle_work_horse_killed(rq_job, 1234, sigkilled(), None)
            factory.server.connected = True
            assert rq_job.settlement is None
            left = await stored(backend.store, job.id)
            assert (left.status, left.history) == (S.ACTIVE, ())
            assert factory.client().zcard(registry_key("wip")) == 1

    run(main())


def test_an_attempt_stopped_by_rqs_hard_time_limit_is_settled_timed_out(
    factory: RqFakeRedisFactory,
) -> None:
    async def main() -> None:
        async with factory.open() as backend:
            job = driven_job({"mode": "succeed"}, max_attempts=2)
            await enqueue(backend.submitter, job)
            worker = factory.worker()
            rq_job, rq_queue, execution = start_attempt(worker)
            # As RQ's failure path does when its death penalty strikes in the dispatcher.
            limit = JobTimeoutException("Task exceeded maximum timeout value (25 seconds)")
            worker.handle_exception(rq_job, JobTimeoutException, limit, None)
            worker.handle_job_failure(rq_job, rq_queue, exc_string="timeout", execution=execution)
            retried = await stored(backend.store, job.id)
            assert (retried.status, retried.attempts) == (S.QUEUED, 1)
            assert retried.error is not None
            assert retried.error.kind == ErrorKind.TIMED_OUT
            assert [r.outcome for r in retried.history] == [O.TIMED_OUT]

    run(main())


def test_an_abandoned_job_is_retried_by_the_sweep_with_a_worker_lost_error(
    factory: RqFakeRedisFactory,
) -> None:
    """A worker that died mid-job: its job is `started`, its heartbeat entry expires."""

    async def main() -> None:
        async with factory.open() as backend:
            lost, spent, asked = (
                driven_job({"mode": "succeed"}, max_attempts=2),
                driven_job({"mode": "succeed"}, max_attempts=1),
                driven_job({"mode": "succeed"}, max_attempts=3),
            )
            for job in (lost, spent, asked):
                await enqueue(backend.submitter, job)
            worker = factory.worker()
            client = factory.client()
            registry = StartedJobRegistry(QUEUE, connection=client)
            for _ in range(3):  # what a worker does before it runs a job, then dies
                _, _, execution = start_attempt(worker)
                # Its heartbeat entry lives just a second past now:
                client.zadd(registry.key, {execution.composite_key: time.time() + 1})
            client.hset(f"rq:job:{asked.id}", CANCEL_REQUESTED_AT, datetime.now(UTC).isoformat())
            assert (await stored(backend.store, lost.id)).status == S.ACTIVE
            assert await factory.recover() == 0  # not expired yet
            await asyncio.sleep(2.1)
            assert await factory.recover() == 3
            retried = await stored(backend.store, lost.id)
            dead = await stored(backend.store, spent.id)
            cancelled = await stored(backend.store, asked.id)
            assert (retried.status, retried.attempts) == (S.QUEUED, 1)
            assert (dead.status, dead.attempts) == (S.DEAD, 1)
            assert (cancelled.status, cancelled.attempts) == (S.CANCELLED, 1)
            for job in (retried, dead, cancelled):
                assert job.error is not None
                assert job.error.kind == ErrorKind.WORKER_LOST
            assert [r.outcome for r in retried.history] == [O.WORKER_LOST]
            assert [r.outcome for r in cancelled.history] == [O.CANCELLED]
            await factory.drain(backend, [lost.id])
            final = await stored(backend.store, lost.id)
            assert (final.status, final.attempts) == (S.SUCCEEDED, 2)
            assert [r.outcome for r in final.history] == [O.WORKER_LOST, O.SUCCEEDED]
            requeued = await control(backend).requeue(dead.id)
            assert (requeued.status, requeued.attempts, requeued.error) == (S.QUEUED, 0, None)
            assert requeued.history == dead.history  # the history stays

    run(main())


def test_an_unregistered_type_is_not_retried_when_its_attempt_is_lost(
    factory: RqFakeRedisFactory,
) -> None:
    async def main() -> None:
        async with factory.open() as backend:
            job = driven_job({"mode": "succeed"}, max_attempts=3)
            await enqueue(backend.submitter, job)
            worker = factory.worker()
            rq_job, rq_queue, execution = start_attempt(worker)
            assert worker.settler is not None
            worker.settler = type(worker.settler)(  # a worker that no longer knows the type
                type(worker.settler.registry)([]), worker.settler.random
            )
            worker.handle_work_horse_killed(rq_job, 1234, sigkilled(), None)
            worker.handle_job_failure(rq_job, rq_queue, exc_string="killed", execution=execution)
            assert (await stored(backend.store, job.id)).status == S.DEAD

    run(main())
