"""Leases over time: renewing them, finding who holds what, and `recover` settling the ones
that lapsed, promoting what came due and forgetting what is past its retention, without a
claim."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from domain.jobs import AttemptOutcome, ErrorKind, JobError, JobStatus, Lease
from domain.ports import JobControl, JobQuery, LeaseQueue
from domain.settlement import Ending
from tests.contracts.base import BackendOptions, Rig, scenario
from tests.contracts.builders import (
    ERROR,
    FOREVER,
    LATER,
    LEASE,
    PAST_LEASE,
    PAST_SOON,
    RETRY_IN,
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

S = JobStatus
O = AttemptOutcome  # noqa: E741 - reads as the outcome column of the settlement table
RETENTION = BackendOptions(result_ttl=SOON, dead_ttl=3 * SOON)


def pairs(leases: Sequence[Lease]) -> set[tuple[str, str]]:
    return {(lease.job_id, lease.token) for lease in leases}


class RecoveryContract:
    """What becomes of leases that are renewed, held by a dead worker, or left to lapse."""

    # -- renewing ---------------------------------------------------------------------------

    @scenario(LeaseQueue)
    async def test_renew_keeps_a_lease_alive_past_its_original_expiry(self, rig: Rig) -> None:
        job = new_job()
        await enqueue(rig.submitter, job)
        lease = await claim_one(rig.leases, lease_seconds=LEASE)
        for _ in range(4):  # 4 x 0.15 s = twice the original lease
            await rig.elapse(LEASE / 2)
            assert await rig.leases.renew([lease], LEASE) == {job.id}
        assert await claim(rig.leases) == []  # not reclaimed
        assert await rig.leases.settle(lease, Ending.succeeded("kept")) == S.SUCCEEDED

    @scenario(LeaseQueue)
    async def test_renew_answers_only_the_leases_still_held(self, rig: Rig) -> None:
        jobs = [new_job(n=n, queue=q) for n, q in enumerate(["a", "a", "b"])]
        await enqueue_all(rig.submitter, jobs)
        kept, done, lapsed = await claim(rig.leases, ["a", "b"], limit=3, lease_seconds=LEASE)
        assert await rig.leases.settle(done, Ending.succeeded(None)) == S.SUCCEEDED
        forged = Lease(kept.job, "not-the-token")
        await rig.elapse(LEASE / 2)
        assert await rig.leases.renew([kept, done, forged], FOREVER) == {kept.job_id}
        await rig.elapse(PAST_LEASE)  # `lapsed` was not renewed: it expired
        assert await rig.leases.renew([kept, lapsed], FOREVER) == {kept.job_id}
        assert await rig.leases.renew([], FOREVER) == set()

    @scenario(LeaseQueue)
    async def test_a_renewed_lease_is_listed_as_held_and_fences_off_a_forged_token(
        self, rig: Rig
    ) -> None:
        job = new_job()
        await enqueue(rig.submitter, job)
        lease = await claim_one(rig.leases, lease_seconds=LEASE)
        assert await rig.leases.renew([lease], FOREVER) == {job.id}
        held = await rig.leases.held_by("worker-1", ["default"])
        assert [lease.job_id for lease in held] == [job.id]
        assert await rig.leases.settle(Lease(lease.job, "forged"), Ending.succeeded("x")) is None

    # -- held_by: what a supervisor settles for a dead worker --------------------------------

    @scenario(LeaseQueue)
    async def test_held_by_answers_exactly_the_leases_one_worker_holds(self, rig: Rig) -> None:
        await enqueue_all(rig.submitter, [new_job(n=n) for n in range(6)])
        await enqueue(rig.submitter, new_job(queue="other"))
        a_leases = [*await claim(rig.leases, limit=2, worker_id="a")]
        b_leases = [*await claim(rig.leases, limit=2, worker_id="b")]
        a_leases += await claim(rig.leases, ["other"], limit=1, worker_id="a")
        held_by = rig.leases.held_by

        assert pairs(await held_by("a", ["default"])) == pairs(a_leases[:2])
        assert pairs(await held_by("a", ["default", "other"])) == pairs(a_leases)
        assert pairs(await held_by("b", ["default", "other"])) == pairs(b_leases)
        assert await held_by("c", ["default", "other"]) == []
        assert await held_by("a", []) == []

        assert await rig.leases.settle(a_leases[0], Ending.succeeded("done")) == S.SUCCEEDED
        held = await held_by("a", ["default", "other"])
        assert pairs(held) == pairs(a_leases[1:])
        assert all(lease.job.status == S.ACTIVE and lease.job.worker == "a" for lease in held)
        # What a supervisor does with a dead child's leases: they are current.
        lost = JobError("worker died", "WorkerLost", ErrorKind.WORKER_LOST, signal="SIGKILL")
        for lease in held:
            assert await rig.leases.settle(lease, Ending.failed(lost, None)) == S.DEAD
        assert await held_by("a", ["default", "other"]) == []
        assert pairs(await held_by("b", ["default"])) == pairs(b_leases)

    # -- lapsed leases ----------------------------------------------------------------------

    @scenario(LeaseQueue)
    async def test_a_lapsed_lease_is_reclaimed_and_claimed_again_with_the_attempt_counted(
        self, rig: Rig
    ) -> None:
        job = new_job(max_attempts=3)
        await enqueue(rig.submitter, job)
        lost = await claim_one(rig.leases, lease_seconds=LEASE)
        await rig.elapse(PAST_LEASE)
        again = await claim_one(rig.leases)
        assert (again.job_id, again.attempt) == (job.id, 2)  # the lost attempt counted
        assert again.job.error is not None
        assert again.job.error.kind == ErrorKind.WORKER_LOST
        # The first worker is fenced off.
        assert await rig.leases.settle(lost, Ending.succeeded("late")) is None
        assert await rig.leases.settle(again, Ending.succeeded("on time")) == S.SUCCEEDED
        done = await stored(rig.store, job.id)
        assert (done.status, done.result) == (S.SUCCEEDED, "on time")

    @scenario(LeaseQueue)
    async def test_a_lapsed_lease_with_no_attempts_left_ends_the_job_dead(self, rig: Rig) -> None:
        job = new_job(max_attempts=1)
        await enqueue(rig.submitter, job)
        await claim_one(rig.leases, lease_seconds=LEASE)
        await rig.elapse(PAST_LEASE)
        assert await claim(rig.leases) == []
        dead = await stored(rig.store, job.id)
        assert (dead.status, dead.attempts) == (S.DEAD, 1)
        assert dead.error is not None
        assert dead.error.kind == ErrorKind.WORKER_LOST
        assert dead.finished_at is not None

    @scenario(LeaseQueue, JobControl)
    async def test_a_lease_lapsing_on_a_job_with_a_cancel_request_ends_it_cancelled(
        self, rig: Rig
    ) -> None:
        job = new_job(max_attempts=3)
        await enqueue(rig.submitter, job)
        await claim_one(rig.leases, lease_seconds=LEASE)
        await rig.control.cancel(job.id)
        await rig.elapse(PAST_LEASE)
        assert await rig.leases.recover(["default"]) == 1
        cancelled = await stored(rig.store, job.id)
        assert (cancelled.status, cancelled.attempts) == (S.CANCELLED, 1)
        assert cancelled.finished_at is not None
        assert [r.outcome for r in cancelled.history] == [O.CANCELLED]
        assert await claim(rig.leases) == []

    @scenario(LeaseQueue, traits=("deadlines",))
    async def test_a_lapsed_lease_past_the_deadline_ends_expired_instead_of_being_retried(
        self, rig: Rig
    ) -> None:
        now = await rig.now()
        doomed = new_job(n=0, deadline=at(now, LATER), now=now)
        retried = new_job(n=1, deadline=at(now, FOREVER), now=now)
        await enqueue_all(rig.submitter, [doomed, retried])
        await claim_one(rig.leases, lease_seconds=LEASE, worker_id="lost")
        await claim_one(rig.leases, lease_seconds=LEASE, worker_id="lost")
        await rig.elapse(PAST_LEASE)
        await rig.elapse_past(at(now, LATER))
        assert await rig.leases.recover(["default"]) == 2
        expired = await stored(rig.store, doomed.id)
        assert (expired.status, expired.attempts) == (S.EXPIRED, 1)
        assert expired.finished_at is not None
        assert expired.error is not None
        assert expired.error.kind == ErrorKind.WORKER_LOST
        (record,) = expired.history
        assert (record.worker, record.outcome) == ("lost", O.EXPIRED)
        assert record.error is not None
        assert record.error.startswith("LeaseExpired")
        assert await status_of(rig.store, retried.id) == S.QUEUED
        assert await claimed_ids(rig.leases, n=2) == [retried.id]

    # -- recover ----------------------------------------------------------------------------

    @scenario(LeaseQueue, JobControl, traits=("deadlines",), options=RETENTION)
    async def test_recover_forgets_finished_jobs_after_their_retention_and_dead_ones_later(
        self, rig: Rig
    ) -> None:
        now = await rig.now()
        done, dead, requeued, running = (new_job(n=n, max_attempts=1) for n in range(4))
        await enqueue_all(rig.submitter, [done, dead, requeued, running])
        leases = [await claim_one(rig.leases) for _ in range(4)]
        assert await rig.leases.settle(leases[0], Ending.succeeded("ok")) == S.SUCCEEDED
        assert await rig.leases.settle(leases[1], Ending.failed(ERROR, None)) == S.DEAD
        assert await rig.leases.settle(leases[2], Ending.failed(ERROR, None)) == S.DEAD
        cancelled, waiting = new_job(n=4), new_job(n=5)
        expired = new_job(n=6, deadline=at(now, 0.1), now=now)
        await enqueue_all(rig.submitter, [cancelled, waiting, expired])
        await rig.control.cancel(cancelled.id)
        await rig.elapse(0.2)
        await rig.leases.recover(["default"])
        assert await status_of(rig.store, expired.id) == S.EXPIRED

        await rig.elapse(PAST_SOON)
        await rig.leases.recover(["default"])
        for job in (done, cancelled, expired):
            assert await rig.store.get(job.id) is None, f"{job.id} kept past result_ttl"
        assert await status_of(rig.store, dead.id) == S.DEAD
        await rig.control.requeue(requeued.id)

        await rig.elapse(3 * SOON)
        await rig.leases.recover(["default"])
        assert await rig.store.get(dead.id) is None, "kept past dead_ttl"
        listed = {job_id for page in await all_pages(rig.store, JobQuery()) for job_id in page}
        assert listed == {requeued.id, running.id, waiting.id}
        assert await status_of(rig.store, requeued.id) == S.QUEUED
        assert await status_of(rig.store, running.id) == S.ACTIVE

    @scenario(LeaseQueue)
    async def test_recover_reclaims_lapsed_leases_and_promotes_due_retries_without_a_claim(
        self, rig: Rig
    ) -> None:
        lapsed, spent, retried, running = (
            new_job(n=0, max_attempts=3),
            new_job(n=1, max_attempts=1),
            new_job(n=2, max_attempts=3),
            new_job(n=3, max_attempts=3),
        )
        await enqueue_all(rig.submitter, [lapsed, spent])
        await claim(rig.leases, limit=2, lease_seconds=LEASE)
        await enqueue_all(rig.submitter, [retried, running])
        to_retry, kept = await claim(rig.leases, limit=2)
        assert await rig.leases.settle(to_retry, Ending.failed(ERROR, RETRY_IN)) == S.FAILED
        assert await rig.leases.recover(["default"]) == 0  # nothing due yet
        await rig.elapse(PAST_LEASE)

        assert await rig.leases.recover(["other"]) == 0  # only the queues asked for
        assert await rig.leases.recover(["default", "other"]) == 3
        assert await rig.leases.recover(["default"]) == 0

        statuses = {job.id: await status_of(rig.store, job.id) for job in (lapsed, spent, retried)}
        assert statuses == {lapsed.id: S.QUEUED, spent.id: S.DEAD, retried.id: S.QUEUED}
        reclaimed = await stored(rig.store, lapsed.id)
        assert reclaimed.error is not None
        assert reclaimed.error.kind == ErrorKind.WORKER_LOST
        assert [r.outcome for r in reclaimed.history] == [O.WORKER_LOST]
        assert await status_of(rig.store, running.id) == S.ACTIVE  # its lease did not lapse
        again = await claim(rig.leases, limit=10)
        assert {lease.job_id for lease in again} == {lapsed.id, retried.id}
        assert await rig.leases.settle(kept, Ending.succeeded("ok")) == S.SUCCEEDED

    @scenario(LeaseQueue)
    async def test_recover_run_by_four_tasks_at_once_moves_each_job_exactly_once(
        self, rig: Rig
    ) -> None:
        jobs = [new_job(n=n) for n in range(40)]
        await enqueue_all(rig.submitter, jobs)
        await claim(rig.leases, limit=40, lease_seconds=LEASE)
        await rig.elapse(PAST_LEASE)
        moved = await asyncio.gather(*(rig.leases.recover(["default"]) for _ in range(4)))
        assert sum(moved) == len(jobs)
        for job in jobs:
            reclaimed = await stored(rig.store, job.id)
            assert (reclaimed.status, reclaimed.attempts) == (S.QUEUED, 1)
            assert [r.outcome for r in reclaimed.history] == [O.WORKER_LOST]
        again = await claim(rig.leases, limit=100)
        assert sorted(lease.job_id for lease in again) == sorted(job.id for job in jobs)
