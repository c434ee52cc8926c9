"""The state machine: every status a job is seen in, step after step, follows
`domain.jobs.TRANSITIONS`."""

from __future__ import annotations

from domain.jobs import ErrorKind, JobError, JobStatus
from domain.ports import JobControl, LeaseQueue
from domain.settlement import Ending
from tests.contracts.base import Rig, scenario
from tests.contracts.builders import (
    ERROR,
    FOREVER,
    LATER,
    LEASE,
    PAST_LEASE,
    StatusLog,
    at,
    claim,
    enqueue_all,
    new_job,
)

S = JobStatus


class TransitionsContract:
    """The moves a backend makes are the moves the state machine allows."""

    @scenario(LeaseQueue)
    async def test_statuses_seen_through_retries_and_lapsed_leases_obey_the_transitions(
        self, rig: Rig
    ) -> None:
        log = StatusLog(rig.store)
        retried, lost = new_job(n=0), new_job(n=1, max_attempts=2)
        failing = new_job(n=2, max_attempts=2)
        ids = (retried.id, lost.id, failing.id)
        await enqueue_all(rig.submitter, [retried, lost, failing])
        await log.look(*ids)
        first = {lease.job_id: lease for lease in await claim(rig.leases, lease_seconds=LEASE)}
        await log.look(*ids)
        settle = rig.leases.settle
        assert await settle(first[retried.id], Ending.failed(JobError("e", "E"), 0.1)) == S.FAILED
        assert await rig.leases.renew([first[failing.id]], FOREVER) == {failing.id}
        await log.look(*ids)
        await rig.elapse(PAST_LEASE)  # `lost` expires: attempt 1 of 2 spent
        second = {lease.job_id: lease for lease in await claim(rig.leases, lease_seconds=LEASE)}
        assert set(second) == {retried.id, lost.id}
        await log.look(*ids)
        assert await settle(second[retried.id], Ending.succeeded("ok")) == S.SUCCEEDED
        error = JobError("bad", "E", ErrorKind.NON_RETRYABLE)
        assert await settle(first[failing.id], Ending.failed(error, None)) == S.DEAD
        await rig.elapse(PAST_LEASE)  # `lost` expires again: no attempt left
        assert await claim(rig.leases) == []
        await log.look(*ids)

        assert log.statuses(retried.id) == [S.QUEUED, S.ACTIVE, S.FAILED, S.ACTIVE, S.SUCCEEDED]
        assert log.statuses(lost.id) == [S.QUEUED, S.ACTIVE, S.ACTIVE, S.ACTIVE, S.DEAD]
        assert [tries for _, tries in log.seen[lost.id]] == [0, 1, 1, 2, 2]
        assert log.statuses(failing.id) == [S.QUEUED, S.ACTIVE, S.ACTIVE, S.ACTIVE, S.DEAD]
        assert log.illegal_moves() == []

    @scenario(LeaseQueue, JobControl, traits=("deadlines",))
    async def test_statuses_seen_through_schedules_deadlines_and_cancels_obey_the_transitions(
        self, rig: Rig
    ) -> None:
        log = StatusLog(rig.store)
        now = await rig.now()
        asked, failing = new_job(n=0), new_job(n=1)
        doomed = new_job(n=2, deadline=at(now, LATER), now=now)
        scheduled = new_job(n=3, run_at=at(now, LATER), now=now)
        ids = (asked.id, failing.id, doomed.id, scheduled.id)
        await enqueue_all(rig.submitter, [asked, failing, doomed, scheduled])
        await log.look(*ids)
        await rig.elapse_past(at(now, LATER))
        leases = {lease.job_id: lease for lease in await claim(rig.leases, limit=10)}
        assert set(leases) == {asked.id, failing.id, scheduled.id}
        await log.look(*ids)
        await rig.control.cancel(asked.id)
        assert await rig.leases.settle(leases[failing.id], Ending.failed(ERROR, FOREVER)) == (
            S.FAILED
        )
        assert await rig.leases.settle(leases[scheduled.id], Ending.succeeded("ok")) == (
            S.SUCCEEDED
        )
        await log.look(*ids)
        assert await rig.leases.settle(leases[asked.id], Ending.cancelled()) == S.CANCELLED
        await rig.control.cancel(failing.id)
        await log.look(*ids)

        assert log.statuses(asked.id) == [S.QUEUED, S.ACTIVE, S.ACTIVE, S.CANCELLED]
        assert log.statuses(failing.id) == [S.QUEUED, S.ACTIVE, S.FAILED, S.CANCELLED]
        assert log.statuses(doomed.id) == [S.QUEUED, S.EXPIRED, S.EXPIRED, S.EXPIRED]
        assert log.statuses(scheduled.id) == [S.SCHEDULED, S.ACTIVE, S.SUCCEEDED, S.SUCCEEDED]
        assert log.illegal_moves() == []
