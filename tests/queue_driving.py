"""Running jobs for the contract suite's end-to-end tests, the way each backend runs them.

`QueueFactory.drain` runs jobs until the ones named have settled. Its default here drives the
port's own claim protocol with the domain's `JobProcessor` (the native worker's core); a
backend whose own worker runs the jobs (RQ: no `worker_claims`) overrides it with that worker.
The jobs are of the `dummy` type, so every backend runs the same handler.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, TypeVar

from domain.job_types import JobContext, JobTypeRegistry
from domain.job_types.dummy import dummy_job_type
from domain.jobs import Job, Lease
from domain.ports import JobQueue
from domain.services import JobProcessor

T = TypeVar("T")

DRIVEN_TYPES = JobTypeRegistry([dummy_job_type()])
SETTLE_WITHIN = 15.0  # seconds a drain may take before the test fails


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


async def settled(queue: JobQueue, job_ids: Sequence[str]) -> bool:
    for job_id in job_ids:
        job = await queue.get(job_id)
        assert job is not None, f"job {job_id} vanished"
        if not job.status.is_terminal:
            return False
    return True


async def describe(queue: JobQueue, job_ids: Sequence[str]) -> str:
    jobs = [await queue.get(job_id) for job_id in job_ids]
    return ", ".join(f"{j.id[:8]}={j.status}/{j.attempts}" for j in jobs if j is not None)


async def claim_and_process(
    queue: JobQueue, job_ids: Sequence[str], *, within: float = SETTLE_WITHIN
) -> None:
    """Claim and run jobs through the port until every one of `job_ids` has settled."""
    processor = JobProcessor(queue, DRIVEN_TYPES, lambda: 0.0)  # retries come due at once
    deadline = time.monotonic() + within
    while not await settled(queue, job_ids):
        if time.monotonic() > deadline:
            raise AssertionError(f"not settled within {within} s: {await describe(queue, job_ids)}")
        queues = sorted({job.queue for job in [await queue.get(i) for i in job_ids] if job})
        leases = await queue.claim(
            queues, worker_id="drain", limit=10, lease_seconds=60.0, wait_seconds=0.05
        )
        for lease in leases:
            await processor.process(lease, DrainContext(lease, queue))


class DrainContext(JobContext):
    def __init__(self, lease: Lease, queue: JobQueue) -> None:
        self._lease = lease
        self._queue = queue
        self._writes: set[asyncio.Task[bool]] = set()

    @property
    def job_id(self) -> str:
        return self._lease.job_id

    @property
    def attempt(self) -> int:
        return self._lease.attempt

    def report_progress(self, percent: int) -> None:
        task = asyncio.get_running_loop().create_task(
            self._queue.set_progress(self._lease, percent)
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
