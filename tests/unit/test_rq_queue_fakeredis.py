"""The port contract on the RQ adapter over fakeredis, jobs run by Conveyor's RQ worker class.

A forking RQ worker loses its work on fakeredis (the forked child's writes go to a copy of the
fake server), so jobs here run in `ConveyorSimpleWorker`, in bursts, in a thread: a subclass
with no signal handlers (only the main thread may install them) and RQ's thread-based timer
for time limits. Between bursts `recover` promotes due retries, as RQ's scheduler would.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
import uuid
import zlib
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

import fakeredis
import pytest
from rq import Callback, Queue
from rq.job import JobStatus as RqStatus
from rq.registry import FailedJobRegistry, StartedJobRegistry
from rq.serializers import DefaultSerializer, JSONSerializer
from rq.timeouts import TimerDeathPenalty

from adapters.rq_codec import ATTEMPT, DISPATCHER, SERIALIZER, ConveyorRqJob, rq_queue_name
from adapters.rq_queue import HARD_TIMEOUT_GRACE, RqJobQueue, retry_intervals
from domain.errors import InvalidTransitionError
from domain.job_types import JobTypeRegistry
from domain.job_types.dummy import dummy_job_type
from domain.job_types.report import report_job_type
from domain.jobs import AttemptOutcome, ErrorKind, JobStatus
from domain.ports import JobQuery, JobQueue
from entrypoints.settings import SettingsError
from entrypoints.worker import rq_tasks
from entrypoints.worker.rq_worker import ConveyorSimpleWorker, RqWorkerConfig, build_worker
from tests.queue_contract import QueueContract, QueueFactory, all_pages, new_job
from tests.queue_driving import SETTLE_WITHIN, describe, driven_job, settled

PREFIX = "test"
TYPES = JobTypeRegistry([dummy_job_type(), report_job_type()])
S = JobStatus


class BurstWorker(ConveyorSimpleWorker):
    """Conveyor's simple worker, runnable in a thread (tests only)."""

    death_penalty_class = TimerDeathPenalty

    def _install_signal_handlers(self) -> None:
        return None


class RqFakeRedisFactory(QueueFactory):
    """Each test gets its own FakeServer; retries are due at once (the jitter draws 0)."""

    def __init__(self, random: float = 0.0) -> None:
        self.server = fakeredis.FakeServer(version=(7,))
        self.random = random

    def client(self) -> fakeredis.FakeRedis:
        return fakeredis.FakeRedis(server=self.server, version=(7,))

    def __call__(self) -> AbstractAsyncContextManager[JobQueue]:
        return self.open()

    @asynccontextmanager
    async def open(self) -> AsyncIterator[RqJobQueue]:
        queue = RqJobQueue(self.client(), TYPES, prefix=PREFIX, random=lambda: self.random)
        try:
            yield queue
        finally:
            await queue.close()

    def worker(self, queues: Sequence[str] = ("default",)) -> BurstWorker:
        rq_tasks.configure(TYPES)
        worker = build_worker(
            self.client(),
            tuple(queues),
            prefix=PREFIX,
            config=RqWorkerConfig(),
            result_ttl=3600,
            worker_class=BurstWorker,
        )
        assert isinstance(worker, BurstWorker)
        return worker

    async def burst(self, queues: Sequence[str] = ("default",)) -> None:
        worker = self.worker(queues)
        await asyncio.to_thread(worker.work, burst=True, logging_level="WARNING")

    async def drain(self, queue: JobQueue, job_ids: Sequence[str]) -> None:
        queues = sorted({job.queue for job in [await queue.get(i) for i in job_ids] if job})
        deadline = time.monotonic() + SETTLE_WITHIN
        while not await settled(queue, job_ids):
            if time.monotonic() > deadline:
                raise AssertionError(f"not settled: {await describe(queue, job_ids)}")
            await self.burst(queues)
            await queue.recover(queues)


class TestRqJobQueueOnFakeRedis(QueueContract):
    @pytest.fixture
    def queue_factory(self) -> QueueFactory:
        return RqFakeRedisFactory()


@pytest.fixture
def factory() -> RqFakeRedisFactory:
    return RqFakeRedisFactory()


def run(coro: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 30))


def raw_job(client: fakeredis.FakeRedis, job_id: str) -> dict[bytes, bytes]:
    raw: dict[bytes, bytes] = client.hgetall(f"rq:job:{job_id}")
    return raw


# -- what RQ stores -------------------------------------------------------------------------


def test_a_job_is_stored_as_a_json_call_of_the_dispatcher_with_policy_retries(
    factory: RqFakeRedisFactory,
) -> None:
    factory.random = 1.0  # the longest delay the policy allows

    async def main() -> None:
        async with factory.open() as queue:
            job = driven_job({"mode": "succeed", "result": "secret-ish"}, max_attempts=4)
            await queue.enqueue(job)
            raw = raw_job(factory.client(), job.id)
            call = json.loads(zlib.decompress(raw[b"data"]))
            assert call[0] == DISPATCHER
            assert call[1] is None
            assert call[3] == {}
            type_, payload, envelope = call[2]
            assert (type_, payload) == ("dummy", {"mode": "succeed", "result": "secret-ish"})
            assert (envelope["id"], envelope["max_attempts"]) == (job.id, 4)
            assert b"secret-ish" not in raw[b"description"]  # RQ logs descriptions
            assert int(raw[b"timeout"]) == 10 + HARD_TIMEOUT_GRACE
            policy = dummy_job_type().retry
            expected = retry_intervals(policy, 4, lambda: 1.0)
            assert expected == [1, 1, 2]  # ceil of 0.5, 1, 2 seconds
            assert json.loads(raw[b"retry_intervals"]) == expected
            assert int(raw[b"retries_left"]) == 3
            queue_key = f"rq:queue:{rq_queue_name(PREFIX, 'default')}"
            assert factory.client().lrange(queue_key, 0, -1) == [job.id.encode()]

    run(main())


def test_a_single_attempt_job_has_no_retry(factory: RqFakeRedisFactory) -> None:
    async def main() -> None:
        async with factory.open() as queue:
            job = driven_job({"mode": "fail"}, max_attempts=1)
            await queue.enqueue(job)
            assert b"retries_left" not in raw_job(factory.client(), job.id)
            await factory.drain(queue, [job.id])
            stored = await queue.get(job.id)
            assert stored is not None
            assert (stored.status, stored.attempts) == (S.DEAD, 1)

    run(main())


# -- untrusted jobs in Redis ----------------------------------------------------------------


class Planted:
    """Unpickling this creates the marker file: a pickle that runs code as it loads."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (Path.touch, (self.marker,))


@pytest.fixture
def marker(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "pwned"
    yield path
    assert not path.exists(), "code from a planted job ran"


def plant_hostile_jobs(client: Any, marker: Path, prefix: str = PREFIX) -> list[str]:
    """Jobs another program wrote into our RQ queue: pickles, foreign functions, callbacks."""
    name = rq_queue_name(prefix, "default")
    ours = uuid.uuid4().hex
    pickled = Queue(name, connection=client, serializer=DefaultSerializer)
    as_json = Queue(name, connection=client, serializer=JSONSerializer)
    valid_args = [
        "dummy",
        {"mode": "succeed"},
        {
            "id": ours,
            "queue": "default",
            "max_attempts": 3,
            "timeout": 5.0,
            "created_at": "2026-01-01T00:00:00+00:00",
        },
    ]
    jobs = [
        # A pickle that runs code as it is loaded, naming even our own dispatcher.
        pickled.enqueue_call(DISPATCHER, args=[Planted(marker)], job_id=uuid.uuid4().hex),
        # A pickled call of a foreign function.
        pickled.enqueue_call("os.system", args=[f"touch {marker}"], job_id=uuid.uuid4().hex),
        # JSON, but a foreign function, with retries it must not get.
        as_json.enqueue_call(
            "pathlib.Path.touch", args=[str(marker)], job_id=uuid.uuid4().hex, retry=None
        ),
        # Our dispatcher and valid arguments, but callbacks RQ would import and call.
        as_json.enqueue_call(
            DISPATCHER,
            args=valid_args,
            job_id=ours,
            on_success=Callback("os.system"),
            on_failure=Callback("os.system"),
        ),
    ]
    return [job.id for job in jobs]


def test_planted_pickles_and_foreign_calls_are_dead_lettered_and_run_nothing(
    factory: RqFakeRedisFactory, marker: Path
) -> None:
    async def main() -> None:
        async with factory.open() as queue:
            client = factory.client()
            planted = plant_hostile_jobs(client, marker)
            good = driven_job({"mode": "succeed"})
            await queue.enqueue(good)
            await factory.burst()
            failed = FailedJobRegistry(
                rq_queue_name(PREFIX, "default"), connection=client, job_class=ConveyorRqJob
            )
            assert sorted(failed.get_job_ids()) == sorted(planted)
            for job_id in planted:
                status = client.hget(f"rq:job:{job_id}", "status")
                assert status == RqStatus.FAILED.value.encode()
                rq_job = ConveyorRqJob.fetch(job_id, connection=client, serializer=SERIALIZER)
                latest = rq_job.latest_result()
                assert latest is not None
                assert "refused to run" in (latest.exc_string or "")
            stored = await queue.get(good.id)
            assert stored is not None
            assert stored.status == S.SUCCEEDED  # the worker carried on

    run(main())


# -- progress, cancellation, abandoned jobs ---------------------------------------------------


def test_progress_is_visible_while_a_report_runs(factory: RqFakeRedisFactory) -> None:
    async def main() -> None:
        async with factory.open() as queue:
            job = new_job(type="report")
            job = type(job).submitted(
                id=job.id,
                type="report",
                payload={"name": "q3", "rows": 10, "seconds": 1.0},
                queue="default",
                max_attempts=1,
                timeout=30.0,
                now=job.created_at,
            )
            await queue.enqueue(job)
            running = asyncio.create_task(factory.burst())
            seen: set[int] = set()
            while not running.done():
                stored = await queue.get(job.id)
                if stored is not None and stored.status == S.ACTIVE and stored.progress:
                    seen.add(stored.progress)
                await asyncio.sleep(0.05)
            await running
            assert any(0 < p < 100 for p in seen), seen
            stored = await queue.get(job.id)
            assert stored is not None
            assert (stored.status, stored.progress) == (S.SUCCEEDED, 100)
            assert stored.result["rows"] == 10

    run(main())


def test_a_queued_job_can_be_cancelled_and_requeued_but_a_finished_one_cannot(
    factory: RqFakeRedisFactory,
) -> None:
    async def main() -> None:
        async with factory.open() as queue:
            waiting, done = driven_job({"mode": "succeed"}), driven_job({"mode": "succeed"})
            await queue.enqueue(done)
            await factory.drain(queue, [done.id])
            await queue.enqueue(waiting)
            cancelled = await queue.cancel(waiting.id)
            assert cancelled.status == S.CANCELLED
            await factory.burst()
            assert (await queue.get(waiting.id) or waiting).status == S.CANCELLED  # not run
            with pytest.raises(InvalidTransitionError):
                await queue.cancel(done.id)
            with pytest.raises(InvalidTransitionError):
                await queue.cancel(waiting.id)
            assert (await queue.requeue(waiting.id)).status == S.QUEUED
            await factory.drain(queue, [waiting.id])
            assert (await queue.get(waiting.id) or waiting).status == S.SUCCEEDED

    run(main())


def test_an_abandoned_job_is_retried_by_recover_with_a_worker_lost_error(
    factory: RqFakeRedisFactory,
) -> None:
    """A worker that died mid-job: its job is `started`, its heartbeat entry expires."""

    async def main() -> None:
        async with factory.open() as queue:
            lost, spent = (
                driven_job({"mode": "succeed"}, max_attempts=2),
                driven_job({"mode": "succeed"}, max_attempts=1),
            )
            await queue.enqueue(lost)
            await queue.enqueue(spent)
            worker = factory.worker()
            worker.config = RqWorkerConfig(grace=1)
            client = factory.client()
            for _ in range(2):  # what a worker does before it runs a job, then dies
                rq_job, rq_queue = Queue.dequeue_any(
                    worker.queues,
                    None,
                    connection=client,
                    job_class=worker.job_class,
                    serializer=SERIALIZER,
                )
                execution = worker.prepare_execution(rq_job)
                worker.prepare_job_execution(rq_job)
                assert execution is not None
                assert rq_queue is not None
                # Its heartbeat entry lives just a second past now:
                registry = StartedJobRegistry(queue=rq_queue)
                registry.connection.zadd(registry.key, {execution.composite_key: time.time() + 1})
            assert (await queue.get(lost.id) or lost).status == S.ACTIVE
            assert await queue.recover(["default"]) == 0  # not expired yet
            await asyncio.sleep(2.1)
            assert await queue.recover(["default"]) == 2
            retried, dead = await queue.get(lost.id), await queue.get(spent.id)
            assert retried is not None
            assert dead is not None
            assert (retried.status, retried.attempts) == (S.QUEUED, 1)
            assert (dead.status, dead.attempts) == (S.DEAD, 1)
            for job in (retried, dead):
                assert job.error is not None
                assert job.error.kind == ErrorKind.WORKER_LOST
                assert [r.outcome for r in job.history] == [AttemptOutcome.WORKER_LOST]
            await factory.drain(queue, [lost.id])
            final = await queue.get(lost.id)
            assert final is not None
            assert (final.status, final.attempts) == (S.SUCCEEDED, 2)
            assert [r.outcome for r in final.history] == [
                AttemptOutcome.WORKER_LOST,
                AttemptOutcome.SUCCEEDED,
            ]
            requeued = await queue.requeue(dead.id)
            assert (requeued.status, requeued.attempts, requeued.error) == (S.QUEUED, 0, None)
            assert requeued.history == dead.history  # the history stays

    run(main())


def test_the_attempt_number_is_counted_by_the_worker_in_the_jobs_meta(
    factory: RqFakeRedisFactory,
) -> None:
    async def main() -> None:
        async with factory.open() as queue:
            job = driven_job({"mode": "fail", "times": 2}, max_attempts=3)
            await queue.enqueue(job)
            await factory.drain(queue, [job.id])
            meta = json.loads(raw_job(factory.client(), job.id)[b"meta"])
            assert meta[ATTEMPT] == 3
            assert meta["pid"] == os.getpid()  # a simple worker runs jobs in its own process
            stored = await queue.get(job.id)
            assert stored is not None
            assert [(r.attempt, r.outcome) for r in stored.history] == [
                (1, AttemptOutcome.FAILED),
                (2, AttemptOutcome.FAILED),
                (3, AttemptOutcome.SUCCEEDED),
            ]
            assert stored.history[0].error == "DummyFailureError: dummy failure on attempt 1"
            assert stored.history[-1].ended_at == stored.finished_at
            assert {r.worker for r in stored.history} == {stored.worker}

    run(main())


# -- the worker's timings -------------------------------------------------------------------


def test_the_worker_timings_come_from_the_environment_and_bound_abandonment() -> None:
    default = RqWorkerConfig.from_env({})
    assert (default.kind, default.worker_ttl, default.abandoned_bound) == ("fork", 20, 20)
    tuned = RqWorkerConfig.from_env(
        {
            "CONVEYOR_RQ_WORKER_CLASS": "simple",
            "CONVEYOR_RQ_HEARTBEAT_SECONDS": "2",
            "CONVEYOR_RQ_HEARTBEAT_GRACE_SECONDS": "3",
            "CONVEYOR_RQ_MAINTENANCE_SECONDS": "1",
            "CONVEYOR_RQ_IDLE_WAIT_SECONDS": "1",
        }
    )
    assert (tuned.kind, tuned.worker_ttl, tuned.abandoned_bound) == ("simple", 16, 8)
    for name, value in (
        ("CONVEYOR_RQ_WORKER_CLASS", "threads"),
        ("CONVEYOR_RQ_HEARTBEAT_SECONDS", "0"),
        ("CONVEYOR_RQ_MAINTENANCE_SECONDS", "1.5"),
    ):
        with pytest.raises(SettingsError, match=name):
            RqWorkerConfig.from_env({name: value})


def test_listing_filters_by_rq_status_type_and_queue_and_pages_newest_first(
    factory: RqFakeRedisFactory,
) -> None:
    async def main() -> None:
        async with factory.open() as queue:
            ran = [driven_job({"mode": mode}) for mode in ("succeed", "fatal", "succeed")]
            for job in ran:
                await queue.enqueue(job)
            await factory.drain(queue, [job.id for job in ran])
            waiting = [new_job(queue="other", n=n) for n in range(3)]
            for job in waiting:
                await queue.enqueue(job)
            everything = [job.id for job in reversed([*ran, *waiting])]
            assert await all_pages(queue, JobQuery(limit=2)) == [
                everything[0:2],
                everything[2:4],
                everything[4:6],
            ]
            assert await all_pages(queue, JobQuery(status=S.SUCCEEDED)) == [[ran[2].id, ran[0].id]]
            assert await all_pages(queue, JobQuery(status=S.DEAD)) == [[ran[1].id]]
            assert await all_pages(queue, JobQuery(status=S.QUEUED, limit=2)) == [
                [waiting[2].id, waiting[1].id],
                [waiting[0].id],
            ]
            assert await all_pages(queue, JobQuery(queue="other", type="email")) == [[]]
            # A job whose hash expired (RQ's result TTL) drops out of the index.
            factory.client().delete(f"rq:job:{ran[0].id}")
            assert await all_pages(queue, JobQuery(status=S.SUCCEEDED)) == [[ran[2].id]]
            assert factory.client().zscore(f"{PREFIX}:rq:jobs", ran[0].id) is None

    run(main())
