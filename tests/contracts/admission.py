"""JobSubmitter with an admission policy: new work refused, all or nothing, while a queue is
too deep or its oldest job has waited too long.

A backend that cannot enforce a policy refuses to be built with one
(UnsupportedOperationError): these scenarios are then skipped, with that reason.
"""

from __future__ import annotations

import pytest

from domain.errors import AdmissionRefusedError
from domain.ports import AdmissionPolicy, LeaseQueue, NewJob, QueueLimits, Submitted
from tests.contracts.base import BackendOptions, Rig, scenario
from tests.contracts.builders import (
    A_YEAR,
    FOREVER,
    PAST_SOON,
    SOON,
    at,
    claim_one,
    claimed_ids,
    enqueue,
    enqueue_all,
    keyed,
    new_job,
)

ADMISSION = BackendOptions(
    admission=AdmissionPolicy(
        default=QueueLimits(max_depth=2),
        queues={
            "bulk": QueueLimits(max_depth=4),
            "open": QueueLimits(),
            "fresh": QueueLimits(max_age=SOON),
        },
        retry_after=7.0,
    )
)


class AdmissionContract:
    """What a backend built with an admission policy refuses, and what it still takes."""

    @scenario(options=ADMISSION)
    async def test_admission_refuses_a_job_over_max_depth_storing_nothing(self, rig: Rig) -> None:
        first, second, third = (new_job(n=n) for n in range(3))
        await enqueue_all(rig.submitter, [first, second])
        with pytest.raises(AdmissionRefusedError) as refusal:
            await enqueue(rig.submitter, third)
        assert (refusal.value.queue, refusal.value.retry_after) == ("default", 7.0)
        assert refusal.value.reason
        assert await rig.store.get(third.id) is None

    @scenario(traits=("atomic_across_queues",), options=ADMISSION)
    async def test_admission_counts_the_whole_batch_and_refuses_it_all_or_nothing(
        self, rig: Rig
    ) -> None:
        await enqueue(rig.submitter, new_job())
        over = [new_job(queue="open"), new_job(n=1), new_job(n=2)]
        with pytest.raises(AdmissionRefusedError) as refusal:
            await rig.submitter.submit([NewJob(job=job) for job in over])
        assert refusal.value.queue == "default"
        for job in over:
            assert await rig.store.get(job.id) is None
        fits = [new_job(queue="open", n=3), new_job(n=4)]
        answers = await rig.submitter.submit([NewJob(job=job) for job in fits])
        assert [answer.created for answer in answers] == [True, True]

    @scenario(options=ADMISSION)
    async def test_admission_limits_are_per_queue(self, rig: Rig) -> None:
        await enqueue_all(rig.submitter, [new_job(queue="bulk", n=n) for n in range(4)])
        with pytest.raises(AdmissionRefusedError) as refusal:
            await enqueue(rig.submitter, new_job(queue="bulk", n=4))
        assert refusal.value.queue == "bulk"
        await enqueue_all(rig.submitter, [new_job(queue="open", n=n) for n in range(10)])
        # Queues without limits of their own take the default's, each counted apart.
        await enqueue_all(rig.submitter, [new_job(n=n) for n in range(2)])
        await enqueue_all(rig.submitter, [new_job(queue="another", n=n) for n in range(2)])
        for name in ("default", "another"):
            with pytest.raises(AdmissionRefusedError) as refusal:
                await enqueue(rig.submitter, new_job(queue=name, n=2))
            assert refusal.value.queue == name

    @scenario(options=ADMISSION)
    async def test_admission_depth_counts_jobs_scheduled_however_far_ahead(self, rig: Rig) -> None:
        now = await rig.now()
        await enqueue(rig.submitter, new_job(n=0, run_at=at(now, FOREVER), now=now))
        await enqueue(rig.submitter, new_job(n=1, run_at=at(now, A_YEAR), now=now))
        for late in (new_job(n=2, run_at=at(now, FOREVER), now=now), new_job(n=3)):
            with pytest.raises(AdmissionRefusedError) as refusal:
                await enqueue(rig.submitter, late)
            assert refusal.value.queue == "default"
            assert await rig.store.get(late.id) is None

    @scenario(LeaseQueue, options=ADMISSION)
    async def test_admission_depth_leaves_out_claimed_jobs(self, rig: Rig) -> None:
        now = await rig.now()
        await enqueue(rig.submitter, new_job(n=0, run_at=at(now, FOREVER), now=now))
        await enqueue(rig.submitter, new_job(n=1))
        with pytest.raises(AdmissionRefusedError):
            await enqueue(rig.submitter, new_job(n=2))
        await claim_one(rig.leases)
        fits = new_job(n=3)
        await enqueue(rig.submitter, fits)  # not refused: the queued one was claimed
        assert await rig.store.get(fits.id) is not None

    @scenario(LeaseQueue, options=ADMISSION)
    async def test_admission_refuses_while_the_oldest_queued_job_has_waited_past_max_age(
        self, rig: Rig
    ) -> None:
        oldest, younger = new_job(queue="fresh", n=0), new_job(queue="fresh", n=1)
        await enqueue_all(rig.submitter, [oldest, younger])
        await rig.elapse(PAST_SOON)
        late = new_job(queue="fresh", n=2)
        with pytest.raises(AdmissionRefusedError) as refusal:
            await enqueue(rig.submitter, late)
        assert (refusal.value.queue, refusal.value.retry_after) == ("fresh", 7.0)
        assert await rig.store.get(late.id) is None
        await enqueue(rig.submitter, new_job(n=3))  # other queues are not held back
        assert await claimed_ids(rig.leases, ["fresh"], n=2) == [oldest.id, younger.id]
        await enqueue(rig.submitter, late)  # nothing has waited long now
        assert await rig.store.get(late.id) is not None

    @scenario(options=ADMISSION)
    async def test_a_repeat_under_a_held_key_is_answered_even_when_its_queue_is_full(
        self, rig: Rig
    ) -> None:
        first = new_job(n=0)
        await rig.submitter.submit([keyed(first, "k", "f")])
        await enqueue(rig.submitter, new_job(n=1))  # the queue is full now
        assert await rig.submitter.submit([keyed(new_job(n=2), "k", "f")]) == [
            Submitted(first.id, False)
        ]
        with pytest.raises(AdmissionRefusedError):
            await rig.submitter.submit([keyed(new_job(n=3), "k2", "f")])
