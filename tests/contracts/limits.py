"""What a backend keeps bounded, whatever its callers send: how many queues it keeps (past
`max_queues` a new queue is refused, and the queues nothing uses are forgotten), how long a
result may be, how long an error message is kept."""

from __future__ import annotations

import uuid
from typing import Final

import attrs
import pytest

from domain.errors import ResultTooLargeError, TooManyQueuesError
from domain.jobs import ERROR_MESSAGE_LIMIT, Job, JobError, JobStatus, new_job_id
from domain.ports import LeaseQueue, NewJob, QueueMonitor, QueuePauser
from domain.settlement import Ending
from tests.contracts.base import QUEUE_GRACE, BackendOptions, Rig, scenario
from tests.contracts.builders import (
    FOREVER,
    PAST_SOON,
    SOON,
    claim_one,
    enqueue,
    new_job,
    stats_of,
    stored,
)

S = JobStatus
PAST_GRACE: Final = QUEUE_GRACE + 0.2

TWO_QUEUES = BackendOptions(max_queues=2)
ONE_QUEUE_SHORT_RESULTS = BackendOptions(max_queues=1, result_ttl=SOON)
SMALL_RESULTS = BackendOptions(max_result_bytes=100)


async def listed(rig: Rig) -> set[str]:
    return {stats.name for stats in await rig.monitor.queue_stats()}


async def refused_new_queue(rig: Rig, queue: str) -> None:
    job = new_job(queue=queue)
    with pytest.raises(TooManyQueuesError) as refusal:
        await enqueue(rig.submitter, job)
    assert refusal.value.queue == queue
    assert refusal.value.retry_after > 0
    assert await rig.store.get(job.id) is None


class LimitsContract:
    """The most queues, the longest result, the longest error message."""

    # -- the most queues --------------------------------------------------------------------

    @scenario(options=TWO_QUEUES)
    async def test_past_max_queues_a_job_for_another_queue_is_refused_storing_nothing(
        self, rig: Rig
    ) -> None:
        await enqueue(rig.submitter, new_job(queue="alpha"))
        await enqueue(rig.submitter, new_job(queue="beta"))
        third = new_job(queue="gamma")
        with pytest.raises(TooManyQueuesError) as refusal:
            await enqueue(rig.submitter, third)
        assert (refusal.value.queue, refusal.value.limit) == ("gamma", 2)
        assert refusal.value.retry_after > 0
        assert await rig.store.get(third.id) is None
        for queue in ("alpha", "beta"):  # the queues kept still take jobs
            more = new_job(queue=queue, n=1)
            await enqueue(rig.submitter, more)
            assert (await stored(rig.store, more.id)).status is S.QUEUED

    @scenario(options=TWO_QUEUES)
    async def test_a_batch_opening_too_many_queues_is_refused_whole(self, rig: Rig) -> None:
        await enqueue(rig.submitter, new_job(queue="alpha"))
        batch = [new_job(queue="alpha", n=1), new_job(queue="beta"), new_job(queue="gamma")]
        with pytest.raises(TooManyQueuesError):
            await rig.submitter.submit([NewJob(job=job) for job in batch])
        for job in batch:
            assert await rig.store.get(job.id) is None

    @scenario(QueuePauser, QueueMonitor, options=TWO_QUEUES)
    async def test_past_max_queues_pausing_another_queue_is_refused(self, rig: Rig) -> None:
        await rig.pauser.pause("alpha")
        await enqueue(rig.submitter, new_job(queue="beta"))
        with pytest.raises(TooManyQueuesError) as refusal:
            await rig.pauser.pause("gamma")
        assert refusal.value.queue == "gamma"
        assert (await stats_of(rig.monitor, "gamma")).paused is False
        assert await listed(rig) == {"alpha", "beta"}
        await rig.pauser.pause("beta")  # a queue kept can still be paused
        assert (await stats_of(rig.monitor, "beta")).paused is True

    @scenario(QueuePauser, QueueMonitor, options=TWO_QUEUES)
    async def test_a_queue_without_jobs_once_resumed_is_forgotten_making_room(
        self, rig: Rig
    ) -> None:
        await rig.pauser.pause("alpha")
        await rig.pauser.resume("alpha")
        await enqueue(rig.submitter, new_job(queue="beta"))
        await rig.elapse(PAST_GRACE)
        await rig.pauser.pause("gamma")  # room: nothing uses alpha any more
        assert await listed(rig) == {"beta", "gamma"}

    @scenario(QueuePauser, QueueMonitor, options=TWO_QUEUES)
    async def test_resuming_a_queue_never_paused_keeps_nothing(self, rig: Rig) -> None:
        await rig.pauser.resume("alpha")
        await rig.pauser.pause("beta")
        await rig.pauser.pause("gamma")
        assert await listed(rig) == {"beta", "gamma"}

    @scenario(QueuePauser, options=BackendOptions(max_queues=1))
    async def test_a_paused_queue_is_kept_though_it_holds_no_job(self, rig: Rig) -> None:
        await rig.pauser.pause("alpha")
        await refused_new_queue(rig, "beta")

    @scenario(QueueMonitor, options=BackendOptions(max_queues=1))
    async def test_a_queue_a_live_worker_serves_is_kept_though_it_holds_no_job(
        self, rig: Rig
    ) -> None:
        await rig.monitor.heartbeat("worker-1", ["alpha"], FOREVER)
        await refused_new_queue(rig, "beta")
        await rig.monitor.forget_worker("worker-1")
        await rig.elapse(PAST_GRACE)
        await enqueue(rig.submitter, new_job(queue="beta"))

    @scenario(LeaseQueue, QueueMonitor, options=ONE_QUEUE_SHORT_RESULTS)
    async def test_a_queue_whose_jobs_are_all_past_their_retention_is_forgotten(
        self, rig: Rig
    ) -> None:
        await enqueue(rig.submitter, new_job(queue="alpha"))
        done = await claim_one(rig.leases, ["alpha"])
        assert await rig.leases.settle(done, Ending.succeeded(None)) == S.SUCCEEDED
        await refused_new_queue(rig, "beta")  # alpha still holds its result
        await rig.elapse(PAST_SOON)
        beta = new_job(queue="beta", n=1)
        await enqueue(rig.submitter, beta)
        assert await rig.store.get(done.job_id) is None
        assert await listed(rig) == {"beta"}

    # -- finding a job ------------------------------------------------------------------------

    @scenario(options=BackendOptions(max_queues=100))
    async def test_jobs_are_found_by_id_among_many_queues_whoever_chose_the_id(
        self, rig: Rig
    ) -> None:
        minted: list[Job] = [
            attrs.evolve(new_job(queue=f"q{n}", n=n), id=new_job_id(f"q{n}")) for n in range(50)
        ]
        for job in minted:
            await enqueue(rig.submitter, job)
        chosen = new_job(queue="q7", n=99)  # an id that does not start with its queue's tag
        await enqueue(rig.submitter, chosen)
        for job in [*minted, chosen]:
            assert (await stored(rig.store, job.id)).queue == job.queue
        assert await rig.store.get(new_job_id("q7")) is None
        assert await rig.store.get(uuid.uuid4().hex) is None

    # -- the longest result, the longest error message ---------------------------------------

    @scenario(LeaseQueue, options=SMALL_RESULTS)
    async def test_a_result_over_max_result_bytes_is_refused_and_nothing_written(
        self, rig: Rig
    ) -> None:
        await enqueue(rig.submitter, new_job())
        lease = await claim_one(rig.leases)
        with pytest.raises(ResultTooLargeError) as refusal:
            await rig.leases.settle(lease, Ending.succeeded({"text": "x" * 200}))
        assert refusal.value.limit == 100
        assert refusal.value.size > 200
        assert "100" in str(refusal.value)
        assert (await stored(rig.store, lease.job_id)).status is S.ACTIVE
        fits = {"text": "x" * 50}
        assert await rig.leases.settle(lease, Ending.succeeded(fits)) == S.SUCCEEDED
        assert (await stored(rig.store, lease.job_id)).result == fits

    @scenario(LeaseQueue)
    async def test_an_error_message_is_kept_cut_to_its_limit(self, rig: Rig) -> None:
        await enqueue(rig.submitter, new_job(max_attempts=1))
        lease = await claim_one(rig.leases)
        huge = "disk full " * 100_000
        error = JobError(huge, "OSError")
        assert await rig.leases.settle(lease, Ending.failed(error, None)) == S.DEAD
        kept = (await stored(rig.store, lease.job_id)).error
        assert kept is not None
        assert len(kept.message) <= ERROR_MESSAGE_LIMIT
        assert kept.message.startswith("disk full disk full")
        assert f"cut from {len(huge)} characters" in kept.message
