"""Jobs run end to end, each backend its own way (`BackendFactory.drain`): the native worker's
core over a LeaseQueue, or the backend's own worker (RQ). Every backend runs these."""

from __future__ import annotations

import attrs
import pytest

from domain.errors import InvalidTransitionError
from domain.jobs import ErrorKind, JobStatus
from domain.ports import JobControl, JobQuery
from tests.contracts.base import Rig, scenario
from tests.contracts.builders import (
    PAST_SOON,
    SOON,
    all_pages,
    at,
    enqueue,
    enqueue_all,
    new_job,
    status_of,
    stored,
)
from tests.contracts.driving import driven_job

S = JobStatus


class EndToEndContract:
    """What running jobs makes of them, whichever worker runs them."""

    @scenario()
    async def test_a_job_runs_and_succeeds_with_its_result(self, rig: Rig) -> None:
        job = driven_job({"mode": "succeed", "result": {"sent": True, "n": [1, 2.5, None]}})
        await enqueue(rig.submitter, job)
        await rig.drain([job.id])
        done = await stored(rig.store, job.id)
        assert (done.status, done.attempts, done.progress) == (S.SUCCEEDED, 1, 100)
        assert done.result == {"sent": True, "n": [1, 2.5, None]}
        assert done.started_at is not None
        assert done.finished_at is not None
        assert done.finished_at >= done.started_at
        assert done.error is None

    @scenario()
    async def test_a_job_failing_once_succeeds_on_its_retry(self, rig: Rig) -> None:
        job = driven_job({"mode": "fail", "times": 1}, max_attempts=3)
        await enqueue(rig.submitter, job)
        await rig.drain([job.id])
        done = await stored(rig.store, job.id)
        assert (done.status, done.attempts) == (S.SUCCEEDED, 2)
        assert done.result == {"ok": True, "attempt": 2}

    @scenario()
    async def test_a_job_that_keeps_failing_is_retried_then_dead(self, rig: Rig) -> None:
        job = driven_job({"mode": "fail"}, max_attempts=3)
        await enqueue(rig.submitter, job)
        await rig.drain([job.id])
        dead = await stored(rig.store, job.id)
        assert (dead.status, dead.attempts) == (S.DEAD, 3)
        assert dead.error is not None
        assert (dead.error.kind, dead.error.type) == (ErrorKind.ERROR, "DummyFailureError")
        assert dead.error.message == "dummy failure on attempt 3"
        assert dead.finished_at is not None
        assert await all_pages(rig.store, JobQuery(status=S.DEAD)) == [[job.id]]

    @scenario()
    async def test_a_non_retryable_failure_ends_the_job_dead_at_once(self, rig: Rig) -> None:
        job = driven_job({"mode": "fatal"}, max_attempts=3)
        await enqueue(rig.submitter, job)
        await rig.drain([job.id])
        dead = await stored(rig.store, job.id)
        assert (dead.status, dead.attempts) == (S.DEAD, 1)
        assert dead.error is not None
        assert dead.error.kind == ErrorKind.NON_RETRYABLE

    @scenario()
    async def test_a_job_the_registry_cannot_vouch_for_is_dead_lettered_unrun(
        self, rig: Rig
    ) -> None:
        unknown = new_job(type="no-such-type")
        invalid = driven_job({"mode": "succeed", "unexpected": 1})
        await enqueue_all(rig.submitter, [unknown, invalid])
        await rig.drain([unknown.id, invalid.id])
        for job in (unknown, invalid):
            dead = await stored(rig.store, job.id)
            assert (dead.status, dead.attempts, dead.result) == (S.DEAD, 1, None), job.type
            assert dead.error is not None
            assert dead.error.kind == ErrorKind.INVALID

    @scenario()
    async def test_jobs_run_in_priority_order_or_first_come_first_served(self, rig: Rig) -> None:
        low = driven_job({"mode": "succeed"})
        high = driven_job({"mode": "succeed"}, priority=5)
        await enqueue_all(rig.submitter, [low, high])  # the low-priority job was there first
        await rig.drain([low.id, high.id])
        started = {}
        for job in (low, high):
            ran = await stored(rig.store, job.id)
            assert ran.status == S.SUCCEEDED
            assert ran.started_at is not None
            started[job.id] = ran.started_at
        assert started[low.id] != started[high.id], "both started at once: no order to tell"
        expected = [high.id, low.id] if rig.submitter.traits.priorities else [low.id, high.id]
        assert sorted(started, key=started.__getitem__) == expected

    @scenario()
    async def test_a_scheduled_job_runs_once_due_and_not_before(self, rig: Rig) -> None:
        now = await rig.now()
        due = driven_job({"mode": "succeed"})
        later = attrs.evolve(
            driven_job({"mode": "succeed"}), status=S.SCHEDULED, run_at=at(now, SOON)
        )
        await enqueue_all(rig.submitter, [due, later])
        await rig.drain([due.id])
        waiting = await stored(rig.store, later.id)
        # A slow worker (a real process on a busy machine) may take longer than SOON to run
        # the due job; then the later one may already have run, and the last assertion below
        # still proves it did not start early.
        if await rig.now() < at(now, SOON):
            assert (waiting.status, waiting.attempts, waiting.started_at) == (
                S.SCHEDULED,
                0,
                None,
            )
        await rig.elapse(PAST_SOON)
        await rig.drain([later.id])
        ran = await stored(rig.store, later.id)
        assert (ran.status, ran.attempts) == (S.SUCCEEDED, 1)
        assert ran.started_at is not None
        assert ran.started_at >= at(now, SOON)

    @scenario(JobControl)
    async def test_a_job_cancelled_while_queued_or_scheduled_never_runs(self, rig: Rig) -> None:
        now = await rig.now()
        doomed, kept = driven_job({"mode": "succeed"}), driven_job({"mode": "succeed"})
        scheduled = attrs.evolve(
            driven_job({"mode": "succeed"}), status=S.SCHEDULED, run_at=at(now, SOON)
        )
        await enqueue_all(rig.submitter, [doomed, kept, scheduled])
        await rig.control.cancel(doomed.id)
        await rig.control.cancel(scheduled.id)
        await rig.elapse(PAST_SOON)  # the scheduled one would be due now
        await rig.drain([kept.id])
        assert await status_of(rig.store, kept.id) == S.SUCCEEDED
        for job in (doomed, scheduled):
            cancelled = await stored(rig.store, job.id)
            assert (cancelled.status, cancelled.attempts, cancelled.started_at) == (
                S.CANCELLED,
                0,
                None,
            )

    @scenario(JobControl)
    async def test_a_dead_job_requeued_runs_again_with_fresh_attempts(self, rig: Rig) -> None:
        job = driven_job({"mode": "fatal"}, max_attempts=2)
        await enqueue(rig.submitter, job)
        await rig.drain([job.id])
        requeued = await rig.control.requeue(job.id)
        assert (requeued.status, requeued.attempts) == (S.QUEUED, 0)
        with pytest.raises(InvalidTransitionError):
            await rig.control.requeue(job.id)  # queued now, not dead
        await rig.drain([job.id])
        dead = await stored(rig.store, job.id)
        assert (dead.status, dead.attempts) == (S.DEAD, 1)
