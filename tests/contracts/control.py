"""JobControl: cancelling a job (at once when it waits, by asking its worker when it runs),
and requeueing a dead or cancelled one."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from domain.errors import InvalidTransitionError, JobNotFoundError
from domain.jobs import AttemptOutcome, ErrorKind, JobError, JobStatus
from domain.ports import JobControl, JobQuery, LeaseQueue
from domain.settlement import Ending
from tests.contracts.base import Rig, scenario
from tests.contracts.builders import (
    ERROR,
    FOREVER,
    PAST_SOON,
    SOON,
    all_pages,
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
from tests.contracts.driving import driven_job

S = JobStatus
O = AttemptOutcome  # noqa: E741 - reads as the outcome column of the settlement table


class ControlContract:
    """What an operator's cancel and requeue do to a job, in each status."""

    # -- cancelling a waiting job -----------------------------------------------------------

    @scenario(JobControl)
    async def test_cancel_of_a_queued_job_ends_it_at_once(self, rig: Rig) -> None:
        job, other = new_job(n=0), new_job(n=1)
        await enqueue_all(rig.submitter, [job, other])
        cancelled = await rig.control.cancel(job.id)
        assert (cancelled.status, cancelled.attempts, cancelled.started_at) == (
            S.CANCELLED,
            0,
            None,
        )
        assert cancelled.finished_at is not None
        assert await rig.store.get(job.id) == cancelled
        assert await status_of(rig.store, other.id) == S.QUEUED

    @scenario(JobControl)
    async def test_cancel_of_a_scheduled_job_ends_it_at_once(self, rig: Rig) -> None:
        now = await rig.now()
        job = new_job(run_at=at(now, SOON), now=now)
        await enqueue(rig.submitter, job)
        cancelled = await rig.control.cancel(job.id)
        assert (cancelled.status, cancelled.attempts) == (S.CANCELLED, 0)
        assert cancelled.finished_at is not None
        assert await rig.store.get(job.id) == cancelled

    @scenario(JobControl, LeaseQueue)
    async def test_cancel_of_a_failed_job_waiting_for_its_retry_ends_it_at_once_with_its_error(
        self, rig: Rig
    ) -> None:
        job = new_job()
        await enqueue(rig.submitter, job)
        lease = await claim_one(rig.leases)
        assert await rig.leases.settle(lease, Ending.failed(ERROR, SOON)) == S.FAILED
        cancelled = await rig.control.cancel(job.id)
        assert (cancelled.status, cancelled.attempts, cancelled.error) == (S.CANCELLED, 1, ERROR)
        assert cancelled.finished_at is not None
        assert await rig.store.get(job.id) == cancelled

    @scenario(JobControl, LeaseQueue)
    async def test_a_job_cancelled_while_queued_scheduled_or_failed_is_never_claimed(
        self, rig: Rig
    ) -> None:
        now = await rig.now()
        queued, other, failing = new_job(n=0), new_job(n=1), new_job(n=2)
        scheduled = new_job(n=3, run_at=at(now, SOON), now=now)
        await enqueue(rig.submitter, failing)
        lease = await claim_one(rig.leases)
        assert await rig.leases.settle(lease, Ending.failed(ERROR, SOON)) == S.FAILED
        await enqueue_all(rig.submitter, [queued, other, scheduled])
        for job in (queued, scheduled, failing):
            await rig.control.cancel(job.id)
        await rig.elapse(PAST_SOON)  # the retry and the scheduled run are due now
        assert await claimed_ids(rig.leases, n=3) == [other.id]
        for job in (queued, scheduled, failing):
            assert await status_of(rig.store, job.id) == S.CANCELLED

    # -- cancelling a running job -----------------------------------------------------------

    @scenario(JobControl, LeaseQueue)
    async def test_cancel_of_an_active_job_asks_its_worker_to_stop(self, rig: Rig) -> None:
        job, bystander = new_job(n=0), new_job(n=1)
        await enqueue_all(rig.submitter, [job, bystander])
        lease, other = await claim_one(rig.leases), await claim_one(rig.leases)
        assert await rig.leases.cancel_requested([lease, other]) == set()
        asked = await rig.control.cancel(job.id)
        assert (asked.status, asked.attempts, asked.finished_at) == (S.ACTIVE, 1, None)
        assert asked.cancel_requested_at is not None
        assert await rig.store.get(job.id) == asked
        await rig.elapse(0.1)
        again = await rig.control.cancel(job.id)
        assert again.cancel_requested_at == asked.cancel_requested_at  # asked once, when first
        assert await rig.leases.cancel_requested([lease, other]) == {job.id}
        assert await rig.leases.set_progress(lease, 50)  # still its worker's until it stops
        assert await rig.leases.settle(lease, Ending.cancelled()) == S.CANCELLED
        cancelled = await stored(rig.store, job.id)
        assert (cancelled.status, cancelled.attempts, cancelled.progress) == (S.CANCELLED, 1, 50)
        assert cancelled.finished_at is not None
        (record,) = cancelled.history
        assert (record.attempt, record.worker, record.outcome) == (1, "worker-1", O.CANCELLED)
        assert await rig.leases.settle(lease, Ending.cancelled()) is None  # that attempt is over
        assert await rig.leases.settle(lease, Ending.succeeded("late")) is None
        assert await rig.leases.settle(other, Ending.succeeded("done")) == S.SUCCEEDED

    @scenario(JobControl, LeaseQueue)
    async def test_a_cancel_racing_a_claim_cancels_the_job_unclaimed_or_asks_its_worker(
        self, rig: Rig
    ) -> None:
        for n in range(20):
            job = new_job(n=n)
            await enqueue(rig.submitter, job)
            if n % 2:
                leases, answer = await asyncio.gather(
                    claim(rig.leases, limit=1), rig.control.cancel(job.id)
                )
            else:
                answer, leases = await asyncio.gather(
                    rig.control.cancel(job.id), claim(rig.leases, limit=1)
                )
            current = await stored(rig.store, job.id)
            if leases:  # claimed first: never also cancelled unclaimed
                assert [lease.job_id for lease in leases] == [job.id]
                assert (current.status, current.attempts) == (S.ACTIVE, 1)
                assert current.cancel_requested_at is not None
                assert answer.status == S.ACTIVE
                assert await rig.leases.cancel_requested(leases) == {job.id}
                assert await rig.leases.settle(leases[0], Ending.cancelled()) == S.CANCELLED
            else:  # cancelled first: never claimed
                assert (current.status, current.attempts, current.started_at) == (
                    S.CANCELLED,
                    0,
                    None,
                )
                assert answer == current
            assert await claim(rig.leases) == []

    # -- what cannot be cancelled -----------------------------------------------------------

    @scenario(JobControl)
    async def test_cancel_of_an_unknown_job_is_not_found(self, rig: Rig) -> None:
        for job_id in (uuid.uuid4().hex, "not-a-job-id"):
            with pytest.raises(JobNotFoundError):
                await rig.control.cancel(job_id)

    @scenario(JobControl)
    async def test_cancel_of_a_succeeded_dead_or_cancelled_job_is_refused(self, rig: Rig) -> None:
        done, fatal = driven_job({"mode": "succeed"}), driven_job({"mode": "fatal"})
        await enqueue_all(rig.submitter, [done, fatal])
        await rig.drain([done.id, fatal.id])
        cancelled = new_job()
        await enqueue(rig.submitter, cancelled)
        await rig.control.cancel(cancelled.id)
        finished = {done.id: S.SUCCEEDED, fatal.id: S.DEAD, cancelled.id: S.CANCELLED}
        for job_id, status in finished.items():
            before = await stored(rig.store, job_id)
            assert before.status == status
            with pytest.raises(InvalidTransitionError) as refusal:
                await rig.control.cancel(job_id)
            assert (refusal.value.current, refusal.value.target) == (status, S.CANCELLED)
            assert await rig.store.get(job_id) == before

    @scenario(JobControl, LeaseQueue, traits=("deadlines",))
    async def test_cancel_of_an_expired_job_is_refused(self, rig: Rig) -> None:
        now = await rig.now()
        expired = new_job(deadline=at(now, SOON), now=now)
        await enqueue(rig.submitter, expired)
        await rig.elapse(PAST_SOON)
        await rig.leases.recover(["default"])
        before = await stored(rig.store, expired.id)
        assert before.status == S.EXPIRED
        with pytest.raises(InvalidTransitionError) as refusal:
            await rig.control.cancel(expired.id)
        assert (refusal.value.current, refusal.value.target) == (S.EXPIRED, S.CANCELLED)
        assert await rig.store.get(expired.id) == before

    # -- requeue ----------------------------------------------------------------------------

    @scenario(JobControl, LeaseQueue)
    async def test_requeue_of_a_dead_job_gives_fresh_attempts_and_it_runs_to_completion(
        self, rig: Rig
    ) -> None:
        job = new_job(max_attempts=1)
        await enqueue(rig.submitter, job)
        lease = await claim_one(rig.leases)
        assert await rig.leases.set_progress(lease, 30)
        error = JobError("bad input", "ValueError", ErrorKind.NON_RETRYABLE)
        assert await rig.leases.settle(lease, Ending.failed(error, None)) == S.DEAD

        requeued = await rig.control.requeue(job.id)

        assert (requeued.status, requeued.attempts) == (S.QUEUED, 0)
        assert (requeued.error, requeued.result, requeued.progress) == (None, None, None)
        assert (requeued.started_at, requeued.finished_at) == (None, None)
        assert [r.outcome for r in requeued.history] == [O.NON_RETRYABLE]
        assert requeued.payload == job.payload
        assert await rig.store.get(job.id) == requeued
        dead = await all_pages(rig.store, JobQuery(status=S.DEAD))
        queued = await all_pages(rig.store, JobQuery(status=S.QUEUED))
        assert (dead, queued) == ([[]], [[job.id]])

        again = await claim_one(rig.leases)
        assert (again.job_id, again.attempt) == (job.id, 1)
        assert await rig.leases.settle(again, Ending.succeeded("fixed")) == S.SUCCEEDED
        done = await stored(rig.store, job.id)
        assert (done.status, done.result, done.attempts) == (S.SUCCEEDED, "fixed", 1)
        assert [r.outcome for r in done.history] == [O.NON_RETRYABLE, O.SUCCEEDED]
        assert await claim(rig.leases) == []  # queued once

    @scenario(JobControl, LeaseQueue)
    async def test_requeue_of_a_cancelled_job_clears_its_cancel_request_and_it_runs_again(
        self, rig: Rig
    ) -> None:
        job = new_job()
        await enqueue(rig.submitter, job)
        lease = await claim_one(rig.leases)
        await rig.control.cancel(job.id)
        assert await rig.leases.settle(lease, Ending.cancelled()) == S.CANCELLED
        requeued = await rig.control.requeue(job.id)
        assert (requeued.status, requeued.attempts, requeued.cancel_requested_at) == (
            S.QUEUED,
            0,
            None,
        )
        assert requeued.finished_at is None
        again = await claim_one(rig.leases)
        assert again.job.cancel_requested_at is None
        assert await rig.leases.cancel_requested([again]) == set()
        assert await rig.leases.settle(again, Ending.succeeded("ok")) == S.SUCCEEDED
        done = await stored(rig.store, job.id)
        assert [r.outcome for r in done.history] == [O.CANCELLED, O.SUCCEEDED]

    @scenario(JobControl, LeaseQueue)
    async def test_requeue_of_a_queued_active_failed_or_succeeded_job_is_refused(
        self, rig: Rig
    ) -> None:
        succeeded, failed, active, queued = (new_job(n=n) for n in range(4))
        await enqueue_all(rig.submitter, [succeeded, failed, active])
        done, to_fail, running = await claim(rig.leases, limit=3)
        assert await rig.leases.settle(done, Ending.succeeded("ok")) == S.SUCCEEDED
        assert await rig.leases.settle(to_fail, Ending.failed(ERROR, FOREVER)) == S.FAILED
        await enqueue(rig.submitter, queued)
        jobs = [succeeded, failed, active, queued]
        before = {job.id: await rig.store.get(job.id) for job in jobs}

        for job, current in zip(jobs, (S.SUCCEEDED, S.FAILED, S.ACTIVE, S.QUEUED), strict=True):
            with pytest.raises(InvalidTransitionError) as refused:
                await rig.control.requeue(job.id)
            assert (refused.value.job_id, refused.value.current) == (job.id, current)
            assert refused.value.target == S.QUEUED

        after = {job.id: await rig.store.get(job.id) for job in jobs}
        assert after == before
        assert (await stored(rig.store, succeeded.id)).result == "ok"
        assert [lease.job_id for lease in await claim(rig.leases)] == [queued.id]  # once
        assert await rig.leases.settle(running, Ending.succeeded("still mine")) == S.SUCCEEDED

    @scenario(JobControl)
    async def test_requeue_of_an_unknown_job_is_not_found(self, rig: Rig) -> None:
        await enqueue(rig.submitter, new_job())
        for job_id in (uuid.uuid4().hex, "not-a-job-id"):
            with pytest.raises(JobNotFoundError):
                await rig.control.requeue(job_id)
