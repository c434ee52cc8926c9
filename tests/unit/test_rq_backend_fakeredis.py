"""The RQ backend's roles over fakeredis, as RQ keeps their jobs: what is stored, scheduling,
cancelling, queue figures and listings. Jobs run in Conveyor's RQ worker class (`rq_support`).
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
import zlib
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast

import fakeredis
import pytest
from rq import Queue, worker_registration
from rq.job import Job as RqJob
from rq.job import JobStatus as RqStatus
from rq.registry import CanceledJobRegistry, FailedJobRegistry

from adapters.rq import HARD_TIMEOUT_GRACE
from adapters.rq.client import text
from adapters.rq.codec import DISPATCHER, SERIALIZER, job_args, rq_queue_name
from adapters.rq.jobs import ConveyorRqJob
from domain.errors import (
    IdempotencyConflictError,
    InvalidTransitionError,
    JobNotFoundError,
    UnsupportedOperationError,
)
from domain.jobs import Job, JobStatus
from domain.ports import (
    AdmissionPolicy,
    Backend,
    JobControl,
    JobQuery,
    NewJob,
    QueueLimits,
    QueueMonitor,
)
from tests.contracts.base import BackendOptions
from tests.contracts.builders import all_pages, enqueue, new_job, stored
from tests.contracts.driving import driven_job
from tests.unit.rq_support import (
    PROBED,
    RqFakeRedisFactory,
    plant_hostile_jobs,
    registry_key,
    take,
)

S = JobStatus


@pytest.fixture
def factory() -> RqFakeRedisFactory:
    return RqFakeRedisFactory()


def run(coro: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 30))


def raw_job(client: fakeredis.FakeRedis, job_id: str) -> dict[bytes, bytes]:
    return cast(dict[bytes, bytes], client.hgetall(f"rq:job:{job_id}"))


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


def queued_ids(client: fakeredis.FakeRedis, queue: str = "default") -> list[str]:
    return [text(m) for m in client.lrange(f"rq:queue:{rq_queue_name('test', queue)}", 0, -1)]


# -- what RQ stores -------------------------------------------------------------------------


def test_a_job_is_stored_as_a_json_call_of_the_dispatcher_and_no_rq_retry(
    factory: RqFakeRedisFactory,
) -> None:
    async def main() -> None:
        async with factory.open() as backend:
            job = driven_job({"mode": "succeed", "result": "secret-ish"}, max_attempts=4)
            await enqueue(backend.submitter, job)
            raw = raw_job(factory.client(), job.id)
            call = json.loads(zlib.decompress(raw[b"data"]))
            assert call[0] == DISPATCHER == "adapters.rq.dispatcher.execute"
            assert call[1] is None
            assert call[3] == {}
            type_, payload, envelope = call[2]
            assert (type_, payload) == ("dummy", {"mode": "succeed", "result": "secret-ish"})
            assert (envelope["id"], envelope["max_attempts"]) == (job.id, 4)
            assert b"secret-ish" not in raw[b"description"]  # RQ logs descriptions
            assert int(raw[b"timeout"]) == 10 + HARD_TIMEOUT_GRACE
            # Retries are the settlement's to decide, as each attempt fails.
            assert b"retries_left" not in raw
            assert b"retry_intervals" not in raw
            assert queued_ids(factory.client()) == [job.id]

    run(main())


def test_the_backend_plays_no_role_rq_cannot_and_refuses_admission_limits(
    factory: RqFakeRedisFactory,
) -> None:
    async def main() -> None:
        async with factory.open() as backend:
            assert backend.name == "rq"
            assert (backend.pauser, backend.leases) == (None, None)
            assert backend.roles() == ("cancel", "queue_stats")
            traits = backend.submitter.traits
            assert (traits.deadlines, traits.priorities) == (False, False)
        limits = BackendOptions(admission=AdmissionPolicy(default=QueueLimits(max_depth=5)))
        with pytest.raises(UnsupportedOperationError) as refused:
            async with factory.open(limits):
                pass
        assert refused.value.capability == "admission"
        async with factory.open(BackendOptions(admission=AdmissionPolicy())) as backend:
            assert backend.name == "rq"  # a policy with no limit enforces nothing

    run(main())


def test_a_job_with_a_deadline_is_refused_before_anything_is_written(
    factory: RqFakeRedisFactory,
) -> None:
    async def main() -> None:
        async with factory.open() as backend:
            job = probe_job()
            late = new_job(type="probe", deadline=job.created_at + timedelta(minutes=5))
            with pytest.raises(UnsupportedOperationError) as refused:
                await backend.submitter.submit([NewJob(job=job), NewJob(job=late)])
            assert refused.value.capability == "deadlines"
            assert factory.client().keys("*") == []

    run(main())


def test_a_batch_is_stored_in_order_in_one_step_and_an_existing_id_is_not_stored_again(
    factory: RqFakeRedisFactory,
) -> None:
    async def main() -> None:
        async with factory.open() as backend:
            jobs = [probe_job() for _ in range(3)]
            await enqueue(backend.submitter, jobs[1])
            answers = await backend.submitter.submit([NewJob(job=job) for job in jobs])
            assert [(a.job_id, a.created) for a in answers] == [
                (jobs[0].id, True),
                (jobs[1].id, False),
                (jobs[2].id, True),
            ]
            assert queued_ids(factory.client()) == [jobs[1].id, jobs[0].id, jobs[2].id]
            assert await all_pages(backend.store, JobQuery()) == [
                [jobs[2].id, jobs[0].id, jobs[1].id]
            ]
            for job in jobs:
                assert await backend.store.get(job.id) == job

    run(main())


def test_an_idempotency_key_answers_its_first_job_and_refuses_another_body(
    factory: RqFakeRedisFactory,
) -> None:
    async def main() -> None:
        async with factory.open() as backend:
            submit = backend.submitter.submit
            first, again, bystander, other = (probe_job() for _ in range(4))
            (made,) = await submit([NewJob(job=first, idempotency_key="order-1", fingerprint="a")])
            assert (made.job_id, made.created) == (first.id, True)
            (repeat,) = await submit(
                [NewJob(job=again, idempotency_key="order-1", fingerprint="a")]
            )
            assert (repeat.job_id, repeat.created) == (first.id, False)
            assert await backend.store.get(again.id) is None
            # Another body under the key: refused, and nothing of the batch is stored.
            with pytest.raises(IdempotencyConflictError) as refused:
                await submit(
                    [
                        NewJob(job=bystander),
                        NewJob(job=other, idempotency_key="order-1", fingerprint="b"),
                    ]
                )
            assert (refused.value.key, refused.value.index) == ("order-1", 1)
            assert await backend.store.get(bystander.id) is None
            assert queued_ids(factory.client()) == [first.id]
            # The key is held for the idempotency retention (a day by default).
            keys = factory.client().keys("test:rq:idem:*")
            assert len(keys) == 1
            assert 86_000 < factory.client().ttl(keys[0]) <= 86_400

    run(main())


def test_concurrent_submissions_under_one_key_store_one_job(factory: RqFakeRedisFactory) -> None:
    async def main() -> None:
        async with factory.open() as backend:
            submit = backend.submitter.submit
            jobs = [probe_job() for _ in range(6)]
            batches = [[NewJob(job=job, idempotency_key="k", fingerprint="f")] for job in jobs]
            answers = [a for (a,) in await asyncio.gather(*map(submit, batches))]
            assert sum(a.created for a in answers) == 1
            assert len({a.job_id for a in answers}) == 1
            assert queued_ids(factory.client()) == [answers[0].job_id]
            # Twice in one batch: the second item names the first one's job.
            one, two = probe_job(), probe_job()
            same = await submit(
                [
                    NewJob(job=one, idempotency_key="batch", fingerprint="f"),
                    NewJob(job=two, idempotency_key="batch", fingerprint="f"),
                ]
            )
            assert [(a.job_id, a.created) for a in same] == [(one.id, True), (one.id, False)]

    run(main())


# -- untrusted jobs in Redis ----------------------------------------------------------------


@pytest.fixture
def marker(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "pwned"
    yield path
    assert not path.exists(), "code from a planted job ran"


def test_planted_pickles_and_foreign_calls_are_dead_lettered_and_run_nothing(
    factory: RqFakeRedisFactory, marker: Path
) -> None:
    async def main() -> None:
        async with factory.open() as backend:
            client = factory.client()
            planted = plant_hostile_jobs(client, marker, "test")
            good = driven_job({"mode": "succeed"})
            await enqueue(backend.submitter, good)
            await factory.burst()
            failed = FailedJobRegistry(
                rq_queue_name("test", "default"), connection=client, job_class=ConveyorRqJob
            )
            assert sorted(failed.get_job_ids()) == sorted(planted)
            for job_id in planted:
                status = client.hget(f"rq:job:{job_id}", "status")
                assert status == RqStatus.FAILED.value.encode()
                rq_job = ConveyorRqJob.fetch(job_id, connection=client, serializer=SERIALIZER)
                latest = rq_job.latest_result()
                assert latest is not None
                assert "refused to run" in (latest.exc_string or "")
                assert await backend.store.get(job_id) is None  # not ours to show
            assert (await stored(backend.store, good.id)).status == S.SUCCEEDED

    run(main())


def test_a_job_stored_under_the_dispatchers_former_name_is_still_run(
    factory: RqFakeRedisFactory,
) -> None:
    async def main() -> None:
        async with factory.open() as backend:
            job = probe_job()
            # As an earlier release stored it.
            queue = Queue(rq_queue_name("test", "default"), factory.client(), serializer=SERIALIZER)
            queue.enqueue_call(
                "entrypoints.worker.rq_tasks.execute", args=job_args(job), job_id=job.id
            )
            assert (await stored(backend.store, job.id)).status == S.QUEUED
            await factory.drain(backend, [job.id])
            assert (await stored(backend.store, job.id)).status == S.SUCCEEDED
            assert job.id in PROBED

    run(main())


# -- scheduling and cancelling ----------------------------------------------------------------


def test_a_scheduled_job_waits_in_rqs_scheduled_registry_and_runs_after_its_time(
    factory: RqFakeRedisFactory,
) -> None:
    async def main() -> None:
        async with factory.open() as backend:
            run_at = datetime.now(UTC) + timedelta(seconds=1.2)
            job = probe_job(run_at=run_at)
            await enqueue(backend.submitter, job)
            stored_job = await stored(backend.store, job.id)
            assert stored_job == job
            assert (stored_job.status, stored_job.run_at) == (S.SCHEDULED, run_at)
            client = factory.client()
            score = client.zscore(registry_key("scheduled"), job.id)
            assert score == pytest.approx(run_at.timestamp())
            assert queued_ids(client) == []
            await factory.burst()
            assert await factory.recover() == 0
            assert job.id not in PROBED
            assert (await stored(backend.store, job.id)).status == S.SCHEDULED
            await asyncio.sleep(run_at.timestamp() - time.time() + 0.01)
            assert await factory.recover() == 1
            promoted = await stored(backend.store, job.id)
            assert (promoted.status, promoted.run_at) == (S.QUEUED, run_at)
            await factory.drain(backend, [job.id])
            done = await stored(backend.store, job.id)
            assert done.status == S.SUCCEEDED
            assert done.started_at is not None
            assert done.started_at >= run_at
            assert PROBED.count(job.id) == 1
            # A run_at already past on Redis's clock is stored queued (the time is kept).
            late = probe_job(run_at=datetime.now(UTC) - timedelta(seconds=5))
            assert late.status == S.QUEUED
            await enqueue(backend.submitter, late)
            assert queued_ids(client) == [late.id]
            assert await backend.store.get(late.id) == late

    run(main())


def test_a_queued_job_can_be_cancelled_and_requeued_but_a_finished_one_cannot(
    factory: RqFakeRedisFactory,
) -> None:
    async def main() -> None:
        async with factory.open() as backend:
            control = _control(backend)
            waiting, done = driven_job({"mode": "succeed"}), driven_job({"mode": "succeed"})
            await enqueue(backend.submitter, done)
            await factory.drain(backend, [done.id])
            await enqueue(backend.submitter, waiting)
            cancelled = await control.cancel(waiting.id)
            assert cancelled.status == S.CANCELLED
            await factory.burst()
            assert (await stored(backend.store, waiting.id)).status == S.CANCELLED  # not run
            with pytest.raises(InvalidTransitionError):
                await control.cancel(done.id)
            with pytest.raises(InvalidTransitionError):
                await control.cancel(waiting.id)
            assert (await control.requeue(waiting.id)).status == S.QUEUED
            await factory.drain(backend, [waiting.id])
            assert (await stored(backend.store, waiting.id)).status == S.SUCCEEDED

    run(main())


def test_a_cancelled_scheduled_job_leaves_the_registry_and_never_runs(
    factory: RqFakeRedisFactory,
) -> None:
    async def main() -> None:
        async with factory.open() as backend:
            job = probe_job(run_at=datetime.now(UTC) + timedelta(seconds=1))
            await enqueue(backend.submitter, job)
            cancelled = await _control(backend).cancel(job.id)
            assert cancelled.status == S.CANCELLED
            assert cancelled.finished_at is not None
            client = factory.client()
            assert client.zscore(registry_key("scheduled"), job.id) is None
            assert client.zscore(registry_key("canceled"), job.id) is not None
            # Kept as long as a result is, then gone.
            assert 0 < client.ttl(f"rq:job:{job.id}") <= 3600 * 24
            await asyncio.sleep(1.1)
            assert await factory.recover() == 0
            await factory.burst()
            assert job.id not in PROBED
            final = await stored(backend.store, job.id)
            assert (final.status, final.attempts, final.started_at) == (S.CANCELLED, 0, None)
            with pytest.raises(InvalidTransitionError):
                await _control(backend).cancel(job.id)

    run(main())


def test_a_job_cancelled_after_a_worker_took_it_off_the_queue_runs_nothing(
    factory: RqFakeRedisFactory,
) -> None:
    """The worker has popped the job but not yet started it when the cancel lands: the cancel
    answers `cancelled`, and the attempt sees the mark as it starts and runs nothing."""

    async def main() -> None:
        async with factory.open() as backend:
            control = _control(backend)
            job, other = probe_job(), probe_job()
            await enqueue(backend.submitter, job)
            await enqueue(backend.submitter, other)
            worker = factory.worker()
            client = factory.client()
            rq_job, rq_queue = take(worker)
            assert rq_job.id == job.id
            assert (await control.cancel(job.id)).status == S.CANCELLED
            await asyncio.to_thread(worker.execute_job, rq_job, rq_queue)
            assert job.id not in PROBED
            final = await stored(backend.store, job.id)
            assert (final.status, final.attempts, final.started_at) == (S.CANCELLED, 0, None)
            assert final.history == ()
            name = rq_queue_name("test", "default")
            assert client.zcard(f"rq:wip:{name}") == 0
            assert client.zscore(CanceledJobRegistry(name, connection=client).key, job.id)
            assert client.exists(f"rq:results:{job.id}") == 0
            # The worker carries on with the next job; the cancelled one can be requeued.
            await factory.drain(backend, [other.id])
            assert other.id in PROBED
            assert (await control.requeue(job.id)).status == S.QUEUED
            await factory.drain(backend, [job.id])
            assert (await stored(backend.store, job.id)).status == S.SUCCEEDED
            assert PROBED.count(job.id) == 1

    run(main())


def test_a_job_rqs_scheduler_queues_again_after_its_cancel_stays_cancelled_and_never_runs(
    factory: RqFakeRedisFactory,
) -> None:
    """RQ's scheduler reads due jobs, then queues them in a second step: a cancel landing in
    between is written over, but the job's cancel mark is not."""

    async def main() -> None:
        async with factory.open() as backend:
            job = probe_job(run_at=datetime.now(UTC) + timedelta(seconds=0.2))
            await enqueue(backend.submitter, job)
            await asyncio.sleep(0.3)
            client = factory.client()
            name = rq_queue_name("test", "default")
            due = Queue(name, connection=client, serializer=SERIALIZER)
            registry = due.scheduled_job_registry
            (stale,) = [
                RqJob.fetch(job_id, connection=client, serializer=SERIALIZER)
                for job_id in registry.get_jobs_to_schedule(int(time.time()) + 1)
            ]
            assert (await _control(backend).cancel(job.id)).status == S.CANCELLED
            with client.pipeline() as pipe:  # what the scheduler then does
                due.enqueue_job(stale, pipeline=pipe)
                registry.remove(stale.id, pipeline=pipe)
                pipe.execute()
            assert queued_ids(client) == [job.id]
            assert (await stored(backend.store, job.id)).status == S.CANCELLED
            await factory.burst()
            assert job.id not in PROBED
            final = await stored(backend.store, job.id)
            assert (final.status, final.attempts, final.started_at) == (S.CANCELLED, 0, None)
            assert queued_ids(client) == []

    run(main())


def test_cancel_refuses_finished_jobs_and_unknown_ids(factory: RqFakeRedisFactory) -> None:
    async def main() -> None:
        async with factory.open() as backend:
            control = _control(backend)
            done, dead = driven_job({"mode": "succeed"}), driven_job({"mode": "fatal"})
            await enqueue(backend.submitter, done)
            await enqueue(backend.submitter, dead)
            await factory.drain(backend, [done.id, dead.id])
            for job in (done, dead):
                with pytest.raises(InvalidTransitionError):
                    await control.cancel(job.id)
            for job_id in (uuid.uuid4().hex, "not-a-job-id"):
                with pytest.raises(JobNotFoundError):
                    await control.cancel(job_id)

    run(main())


def test_the_sweep_drops_cancelled_jobs_past_their_retention_from_rqs_registry(
    factory: RqFakeRedisFactory,
) -> None:
    async def main() -> None:
        async with factory.open(BackendOptions(result_ttl=1)) as backend:
            job = probe_job()
            await enqueue(backend.submitter, job)
            await _control(backend).cancel(job.id)
            client = factory.client()
            key = CanceledJobRegistry(rq_queue_name("test", "default"), connection=client).key
            assert client.zcard(key) == 1
            await asyncio.sleep(2.1)  # its score is the next whole second + the retention
            await factory.recover()
            assert client.zcard(key) == 0

    run(main())


# -- figures and listings -----------------------------------------------------------------


def test_queue_stats_count_jobs_by_status_and_situation_tells_the_place_in_line() -> None:
    factory = RqFakeRedisFactory(random=1.0)  # a failed attempt's retry waits its longest

    async def main() -> None:
        async with factory.open() as backend:
            store, monitor = backend.store, _monitor(backend)
            modes: list[dict[str, Any]] = [
                {"mode": "succeed"},
                {"mode": "fatal"},
                {"mode": "fail", "times": 1},
            ]
            ran = [driven_job(mode) for mode in modes]
            for job in ran:
                await enqueue(backend.submitter, job)
            await factory.burst()
            retrying = await stored(store, ran[2].id)
            assert retrying.status == S.FAILED
            assert retrying.retry_at is not None
            waiting = [probe_job() for _ in range(2)]
            later, dropped = probe_job(run_at=datetime.now(UTC) + timedelta(hours=1)), probe_job()
            for job in (*waiting, later, dropped):
                await enqueue(backend.submitter, job)
            await _control(backend).cancel(dropped.id)
            await enqueue(backend.submitter, probe_job(queue="other"))
            (stats,) = await monitor.queue_stats(["default"])
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
            assert [s.name for s in await monitor.queue_stats()] == ["default", "other"]
            first, second = [await store.situation(job.id) for job in waiting]
            assert first is not None
            assert second is not None
            assert (first.job.id, first.ahead, second.ahead) == (waiting[0].id, 0, 1)
            assert (first.paused, first.workers) == (False, 0)
            gone = await store.situation(later.id)
            assert gone is not None
            assert gone.ahead is None
            assert await store.situation(uuid.uuid4().hex) is None
            # RQ's workers register themselves: a live one counts, a stopped one does not.
            worker = factory.worker()
            worker.heartbeat()  # what RQ's worker registers as it starts
            worker_registration.register(worker)
            (stats,) = await monitor.queue_stats(["default"])
            assert stats.workers == 1
            worker_registration.unregister(worker)  # and as it stops
            factory.client().delete(worker.key)
            (stats,) = await monitor.queue_stats(["default"])
            assert stats.workers == 0

    run(main())


def test_listing_filters_by_rq_status_type_and_queue_and_pages_newest_first(
    factory: RqFakeRedisFactory,
) -> None:
    async def main() -> None:
        async with factory.open() as backend:
            store = backend.store
            ran = [driven_job({"mode": mode}) for mode in ("succeed", "fatal", "succeed")]
            for job in ran:
                await enqueue(backend.submitter, job)
            await factory.drain(backend, [job.id for job in ran])
            waiting = [new_job(queue="other", n=n) for n in range(3)]
            for job in waiting:
                await enqueue(backend.submitter, job)
            everything = [job.id for job in reversed([*ran, *waiting])]
            assert await all_pages(store, JobQuery(limit=2)) == [
                everything[0:2],
                everything[2:4],
                everything[4:6],
            ]
            assert await all_pages(store, JobQuery(status=S.SUCCEEDED)) == [[ran[2].id, ran[0].id]]
            assert await all_pages(store, JobQuery(status=S.DEAD)) == [[ran[1].id]]
            assert await all_pages(store, JobQuery(status=S.QUEUED, limit=2)) == [
                [waiting[2].id, waiting[1].id],
                [waiting[0].id],
            ]
            assert await all_pages(store, JobQuery(queue="other", type="email")) == [[]]
            # A job whose hash expired (RQ's result TTL) drops out of the index.
            factory.client().delete(f"rq:job:{ran[0].id}")
            assert await all_pages(store, JobQuery(status=S.SUCCEEDED)) == [[ran[2].id]]
            assert factory.client().zscore("test:rq:jobs", ran[0].id) is None

    run(main())


def _control(backend: Backend) -> JobControl:
    assert backend.control is not None
    return backend.control


def _monitor(backend: Backend) -> QueueMonitor:
    assert backend.monitor is not None
    return backend.monitor
