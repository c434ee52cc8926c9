"""Unique keys: at most one job not finished per key and queue; the key is free again the
moment its job finishes, however it ends. Only a submitter that holds unique keys
(`SubmitTraits.unique_keys`) runs these."""

from __future__ import annotations

from datetime import datetime

import attrs
import pytest

from domain.errors import UniqueKeyHeldError
from domain.jobs import Job, JobStatus
from domain.ports import JobControl, JobQuery, LeaseQueue, NewJob, Submitted
from domain.settlement import Ending
from tests.contracts.base import Rig, scenario
from tests.contracts.builders import (
    ERROR,
    FOREVER,
    LEASE,
    PAST_LEASE,
    PAST_SOON,
    SOON,
    all_pages,
    at,
    claim,
    claim_one,
    keyed,
    new_job,
    status_of,
)

S = JobStatus
KEY = "rebuild report q3"
UNIQUE = ("unique_keys",)


def unique(
    key: str = KEY,
    *,
    queue: str = "default",
    n: int = 0,
    max_attempts: int = 3,
    run_at: datetime | None = None,
    deadline: datetime | None = None,
    now: datetime | None = None,
) -> Job:
    """A new job under unique key `key`."""
    job = new_job(
        queue=queue, n=n, max_attempts=max_attempts, run_at=run_at, deadline=deadline, now=now
    )
    return attrs.evolve(job, unique_key=key)


async def submit(rig: Rig, *jobs: Job) -> list[Submitted]:
    return list(await rig.submitter.submit([NewJob(job=job) for job in jobs]))


async def assert_free(rig: Rig, key: str = KEY, queue: str = "default") -> Job:
    """The key is free: a new job under it is stored (and then holds it)."""
    job = unique(key, queue=queue)
    assert await submit(rig, job) == [Submitted(job.id, created=True)]
    return job


async def assert_held_by(rig: Rig, holder: Job) -> None:
    """`holder` holds its key: a new job under it is not stored, and answers `holder`."""
    assert holder.unique_key is not None
    job = unique(holder.unique_key, queue=holder.queue)
    assert await submit(rig, job) == [Submitted(holder.id, created=False, unique=True)]
    assert await rig.store.get(job.id) is None


class UniqueContract:
    """What a submitter that holds unique keys promises, and every ending that frees one."""

    # -- holding ----------------------------------------------------------------------------

    @scenario(traits=UNIQUE)
    async def test_a_job_under_a_held_key_is_not_stored_and_answers_the_holder(
        self, rig: Rig
    ) -> None:
        first = await assert_free(rig)
        await assert_held_by(rig, first)
        assert (await rig.store.get(first.id) or first).unique_key == KEY
        assert await all_pages(rig.store, JobQuery()) == [[first.id]]

    @scenario(traits=UNIQUE)
    async def test_keys_are_per_queue_and_jobs_without_one_are_not_held(self, rig: Rig) -> None:
        first = await assert_free(rig)
        other_queue = await assert_free(rig, queue="other")
        plain = new_job()
        assert await submit(rig, plain) == [Submitted(plain.id, created=True)]
        await assert_held_by(rig, first)
        await assert_held_by(rig, other_queue)

    @scenario(traits=UNIQUE)
    async def test_in_one_batch_the_first_job_under_a_key_takes_it_and_the_next_answer_it(
        self, rig: Rig
    ) -> None:
        a, b, c = unique(n=0), unique(n=1), unique("another", n=2)
        answers = await submit(rig, a, b, c)
        assert answers == [
            Submitted(a.id, created=True),
            Submitted(a.id, created=False, unique=True),
            Submitted(c.id, created=True),
        ]
        assert await rig.store.get(b.id) is None

    @scenario(LeaseQueue, traits=UNIQUE)
    async def test_the_key_is_held_while_the_job_is_scheduled_queued_active_or_failed(
        self, rig: Rig
    ) -> None:
        now = await rig.now()
        scheduled = unique("later", run_at=at(now, FOREVER), now=now)
        await submit(rig, scheduled)
        await assert_held_by(rig, scheduled)
        job = await assert_free(rig)
        await assert_held_by(rig, job)  # queued
        lease = await claim_one(rig.leases)
        await assert_held_by(rig, job)  # active
        assert await rig.leases.settle(lease, Ending.failed(ERROR, FOREVER)) == S.FAILED
        await assert_held_by(rig, job)  # failed, its retry due later

    # -- every ending frees it --------------------------------------------------------------

    @scenario(LeaseQueue, traits=UNIQUE)
    async def test_success_frees_the_key(self, rig: Rig) -> None:
        await assert_free(rig)
        lease = await claim_one(rig.leases)
        assert await rig.leases.settle(lease, Ending.succeeded("ok")) == S.SUCCEEDED
        await assert_free(rig)

    @scenario(LeaseQueue, traits=UNIQUE)
    async def test_dead_letter_frees_the_key_and_a_requeue_takes_it_again(self, rig: Rig) -> None:
        job = unique(max_attempts=1)
        await submit(rig, job)
        lease = await claim_one(rig.leases)
        assert await rig.leases.settle(lease, Ending.failed(ERROR, None)) == S.DEAD
        if rig.backend.control is None:
            await assert_free(rig)
            return
        requeued = await rig.control.requeue(job.id)  # the key is free: it takes it again
        assert (requeued.status, requeued.unique_key) == (S.QUEUED, KEY)
        await assert_held_by(rig, job)

    @scenario(JobControl, LeaseQueue, traits=UNIQUE)
    async def test_a_requeue_is_refused_while_another_job_holds_the_key(self, rig: Rig) -> None:
        job = unique()
        await submit(rig, job)
        assert (await rig.control.cancel(job.id)).status is S.CANCELLED
        other = await assert_free(rig)
        with pytest.raises(UniqueKeyHeldError) as refused:
            await rig.control.requeue(job.id)
        assert (refused.value.holder, refused.value.key) == (other.id, KEY)
        assert await status_of(rig.store, job.id) == S.CANCELLED
        await assert_held_by(rig, other)

    @scenario(JobControl, traits=UNIQUE)
    async def test_cancelling_a_waiting_job_frees_the_key(self, rig: Rig) -> None:
        job = await assert_free(rig)
        await rig.control.cancel(job.id)
        await assert_free(rig)

    @scenario(JobControl, LeaseQueue, traits=UNIQUE)
    async def test_an_active_job_holds_the_key_until_its_worker_stops_it(self, rig: Rig) -> None:
        job = await assert_free(rig)
        lease = await claim_one(rig.leases)
        assert (await rig.control.cancel(job.id)).status is S.ACTIVE
        await assert_held_by(rig, job)  # asked to stop, still running
        assert await rig.leases.settle(lease, Ending.cancelled()) == S.CANCELLED
        await assert_free(rig)

    @scenario(LeaseQueue, traits=("unique_keys", "deadlines"))
    async def test_expiry_frees_the_key_whether_recovered_or_met_at_a_claim(self, rig: Rig) -> None:
        now = await rig.now()
        waiting = unique("waiting", deadline=at(now, SOON), now=now)
        claimed = unique("claimed", deadline=at(now, SOON), now=now, queue="other")
        await submit(rig, waiting, claimed)
        await rig.elapse(PAST_SOON)
        await rig.leases.recover(["default"])
        assert await status_of(rig.store, waiting.id) == S.EXPIRED
        assert await claim(rig.leases, ["other"]) == []
        assert await status_of(rig.store, claimed.id) == S.EXPIRED
        await assert_free(rig, "waiting")
        await assert_free(rig, "claimed", queue="other")

    @scenario(LeaseQueue, traits=UNIQUE)
    async def test_a_lapsed_lease_that_ends_the_job_dead_frees_the_key(self, rig: Rig) -> None:
        job = unique(max_attempts=1)
        await submit(rig, job)
        await claim_one(rig.leases, lease_seconds=LEASE)
        await rig.elapse(PAST_LEASE)
        await rig.leases.recover(["default"])
        assert await status_of(rig.store, job.id) == S.DEAD
        await assert_free(rig)

    @scenario(LeaseQueue, traits=UNIQUE)
    async def test_a_lapsed_lease_with_attempts_left_keeps_the_key(self, rig: Rig) -> None:
        job = unique(max_attempts=3)
        await submit(rig, job)
        await claim_one(rig.leases, lease_seconds=LEASE)
        await rig.elapse(PAST_LEASE)
        await rig.leases.recover(["default"])
        assert await status_of(rig.store, job.id) in (S.QUEUED, S.FAILED)
        await assert_held_by(rig, job)

    # -- with idempotency keys --------------------------------------------------------------

    @scenario(LeaseQueue, traits=UNIQUE)
    async def test_an_idempotency_key_answered_with_the_holder_keeps_answering_it(
        self, rig: Rig
    ) -> None:
        first = unique(n=0)
        second = unique(n=1)
        assert await rig.submitter.submit([keyed(first, "req-1", "f1")]) == [
            Submitted(first.id, created=True)
        ]
        assert await rig.submitter.submit([keyed(second, "req-2", "f2")]) == [
            Submitted(first.id, created=False, unique=True)
        ]
        lease = await claim_one(rig.leases)
        assert await rig.leases.settle(lease, Ending.succeeded("ok")) == S.SUCCEEDED
        # A repeat of the second request answers what it was answered, though the key is free.
        again = unique(n=1)
        assert await rig.submitter.submit([keyed(again, "req-2", "f2")]) == [
            Submitted(first.id, created=False)
        ]
        assert await rig.store.get(again.id) is None
        await assert_free(rig)
