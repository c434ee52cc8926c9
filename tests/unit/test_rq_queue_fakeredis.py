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
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import fakeredis
import pytest
from rq import Callback, Queue
from rq.job import Job as RqJob
from rq.job import JobStatus as RqStatus
from rq.registry import (
    CanceledJobRegistry,
    FailedJobRegistry,
    ScheduledJobRegistry,
    StartedJobRegistry,
)
from rq.serializers import DefaultSerializer, JSONSerializer
from rq.timeouts import TimerDeathPenalty

from adapters.rq_codec import ATTEMPT, DISPATCHER, SERIALIZER, ConveyorRqJob, rq_queue_name
from adapters.rq_queue import HARD_TIMEOUT_GRACE, RqJobQueue, retry_intervals
from domain.errors import (
    IdempotencyConflictError,
    InvalidTransitionError,
    JobNotFoundError,
    UnsupportedOperationError,
)
from domain.job_types import JobContext, JobType, JobTypeRegistry
from domain.job_types.dummy import dummy_job_type
from domain.job_types.report import report_job_type
from domain.jobs import AttemptOutcome, ErrorKind, Job, JobStatus, JSONObject, JSONValue
from domain.ports import JobQuery, JobQueue, NewJob
from domain.schema import PayloadSchema
from entrypoints.settings import SettingsError
from entrypoints.worker import rq_tasks
from entrypoints.worker.rq_worker import ConveyorSimpleWorker, RqWorkerConfig, build_worker
from tests.queue_contract import (
    DEFAULTS,
    QueueContract,
    QueueFactory,
    QueueOptions,
    all_pages,
    new_job,
)
from tests.queue_contract_lifecycle import LifecycleContract
from tests.queue_driving import SETTLE_WITHIN, describe, driven_job, settled

PREFIX = "test"
S = JobStatus
# The ids of the `probe` jobs whose handler ran in this process (a simple worker runs jobs in
# its own process): what "it never ran" is checked against.
PROBED: list[str] = []


async def probe(payload: JSONObject, context: JobContext) -> JSONValue:
    PROBED.append(context.job_id)
    return {"ran": True}


TYPES = JobTypeRegistry(
    [
        dummy_job_type(),
        report_job_type(),
        JobType(
            name="probe",
            description="records that it ran",
            schema=PayloadSchema(()),
            handler=probe,
        ),
    ]
)


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

    def configured(self, options: QueueOptions) -> AbstractAsyncContextManager[JobQueue]:
        return self.open(options)

    @asynccontextmanager
    async def open(self, options: QueueOptions = DEFAULTS) -> AsyncIterator[RqJobQueue]:
        queue = RqJobQueue(
            self.client(), TYPES, prefix=PREFIX, random=lambda: self.random, **options.kwargs()
        )
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


class TestRqJobQueueLifecycleOnFakeRedis(LifecycleContract):
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


# -- the job lifecycle on RQ -----------------------------------------------------------------


def probe_job(*, run_at: datetime | None = None, queue: str = "default") -> Job:
    """A job whose handler records in PROBED that it ran."""
    return Job.submitted(
        id=uuid.uuid4().hex,
        type="probe",
        payload={},
        queue=queue,
        max_attempts=1,
        timeout=10.0,
        now=datetime.now(UTC),
        run_at=run_at,
    )


def report_job(seconds: float) -> Job:
    return Job.submitted(
        id=uuid.uuid4().hex,
        type="report",
        payload={"name": "q3", "rows": 10, "seconds": seconds},
        queue="default",
        max_attempts=3,
        timeout=30.0,
        now=datetime.now(UTC),
    )


def queued_ids(client: fakeredis.FakeRedis, queue: str = "default") -> list[str]:
    return [m.decode() for m in client.lrange(f"rq:queue:{rq_queue_name(PREFIX, queue)}", 0, -1)]


def test_a_batch_is_stored_in_order_in_one_step_and_an_existing_id_is_not_stored_again(
    factory: RqFakeRedisFactory,
) -> None:
    async def main() -> None:
        async with factory.open() as queue:
            jobs = [probe_job() for _ in range(3)]
            await queue.enqueue(jobs[1])
            answers = await queue.submit([NewJob(job=job) for job in jobs])
            assert [(a.job_id, a.created) for a in answers] == [
                (jobs[0].id, True),
                (jobs[1].id, False),
                (jobs[2].id, True),
            ]
            assert queued_ids(factory.client()) == [jobs[1].id, jobs[0].id, jobs[2].id]
            assert await all_pages(queue, JobQuery()) == [[jobs[2].id, jobs[0].id, jobs[1].id]]
            for job in jobs:
                assert await queue.get(job.id) == job

    run(main())


def test_an_idempotency_key_answers_its_first_job_and_refuses_another_body(
    factory: RqFakeRedisFactory,
) -> None:
    async def main() -> None:
        async with factory.open() as queue:
            first, again, bystander, other = (probe_job() for _ in range(4))
            (stored,) = await queue.submit(
                [NewJob(job=first, idempotency_key="order-1", fingerprint="a")]
            )
            assert (stored.job_id, stored.created) == (first.id, True)
            (repeat,) = await queue.submit(
                [NewJob(job=again, idempotency_key="order-1", fingerprint="a")]
            )
            assert (repeat.job_id, repeat.created) == (first.id, False)
            assert await queue.get(again.id) is None
            # Another body under the key: refused, and nothing of the batch is stored.
            with pytest.raises(IdempotencyConflictError) as refused:
                await queue.submit(
                    [
                        NewJob(job=bystander),
                        NewJob(job=other, idempotency_key="order-1", fingerprint="b"),
                    ]
                )
            assert (refused.value.key, refused.value.index) == ("order-1", 1)
            assert await queue.get(bystander.id) is None
            assert queued_ids(factory.client()) == [first.id]
            # The key is held for the idempotency retention (a day by default).
            keys = factory.client().keys(f"{PREFIX}:rq:idem:*")
            assert len(keys) == 1
            assert 86_000 < factory.client().ttl(keys[0]) <= 86_400

    run(main())


def test_concurrent_submissions_under_one_key_store_one_job(factory: RqFakeRedisFactory) -> None:
    async def main() -> None:
        async with factory.open() as queue:
            jobs = [probe_job() for _ in range(6)]
            batches = [[NewJob(job=job, idempotency_key="k", fingerprint="f")] for job in jobs]
            answers = [a for (a,) in await asyncio.gather(*map(queue.submit, batches))]
            assert sum(a.created for a in answers) == 1
            assert len({a.job_id for a in answers}) == 1
            assert queued_ids(factory.client()) == [answers[0].job_id]
            # Twice in one batch: the second item names the first one's job.
            one, two = probe_job(), probe_job()
            same = await queue.submit(
                [
                    NewJob(job=one, idempotency_key="batch", fingerprint="f"),
                    NewJob(job=two, idempotency_key="batch", fingerprint="f"),
                ]
            )
            assert [(a.job_id, a.created) for a in same] == [(one.id, True), (one.id, False)]

    run(main())


def test_a_job_with_a_deadline_is_refused_before_anything_is_written(
    factory: RqFakeRedisFactory,
) -> None:
    async def main() -> None:
        async with factory.open() as queue:
            assert not queue.capabilities.deadlines
            job = probe_job()
            late = Job.submitted(
                id=uuid.uuid4().hex,
                type="probe",
                payload={},
                queue="default",
                max_attempts=1,
                timeout=10.0,
                now=job.created_at,
                deadline=job.created_at + timedelta(minutes=5),
            )
            with pytest.raises(UnsupportedOperationError) as refused:
                await queue.submit([NewJob(job=job), NewJob(job=late)])
            assert refused.value.capability == "deadlines"
            assert factory.client().keys("*") == []
            with pytest.raises(UnsupportedOperationError) as paused:
                await queue.pause("default")
            assert paused.value.capability == "pause"
            assert factory.client().keys("*") == []

    run(main())


def test_a_scheduled_job_waits_in_rqs_scheduled_registry_and_runs_after_its_time(
    factory: RqFakeRedisFactory,
) -> None:
    async def main() -> None:
        async with factory.open() as queue:
            run_at = datetime.now(UTC) + timedelta(seconds=1.2)
            job = probe_job(run_at=run_at)
            await queue.enqueue(job)
            stored = await queue.get(job.id)
            assert stored == job
            assert stored is not None
            assert (stored.status, stored.run_at) == (S.SCHEDULED, run_at)
            client = factory.client()
            registry = ScheduledJobRegistry(rq_queue_name(PREFIX, "default"), connection=client)
            assert client.zscore(registry.key, job.id) == pytest.approx(run_at.timestamp())
            assert queued_ids(client) == []
            await factory.burst()
            assert await queue.recover(["default"]) == 0
            assert job.id not in PROBED
            assert (await queue.get(job.id) or job).status == S.SCHEDULED
            await asyncio.sleep(run_at.timestamp() - time.time() + 0.01)
            assert await queue.recover(["default"]) == 1
            promoted = await queue.get(job.id)
            assert promoted is not None
            assert (promoted.status, promoted.run_at) == (S.QUEUED, run_at)
            await factory.drain(queue, [job.id])
            done = await queue.get(job.id)
            assert done is not None
            assert done.status == S.SUCCEEDED
            assert done.started_at is not None
            assert done.started_at >= run_at
            assert PROBED.count(job.id) == 1
            # A run_at already past on Redis's clock is stored queued (the time is kept).
            past = datetime.now(UTC) - timedelta(seconds=5)
            late = probe_job(run_at=past)
            assert late.status == S.QUEUED
            await queue.enqueue(late)
            assert queued_ids(client) == [late.id]
            assert await queue.get(late.id) == late

    run(main())


def test_a_cancelled_scheduled_job_leaves_the_registry_and_never_runs(
    factory: RqFakeRedisFactory,
) -> None:
    async def main() -> None:
        async with factory.open() as queue:
            run_at = datetime.now(UTC) + timedelta(seconds=1)
            job = probe_job(run_at=run_at)
            await queue.enqueue(job)
            cancelled = await queue.cancel(job.id)
            assert cancelled.status == S.CANCELLED
            assert cancelled.finished_at is not None
            client = factory.client()
            scheduled = ScheduledJobRegistry(rq_queue_name(PREFIX, "default"), connection=client)
            canceled = CanceledJobRegistry(rq_queue_name(PREFIX, "default"), connection=client)
            assert client.zscore(scheduled.key, job.id) is None
            assert client.zscore(canceled.key, job.id) is not None
            # Kept as long as a result is, then gone.
            assert 0 < client.ttl(f"rq:job:{job.id}") <= 3600 * 24
            await asyncio.sleep(1.1)
            assert await queue.recover(["default"]) == 0
            await factory.burst()
            assert job.id not in PROBED
            final = await queue.get(job.id)
            assert final is not None
            assert (final.status, final.attempts, final.started_at) == (S.CANCELLED, 0, None)
            with pytest.raises(InvalidTransitionError):
                await queue.cancel(job.id)

    run(main())


def test_a_job_cancelled_after_a_worker_took_it_off_the_queue_runs_nothing(
    factory: RqFakeRedisFactory,
) -> None:
    """The worker has popped the job but not yet started it when the cancel lands: the cancel
    answers `cancelled`, and the attempt sees the mark as it starts and runs nothing."""

    async def main() -> None:
        async with factory.open() as queue:
            job, other = probe_job(), probe_job()
            await queue.enqueue(job)
            await queue.enqueue(other)
            worker = factory.worker()
            client = factory.client()
            rq_job, rq_queue = Queue.dequeue_any(
                worker.queues,
                None,
                connection=client,
                job_class=worker.job_class,
                serializer=SERIALIZER,
            )
            assert rq_job.id == job.id
            assert (await queue.cancel(job.id)).status == S.CANCELLED
            await asyncio.to_thread(worker.execute_job, rq_job, rq_queue)
            assert job.id not in PROBED
            final = await queue.get(job.id)
            assert final is not None
            assert (final.status, final.attempts, final.started_at) == (S.CANCELLED, 0, None)
            assert final.history == ()
            name = rq_queue_name(PREFIX, "default")
            assert StartedJobRegistry(name, connection=client).get_job_ids() == []
            assert client.zscore(CanceledJobRegistry(name, connection=client).key, job.id)
            assert client.exists(f"rq:results:{job.id}") == 0
            # The worker carries on with the next job; the cancelled one can be requeued.
            await factory.drain(queue, [other.id])
            assert other.id in PROBED
            assert (await queue.requeue(job.id)).status == S.QUEUED
            await factory.drain(queue, [job.id])
            assert (await queue.get(job.id) or job).status == S.SUCCEEDED
            assert PROBED.count(job.id) == 1

    run(main())


def test_a_job_rqs_scheduler_queues_again_after_its_cancel_stays_cancelled_and_never_runs(
    factory: RqFakeRedisFactory,
) -> None:
    """RQ's scheduler reads due jobs, then queues them in a second step: a cancel landing in
    between is written over, but the job's cancel mark is not."""

    async def main() -> None:
        async with factory.open() as queue:
            job = probe_job(run_at=datetime.now(UTC) + timedelta(seconds=0.2))
            await queue.enqueue(job)
            await asyncio.sleep(0.3)
            client = factory.client()
            name = rq_queue_name(PREFIX, "default")
            due = Queue(name, connection=client, serializer=SERIALIZER)
            registry = ScheduledJobRegistry(name, connection=client)
            (stale,) = [
                RqJob.fetch(job_id, connection=client, serializer=SERIALIZER)
                for job_id in registry.get_jobs_to_schedule(int(time.time()) + 1)
            ]
            assert (await queue.cancel(job.id)).status == S.CANCELLED
            with client.pipeline() as pipe:  # what the scheduler then does
                due.enqueue_job(stale, pipeline=pipe)
                registry.remove(stale.id, pipeline=pipe)
                pipe.execute()
            assert queued_ids(client) == [job.id]
            assert (await queue.get(job.id) or job).status == S.CANCELLED
            await factory.burst()
            assert job.id not in PROBED
            final = await queue.get(job.id)
            assert final is not None
            assert (final.status, final.attempts, final.started_at) == (S.CANCELLED, 0, None)
            assert queued_ids(client) == []

    run(main())


def test_an_active_job_is_asked_to_stop_and_ends_cancelled(factory: RqFakeRedisFactory) -> None:
    async def main() -> None:
        async with factory.open() as queue:
            job = report_job(seconds=10.0)
            await queue.enqueue(job)
            started = time.monotonic()
            running = asyncio.create_task(factory.burst())
            deadline = time.monotonic() + 10
            while (await queue.get(job.id) or job).status != S.ACTIVE:
                assert time.monotonic() < deadline, "it never started"
                await asyncio.sleep(0.02)
            asked = await queue.cancel(job.id)
            assert asked.status == S.ACTIVE
            assert asked.cancel_requested_at is not None
            assert (await queue.cancel(job.id)).cancel_requested_at == asked.cancel_requested_at
            await running
            assert time.monotonic() - started < 5  # it stopped, it did not run its 10 s
            final = await queue.get(job.id)
            assert final is not None
            assert (final.status, final.attempts, final.result) == (S.CANCELLED, 1, None)
            assert final.progress is not None
            assert final.progress < 100
            assert [r.outcome for r in final.history] == [AttemptOutcome.CANCELLED]
            assert final.finished_at is not None
            name = rq_queue_name(PREFIX, "default")
            client = factory.client()
            assert StartedJobRegistry(name, connection=client).get_job_ids() == []
            assert client.zscore(CanceledJobRegistry(name, connection=client).key, job.id)
            # Cancelled, not failed: it is not retried, and a worker leaves it alone.
            await factory.burst()
            assert (await queue.get(job.id) or job).status == S.CANCELLED
            requeued = await queue.requeue(job.id)
            assert (requeued.status, requeued.cancel_requested_at) == (S.QUEUED, None)

    run(main())


def test_cancel_refuses_finished_jobs_and_unknown_ids(factory: RqFakeRedisFactory) -> None:
    async def main() -> None:
        async with factory.open() as queue:
            done, dead = driven_job({"mode": "succeed"}), driven_job({"mode": "fatal"})
            await queue.enqueue(done)
            await queue.enqueue(dead)
            await factory.drain(queue, [done.id, dead.id])
            for job in (done, dead):
                with pytest.raises(InvalidTransitionError):
                    await queue.cancel(job.id)
            for job_id in (uuid.uuid4().hex, "not-a-job-id"):
                with pytest.raises(JobNotFoundError):
                    await queue.cancel(job_id)

    run(main())


def test_queue_stats_count_jobs_by_status_and_situation_tells_the_place_in_line(
    factory: RqFakeRedisFactory,
) -> None:
    factory.random = 1.0  # a failed attempt's retry waits a second

    async def main() -> None:
        async with factory.open() as queue:
            modes: list[dict[str, Any]] = [
                {"mode": "succeed"},
                {"mode": "fatal"},
                {"mode": "fail", "times": 1},
            ]
            ran = [driven_job(mode) for mode in modes]
            for job in ran:
                await queue.enqueue(job)
            await factory.burst()
            retrying = await queue.get(ran[2].id)
            assert retrying is not None
            assert retrying.status == S.FAILED
            assert retrying.retry_at is not None
            assert retrying.retry_at > datetime.now(UTC) - timedelta(seconds=1)
            waiting = [probe_job() for _ in range(2)]
            later, dropped = probe_job(run_at=datetime.now(UTC) + timedelta(hours=1)), probe_job()
            for job in (*waiting, later, dropped):
                await queue.enqueue(job)
            await queue.cancel(dropped.id)
            await queue.enqueue(probe_job(queue="other"))
            (stats,) = await queue.queue_stats(["default"])
            assert stats.name == "default"
            assert dict(stats.counts) == {
                S.SCHEDULED: 1,
                S.QUEUED: 2,
                S.ACTIVE: 0,
                S.SUCCEEDED: 1,
                S.FAILED: 1,
                S.DEAD: 1,
                S.CANCELLED: 1,
                S.EXPIRED: 0,
            }
            assert stats.oldest_queued_age is not None
            assert 0 <= stats.oldest_queued_age < 5
            assert (stats.paused, stats.workers) == (False, 0)
            assert [s.name for s in await queue.queue_stats()] == ["default", "other"]
            first, second = [await queue.situation(job.id) for job in waiting]
            assert first is not None
            assert second is not None
            assert (first.job.id, first.ahead, second.ahead) == (waiting[0].id, 0, 1)
            assert (first.paused, first.workers) == (False, 0)
            gone = await queue.situation(later.id)
            assert gone is not None
            assert gone.ahead is None
            assert await queue.situation(uuid.uuid4().hex) is None
            # RQ's workers register themselves: a live one counts, a stopped one does not.
            worker = factory.worker()
            worker.register_birth()
            (stats,) = await queue.queue_stats(["default"])
            assert stats.workers == 1
            worker.register_death()
            (stats,) = await queue.queue_stats(["default"])
            assert stats.workers == 0

    run(main())
