import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from adapters.memory_queue import InMemoryJobQueue
from adapters.system_clock import SystemClock
from domain.job_types.registry import default_registry
from domain.jobs import JobStatus
from domain.services import JobProcessor, JobService, Submission
from entrypoints.worker.runner import Worker, WorkerConfig
from tests.fakes import RecordingEmailSender


class Rig:
    def __init__(
        self,
        concurrency: int = 4,
        lease_seconds: float = 30.0,
        drain_grace: float = 30.0,
        recycle_after_jobs: int = 0,
    ) -> None:
        self.queue = InMemoryJobQueue(SystemClock())
        registry = default_registry(RecordingEmailSender())
        self.service = JobService(self.queue, registry, SystemClock())
        self.retired: list[str] = []
        self.worker = Worker(
            self.queue,
            JobProcessor(self.queue, registry, lambda: 0.0, cancel_grace=0.1),
            WorkerConfig(
                worker_id="test",
                queues=("default",),
                concurrency=concurrency,
                lease_seconds=lease_seconds,
                claim_wait=0.05,
                drain_grace=drain_grace,
                recycle_after_jobs=recycle_after_jobs,
            ),
            on_retire=self.retired.append,
        )

    async def submit(self, type_: str, payload: dict[str, Any], **extra: Any) -> str:
        return (await self.service.submit(Submission(type=type_, payload=payload, **extra))).id

    async def status(self, job_id: str) -> JobStatus:
        return (await self.service.get(job_id)).status


async def until(check: Callable[[], Awaitable[bool]], within: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + within
    while not await check():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


def test_worker_runs_every_submitted_job_to_success() -> None:
    async def scenario() -> None:
        rig = Rig()
        ids = [await rig.submit("dummy", {"mode": "succeed", "result": i}) for i in range(50)]
        stop = asyncio.Event()
        running = asyncio.create_task(rig.worker.run(stop))

        async def all_done() -> bool:
            return all([await rig.status(i) is JobStatus.SUCCEEDED for i in ids])

        await until(all_done)
        stop.set()
        await asyncio.wait_for(running, 5)
        results = [(await rig.service.get(i)).result for i in ids]
        assert results == list(range(50))

    asyncio.run(scenario())


def test_worker_never_runs_more_than_its_concurrency() -> None:
    async def scenario() -> None:
        rig = Rig(concurrency=3)
        ids = [await rig.submit("dummy", {"mode": "sleep", "seconds": 0.1}) for _ in range(9)]
        stop = asyncio.Event()
        running = asyncio.create_task(rig.worker.run(stop))
        peak = 0

        async def all_done() -> bool:
            nonlocal peak
            statuses = [await rig.status(i) for i in ids]
            peak = max(peak, statuses.count(JobStatus.ACTIVE))
            return all(s is JobStatus.SUCCEEDED for s in statuses)

        await until(all_done)
        stop.set()
        await running
        assert peak == 3

    asyncio.run(scenario())


def test_stop_finishes_jobs_in_flight_and_claims_no_more() -> None:
    async def scenario() -> None:
        rig = Rig(concurrency=2)
        first = [await rig.submit("dummy", {"mode": "sleep", "seconds": 0.3}) for _ in range(2)]
        stop = asyncio.Event()
        running = asyncio.create_task(rig.worker.run(stop))

        async def both_active() -> bool:
            return all([await rig.status(i) is JobStatus.ACTIVE for i in first])

        await until(both_active)
        later = await rig.submit("dummy", {"mode": "succeed"})
        stop.set()
        await asyncio.wait_for(running, 5)
        assert [await rig.status(i) for i in first] == [JobStatus.SUCCEEDED] * 2
        assert await rig.status(later) is JobStatus.QUEUED

    asyncio.run(scenario())


def test_report_progress_is_visible_while_it_runs() -> None:
    async def scenario() -> None:
        rig = Rig()
        job_id = await rig.submit("report", {"name": "r", "rows": 10, "seconds": 0.6})
        stop = asyncio.Event()
        running = asyncio.create_task(rig.worker.run(stop))
        seen: set[int] = set()

        async def done() -> bool:
            job = await rig.service.get(job_id)
            if job.status is JobStatus.ACTIVE and job.progress is not None:
                seen.add(job.progress)
            return job.status is JobStatus.SUCCEEDED

        await until(done)
        stop.set()
        await running
        assert any(0 < p < 100 for p in seen), seen
        assert (await rig.service.get(job_id)).progress == 100

    asyncio.run(scenario())


def test_a_worker_that_loses_its_lease_stops_its_copy_of_the_job() -> None:
    async def scenario() -> None:
        rig = Rig(lease_seconds=0.3)
        job_id = await rig.submit("dummy", {"mode": "sleep", "seconds": 30})
        stop = asyncio.Event()
        running = asyncio.create_task(rig.worker.run(stop))

        async def active() -> bool:
            return await rig.status(job_id) is JobStatus.ACTIVE

        await until(active)
        # Another party takes the job over: the lease this worker holds is no longer current.
        rig.queue._held[job_id].token = "someone-else"
        await until(lambda: asyncio.sleep(0, result=not rig.worker._running))
        stop.set()
        await asyncio.wait_for(running, 5)

    asyncio.run(scenario())


def test_jobs_still_running_after_the_drain_grace_go_back_to_the_queue_unused() -> None:
    async def scenario() -> None:
        rig = Rig(drain_grace=0.2)
        quick = await rig.submit("dummy", {"mode": "sleep", "seconds": 0.05})
        slow = await rig.submit("dummy", {"mode": "sleep", "seconds": 30})
        stop = asyncio.Event()
        running = asyncio.create_task(rig.worker.run(stop))

        async def slow_active() -> bool:
            return await rig.status(slow) is JobStatus.ACTIVE

        await until(slow_active)
        stop.set()
        await asyncio.wait_for(running, 5)
        assert await rig.status(quick) is JobStatus.SUCCEEDED
        released = await rig.service.get(slow)
        assert (released.status, released.attempts) == (JobStatus.QUEUED, 0)
        assert [r.outcome for r in released.history] == ["released"]

    asyncio.run(scenario())


def test_a_handler_that_ignores_its_timeout_retires_the_process() -> None:
    async def scenario() -> None:
        rig = Rig()
        job_id = await rig.submit("dummy", {"mode": "hang", "seconds": 1}, timeout=0.1)
        stop = asyncio.Event()
        running = asyncio.create_task(rig.worker.run(stop))

        async def failed() -> bool:
            return await rig.status(job_id) is JobStatus.FAILED

        await until(failed)
        await asyncio.wait_for(running, 5)  # retiring stops the worker by itself
        job = await rig.service.get(job_id)
        assert job.error is not None
        assert job.error.kind == "timed_out"
        assert len(rig.retired) == 1
        assert "did not stop" in rig.retired[0]

    asyncio.run(scenario())


def test_a_worker_retires_after_its_share_of_jobs() -> None:
    async def scenario() -> None:
        rig = Rig(concurrency=1, recycle_after_jobs=3)
        for _ in range(5):
            await rig.submit("dummy", {"mode": "succeed"})
        await asyncio.wait_for(rig.worker.run(asyncio.Event()), 5)
        assert rig.worker.completed == 3
        assert rig.retired == ["ran 3 jobs"]

    asyncio.run(scenario())
