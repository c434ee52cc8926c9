"""QueueMonitor: figures per queue, and which workers are alive to serve each."""

from __future__ import annotations

from domain.jobs import JobStatus
from domain.ports import JobControl, LeaseQueue, QueueMonitor
from domain.settlement import Ending
from tests.contracts.base import Rig, scenario
from tests.contracts.builders import (
    ERROR,
    FOREVER,
    PAST_SOON,
    SOON,
    at,
    claim_one,
    counts,
    enqueue,
    enqueue_all,
    new_job,
    stats_of,
)
from tests.contracts.driving import driven_job

S = JobStatus


class MonitorContract:
    """What the queue figures count, and how worker presence comes and goes."""

    # -- queue figures ----------------------------------------------------------------------

    @scenario(QueueMonitor)
    async def test_queue_figures_answer_each_queue_asked_for_in_order(self, rig: Rig) -> None:
        await enqueue_all(rig.submitter, [new_job(n=n) for n in range(3)])
        await enqueue(rig.submitter, new_job(queue="other"))
        stats = await rig.monitor.queue_stats(["default", "other", "empty"])
        assert [s.name for s in stats] == ["default", "other", "empty"]
        assert [counts(s)[S.QUEUED] for s in stats] == [3, 1, 0]
        assert [sum(counts(s).values()) for s in stats] == [3, 1, 0]
        default, _, empty = stats
        assert default.oldest_queued_age is not None
        assert default.oldest_queued_age >= 0
        assert empty.oldest_queued_age is None
        assert [s.paused for s in stats] == [False, False, False]
        assert [s.workers for s in stats] == [0, 0, 0]

    @scenario(QueueMonitor, LeaseQueue, JobControl)
    async def test_queue_figures_count_jobs_by_status_with_the_oldest_queued_age(
        self, rig: Rig
    ) -> None:
        now = await rig.now()
        await enqueue_all(rig.submitter, [new_job(n=n) for n in range(4)])
        done, failing, _running, dead = [await claim_one(rig.leases) for _ in range(4)]
        assert await rig.leases.settle(done, Ending.succeeded("ok")) == S.SUCCEEDED
        assert await rig.leases.settle(failing, Ending.failed(ERROR, FOREVER)) == S.FAILED
        assert await rig.leases.settle(dead, Ending.failed(ERROR, None)) == S.DEAD
        cancelled = new_job(n=4)
        await enqueue(rig.submitter, cancelled)
        await rig.control.cancel(cancelled.id)
        await enqueue(rig.submitter, new_job(n=5, run_at=at(now, FOREVER), now=now))
        await enqueue(rig.submitter, new_job(n=6))
        await rig.elapse(PAST_SOON)
        stats = await stats_of(rig.monitor)
        expected = dict.fromkeys(JobStatus, 0)
        for status in (S.SUCCEEDED, S.FAILED, S.ACTIVE, S.DEAD, S.CANCELLED, S.SCHEDULED):
            expected[status] = 1
        expected[S.QUEUED] = 1
        assert counts(stats) == expected
        assert stats.oldest_queued_age is not None
        assert PAST_SOON <= stats.oldest_queued_age < PAST_SOON + 5

    @scenario(QueueMonitor, JobControl)
    async def test_queue_figures_count_jobs_run_by_the_backends_workers_by_status(
        self, rig: Rig
    ) -> None:
        now = await rig.now()
        done, fatal = driven_job({"mode": "succeed"}), driven_job({"mode": "fatal"})
        await enqueue_all(rig.submitter, [done, fatal])
        await rig.drain([done.id, fatal.id])
        cancelled = new_job(n=1)
        await enqueue(rig.submitter, cancelled)
        await rig.control.cancel(cancelled.id)
        await enqueue(rig.submitter, new_job(n=2, run_at=at(now, FOREVER), now=now))
        await enqueue(rig.submitter, new_job(n=3))
        expected = dict.fromkeys(JobStatus, 0)
        for status in (S.SUCCEEDED, S.DEAD, S.CANCELLED, S.SCHEDULED, S.QUEUED):
            expected[status] = 1
        assert counts(await stats_of(rig.monitor)) == expected

    @scenario(QueueMonitor)
    async def test_queue_figures_without_names_cover_every_queue_known(self, rig: Rig) -> None:
        await enqueue_all(rig.submitter, [new_job(queue="alpha"), new_job(queue="beta", n=1)])
        stats = await rig.monitor.queue_stats()
        names = [s.name for s in stats]
        assert len(names) == len(set(names))
        assert {"alpha", "beta"} <= set(names)
        by_name = {s.name: s for s in stats}
        assert counts(by_name["alpha"])[S.QUEUED] == 1
        assert counts(by_name["beta"])[S.QUEUED] == 1

    # -- worker presence --------------------------------------------------------------------

    @scenario(QueueMonitor)
    async def test_heartbeats_count_live_workers_per_queue_until_they_lapse_or_are_forgotten(
        self, rig: Rig
    ) -> None:
        job = new_job()
        await enqueue(rig.submitter, job)

        async def workers() -> list[int | None]:
            stats = await rig.monitor.queue_stats(["default", "other", "idle"])
            return [s.workers for s in stats]

        async def serving_the_job() -> int | None:
            situation = await rig.store.situation(job.id)
            assert situation is not None
            return situation.workers

        assert await serving_the_job() == 0
        await rig.monitor.heartbeat("w1", ["default", "other"], SOON)
        await rig.monitor.heartbeat("w2", ["default"], FOREVER)
        assert await workers() == [2, 1, 0]
        assert await serving_the_job() == 2
        await rig.elapse(PAST_SOON)  # w1's heartbeat lapses
        assert await workers() == [1, 0, 0]
        await rig.monitor.heartbeat("w1", ["other"], FOREVER)
        assert await workers() == [1, 1, 0]
        await rig.monitor.forget_worker("w2")
        await rig.monitor.forget_worker("never-seen")
        assert await workers() == [0, 1, 0]
