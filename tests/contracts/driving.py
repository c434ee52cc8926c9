"""Running jobs for the contracts' end-to-end scenarios, the way the native worker runs them.

`claim_and_process` claims and runs jobs through a LeaseQueue with the domain's JobProcessor
(the native worker's core) until the jobs named have settled. A backend whose own worker runs
the jobs (RQ) drains with that worker instead (its `BackendFactory.drain`). The jobs are of
the `dummy` type, so every backend runs the same handler.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Final, TypeVar

from domain.job_types import JobContext, JobTypeRegistry
from domain.job_types.dummy import dummy_job_type
from domain.jobs import Job, Lease
from domain.ports import AttemptReporter, ClaimRequest, JobStore, LeaseQueue
from domain.processing import JobProcessor

T = TypeVar("T")

DRIVEN_TYPES: Final = JobTypeRegistry([dummy_job_type()])
SETTLE_WITHIN: Final = 15.0  # seconds a drain may take before the test fails


def driven_job(payload: Mapping[str, Any], *, max_attempts: int = 3, priority: int = 0) -> Job:
    """A `dummy` job that a drain can run: `payload` says what it does."""
    return Job.submitted(
        id=uuid.uuid4().hex,
        type="dummy",
        payload=dict(payload),
        queue="default",
        max_attempts=max_attempts,
        timeout=10.0,
        now=datetime.now(UTC),
        priority=priority,
    )


async def settled(store: JobStore, job_ids: Sequence[str]) -> bool:
    for job_id in job_ids:
        job = await store.get(job_id)
        assert job is not None, f"job {job_id} vanished"
        if not job.status.is_terminal:
            return False
    return True


async def describe(store: JobStore, job_ids: Sequence[str]) -> str:
    jobs = [await store.get(job_id) for job_id in job_ids]
    return ", ".join(f"{j.id[:8]}={j.status}/{j.attempts}" for j in jobs if j is not None)


async def claim_and_process(
    leases: LeaseQueue,
    store: JobStore,
    job_ids: Sequence[str],
    *,
    within: float = SETTLE_WITHIN,
    tick: Callable[[], Awaitable[None]] | None = None,
) -> None:
    """Claim and run jobs through `leases`, one at a time, until every one of `job_ids` has
    settled. `tick` runs before each claim: letting a moment pass on the backend's clock
    there makes the jobs' `started_at` tell the order they ran in, even on a fake clock."""
    processor = JobProcessor(leases, DRIVEN_TYPES, lambda: 0.0)  # retries come due at once
    deadline = time.monotonic() + within
    while not await settled(store, job_ids):
        if time.monotonic() > deadline:
            raise AssertionError(f"not settled within {within} s: {await describe(store, job_ids)}")
        queues = sorted({job.queue for job in [await store.get(i) for i in job_ids] if job})
        if tick is not None:
            await tick()
        claimed = await leases.claim(
            ClaimRequest(
                queues=tuple(queues),
                worker_id="drain",
                limit=1,
                lease_seconds=60.0,
                wait_seconds=0.05,
            )
        )
        for lease in claimed:
            await processor.process(lease, DrainContext(lease, leases))


class DrainContext(JobContext):
    def __init__(self, lease: Lease, reporter: AttemptReporter) -> None:
        self._lease = lease
        self._reporter = reporter
        self._writes: set[asyncio.Task[bool]] = set()

    @property
    def job_id(self) -> str:
        return self._lease.job_id

    @property
    def attempt(self) -> int:
        return self._lease.attempt

    def report_progress(self, percent: int) -> None:
        task = asyncio.get_running_loop().create_task(
            self._reporter.set_progress(self._lease, percent)
        )
        self._writes.add(task)
        task.add_done_callback(self._writes.discard)

    async def settle(self) -> None:
        if self._writes:
            await asyncio.wait(set(self._writes))

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)

    async def run_blocking(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.to_thread(fn, *args)
