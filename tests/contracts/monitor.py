"""QueueMonitor: figures per queue, and which workers are alive to serve each."""

from __future__ import annotations

from domain.jobs import JobStatus
from domain.ports import JobControl, LeaseQueue, QueueMonitor, QueuePauser, WorkerLoad
from domain.settlement import Ending
from tests.contracts.base import Rig, scenario
from tests.contracts.builders import (
    ERROR,
    FOREVER,
    PAST_SOON,
    SOON,
    at,
    claim,
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

    # -- rates ------------------------------------------------------------------------------

    @scenario(QueueMonitor, LeaseQueue, QueuePauser)
    async def test_a_queue_drained_while_jobs_wait_has_a_drain_rate_its_queued_jobs_read(
        self, rig: Rig
    ) -> None:
        jobs = [new_job(n=n) for n in range(6)]
        await enqueue_all(rig.submitter, jobs)
        before = await stats_of(rig.monitor)
        assert before.drain_rate is None  # nothing claimed yet: nothing measured
        assert before.rate_in is not None
        assert before.rate_in > 0
        await claim(rig.leases, limit=2)  # jobs are left: the queue is draining from now
        await rig.elapse(SOON)
        await claim(rig.leases, limit=2)  # 2 jobs in SOON seconds of draining
        stats = await stats_of(rig.monitor)
        assert stats.drain_rate is not None
        # About 2 / SOON; the clock of a real server moves on between the calls too.
        assert 0.5 * 2 / SOON <= stats.drain_rate <= 1.05 * 2 / SOON
        assert stats.rate_out is not None
        assert stats.rate_out > 0
        situation = await rig.store.situation(jobs[5].id)
        assert situation is not None
        assert situation.ahead == 1
        assert situation.drain_rate == stats.drain_rate
        await rig.pauser.pause("default")
        paused = await rig.store.situation(jobs[5].id)
        assert paused is not None
        assert paused.drain_rate is None  # a paused queue does not drain: no estimate

    @scenario(QueueMonitor, LeaseQueue)
    async def test_time_a_queue_spent_empty_does_not_count_against_its_drain_rate(
        self, rig: Rig
    ) -> None:
        await enqueue_all(rig.submitter, [new_job(n=n) for n in range(4)])
        await claim(rig.leases, limit=2)
        await rig.elapse(SOON)
        await claim(rig.leases, limit=2)  # claimed dry: 2 jobs in SOON seconds
        measured = (await stats_of(rig.monitor)).drain_rate
        assert measured is not None
        await rig.elapse(PAST_SOON)  # empty: nothing to drain
        await enqueue_all(rig.submitter, [new_job(n=n) for n in range(4, 6)])
        await claim(rig.leases, limit=1)
        assert (await stats_of(rig.monitor)).drain_rate == measured

    # -- worker presence --------------------------------------------------------------------

    @scenario(QueueMonitor)
    async def test_live_workers_are_listed_with_what_they_said_of_themselves(
        self, rig: Rig
    ) -> None:
        await rig.monitor.heartbeat("w1", ["default"], FOREVER, WorkerLoad(in_flight=3, done=7))
        await rig.monitor.heartbeat("w2", ["default", "other"], SOON)
        workers = {w.id: w for w in await rig.monitor.workers()}
        assert set(workers) == {"w1", "w2"}
        if rig.backend.name != "rq":  # RQ's workers are RQ's: nothing of ours runs in them
            assert (workers["w1"].in_flight, workers["w1"].done) == (3, 7)
        assert workers["w2"].queues == ("default", "other")
        await rig.elapse(PAST_SOON)  # w2's heartbeat lapses
        await rig.monitor.forget_worker("w1")
        assert list(await rig.monitor.workers()) == []

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
