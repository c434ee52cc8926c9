"""JobSubmitter: batches stored all or nothing, ids stored once, idempotency keys, and the
backend's own clock deciding what is scheduled."""

from __future__ import annotations

import asyncio

import attrs
import pytest

from domain.errors import IdempotencyConflictError
from domain.jobs import JobStatus
from domain.ports import JobQuery, LeaseQueue, NewJob, Submitted
from domain.settlement import Ending
from tests.contracts.base import BackendOptions, Rig, scenario
from tests.contracts.builders import (
    ERROR,
    FOREVER,
    LATER,
    PAST_SOON,
    SOON,
    all_pages,
    at,
    claim_one,
    claimed_ids,
    enqueue,
    keyed,
    new_job,
    status_of,
    stored,
)

S = JobStatus
# A W3C traceparent, as a tracer writes one.
TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


class SubmitContract:
    """What every backend's submitter does with new jobs."""

    # -- batches and ids --------------------------------------------------------------------

    @scenario()
    async def test_submit_stores_a_batch_and_answers_each_job_in_order(self, rig: Rig) -> None:
        jobs = [new_job(queue=name, n=n) for n, name in enumerate(["a", "b", "a"])]
        answers = await rig.submitter.submit([NewJob(job=job) for job in jobs])
        assert list(answers) == [Submitted(job.id, created=True) for job in jobs]
        for job in jobs:
            assert await rig.store.get(job.id) == job

    @scenario(LeaseQueue)
    async def test_a_batch_is_queued_in_order_each_job_to_its_own_queue(self, rig: Rig) -> None:
        jobs = [new_job(queue=name, n=n) for n, name in enumerate(["a", "b", "a"])]
        await rig.submitter.submit([NewJob(job=job) for job in jobs])
        assert await claimed_ids(rig.leases, ["a"], n=3) == [jobs[0].id, jobs[2].id]
        assert await claimed_ids(rig.leases, ["b"], n=2) == [jobs[1].id]

    @scenario()
    async def test_storing_an_existing_id_again_is_refused_and_leaves_the_first_as_it_was(
        self, rig: Rig
    ) -> None:
        job = new_job()
        await enqueue(rig.submitter, job)
        with pytest.raises(ValueError, match="already exists"):
            await enqueue(rig.submitter, attrs.evolve(job, payload={"copy": True}))
        assert (await stored(rig.store, job.id)).payload == job.payload
        assert await all_pages(rig.store, JobQuery()) == [[job.id]]

    @scenario()
    async def test_concurrent_submits_of_one_id_store_it_once(self, rig: Rig) -> None:
        job = new_job()
        outcomes = await asyncio.gather(
            enqueue(rig.submitter, job), enqueue(rig.submitter, job), return_exceptions=True
        )
        assert outcomes[0] is None
        assert isinstance(outcomes[1], ValueError)
        assert await all_pages(rig.store, JobQuery()) == [[job.id]]

    @scenario()
    async def test_submit_answers_created_false_for_an_existing_id_and_stores_the_others(
        self, rig: Rig
    ) -> None:
        old, fresh = new_job(n=0), new_job(n=1)
        await enqueue(rig.submitter, old)
        copy = attrs.evolve(fresh, payload={"copy": True})
        answers = await rig.submitter.submit([NewJob(job=old), NewJob(job=fresh), NewJob(job=copy)])
        assert list(answers) == [
            Submitted(old.id, created=False),
            Submitted(fresh.id, created=True),
            Submitted(fresh.id, created=False),
        ]
        assert (await stored(rig.store, fresh.id)).payload == fresh.payload
        assert await all_pages(rig.store, JobQuery()) == [[fresh.id, old.id]]

    @scenario(LeaseQueue)
    async def test_an_id_submitted_more_than_once_is_claimed_once(self, rig: Rig) -> None:
        raced, old, fresh = new_job(n=0), new_job(n=1), new_job(n=2)
        await asyncio.gather(
            enqueue(rig.submitter, raced), enqueue(rig.submitter, raced), return_exceptions=True
        )
        await enqueue(rig.submitter, old)
        with pytest.raises(ValueError, match="already exists"):
            await enqueue(rig.submitter, old)
        await rig.submitter.submit([NewJob(job=old), NewJob(job=fresh), NewJob(job=fresh)])
        assert await claimed_ids(rig.leases, n=4) == [raced.id, old.id, fresh.id]

    @scenario()
    async def test_submit_refuses_a_job_that_is_neither_queued_nor_scheduled(
        self, rig: Rig
    ) -> None:
        job = new_job().transition(S.CANCELLED)
        with pytest.raises(ValueError, match="must be queued"):
            await enqueue(rig.submitter, job)
        assert await rig.store.get(job.id) is None

    @scenario()
    async def test_a_batch_with_one_job_neither_queued_nor_scheduled_stores_none_of_it(
        self, rig: Rig
    ) -> None:
        good, bad = new_job(n=0), new_job(n=1).transition(S.CANCELLED)
        with pytest.raises(ValueError, match="must be queued"):
            await rig.submitter.submit([NewJob(job=good), NewJob(job=bad)])
        assert await rig.store.get(good.id) is None
        assert await rig.store.get(bad.id) is None
        assert await all_pages(rig.store, JobQuery()) == [[]]

    # -- idempotency keys -------------------------------------------------------------------

    # -- trace context ----------------------------------------------------------------------

    @scenario()
    async def test_a_jobs_trace_context_is_stored_with_it(self, rig: Rig) -> None:
        job = attrs.evolve(new_job(), trace_context=TRACEPARENT)
        untraced = new_job(n=1)
        await rig.submitter.submit([NewJob(job=job), NewJob(job=untraced)])
        assert (await stored(rig.store, job.id)).trace_context == TRACEPARENT
        assert (await stored(rig.store, untraced.id)).trace_context is None

    @scenario(LeaseQueue)
    async def test_every_attempt_of_a_job_carries_its_trace_context(self, rig: Rig) -> None:
        await enqueue(rig.submitter, attrs.evolve(new_job(), trace_context=TRACEPARENT))
        first = await claim_one(rig.leases)
        assert first.job.trace_context == TRACEPARENT
        assert await rig.leases.settle(first, Ending.failed(ERROR, 0.0)) == S.QUEUED
        second = await claim_one(rig.leases)
        assert (second.attempt, second.job.trace_context) == (2, TRACEPARENT)

    @scenario()
    async def test_a_repeat_under_an_idempotency_key_answers_the_first_job(self, rig: Rig) -> None:
        first, repeat = new_job(n=0), new_job(n=1)
        submit = rig.submitter.submit
        assert await submit([keyed(first, "order-1", "f")]) == [Submitted(first.id, True)]
        assert await submit([keyed(repeat, "order-1", "f")]) == [Submitted(first.id, False)]
        assert await rig.store.get(repeat.id) is None
        assert (await stored(rig.store, first.id)).idempotency_key == "order-1"
        assert await all_pages(rig.store, JobQuery()) == [[first.id]]

    @scenario()
    async def test_a_key_reused_for_another_body_is_a_conflict_naming_the_item_storing_nothing(
        self, rig: Rig
    ) -> None:
        first, other, bystander = new_job(n=0), new_job(n=1), new_job(n=2)
        await rig.submitter.submit([keyed(first, "k", "body-1")])
        with pytest.raises(IdempotencyConflictError) as conflict:
            await rig.submitter.submit([NewJob(job=bystander), keyed(other, "k", "body-2")])
        assert (conflict.value.key, conflict.value.index) == ("k", 1)
        with pytest.raises(IdempotencyConflictError) as alone:
            await rig.submitter.submit([keyed(other, "k", "body-2")])
        assert (alone.value.key, alone.value.index) == ("k", 0)
        assert await rig.store.get(other.id) is None
        assert await rig.store.get(bystander.id) is None
        assert await all_pages(rig.store, JobQuery()) == [[first.id]]

    @scenario()
    async def test_a_key_given_twice_in_one_batch_answers_the_first_item_or_conflicts(
        self, rig: Rig
    ) -> None:
        a, b, c, d = (new_job(n=n) for n in range(4))
        answers = await rig.submitter.submit([keyed(a, "k", "f"), keyed(b, "k", "f")])
        assert list(answers) == [Submitted(a.id, True), Submitted(a.id, False)]
        assert await rig.store.get(b.id) is None
        with pytest.raises(IdempotencyConflictError) as conflict:
            await rig.submitter.submit([keyed(c, "k2", "f"), keyed(d, "k2", "g")])
        assert conflict.value.index == 1
        assert await rig.store.get(c.id) is None
        # Nothing was stored, so the key is free.
        assert await rig.submitter.submit([keyed(d, "k2", "g")]) == [Submitted(d.id, True)]

    @scenario()
    async def test_fifty_concurrent_submits_under_one_key_create_exactly_one_job(
        self, rig: Rig
    ) -> None:
        jobs = [new_job(n=n) for n in range(50)]
        answers = await asyncio.gather(
            *(rig.submitter.submit([keyed(job, "once", "f")]) for job in jobs)
        )
        flat = [answer for (answer,) in answers]
        created = [answer.job_id for answer in flat if answer.created]
        assert len(created) == 1
        assert {answer.job_id for answer in flat} == set(created)
        assert await all_pages(rig.store, JobQuery(limit=500)) == [created]

    @scenario(options=BackendOptions(idempotency_ttl=SOON))
    async def test_an_idempotency_key_is_released_after_its_ttl(self, rig: Rig) -> None:
        first, later = new_job(n=0), new_job(n=1)
        await rig.submitter.submit([keyed(first, "k", "body-1")])
        await rig.elapse(SOON / 3)
        assert await rig.submitter.submit([keyed(later, "k", "body-1")]) == [
            Submitted(first.id, False)
        ]
        await rig.elapse(PAST_SOON)
        assert await rig.submitter.submit([keyed(later, "k", "body-2")]) == [
            Submitted(later.id, True)
        ]
        assert await status_of(rig.store, first.id) == S.QUEUED  # the job outlives its key

    # -- the backend's clock decides --------------------------------------------------------

    @scenario()
    async def test_the_backend_decides_scheduled_or_queued_on_its_own_clock(self, rig: Rig) -> None:
        now = await rig.now()
        # A submitter whose clock runs ahead thinks run_at has come; one behind, that it has not.
        ahead = new_job(n=0, run_at=at(now, FOREVER), now=at(now, 2 * FOREVER))
        behind = new_job(n=1, run_at=at(now, -1), now=at(now, -FOREVER))
        assert (ahead.status, behind.status) == (S.QUEUED, S.SCHEDULED)
        await rig.submitter.submit([NewJob(job=ahead), NewJob(job=behind)])
        assert await status_of(rig.store, ahead.id) == S.SCHEDULED
        assert await status_of(rig.store, behind.id) == S.QUEUED

    @scenario(LeaseQueue)
    async def test_only_the_job_due_on_the_backends_clock_is_claimed(self, rig: Rig) -> None:
        now = await rig.now()
        ahead = new_job(n=0, run_at=at(now, FOREVER), now=at(now, 2 * FOREVER))
        behind = new_job(n=1, run_at=at(now, -1), now=at(now, -FOREVER))
        await rig.submitter.submit([NewJob(job=ahead), NewJob(job=behind)])
        assert await claimed_ids(rig.leases, n=2) == [behind.id]

    @scenario(LeaseQueue)
    async def test_a_job_due_later_waits_scheduled_then_recover_queues_it(self, rig: Rig) -> None:
        now = await rig.now()
        job = new_job(run_at=at(now, LATER), now=now)
        assert job.status == S.SCHEDULED
        await enqueue(rig.submitter, job)
        assert await rig.store.get(job.id) == job
        assert await rig.leases.recover(["default"]) == 0
        await rig.elapse_past(at(now, LATER))
        assert await rig.leases.recover(["default"]) == 1
        promoted = await stored(rig.store, job.id)
        assert (promoted.status, promoted.attempts, promoted.run_at) == (S.QUEUED, 0, job.run_at)
