"""Deadlines on waiting jobs: a job not started (or not retried) by its deadline expires unrun.

How an attempt that runs into its deadline ends is in `settle` (a failure) and `recovery`
(a lapsed lease). Only a submitter that honours deadlines (`SubmitTraits.deadlines`) stores a
job with one, so every scenario here needs it.
"""

from __future__ import annotations

from domain.jobs import AttemptOutcome, JobStatus
from domain.ports import LeaseQueue
from domain.settlement import Ending
from tests.contracts.base import Rig, scenario
from tests.contracts.builders import (
    ERROR,
    FOREVER,
    LATER,
    PAST_SOON,
    SOON,
    at,
    claim,
    claim_one,
    claimed_ids,
    enqueue,
    enqueue_all,
    new_job,
    status_of,
    stored,
)

S = JobStatus


class DeadlineContract:
    """What becomes of a waiting job whose deadline passes."""

    @scenario(LeaseQueue, traits=("deadlines",))
    async def test_a_waiting_job_past_its_deadline_expires_unrun_when_recovered(
        self, rig: Rig
    ) -> None:
        now = await rig.now()
        job = new_job(deadline=at(now, LATER), now=now)
        await enqueue(rig.submitter, job)
        assert await rig.store.get(job.id) == job
        assert await rig.leases.recover(["default"]) == 0
        await rig.elapse_past(at(now, LATER))
        assert await rig.leases.recover(["default"]) == 1
        expired = await stored(rig.store, job.id)
        assert (expired.status, expired.attempts, expired.started_at) == (S.EXPIRED, 0, None)
        assert expired.finished_at is not None
        assert expired.history == ()

    @scenario(LeaseQueue, traits=("deadlines",))
    async def test_a_claim_expires_queued_jobs_past_their_deadline_instead_of_claiming_them(
        self, rig: Rig
    ) -> None:
        now = await rig.now()
        doomed = new_job(n=0, deadline=at(now, SOON), now=now)
        kept = new_job(n=1, deadline=at(now, FOREVER), now=now)
        plain = new_job(n=2)
        await enqueue_all(rig.submitter, [doomed, kept, plain])
        await rig.elapse(PAST_SOON)
        assert await claimed_ids(rig.leases, n=3) == [kept.id, plain.id]
        expired = await stored(rig.store, doomed.id)
        assert (expired.status, expired.attempts) == (S.EXPIRED, 0)

    @scenario(LeaseQueue, traits=("deadlines",))
    async def test_a_failed_job_waiting_for_its_retry_expires_at_its_deadline(
        self, rig: Rig
    ) -> None:
        now = await rig.now()
        job = new_job(deadline=at(now, LATER), now=now)
        await enqueue(rig.submitter, job)
        lease = await claim_one(rig.leases)
        # Its retry is due before the deadline: it waits for it.
        assert await rig.leases.settle(lease, Ending.failed(ERROR, SOON / 3)) == S.FAILED
        assert await status_of(rig.store, job.id) == S.FAILED
        await rig.elapse_past(at(now, LATER))
        await rig.leases.recover(["default"])
        expired = await stored(rig.store, job.id)
        assert (expired.status, expired.attempts, expired.error) == (S.EXPIRED, 1, ERROR)
        assert [r.outcome for r in expired.history] == [AttemptOutcome.FAILED]
        assert await claim(rig.leases) == []
