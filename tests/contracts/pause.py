"""QueuePauser: a paused queue takes jobs but hands none out until it is resumed."""

from __future__ import annotations

import asyncio
import time

from domain.jobs import JobStatus
from domain.ports import LeaseQueue, QueueMonitor, QueuePauser
from tests.contracts.base import Rig, scenario
from tests.contracts.builders import (
    claim,
    enqueue,
    enqueue_all,
    ids_of,
    new_job,
    stats_of,
    status_of,
)

S = JobStatus


class PauseContract:
    """What pausing and resuming a queue change, and what they leave alone."""

    @scenario(QueuePauser)
    async def test_a_paused_queue_still_takes_jobs_and_says_it_is_paused_until_resumed(
        self, rig: Rig
    ) -> None:
        job = new_job()
        await enqueue(rig.submitter, job)
        await rig.pauser.pause("default")
        await rig.pauser.pause("default")  # again: still paused
        later = new_job(n=1)
        await enqueue(rig.submitter, later)
        assert await status_of(rig.store, later.id) == S.QUEUED
        for waiting in (job, later):
            situation = await rig.store.situation(waiting.id)
            assert situation is not None
            assert situation.paused is True
        await rig.pauser.resume("default")
        await rig.pauser.resume("default")
        await rig.pauser.resume("never-paused")
        situation = await rig.store.situation(job.id)
        assert situation is not None
        assert situation.paused is False

    @scenario(QueuePauser, QueueMonitor)
    async def test_queue_figures_say_which_queues_are_paused(self, rig: Rig) -> None:
        await enqueue(rig.submitter, new_job())
        await rig.pauser.pause("default")
        assert (await stats_of(rig.monitor)).paused is True
        assert (await stats_of(rig.monitor, "other")).paused is False
        await rig.pauser.resume("default")
        assert (await stats_of(rig.monitor)).paused is False

    @scenario(QueuePauser, QueueMonitor)
    async def test_a_paused_queue_without_jobs_is_among_the_queues_known(self, rig: Rig) -> None:
        await enqueue(rig.submitter, new_job(queue="alpha"))
        await rig.pauser.pause("gamma")
        by_name = {stats.name: stats for stats in await rig.monitor.queue_stats()}
        assert {"alpha", "gamma"} <= set(by_name)
        assert by_name["gamma"].paused is True
        assert by_name["alpha"].paused is False

    @scenario(QueuePauser, LeaseQueue)
    async def test_a_paused_queue_hands_out_nothing_until_resumed_while_others_flow(
        self, rig: Rig
    ) -> None:
        await rig.pauser.pause("held")
        held, flowing = new_job(queue="held"), new_job(queue="flowing")
        await enqueue_all(rig.submitter, [held, flowing])
        assert ids_of(await claim(rig.leases, ["held", "flowing"], limit=10)) == [flowing.id]
        assert await claim(rig.leases, ["held"]) == []
        await rig.pauser.resume("held")
        assert ids_of(await claim(rig.leases, ["held"])) == [held.id]

    @scenario(QueuePauser, LeaseQueue)
    async def test_a_claimer_waiting_on_a_paused_queue_gets_its_job_once_resumed(
        self, rig: Rig
    ) -> None:
        job = new_job()
        await rig.pauser.pause("default")
        await enqueue(rig.submitter, job)
        started = time.monotonic()
        waiting = asyncio.create_task(claim(rig.leases, wait_seconds=5.0))
        await asyncio.sleep(0.3)
        assert not waiting.done()
        await rig.pauser.resume("default")
        assert ids_of(await waiting) == [job.id]
        assert time.monotonic() - started < 1.5  # woken by resume, not by the 5 s wait
