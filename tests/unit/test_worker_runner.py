import asyncio
import io
import json
import logging
import random
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from adapters.memory import MemoryState, memory_backend, memory_roles
from adapters.system_clock import SystemClock
from domain.errors import QueueUnavailableError
from domain.job_service import JobService
from domain.job_types.registry import default_registry
from domain.jobs import Job, JobStatus, Lease
from domain.ports import (
    Backend,
    ClaimRequest,
    LeaseQueue,
    QueueMonitor,
    QueueStats,
    WorkerInfo,
    WorkerLoad,
)
from domain.processing import JobProcessor
from domain.settlement import Ending
from domain.submission import Submission
from entrypoints import logs
from entrypoints.logs import JsonFormatter, configure_logging
from entrypoints.setting_values import parse_weighted_queues
from entrypoints.settings import LogFormat
from entrypoints.worker.audit import AuditLog
from entrypoints.worker.config import WorkerConfig, claim_order, queues_argument
from entrypoints.worker.context import WorkerJobContext
from entrypoints.worker.runner import Worker
from tests.fakes import FakeClock, RecordingEmailSender
from tests.unit.backends import leases_of


class Rig:
    def __init__(
        self,
        concurrency: int = 4,
        lease_seconds: float = 30.0,
        drain_grace: float = 30.0,
        recycle_after_jobs: int = 0,
        cancel_grace: float = 5.0,
        queues: tuple[str, ...] = ("default",),
        queue_weights: tuple[int, ...] | None = None,
        draw: Callable[[], float] = random.random,
        audit: AuditLog | None = None,
        leases: Callable[[LeaseQueue], LeaseQueue] = lambda leases: leases,
        monitor: Callable[[QueueMonitor], QueueMonitor | None] = lambda monitor: monitor,
        retry_draw: Callable[[], float] = lambda: 0.0,
    ) -> None:
        """A worker on a fresh memory backend. `leases` and `monitor` may wrap (or, for the
        monitor, remove) the roles the worker is given."""
        clock = SystemClock()
        self.state = MemoryState(
            clock, result_ttl=86400.0, dead_ttl=86400.0, idempotency_ttl=86400.0, admission=None
        )
        self.backend: Backend = memory_roles(self.state)
        assert self.backend.monitor is not None
        registry = default_registry(RecordingEmailSender(), dummy_faults=True)
        self.service = JobService(self.backend, registry, clock)
        self.retired: list[str] = []
        self.leases = leases(leases_of(self.backend))
        self.monitor = monitor(self.backend.monitor)
        self.worker = Worker(
            self.leases,
            JobProcessor(self.leases, registry, retry_draw, cancel_grace=0.1),
            WorkerConfig(
                worker_id="test",
                queues=queues,
                queue_weights=queue_weights,
                concurrency=concurrency,
                lease_seconds=lease_seconds,
                claim_wait=0.05,
                drain_grace=drain_grace,
                recycle_after_jobs=recycle_after_jobs,
                cancel_grace=cancel_grace,
                cancel_poll=0.05,
                heartbeat_interval=0.05,
            ),
            monitor=self.monitor,
            observers=[audit] if audit is not None else [],
            on_retire=self.retired.append,
            draw=draw,
        )

    async def submit(self, type_: str, payload: dict[str, Any], **extra: Any) -> str:
        submission = Submission(type=type_, payload=payload, **extra)
        return (await self.service.submit(submission)).job.id

    async def status(self, job_id: str) -> JobStatus:
        return (await self.service.get(job_id)).status

    async def until_status(self, job_id: str, status: JobStatus, within: float = 5.0) -> None:
        async def reached() -> bool:
            return await self.status(job_id) is status

        await until(reached, within)

    async def work_off(self, job_ids: Sequence[str]) -> None:
        """Run the worker until every job of `job_ids` has succeeded, then stop it."""
        stop = asyncio.Event()
        running = asyncio.create_task(self.worker.run(stop))
        for job_id in job_ids:
            await self.until_status(job_id, JobStatus.SUCCEEDED)
        stop.set()
        await asyncio.wait_for(running, 5)


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


def test_a_worker_that_loses_its_lease_stops_its_copy_of_the_job(tmp_path: Path) -> None:
    async def scenario() -> None:
        rig = Rig(lease_seconds=0.3, audit=AuditLog(str(tmp_path / "audit.jsonl"), "test"))
        job_id = await rig.submit("dummy", {"mode": "sleep", "seconds": 30})
        stop = asyncio.Event()
        running = asyncio.create_task(rig.worker.run(stop))

        async def active() -> bool:
            return await rig.status(job_id) is JobStatus.ACTIVE

        await until(active)
        # Another party takes the job over: the lease this worker holds is no longer current.
        rig.state.held[job_id].token = "someone-else"
        await until(lambda: asyncio.sleep(0, result=not rig.worker._running))
        stop.set()
        await asyncio.wait_for(running, 5)
        assert audit_ends(tmp_path / "audit.jsonl") == {job_id: "lease_lost"}

    asyncio.run(scenario())


def test_jobs_still_running_after_the_drain_grace_go_back_to_the_queue_unused(
    tmp_path: Path,
) -> None:
    async def scenario() -> None:
        rig = Rig(drain_grace=0.2, audit=AuditLog(str(tmp_path / "audit.jsonl"), "test"))
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
        assert audit_ends(tmp_path / "audit.jsonl") == {quick: "succeeded", slow: "released"}

    asyncio.run(scenario())


@pytest.mark.parametrize(
    ("options", "said", "audited"),
    [
        # Its retry is drawn half a second out, past its deadline: the job expires.
        ({"deadline": 0.3}, "job expired", "expired"),
        ({"max_attempts": 2}, "job failed, will retry", "failed"),
        ({"max_attempts": 1}, "job dead", "dead"),
    ],
)
def test_a_failed_attempt_is_logged_and_audited_as_the_status_the_backend_stored(
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    options: dict[str, Any],
    said: str,
    audited: str,
) -> None:
    async def scenario() -> None:
        audit = AuditLog(str(tmp_path / "audit.jsonl"), "test")
        rig = Rig(audit=audit, retry_draw=lambda: 0.99)
        job_id = await rig.submit("dummy", {"mode": "fail"}, **options)
        stop = asyncio.Event()
        running = asyncio.create_task(rig.worker.run(stop))
        await rig.until_status(job_id, JobStatus(audited))
        stop.set()
        await asyncio.wait_for(running, 5)
        assert audit_ends(tmp_path / "audit.jsonl") == {job_id: audited}

    with caplog.at_level(logging.INFO, logger="conveyor.worker"):
        asyncio.run(scenario())

    endings = [r.getMessage() for r in caplog.records if r.getMessage().startswith("job ")]
    assert endings[-1] == said
    assert endings.count("job failed, will retry") == (audited == "failed")


def test_a_handlers_traceback_goes_to_the_log_in_the_projects_format(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def scenario() -> None:
        rig = Rig()
        job_id = await rig.submit("dummy", {"mode": "fatal"})
        stop = asyncio.Event()
        running = asyncio.create_task(rig.worker.run(stop))
        await rig.until_status(job_id, JobStatus.DEAD)
        stop.set()
        await asyncio.wait_for(running, 5)
        error = (await rig.service.get(job_id)).error
        assert error is not None
        assert error.traceback is None  # the job keeps the type and message only

    with caplog.at_level(logging.INFO, logger="conveyor.worker"):
        asyncio.run(scenario())

    (dead,) = [r for r in caplog.records if r.getMessage() == "job dead"]
    line = json.loads(JsonFormatter().format(dead))
    assert line["error_type"] == "NonRetryableError"
    assert "Traceback (most recent call last)" in line["exception"]
    assert "dummy.py" in line["exception"]


def test_a_handler_that_ignores_its_timeout_retires_the_process() -> None:
    async def scenario() -> None:
        rig = Rig(retry_draw=lambda: 0.99)  # its retry waits about half a second
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


# -- cancelling an active job ------------------------------------------------------------------


def audit_ends(path: Path) -> dict[str, str]:
    events = [json.loads(line) for line in path.read_text().splitlines()]
    return {e["job_id"]: e["outcome"] for e in events if e["event"] == "end"}


def test_a_handler_that_sees_the_cancel_request_stops_and_its_job_ends_cancelled(
    tmp_path: Path,
) -> None:
    async def scenario() -> None:
        audit = AuditLog(str(tmp_path / "audit.jsonl"), "test")
        rig = Rig(cancel_grace=10.0, audit=audit)
        job_id = await rig.submit("report", {"name": "r", "rows": 1, "seconds": 30})
        stop = asyncio.Event()
        running = asyncio.create_task(rig.worker.run(stop))
        await rig.until_status(job_id, JobStatus.ACTIVE)
        asked = asyncio.get_running_loop().time()
        await rig.service.cancel(job_id)
        await rig.until_status(job_id, JobStatus.CANCELLED, within=2.0)
        took = asyncio.get_running_loop().time() - asked
        stop.set()
        await asyncio.wait_for(running, 5)
        job = await rig.service.get(job_id)
        assert took < 1.0  # the handler stopped by itself, long before the grace ran out
        assert job.attempts == 1
        assert [r.outcome for r in job.history] == ["cancelled"]
        assert job.progress is not None
        assert job.progress < 100
        assert audit_ends(tmp_path / "audit.jsonl") == {job_id: "cancelled"}
        assert rig.retired == []

    asyncio.run(scenario())


def test_a_handler_that_ignores_the_cancel_request_is_stopped_after_the_grace(
    tmp_path: Path,
) -> None:
    async def scenario() -> None:
        audit = AuditLog(str(tmp_path / "audit.jsonl"), "test")
        rig = Rig(cancel_grace=0.4, audit=audit)
        job_id = await rig.submit("dummy", {"mode": "sleep", "seconds": 30})
        stop = asyncio.Event()
        running = asyncio.create_task(rig.worker.run(stop))
        await rig.until_status(job_id, JobStatus.ACTIVE)
        asked = asyncio.get_running_loop().time()
        await rig.service.cancel(job_id)
        await rig.until_status(job_id, JobStatus.CANCELLED, within=3.0)
        took = asyncio.get_running_loop().time() - asked
        # The worker goes on serving.
        after = await rig.submit("dummy", {"mode": "succeed"})
        await rig.until_status(after, JobStatus.SUCCEEDED)
        stop.set()
        await asyncio.wait_for(running, 5)
        assert 0.4 <= took < 1.5
        job = await rig.service.get(job_id)
        assert [r.outcome for r in job.history] == ["cancelled"]
        assert audit_ends(tmp_path / "audit.jsonl")[job_id] == "cancelled"
        assert rig.retired == []

    asyncio.run(scenario())


def test_a_blocking_handler_that_ignores_the_cancel_request_retires_the_process() -> None:
    async def scenario() -> None:
        rig = Rig(cancel_grace=0.2)
        job_id = await rig.submit("dummy", {"mode": "hang", "seconds": 2})
        running = asyncio.create_task(rig.worker.run(asyncio.Event()))
        await rig.until_status(job_id, JobStatus.ACTIVE)
        await rig.service.cancel(job_id)
        await rig.until_status(job_id, JobStatus.CANCELLED, within=3.0)
        await asyncio.wait_for(running, 5)  # retiring stops the worker by itself
        assert len(rig.retired) == 1
        assert "did not stop after its cancel request" in rig.retired[0]

    asyncio.run(scenario())


def test_a_job_whose_cancel_was_requested_is_not_handed_back_when_the_worker_stops() -> None:
    async def scenario() -> None:
        rig = Rig(cancel_grace=30.0, drain_grace=0.2)
        job_id = await rig.submit("dummy", {"mode": "sleep", "seconds": 30})
        stop = asyncio.Event()
        running = asyncio.create_task(rig.worker.run(stop))
        await rig.until_status(job_id, JobStatus.ACTIVE)
        await rig.service.cancel(job_id)
        await asyncio.sleep(0.3)  # the worker sees the request
        stop.set()
        await asyncio.wait_for(running, 5)
        assert await rig.status(job_id) is JobStatus.CANCELLED

    asyncio.run(scenario())


class ForwardingLeases(LeaseQueue):
    """A LeaseQueue that hands every call to another: a base for recording one."""

    def __init__(self, inner: LeaseQueue) -> None:
        self._inner = inner

    async def claim(self, request: ClaimRequest) -> Sequence[Lease]:
        return await self._inner.claim(request)

    async def stop_waiting(self, worker_id: str, queues: Sequence[str]) -> None:
        await self._inner.stop_waiting(worker_id, queues)

    async def renew(self, leases: Sequence[Lease], lease_seconds: float) -> set[str]:
        return await self._inner.renew(leases, lease_seconds)

    async def cancel_requested(self, leases: Sequence[Lease]) -> set[str]:
        return await self._inner.cancel_requested(leases)

    async def held_by(self, worker_id: str, queues: Sequence[str]) -> Sequence[Lease]:
        return await self._inner.held_by(worker_id, queues)

    async def recover(self, queues: Sequence[str]) -> int:
        return await self._inner.recover(queues)

    async def set_progress(self, lease: Lease, progress: int) -> bool:
        return await self._inner.set_progress(lease, progress)

    async def settle(self, lease: Lease, ending: Ending) -> JobStatus | None:
        return await self._inner.settle(lease, ending)


class SettleSeenStale(ForwardingLeases):
    """Answers each settlement only once a renewal, sent after the settlement was written,
    has answered that the lease is no longer held: the order two calls on separate
    connections can take."""

    def __init__(self, inner: LeaseQueue) -> None:
        super().__init__(inner)
        self.settled: set[str] = set()
        self.renewal_missed = asyncio.Event()

    async def renew(self, leases: Sequence[Lease], lease_seconds: float) -> set[str]:
        held = await super().renew(leases, lease_seconds)
        if any(lease.job_id in self.settled and lease.job_id not in held for lease in leases):
            self.renewal_missed.set()
        return held

    async def settle(self, lease: Lease, ending: Ending) -> JobStatus | None:
        status = await super().settle(lease, ending)
        self.settled.add(lease.job_id)
        async with asyncio.timeout(5.0):
            await self.renewal_missed.wait()
        return status


def test_a_renewal_that_misses_a_lease_its_own_settlement_ended_does_not_stop_the_attempt(
    tmp_path: Path,
) -> None:
    """The attempt's settlement is written; before its answer comes back, a renewal sent
    meanwhile answers that the lease is gone (the settlement ended it). The attempt is not
    stopped as a lost lease: it ends as its settlement stored it."""

    async def scenario() -> None:
        rig = Rig(
            lease_seconds=0.3,
            audit=AuditLog(str(tmp_path / "audit.jsonl"), "test"),
            leases=SettleSeenStale,
        )
        job_id = await rig.submit("dummy", {"mode": "sleep", "seconds": 0.05})
        stop = asyncio.Event()
        running = asyncio.create_task(rig.worker.run(stop))
        await rig.until_status(job_id, JobStatus.SUCCEEDED)
        await until(lambda: asyncio.sleep(0, result=not rig.worker._running))
        stop.set()
        await asyncio.wait_for(running, 5)
        assert audit_ends(tmp_path / "audit.jsonl") == {job_id: "succeeded"}
        assert rig.worker.completed == 1

    asyncio.run(scenario())


class CancelPollRecorder(ForwardingLeases):
    """Records `cancel_requested` calls; the first `outages` fail."""

    def __init__(self, inner: LeaseQueue, outages: int = 0) -> None:
        super().__init__(inner)
        self.asked: list[list[str]] = []
        self.outages = outages

    async def cancel_requested(self, leases: Sequence[Lease]) -> set[str]:
        self.asked.append([lease.job_id for lease in leases])
        if self.outages:
            self.outages -= 1
            raise QueueUnavailableError("down for the test")
        return await super().cancel_requested(leases)


def test_the_worker_asks_about_cancels_only_while_it_runs_jobs_in_one_call() -> None:
    async def scenario() -> None:
        rig = Rig(leases=CancelPollRecorder)
        queue = rig.leases
        assert isinstance(queue, CancelPollRecorder)
        stop = asyncio.Event()
        running = asyncio.create_task(rig.worker.run(stop))
        await asyncio.sleep(0.3)
        assert queue.asked == []  # idle: nothing to ask about
        ids = {await rig.submit("dummy", {"mode": "sleep", "seconds": 0.5}) for _ in range(3)}
        for job_id in ids:
            await rig.until_status(job_id, JobStatus.SUCCEEDED)
        stop.set()
        await asyncio.wait_for(running, 5)
        assert queue.asked
        assert all(set(asked) <= ids for asked in queue.asked)
        assert any(set(asked) == ids for asked in queue.asked)  # all three in one call

    asyncio.run(scenario())


def test_a_cancel_request_is_acted_on_once_the_queue_answers_again() -> None:
    async def scenario() -> None:
        rig = Rig(leases=lambda inner: CancelPollRecorder(inner, outages=5))
        queue = rig.leases
        assert isinstance(queue, CancelPollRecorder)
        job_id = await rig.submit("report", {"name": "r", "rows": 1, "seconds": 30})
        stop = asyncio.Event()
        running = asyncio.create_task(rig.worker.run(stop))
        await rig.until_status(job_id, JobStatus.ACTIVE)
        await rig.service.cancel(job_id)
        await rig.until_status(job_id, JobStatus.CANCELLED, within=3.0)
        stop.set()
        await asyncio.wait_for(running, 5)
        assert queue.outages == 0

    asyncio.run(scenario())


class FullStore(ForwardingLeases):
    """A store that, while `full`, refuses what a full Redis refuses (claims, settlements),
    and renews leases, as Redis does (see lua/renew.lua)."""

    def __init__(self, inner: LeaseQueue) -> None:
        super().__init__(inner)
        self.full = False
        self.refused: Counter[str] = Counter()
        self.renewed_while_full = 0

    def _refuse(self, what: str) -> None:
        if self.full:
            self.refused[what] += 1
            raise QueueUnavailableError("redis is out of memory", retry_after=5.0)

    async def claim(self, request: ClaimRequest) -> Sequence[Lease]:
        self._refuse("claim")
        return await super().claim(request)

    async def renew(self, leases: Sequence[Lease], lease_seconds: float) -> set[str]:
        self.renewed_while_full += self.full
        return await super().renew(leases, lease_seconds)

    async def settle(self, lease: Lease, ending: Ending) -> JobStatus | None:
        self._refuse("settle")
        return await super().settle(lease, ending)


def test_a_full_store_pauses_claims_and_settlements_and_the_worker_carries_on_after() -> None:
    async def scenario() -> None:
        rig = Rig(leases=FullStore, lease_seconds=0.6)
        store = rig.leases
        assert isinstance(store, FullStore)
        stop = asyncio.Event()
        running = asyncio.create_task(rig.worker.run(stop))
        first = await rig.submit("dummy", {"mode": "sleep", "seconds": 0.2})
        await rig.until_status(first, JobStatus.ACTIVE)
        store.full = True
        await asyncio.sleep(0.1)  # a claim already under way when Redis filled up ends
        waiting = await rig.submit("dummy", {"mode": "succeed"})
        await asyncio.sleep(1.5)  # the handler is done; its lease outlived twice over
        assert await rig.status(first) is JobStatus.ACTIVE  # its result waits to be written
        assert await rig.status(waiting) is JobStatus.QUEUED
        assert store.refused["settle"] >= 2
        assert store.refused["claim"] >= 1
        assert store.renewed_while_full >= 2
        assert not running.done()
        store.full = False
        await rig.until_status(first, JobStatus.SUCCEEDED)
        await rig.until_status(waiting, JobStatus.SUCCEEDED, within=10.0)
        assert (await rig.service.get(first)).attempts == 1  # it ran once
        stop.set()
        await asyncio.wait_for(running, 5)

    asyncio.run(scenario())


# -- what a handler can read -------------------------------------------------------------------


def lease_of(deadline: datetime | None, now: datetime) -> Lease:
    job = Job.submitted(
        id="a" * 32,
        type="dummy",
        payload={"mode": "succeed"},
        queue="default",
        max_attempts=1,
        timeout=60.0,
        now=now,
        deadline=deadline,
    )
    return Lease(job, "token")


def test_the_context_counts_down_the_seconds_to_the_jobs_deadline() -> None:
    async def scenario() -> None:
        clock = FakeClock(datetime(2026, 1, 1, tzinfo=UTC))
        leases = leases_of(memory_backend(clock))
        start = clock.now()
        with_deadline = lease_of(start + timedelta(seconds=10), start)
        executor = ThreadPoolExecutor(max_workers=1)
        context = WorkerJobContext(with_deadline, leases, executor, clock=clock)
        assert context.remaining == 10.0
        clock.advance(4)
        assert context.remaining == 6.0
        clock.advance(30)
        assert context.remaining == 0.0
        without = WorkerJobContext(lease_of(None, start), leases, executor, clock=clock)
        assert without.remaining is None
        assert not without.cancel_requested
        without.request_cancel()
        assert without.cancel_requested
        executor.shutdown()

    asyncio.run(scenario())


# -- queues and weights ------------------------------------------------------------------------


def test_without_weights_every_claim_tries_the_queues_in_the_given_order() -> None:
    draw = random.Random(1).random
    assert {claim_order(("a", "b", "c"), None, draw) for _ in range(100)} == {("a", "b", "c")}


def test_weighted_claims_put_each_queue_first_in_proportion_to_its_weight() -> None:
    draw = random.Random(20260101).random
    draws = 20_000
    orders = [claim_order(("a", "b", "c"), (6, 3, 1), draw) for _ in range(draws)]
    assert all(sorted(order) == ["a", "b", "c"] for order in orders)  # none is ever left out
    first = Counter(order[0] for order in orders)
    for name, share in (("a", 0.6), ("b", 0.3), ("c", 0.1)):
        assert abs(first[name] / draws - share) < 0.015, first
    # Second place, after a was drawn first: b 3/4 of the time.
    after_a = [order[1] for order in orders if order[0] == "a"]
    assert abs(after_a.count("b") / len(after_a) - 0.75) < 0.02


def test_a_worker_with_weights_claims_in_the_drawn_order() -> None:
    async def scenario() -> None:
        # A draw of 0.5 over weights (1, 3) lands on b: b is tried before a.
        rig = Rig(concurrency=1, queues=("a", "b"), queue_weights=(1, 3), draw=lambda: 0.5)
        in_a = await rig.submit("dummy", {"mode": "succeed"}, queue="a")
        in_b = await rig.submit("dummy", {"mode": "succeed"}, queue="b")
        stop = asyncio.Event()
        running = asyncio.create_task(rig.worker.run(stop))
        await rig.until_status(in_a, JobStatus.SUCCEEDED)
        await rig.until_status(in_b, JobStatus.SUCCEEDED)
        stop.set()
        await asyncio.wait_for(running, 5)
        a, b = await rig.service.get(in_a), await rig.service.get(in_b)
        assert a.started_at is not None
        assert b.started_at is not None
        assert b.started_at < a.started_at

    asyncio.run(scenario())


def test_weights_must_name_one_positive_weight_per_queue() -> None:
    with pytest.raises(ValueError, match="one weight"):
        WorkerConfig(worker_id="w", queues=("a", "b"), concurrency=1, queue_weights=(3,))
    with pytest.raises(ValueError, match="one weight"):
        WorkerConfig(worker_id="w", queues=("a",), concurrency=1, queue_weights=(0,))


def test_the_supervisor_hands_its_children_the_queues_as_the_cli_reads_them() -> None:
    assert queues_argument(("a", "b"), None) == "a,b"
    assert queues_argument(("a", "b"), (3, 1)) == "a:3,b:1"
    assert parse_weighted_queues(queues_argument(("a", "b"), (3, 1))) == (("a", "b"), (3, 1))
    assert parse_weighted_queues(queues_argument(("a", "b"), None)) == (("a", "b"), None)


# -- presence ----------------------------------------------------------------------------------


class PresenceRecorder(QueueMonitor):
    """Records heartbeats and goodbyes, and hands them on."""

    def __init__(self, inner: QueueMonitor) -> None:
        self._inner = inner
        self.calls: list[tuple[Any, ...]] = []

    async def queue_stats(self, queues: Sequence[str] | None = None) -> Sequence[QueueStats]:
        return await self._inner.queue_stats(queues)

    async def workers(self) -> Sequence[WorkerInfo]:
        return await self._inner.workers()

    async def heartbeat(
        self, worker_id: str, queues: Sequence[str], ttl: float, load: WorkerLoad | None = None
    ) -> None:
        self.calls.append(("heartbeat", worker_id, tuple(queues), ttl))
        await self._inner.heartbeat(worker_id, queues, ttl, load)

    async def forget_worker(self, worker_id: str) -> None:
        self.calls.append(("forget", worker_id))
        await self._inner.forget_worker(worker_id)


def test_a_worker_says_it_is_alive_while_it_runs_and_that_it_stopped_at_the_end() -> None:
    async def scenario() -> None:
        rig = Rig(monitor=PresenceRecorder)
        monitor = rig.monitor
        assert isinstance(monitor, PresenceRecorder)
        stop = asyncio.Event()
        running = asyncio.create_task(rig.worker.run(stop))
        await asyncio.sleep(0.3)
        (live,) = await monitor.queue_stats(["default"])
        stop.set()
        await asyncio.wait_for(running, 5)
        (gone,) = await monitor.queue_stats(["default"])
        beats = [c for c in monitor.calls if c[0] == "heartbeat"]
        assert len(beats) >= 3  # at start and every interval (0.05 s here)
        assert {c[1:3] for c in beats} == {("test", ("default",))}
        assert all(c[3] == pytest.approx(0.15) for c in beats)  # three intervals
        assert monitor.calls[-1] == ("forget", "test")
        assert (live.workers, gone.workers) == (1, 0)

    asyncio.run(scenario())


def test_a_worker_on_a_backend_without_a_monitor_works_without_saying_it_is_alive() -> None:
    async def scenario() -> None:
        rig = Rig(monitor=lambda _: None)
        assert rig.backend.monitor is not None  # still there to read, not given to the worker
        job_id = await rig.submit("dummy", {"mode": "sleep", "seconds": 0.3})
        stop = asyncio.Event()
        running = asyncio.create_task(rig.worker.run(stop))
        await rig.until_status(job_id, JobStatus.ACTIVE)
        (while_running,) = await rig.backend.monitor.queue_stats(["default"])
        await rig.until_status(job_id, JobStatus.SUCCEEDED)
        stop.set()
        await asyncio.wait_for(running, 5)
        assert while_running.workers == 0

    asyncio.run(scenario())


class ClaimsRecorded(ForwardingLeases):
    """Records each claim's limit and how many of its jobs the worker held at the time."""

    def __init__(self, inner: LeaseQueue) -> None:
        super().__init__(inner)
        self.claims: list[tuple[int, int]] = []  # (limit, leases held when asked)
        self.held = 0
        self.peak = 0

    async def claim(self, request: ClaimRequest) -> Sequence[Lease]:
        self.claims.append((request.limit, self.held))
        leases = await super().claim(request)
        self.held += len(leases)
        self.peak = max(self.peak, self.held)
        return leases

    async def settle(self, lease: Lease, ending: Ending) -> JobStatus | None:
        status = await super().settle(lease, ending)
        self.held -= 1
        return status


@pytest.mark.parametrize(
    ("concurrency", "batch", "size"),
    [(1, 100, 1), (2, 100, 1), (3, 100, 2), (10, 100, 5), (100, 100, 50), (500, 100, 100)],
)
def test_a_claim_asks_for_at_most_half_the_slots_and_never_more_than_the_batch(
    concurrency: int, batch: int, size: int
) -> None:
    config = WorkerConfig(worker_id="w", queues=("default",), concurrency=concurrency, batch=batch)

    assert config.claim_size == size


def test_the_next_claim_is_on_its_way_while_the_jobs_of_the_last_one_run() -> None:
    async def scenario() -> None:
        rig = Rig(concurrency=4, leases=ClaimsRecorded)
        store = rig.leases
        assert isinstance(store, ClaimsRecorded)
        await rig.work_off(
            [await rig.submit("dummy", {"mode": "sleep", "seconds": 0.2}) for _ in range(8)]
        )
        full = [held for limit, held in store.claims if limit == 2]
        assert store.claims[:2] == [(2, 0), (2, 2)]  # the second half asked while two run
        assert len(full) >= 4  # eight jobs, two at a time
        assert all(limit <= 2 for limit, _ in store.claims)
        assert store.peak == 4  # never more than the concurrency

    asyncio.run(scenario())


class _Writes(io.StringIO):
    """A log stream that keeps each write apart."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[str] = []

    def write(self, text: str) -> int:
        self.writes.append(text)
        return super().write(text)


def test_the_job_claimed_lines_of_one_claim_go_out_in_one_write() -> None:
    """One system call for a claim's lines, not one a job. All are written before any of
    the claim's handlers runs (their tasks start at the next turn of the loop), so a
    handler that blocks the loop still leaves its job's line written."""
    root = logging.getLogger()
    handlers, level, direct = root.handlers[:], root.level, logs._direct
    stream = _Writes()
    try:
        configure_logging("INFO", LogFormat.CONSOLE)
        root.handlers[0].setStream(stream)  # type: ignore[attr-defined]

        async def scenario() -> list[str]:
            rig = Rig(concurrency=8)
            ids = [await rig.submit("dummy", {"mode": "succeed"}) for _ in range(3)]
            await rig.work_off(ids)
            return ids

        ids = asyncio.run(scenario())
    finally:
        root.handlers[:], logs._direct = handlers, direct
        root.setLevel(level)
    claimed = [w for w in stream.writes if "job claimed" in w]
    assert len(claimed) == 1
    assert [line.split("job_id=")[1].split()[0] for line in claimed[0].splitlines()] == ids
