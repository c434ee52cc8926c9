"""The worker's second claim: on its way while the first is out, only while the queues are
busy, never waiting, and never holding more jobs than the concurrency."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from domain.jobs import JobStatus, Lease
from domain.ports import ClaimRequest, LeaseQueue
from tests.unit.test_worker_runner import ClaimsRecorded, Rig

CLAIM_WAIT = 0.05  # the Rig's `claim_wait`


class SlowClaims(ClaimsRecorded):
    """Claims that take `delay` to answer. Records how many are out at once, how long each
    may wait, and the most jobs held (claimed, not yet settled) plus asked for."""

    delay = 0.02

    def __init__(self, inner: LeaseQueue) -> None:
        super().__init__(inner)
        self.out = 0
        self.most_out = 0
        self.waits: list[float] = []
        self.asked = 0
        self.most_held_or_asked = 0
        self.second_out = asyncio.Event()  # set when a claim goes out beside another

    async def claim(self, request: ClaimRequest) -> Sequence[Lease]:
        self.out += 1
        self.most_out = max(self.most_out, self.out)
        if self.out == 2:
            self.second_out.set()
        self.waits.append(request.wait_seconds)
        self.asked += request.limit
        self.most_held_or_asked = max(self.most_held_or_asked, self.held + self.asked)
        try:
            await asyncio.sleep(self.delay)
            return await super().claim(request)
        finally:
            self.out -= 1
            self.asked -= request.limit


class SlowerClaims(SlowClaims):
    delay = 0.2


def test_while_the_queue_is_busy_a_second_claim_is_out_and_it_does_not_wait() -> None:
    async def scenario() -> None:
        rig = Rig(concurrency=8, leases=SlowClaims)
        claims = rig.leases
        assert isinstance(claims, SlowClaims)
        # Jobs that end at once: their slots are free again while a claim is still out.
        await rig.work_off([await rig.submit("dummy", {"mode": "succeed"}) for _ in range(48)])
        assert claims.most_out == 2
        assert 0.0 in claims.waits  # the second claim's
        assert claims.waits[0] == CLAIM_WAIT  # the first claim, before the queue looked busy
        assert claims.most_held_or_asked <= 8  # never more than the concurrency
        assert claims.most_held_or_asked == 8

    asyncio.run(scenario())


def test_an_idle_worker_has_one_claim_out_and_it_waits() -> None:
    async def scenario() -> None:
        rig = Rig(concurrency=8, leases=SlowClaims)
        claims = rig.leases
        assert isinstance(claims, SlowClaims)
        stop = asyncio.Event()
        running = asyncio.create_task(rig.worker.run(stop))
        await asyncio.sleep(0.4)
        job_id = await rig.submit("dummy", {"mode": "succeed"})
        await rig.until_status(job_id, JobStatus.SUCCEEDED)
        await asyncio.sleep(0.2)
        stop.set()
        await asyncio.wait_for(running, 5)
        assert len(claims.waits) >= 3
        assert claims.most_out == 1
        assert set(claims.waits) == {CLAIM_WAIT}

    asyncio.run(scenario())


def test_claims_that_come_back_short_send_no_second_claim() -> None:
    async def scenario() -> None:
        rig = Rig(concurrency=8, leases=SlowClaims)  # a claim asks for up to 4
        claims = rig.leases
        assert isinstance(claims, SlowClaims)
        stop = asyncio.Event()
        running = asyncio.create_task(rig.worker.run(stop))
        for _ in range(5):  # three jobs at a time: each claim comes back with fewer than 4
            ids = [await rig.submit("dummy", {"mode": "succeed"}) for _ in range(3)]
            for job_id in ids:
                await rig.until_status(job_id, JobStatus.SUCCEEDED)
        stop.set()
        await asyncio.wait_for(running, 5)
        assert claims.most_out == 1
        assert 0.0 not in claims.waits

    asyncio.run(scenario())


def test_jobs_a_second_claim_brings_after_the_stop_are_run_or_handed_back() -> None:
    async def scenario() -> None:
        rig = Rig(concurrency=4, drain_grace=5.0, leases=SlowerClaims)
        claims = rig.leases
        assert isinstance(claims, SlowerClaims)
        ids = [await rig.submit("dummy", {"mode": "sleep", "seconds": 0.05}) for _ in range(12)]
        stop = asyncio.Event()
        running = asyncio.create_task(rig.worker.run(stop))
        await asyncio.wait_for(claims.second_out.wait(), 5)
        stop.set()
        await asyncio.wait_for(running, 5)
        statuses = [await rig.status(job_id) for job_id in ids]
        assert JobStatus.ACTIVE not in statuses  # none left leased to a stopped worker
        assert set(statuses) <= {JobStatus.SUCCEEDED, JobStatus.QUEUED}
        assert claims.held == 0  # every job the claims brought was settled or handed back
        assert statuses.count(JobStatus.SUCCEEDED) >= 4  # the two claims out at the stop

    asyncio.run(scenario())
