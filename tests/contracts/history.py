"""What each attempt leaves on its job: the history record, the heartbeat, the retry time."""

from __future__ import annotations

from domain.jobs import HISTORY_LIMIT, AttemptOutcome, ErrorKind, JobError, JobStatus
from domain.ports import LeaseQueue
from domain.settlement import Ending
from tests.contracts.base import Rig, scenario
from tests.contracts.builders import (
    ERROR,
    FOREVER,
    LEASE,
    PAST_LEASE,
    RETRY_IN,
    claim,
    claim_one,
    enqueue,
    enqueue_all,
    new_job,
    stored,
)

S = JobStatus
O = AttemptOutcome  # noqa: E741 - reads as the outcome column of the settlement table


class HistoryContract:
    """How a job's history and attempt fields record the attempts it went through."""

    @scenario(LeaseQueue)
    async def test_the_history_records_each_attempt_a_failure_then_a_success(
        self, rig: Rig
    ) -> None:
        job = new_job(max_attempts=3)
        await enqueue(rig.submitter, job)
        first = await claim_one(rig.leases, worker_id='worker-a/"1"')
        error = JobError("smtp said no", "SMTPError", ErrorKind.ERROR, "Traceback ...")
        assert await rig.leases.settle(first, Ending.failed(error, RETRY_IN)) == S.FAILED
        await rig.elapse(RETRY_IN + 0.2)
        second = await claim_one(rig.leases, worker_id="worker-b")
        assert [r.outcome for r in second.job.history] == [O.FAILED]
        assert await rig.leases.settle(second, Ending.succeeded("ok")) == S.SUCCEEDED

        done = await stored(rig.store, job.id)
        failed, succeeded = done.history
        assert (failed.attempt, failed.worker, failed.outcome, failed.error) == (
            1,
            'worker-a/"1"',
            O.FAILED,
            "SMTPError: smtp said no",
        )
        assert failed.started_at == first.job.started_at
        assert failed.ended_at is not None
        assert first.job.started_at is not None
        assert failed.ended_at >= first.job.started_at
        assert (succeeded.attempt, succeeded.worker, succeeded.outcome, succeeded.error) == (
            2,
            "worker-b",
            O.SUCCEEDED,
            None,
        )
        assert succeeded.started_at == second.job.started_at
        assert succeeded.ended_at == done.finished_at

    @scenario(LeaseQueue)
    async def test_the_history_records_the_outcome_of_the_error_kind_and_a_short_error(
        self, rig: Rig
    ) -> None:
        kinds = list(ErrorKind)
        jobs = [new_job(n=n) for n in range(len(kinds))]
        await enqueue_all(rig.submitter, jobs)
        leases = await claim(rig.leases, limit=len(jobs))
        for lease, kind in zip(leases, kinds, strict=True):
            ending = Ending.failed(JobError("x" * 1000, "Boom", kind), None)
            ends = S.EXPIRED if kind is ErrorKind.EXPIRED else S.DEAD  # no retry time: no retry
            assert await rig.leases.settle(lease, ending) == ends, kind
        for job, kind in zip(jobs, kinds, strict=True):
            ended = await stored(rig.store, job.id)
            (record,) = ended.history
            assert record.outcome == O.of(kind)
            assert record.error is not None
            assert record.error.startswith("Boom: xxx")
            assert len(record.error) <= 200
            assert ended.error is not None
            assert ended.error.message == "x" * 1000  # the job's own error is whole

    @scenario(LeaseQueue)
    async def test_the_history_keeps_only_the_most_recent_attempts(self, rig: Rig) -> None:
        job = new_job()
        await enqueue(rig.submitter, job)
        rounds = HISTORY_LIMIT + 5
        for n in range(rounds):
            lease = await claim_one(rig.leases, worker_id=f"w{n}")
            assert await rig.leases.settle(lease, Ending.released()) == S.QUEUED
        kept = (await stored(rig.store, job.id)).history
        assert [r.worker for r in kept] == [f"w{n}" for n in range(5, rounds)]
        assert {r.outcome for r in kept} == {O.RELEASED}

    @scenario(LeaseQueue)
    async def test_a_lapsed_lease_is_recorded_as_worker_lost_in_the_history(self, rig: Rig) -> None:
        retried, spent = new_job(max_attempts=2), new_job(max_attempts=1)
        await enqueue_all(rig.submitter, [retried, spent])
        await claim(rig.leases, lease_seconds=LEASE, worker_id="worker-a")
        await rig.elapse(PAST_LEASE)
        again = await claim_one(rig.leases, worker_id="worker-b")
        assert again.job_id == retried.id
        dead = await stored(rig.store, spent.id)
        for job in (again.job, dead):
            (record,) = job.history
            assert (record.attempt, record.worker, record.outcome) == (
                1,
                "worker-a",
                O.WORKER_LOST,
            )
            assert record.error is not None
            assert record.error.startswith("LeaseExpired: lease expired")
        assert dead.status == S.DEAD

    @scenario(LeaseQueue)
    async def test_renew_records_a_heartbeat_a_failure_its_retry_time_and_a_claim_clears_both(
        self, rig: Rig
    ) -> None:
        job = new_job()
        await enqueue(rig.submitter, job)
        lease = await claim_one(rig.leases, lease_seconds=LEASE)
        assert (lease.job.heartbeat_at, lease.job.retry_at) == (None, None)
        assert await rig.store.get(job.id) == lease.job  # a claim answers the job as stored
        await rig.elapse(0.1)
        assert await rig.leases.set_progress(lease, 40)
        assert await rig.leases.renew([lease], FOREVER) == {job.id}
        alive = await stored(rig.store, job.id)
        assert alive.heartbeat_at is not None
        assert alive.started_at is not None
        assert alive.heartbeat_at > alive.started_at
        assert await rig.leases.settle(lease, Ending.failed(ERROR, RETRY_IN)) == S.FAILED
        failed = await stored(rig.store, job.id)
        assert failed.retry_at is not None
        ended = failed.history[-1].ended_at
        assert ended is not None
        assert abs((failed.retry_at - ended).total_seconds() - RETRY_IN) < 0.05
        await rig.elapse(RETRY_IN + 0.2)
        again = await claim_one(rig.leases)
        assert (again.job.retry_at, again.job.heartbeat_at, again.job.progress) == (None,) * 3
        assert (again.job.status, again.job.attempts, again.job.worker) == (S.ACTIVE, 2, "worker-1")
        assert await rig.store.get(job.id) == again.job
