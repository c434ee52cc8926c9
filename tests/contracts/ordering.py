"""The order claims hand jobs out in: queues as asked, then priority (where the submitter
honours it, `SubmitTraits.priorities`), then first come first served."""

from __future__ import annotations

import asyncio

from domain.jobs import Job, JobStatus
from domain.ports import LeaseQueue
from domain.settlement import Ending
from tests.contracts.base import Rig, scenario
from tests.contracts.builders import (
    LATER,
    LEASE,
    PAST_LEASE,
    SOON,
    at,
    claim,
    claim_one,
    claimed_ids,
    enqueue,
    enqueue_all,
    ids_of,
    new_job,
)


def in_claim_order(rig: Rig, by_priority: list[Job], fifo: list[Job]) -> list[str]:
    """The ids a claimer gets, as the backend's submitter orders them."""
    return [job.id for job in (by_priority if rig.submitter.traits.priorities else fifo)]


class OrderingContract:
    """Which queued job the next claim hands out."""

    @scenario(LeaseQueue)
    async def test_claims_hand_out_the_oldest_jobs_first_and_no_more_than_their_limit(
        self, rig: Rig
    ) -> None:
        jobs = [new_job(n=n) for n in range(5)]
        await enqueue_all(rig.submitter, jobs)
        assert ids_of(await claim(rig.leases, limit=3)) == [job.id for job in jobs[:3]]
        assert ids_of(await claim(rig.leases, limit=3)) == [job.id for job in jobs[3:]]
        assert await claim(rig.leases, limit=3) == []

    @scenario(LeaseQueue)
    async def test_concurrent_submits_keep_their_order_within_each_queue(self, rig: Rig) -> None:
        jobs = [new_job(queue=q, n=n) for n in range(30) for q in ("a", "b")]
        await asyncio.gather(*(enqueue(rig.submitter, job) for job in jobs))
        for name in ("a", "b"):
            leases = await claim(rig.leases, [name], limit=100)
            assert ids_of(leases) == [job.id for job in jobs if job.queue == name], name

    @scenario(LeaseQueue)
    async def test_a_claim_takes_from_earlier_queues_first(self, rig: Rig) -> None:
        low = [new_job(queue="low", n=n) for n in range(2)]
        high = [new_job(queue="high", n=n) for n in range(2)]
        await enqueue_all(rig.submitter, [*low, *high])  # low-priority work was there first
        leases = await claim(rig.leases, ["high", "low"], limit=3)
        assert ids_of(leases) == [high[0].id, high[1].id, low[0].id]
        assert await claim(rig.leases, ["other"], limit=3) == []

    @scenario(LeaseQueue)
    async def test_scheduled_jobs_are_claimed_once_due_in_the_order_they_fall_due(
        self, rig: Rig
    ) -> None:
        now = await rig.now()
        late = new_job(n=0, run_at=at(now, LATER + SOON), now=now)
        early = new_job(n=1, run_at=at(now, LATER), now=now)
        ready = new_job(n=2)
        await enqueue_all(rig.submitter, [late, early, ready])
        assert await claimed_ids(rig.leases, n=3) == [ready.id]
        await rig.elapse_past(at(now, LATER + SOON))
        assert await claimed_ids(rig.leases, n=3) == [early.id, late.id]

    # -- priorities -------------------------------------------------------------------------

    @scenario(LeaseQueue)
    async def test_higher_priorities_are_claimed_first_fifo_within_one_queue_by_queue(
        self, rig: Rig
    ) -> None:
        jobs = [new_job(n=n, priority=p) for n, p in enumerate([0, 5, -3, 5, 0, 100, -100])]
        await enqueue_all(rig.submitter, jobs)
        by_priority = sorted(jobs, key=lambda job: -job.priority)  # stable: FIFO within one
        expected = in_claim_order(rig, by_priority, fifo=jobs)
        assert await claimed_ids(rig.leases, n=len(jobs)) == expected
        # Queues are taken in the order asked for, whatever the priorities inside them.
        low, high = new_job(queue="first", priority=-5), new_job(queue="second", priority=5)
        await enqueue_all(rig.submitter, [high, low])
        assert await claimed_ids(rig.leases, ["first", "second"], n=2) == [low.id, high.id]

    @scenario(LeaseQueue)
    async def test_a_released_job_goes_back_to_the_head_of_its_priority(self, rig: Rig) -> None:
        low1, low2, high = new_job(n=0), new_job(n=1), new_job(n=2, priority=5)
        await enqueue_all(rig.submitter, [low1, low2])
        lease = await claim_one(rig.leases)
        assert lease.job_id == low1.id
        await enqueue(rig.submitter, high)
        assert await rig.leases.settle(lease, Ending.released()) == JobStatus.QUEUED
        expected = in_claim_order(rig, [high, low1, low2], fifo=[low1, low2, high])
        assert await claimed_ids(rig.leases, n=3) == expected

    @scenario(LeaseQueue)
    async def test_a_reclaimed_job_goes_back_to_the_head_of_its_priority(self, rig: Rig) -> None:
        low1, low2, high = new_job(n=0), new_job(n=1), new_job(n=2, priority=5)
        await enqueue_all(rig.submitter, [low1, low2])
        lapsed = await claim_one(rig.leases, lease_seconds=LEASE)
        assert lapsed.job_id == low1.id
        await enqueue(rig.submitter, high)
        await rig.elapse(PAST_LEASE)
        expected = in_claim_order(rig, [high, low1, low2], fifo=[low1, low2, high])
        assert await claimed_ids(rig.leases, n=3) == expected
