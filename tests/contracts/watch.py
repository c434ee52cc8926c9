"""JobWatcher: a reader waiting for a job to finish is woken when it does, not before."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable
from typing import Final

from domain.jobs import JobStatus
from domain.ports import JobControl, JobWatcher, LeaseQueue
from domain.settlement import Ending
from tests.contracts.base import Rig, scenario
from tests.contracts.builders import (
    LEASE,
    PAST_LEASE,
    claim_one,
    enqueue,
    new_job,
    status_of,
)

S = JobStatus
LONG: Final = 10.0  # a wait no scenario lets run out


async def woken_within(rig: Rig, job_id: str, move: Awaitable[object], seconds: float) -> None:
    """A reader watching `job_id` the way `JobService.wait` does (a wake is a hint: it reads
    the job again) learns it finished within `seconds` of `move`."""
    with rig.watcher.watch(job_id) as watch:

        async def read_until_finished() -> None:
            while not (await status_of(rig.store, job_id)).is_terminal:
                await watch.wait(LONG)

        reader = asyncio.ensure_future(read_until_finished())
        await asyncio.sleep(0.05)
        assert not reader.done(), "the job finished before it was moved"
        await move
        await asyncio.wait_for(reader, seconds)


class WatchContract:
    """Who wakes a reader that waits for a job: its job finishing, however it finishes."""

    @scenario(JobWatcher, LeaseQueue)
    async def test_a_reader_is_woken_when_its_job_succeeds(self, rig: Rig) -> None:
        job = new_job()
        await enqueue(rig.submitter, job)
        lease = await claim_one(rig.leases)
        await woken_within(rig, job.id, rig.leases.settle(lease, Ending.succeeded(1)), 2.0)
        assert await status_of(rig.store, job.id) == S.SUCCEEDED

    @scenario(JobWatcher, JobControl)
    async def test_a_reader_is_woken_when_its_waiting_job_is_cancelled(self, rig: Rig) -> None:
        job = new_job()
        await enqueue(rig.submitter, job)
        await woken_within(rig, job.id, rig.control.cancel(job.id), 2.0)

    @scenario(JobWatcher, LeaseQueue)
    async def test_a_reader_is_woken_when_a_lapsed_lease_leaves_its_job_dead(
        self, rig: Rig
    ) -> None:
        job = new_job(max_attempts=1)
        await enqueue(rig.submitter, job)
        await claim_one(rig.leases, lease_seconds=LEASE)

        async def lapse() -> None:
            await rig.elapse(PAST_LEASE)
            await rig.leases.recover(["default"])

        await woken_within(rig, job.id, lapse(), 3.0)
        assert await status_of(rig.store, job.id) == S.DEAD

    @scenario(JobWatcher, LeaseQueue)
    async def test_a_reader_whose_job_does_not_finish_waits_out_its_time(self, rig: Rig) -> None:
        job = new_job()
        await enqueue(rig.submitter, job)
        lease = await claim_one(rig.leases)
        with rig.watcher.watch(job.id) as watch:
            started = time.monotonic()
            until = started + 0.5
            while (left := until - time.monotonic()) > 0:
                await watch.wait(left)
                assert await status_of(rig.store, job.id) == S.ACTIVE
            assert 0.45 <= time.monotonic() - started < 2.0
        assert await rig.leases.settle(lease, Ending.succeeded(None)) == S.SUCCEEDED
