"""LeaseQueue.claim: handing queued jobs to workers, at once or after waiting for work."""

from __future__ import annotations

import asyncio
import time
from collections import Counter

from domain.jobs import JobStatus
from domain.ports import LeaseQueue
from domain.settlement import Ending
from tests.contracts.base import Rig, scenario
from tests.contracts.builders import (
    claim,
    claim_one,
    enqueue,
    enqueue_all,
    ids_of,
    new_job,
    stored,
)

S = JobStatus


class ClaimContract:
    """What a claim hands out, to whom, and how long it waits for work."""

    @scenario(LeaseQueue)
    async def test_a_claim_marks_the_job_active_with_the_attempt_counted_and_started_at_set(
        self, rig: Rig
    ) -> None:
        job = new_job()
        await enqueue(rig.submitter, job)
        lease = await claim_one(rig.leases)
        assert lease.job.status == S.ACTIVE
        assert lease.attempt == lease.job.attempts == 1
        assert lease.job.started_at is not None
        assert lease.job.payload == job.payload
        assert lease.token
        read = await stored(rig.store, job.id)
        assert (read.status, read.attempts) == (S.ACTIVE, 1)
        assert read.started_at == lease.job.started_at

    @scenario(LeaseQueue)
    async def test_a_claim_records_the_worker_that_holds_the_lease(self, rig: Rig) -> None:
        job = new_job()
        await enqueue(rig.submitter, job)
        lease = await claim_one(rig.leases, worker_id="host-a:1234")
        assert lease.job.worker == "host-a:1234"
        assert (await stored(rig.store, job.id)).worker == "host-a:1234"

    @scenario(LeaseQueue)
    async def test_one_claim_hands_out_several_jobs_up_to_its_limit(self, rig: Rig) -> None:
        jobs = [new_job(n=n) for n in range(3)]
        await enqueue_all(rig.submitter, jobs)
        assert ids_of(await claim(rig.leases, limit=3)) == [job.id for job in jobs]

    @scenario(LeaseQueue)
    async def test_a_claim_on_an_empty_queue_answers_nothing_after_waiting_about_wait_seconds(
        self, rig: Rig
    ) -> None:
        started = time.monotonic()
        leases = await claim(rig.leases, wait_seconds=0.4)
        waited = time.monotonic() - started
        assert leases == []
        assert 0.35 <= waited < 1.5, waited

    @scenario(LeaseQueue)
    async def test_a_job_submitted_while_a_claimer_waits_is_handed_to_it_promptly(
        self, rig: Rig
    ) -> None:
        job = new_job()
        started = time.monotonic()
        waiting = asyncio.create_task(claim(rig.leases, wait_seconds=5.0))
        await asyncio.sleep(0.2)
        await enqueue(rig.submitter, job)
        leases = await waiting
        waited = time.monotonic() - started
        assert ids_of(leases) == [job.id]
        assert waited < 1.0, waited  # woken by the submit, not by the 5 s timeout

    @scenario(LeaseQueue)
    async def test_a_waiting_claim_ends_at_once_when_its_worker_is_asked_to_stop(
        self, rig: Rig
    ) -> None:
        job = new_job()
        started = time.monotonic()
        waiting = asyncio.create_task(claim(rig.leases, wait_seconds=5.0, worker_id="w1"))
        await asyncio.sleep(0.2)
        await rig.leases.stop_waiting("w2", ["default"])  # another worker's: no effect
        await asyncio.sleep(0.2)
        assert not waiting.done()
        await rig.leases.stop_waiting("w1", ["default"])
        assert await waiting == []
        assert time.monotonic() - started < 1.5  # not the 5 s wait
        # Nothing was lost meanwhile: a job submitted now is handed out as usual.
        await enqueue(rig.submitter, job)
        assert ids_of(await claim(rig.leases, wait_seconds=5.0, worker_id="w2")) == [job.id]

    @scenario(LeaseQueue)
    async def test_a_job_released_while_a_claimer_waits_is_handed_to_it_promptly(
        self, rig: Rig
    ) -> None:
        job = new_job()
        await enqueue(rig.submitter, job)
        lease = await claim_one(rig.leases)
        started = time.monotonic()
        waiting = asyncio.create_task(claim(rig.leases, wait_seconds=5.0))
        await asyncio.sleep(0.2)
        assert await rig.leases.settle(lease, Ending.released()) == S.QUEUED
        assert ids_of(await waiting) == [job.id]
        assert time.monotonic() - started < 1.0  # woken by the release, not by the timeout

    @scenario(LeaseQueue)
    async def test_four_concurrent_claimers_never_receive_the_same_job(self, rig: Rig) -> None:
        jobs = [new_job(n=n) for n in range(200)]
        await enqueue_all(rig.submitter, jobs)
        received: list[str] = []
        refused: list[str] = []

        async def worker(name: str) -> None:
            while leases := await claim(rig.leases, limit=7, worker_id=name):
                for lease in leases:
                    received.append(lease.job_id)
                    status = await rig.leases.settle(lease, Ending.succeeded({"by": name}))
                    if status is not S.SUCCEEDED:
                        refused.append(lease.job_id)

        await asyncio.gather(*(worker(f"worker-{n}") for n in range(4)))
        times = Counter(received)
        assert len(received) == 200
        assert set(times) == {job.id for job in jobs}
        assert times.most_common(1)[0][1] == 1
        assert refused == []
