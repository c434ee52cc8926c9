"""AttemptReporter: progress, and every way an attempt ends through `settle` (succeeded,
retried, dead, released, cancelled, expired), fenced by the lease's token."""

from __future__ import annotations

import asyncio

import pytest

from domain.errors import UnstorableResultError
from domain.jobs import AttemptOutcome, ErrorKind, JobError, JobStatus, Lease
from domain.ports import JobControl, LeaseQueue
from domain.settlement import Ending
from tests.contracts.base import Rig, scenario
from tests.contracts.builders import (
    ERROR,
    FOREVER,
    LATER,
    PAST_LEASE,
    RETRY_IN,
    at,
    claim,
    claim_one,
    enqueue,
    enqueue_all,
    new_job,
    stored,
)

S = JobStatus
O = AttemptOutcome  # noqa: E741 - reads as the outcome column of the settlement table


def forged(lease: Lease) -> Lease:
    """The lease with a token the backend never handed out."""
    return Lease(lease.job, lease.token + "x")


class SettleContract:
    """How the end of an attempt is stored, and which writes about it are refused."""

    # -- succeeded, failed, dead ------------------------------------------------------------

    @scenario(LeaseQueue)
    async def test_a_success_stores_the_result_and_the_job_succeeds(self, rig: Rig) -> None:
        job = new_job()
        await enqueue(rig.submitter, job)
        lease = await claim_one(rig.leases)
        result = {"sent": True, "count": 3}
        assert await rig.leases.settle(lease, Ending.succeeded(result)) == S.SUCCEEDED
        done = await stored(rig.store, job.id)
        assert (done.status, done.result, done.progress, done.attempts) == (
            S.SUCCEEDED,
            result,
            100,
            1,
        )
        assert done.finished_at is not None
        assert await claim(rig.leases) == []

    @scenario(LeaseQueue)
    async def test_a_failure_with_a_retry_time_waits_failed_then_is_claimed_again(
        self, rig: Rig
    ) -> None:
        job = new_job(max_attempts=3)
        await enqueue(rig.submitter, job)
        lease = await claim_one(rig.leases)
        error = JobError("smtp said no", "SMTPError", ErrorKind.ERROR, "Traceback ...")
        assert await rig.leases.settle(lease, Ending.failed(error, RETRY_IN)) == S.FAILED
        failed = await stored(rig.store, job.id)
        assert (failed.status, failed.error, failed.finished_at) == (S.FAILED, error, None)
        assert await claim(rig.leases) == []  # not before its delay
        await rig.elapse(RETRY_IN + 0.2)
        again = await claim_one(rig.leases)
        assert (again.job_id, again.attempt) == (job.id, 2)
        assert again.token != lease.token
        assert again.job.error == error  # the last failure stays visible while it runs

    @scenario(LeaseQueue)
    async def test_a_failure_without_a_retry_time_ends_the_job_dead_with_its_error(
        self, rig: Rig
    ) -> None:
        job = new_job(max_attempts=3)
        await enqueue(rig.submitter, job)
        lease = await claim_one(rig.leases)
        error = JobError("bad input", "ValueError", ErrorKind.NON_RETRYABLE)
        assert await rig.leases.settle(lease, Ending.failed(error, None)) == S.DEAD
        dead = await stored(rig.store, job.id)
        assert (dead.status, dead.error, dead.attempts) == (S.DEAD, error, 1)
        assert dead.finished_at is not None
        await rig.elapse(PAST_LEASE)
        assert await claim(rig.leases) == []

    @scenario(LeaseQueue)
    async def test_a_failure_retried_at_once_goes_back_to_the_head_of_its_queue(
        self, rig: Rig
    ) -> None:
        failing, waiting = new_job(n=0), new_job(n=1)
        await enqueue_all(rig.submitter, [failing, waiting])
        lease = await claim_one(rig.leases)
        assert await rig.leases.settle(lease, Ending.failed(ERROR, 0.0)) == S.QUEUED
        queued = await stored(rig.store, failing.id)
        assert (queued.status, queued.attempts, queued.error) == (S.QUEUED, 1, ERROR)
        assert (queued.retry_at, queued.finished_at) == (None, None)
        assert [r.outcome for r in queued.history] == [O.FAILED]
        again = await claim_one(rig.leases)
        assert (again.job_id, again.attempt) == (failing.id, 2)  # ahead of `waiting`

    @scenario(LeaseQueue)
    async def test_a_retryable_failure_on_the_last_attempt_ends_the_job_dead(
        self, rig: Rig
    ) -> None:
        job = new_job(max_attempts=2)
        await enqueue(rig.submitter, job)
        first = await claim_one(rig.leases)
        assert await rig.leases.settle(first, Ending.failed(ERROR, 0.0)) == S.QUEUED
        last = await claim_one(rig.leases)
        assert await rig.leases.settle(last, Ending.failed(ERROR, 0.0)) == S.DEAD
        dead = await stored(rig.store, job.id)
        assert (dead.status, dead.attempts, dead.error) == (S.DEAD, 2, ERROR)
        assert dead.finished_at is not None
        assert [r.outcome for r in dead.history] == [O.FAILED, O.FAILED]
        assert await claim(rig.leases) == []

    @scenario(LeaseQueue)
    async def test_a_failure_keeps_the_exit_code_or_signal_of_the_process_that_died(
        self, rig: Rig
    ) -> None:
        exited, killed = new_job(max_attempts=1), new_job(max_attempts=3)
        await enqueue_all(rig.submitter, [exited, killed])
        first, second = await claim(rig.leases, limit=2)
        by_exit = JobError("worker exited", "WorkerLost", ErrorKind.WORKER_LOST, exit_code=3)
        by_signal = JobError("worker killed", "WorkerLost", ErrorKind.WORKER_LOST, signal="SIGKILL")
        assert await rig.leases.settle(first, Ending.failed(by_exit, None)) == S.DEAD
        assert await rig.leases.settle(second, Ending.failed(by_signal, FOREVER)) == S.FAILED
        dead, failed = await stored(rig.store, exited.id), await stored(rig.store, killed.id)
        assert (dead.status, dead.error) == (S.DEAD, by_exit)
        assert dead.error is not None
        assert (dead.error.exit_code, dead.error.signal) == (3, None)
        assert (failed.status, failed.error) == (S.FAILED, by_signal)
        assert failed.error is not None
        assert (failed.error.exit_code, failed.error.signal) == (None, "SIGKILL")
        assert [r.outcome for r in (*dead.history, *failed.history)] == [
            O.WORKER_LOST,
            O.WORKER_LOST,
        ]

    @scenario(LeaseQueue)
    async def test_a_success_whose_result_cannot_be_stored_is_refused_and_changes_nothing(
        self, rig: Rig
    ) -> None:
        job = new_job()
        await enqueue(rig.submitter, job)
        lease = await claim_one(rig.leases)
        # No JSON encoder stores an arbitrary object. (Backends differ on NaN: strict JSON
        # refuses it, msgspec stores null.)
        with pytest.raises(UnstorableResultError):
            await rig.leases.settle(lease, Ending.succeeded({"handle": object()}))
        assert await stored(rig.store, job.id) == lease.job
        assert await rig.leases.settle(lease, Ending.succeeded("stored")) == S.SUCCEEDED

    # -- progress, and the protocol as a worker drives it ------------------------------------

    @scenario(LeaseQueue)
    async def test_progress_is_visible_through_the_store(self, rig: Rig) -> None:
        job = new_job()
        await enqueue(rig.submitter, job)
        lease = await claim_one(rig.leases)
        assert await rig.leases.set_progress(lease, 40) is True
        running = await stored(rig.store, job.id)
        assert (running.status, running.progress) == (S.ACTIVE, 40)
        assert await rig.leases.set_progress(lease, 90) is True
        assert (await stored(rig.store, job.id)).progress == 90

    @scenario(LeaseQueue)
    async def test_a_lease_takes_progress_then_a_release_then_a_failure(self, rig: Rig) -> None:
        job = new_job()
        await enqueue(rig.submitter, job)
        lease = await claim_one(rig.leases)
        assert await rig.leases.set_progress(lease, 10) is True
        assert await rig.leases.settle(lease, Ending.released()) == S.QUEUED
        lease = await claim_one(rig.leases)
        assert await rig.leases.settle(lease, Ending.failed(ERROR, FOREVER)) == S.FAILED

    # -- released ---------------------------------------------------------------------------

    @scenario(LeaseQueue)
    async def test_a_release_puts_the_job_back_first_in_line_with_the_attempt_not_counted(
        self, rig: Rig
    ) -> None:
        handed_back, waiting = new_job(n=0), new_job(n=1)
        await enqueue_all(rig.submitter, [handed_back, waiting])
        lease = await claim_one(rig.leases, worker_id="stopping")
        assert await rig.leases.settle(lease, Ending.released()) == S.QUEUED
        queued = await stored(rig.store, handed_back.id)
        assert (queued.status, queued.attempts, queued.error) == (S.QUEUED, 0, None)
        (record,) = queued.history
        assert (record.attempt, record.worker, record.outcome) == (1, "stopping", O.RELEASED)
        assert await rig.leases.settle(lease, Ending.released()) is None  # its lease ended
        assert await rig.leases.settle(lease, Ending.succeeded("late")) is None
        again = await claim_one(rig.leases, worker_id="next")
        assert (again.job_id, again.attempt) == (handed_back.id, 1)  # ahead of `waiting`
        assert again.token != lease.token
        assert await rig.leases.settle(again, Ending.succeeded("done")) == S.SUCCEEDED

    # -- stale writes -----------------------------------------------------------------------

    @scenario(LeaseQueue)
    async def test_a_write_under_a_stale_token_is_refused_and_changes_nothing(
        self, rig: Rig
    ) -> None:
        job = new_job()
        await enqueue(rig.submitter, job)
        lease = await claim_one(rig.leases)
        stale = forged(lease)
        assert await rig.leases.set_progress(stale, 10) is False
        for ending in (
            Ending.succeeded("forged"),
            Ending.failed(JobError("no", "E"), None),
            Ending.released(),
            Ending.cancelled(),
        ):
            assert await rig.leases.settle(stale, ending) is None, ending.outcome
        running = await stored(rig.store, job.id)
        assert running == lease.job
        assert (running.status, running.progress, running.result) == (S.ACTIVE, None, None)
        assert (running.attempts, running.history) == (1, ())
        assert await claim(rig.leases) == []
        assert await rig.leases.settle(lease, Ending.succeeded("real")) == S.SUCCEEDED
        assert await rig.leases.settle(lease, Ending.succeeded("twice")) is None  # it ended
        done = await stored(rig.store, job.id)
        assert (done.status, done.result) == (S.SUCCEEDED, "real")

    @scenario(LeaseQueue)
    async def test_concurrent_settlements_each_get_their_own_answer(self, rig: Rig) -> None:
        jobs = [new_job(n=n) for n in range(3)]
        await enqueue_all(rig.submitter, jobs)
        first, second, third = await claim(rig.leases, limit=3)
        answers = await asyncio.gather(
            rig.leases.settle(first, Ending.succeeded(1)),
            rig.leases.settle(forged(second), Ending.succeeded(2)),
            rig.leases.settle(third, Ending.succeeded(3)),
            rig.leases.settle(first, Ending.succeeded("again")),
        )
        assert list(answers) == [S.SUCCEEDED, None, S.SUCCEEDED, None]
        read = [await stored(rig.store, job.id) for job in jobs]
        assert [(j.status, j.result) for j in read] == [
            (S.SUCCEEDED, 1),
            (S.ACTIVE, None),
            (S.SUCCEEDED, 3),
        ]

    @scenario(LeaseQueue)
    async def test_each_refused_stale_write_is_counted_once(self, rig: Rig) -> None:
        before = await rig.stale_writes()  # skips on a backend that exposes no count
        await enqueue_all(rig.submitter, [new_job(n=n) for n in range(2)])
        lease, other = await claim(rig.leases, limit=2)
        stale = forged(lease)
        assert await rig.leases.set_progress(stale, 10) is False
        assert await rig.leases.settle(stale, Ending.succeeded("forged")) is None
        assert await rig.leases.settle(stale, Ending.failed(ERROR, None)) is None
        assert await rig.leases.settle(stale, Ending.released()) is None
        assert await rig.stale_writes() == before + 4, "forged tokens"
        assert await rig.leases.settle(lease, Ending.released()) == S.QUEUED
        assert await rig.leases.settle(lease, Ending.released()) is None
        assert await rig.leases.settle(lease, Ending.succeeded("late")) is None
        assert await rig.stale_writes() == before + 6, "a released lease"
        assert await rig.leases.settle(other, Ending.succeeded("ok")) == S.SUCCEEDED
        assert await rig.stale_writes() == before + 6, "a current lease"

    # -- cancelled and expired: the job's cancel request and deadline decide -----------------

    @scenario(LeaseQueue, JobControl)
    async def test_an_attempt_failed_or_released_after_a_cancel_request_ends_the_job_cancelled(
        self, rig: Rig
    ) -> None:
        failing, releasing = new_job(n=0), new_job(n=1)
        await enqueue_all(rig.submitter, [failing, releasing])
        failed, released = await claim_one(rig.leases), await claim_one(rig.leases)
        await rig.control.cancel(failing.id)
        await rig.control.cancel(releasing.id)
        # Not retried, and not handed back to the queue.
        assert await rig.leases.settle(failed, Ending.failed(ERROR, 0.0)) == S.CANCELLED
        assert await rig.leases.settle(released, Ending.released()) == S.CANCELLED
        for job in (failing, releasing):
            cancelled = await stored(rig.store, job.id)
            assert (cancelled.status, cancelled.attempts) == (S.CANCELLED, 1)
            assert cancelled.finished_at is not None
            assert [r.outcome for r in cancelled.history] == [O.CANCELLED]
        assert (await stored(rig.store, failing.id)).error == ERROR
        await rig.elapse(0.1)
        assert await claim(rig.leases) == []

    @scenario(LeaseQueue, JobControl)
    async def test_a_cancelled_ending_under_a_stale_token_is_refused_and_changes_nothing(
        self, rig: Rig
    ) -> None:
        job = new_job()
        await enqueue(rig.submitter, job)
        lease = await claim_one(rig.leases)
        await rig.control.cancel(job.id)
        before = await stored(rig.store, job.id)
        assert await rig.leases.settle(forged(lease), Ending.cancelled()) is None
        assert await rig.store.get(job.id) == before
        assert await rig.leases.settle(lease, Ending.cancelled()) == S.CANCELLED

    @scenario(LeaseQueue, traits=("deadlines",))
    async def test_a_failure_after_the_deadline_ends_the_job_expired(self, rig: Rig) -> None:
        now = await rig.now()
        job = new_job(deadline=at(now, LATER), now=now)
        await enqueue(rig.submitter, job)
        lease = await claim_one(rig.leases)
        await rig.elapse_past(at(now, LATER))
        assert await rig.leases.settle(lease, Ending.failed(ERROR, 0.0)) == S.EXPIRED
        expired = await stored(rig.store, job.id)
        assert (expired.status, expired.attempts, expired.error) == (S.EXPIRED, 1, ERROR)
        assert expired.finished_at is not None
        (record,) = expired.history
        assert (record.attempt, record.outcome, record.error) == (
            1,
            O.EXPIRED,
            "SMTPError: smtp said no",
        )
        await rig.elapse(0.1)
        assert await claim(rig.leases) == []

    @scenario(LeaseQueue, traits=("deadlines",))
    async def test_a_failure_whose_retry_would_come_after_the_deadline_ends_expired_at_once(
        self, rig: Rig
    ) -> None:
        now = await rig.now()
        tight = new_job(n=0, deadline=at(now, FOREVER / 2), now=now)
        roomy = new_job(n=1, deadline=at(now, 2 * FOREVER), now=now)
        await enqueue_all(rig.submitter, [tight, roomy])
        first, second = await claim_one(rig.leases), await claim_one(rig.leases)
        assert (first.job_id, second.job_id) == (tight.id, roomy.id)
        assert await rig.leases.settle(first, Ending.failed(ERROR, FOREVER)) == S.EXPIRED
        assert await rig.leases.settle(second, Ending.failed(ERROR, FOREVER)) == S.FAILED
        expired, retried = await stored(rig.store, tight.id), await stored(rig.store, roomy.id)
        assert expired.status == S.EXPIRED
        assert [r.outcome for r in expired.history] == [O.EXPIRED]
        assert retried.status == S.FAILED
        assert [r.outcome for r in retried.history] == [O.FAILED]
