"""The job lifecycle contract, written once and run against every backend: idempotency keys,
admission limits, scheduling, priorities, deadlines, cancellation, paused queues, queue
figures and worker presence, retention.

A backend's test module subclasses `LifecycleContract` (no ``Test`` prefix here, so pytest
collects only the subclasses) and provides a ``queue_factory`` fixture: the same
`QueueFactory` that `QueueContract` uses (tests/queue_contract.py), with these hooks:

- ``factory()`` opens a fresh, empty queue with default options.
- ``factory.configured(options)`` opens a fresh, empty queue built with `QueueOptions`:
  retention (``result_ttl``, ``dead_ttl``, ``idempotency_ttl``; a few hundred ms here) and an
  ``admission`` policy. ``options.kwargs()`` are the adapters' constructor keywords::

      RedisJobQueue(client, prefix=prefix, **options.kwargs())
      InMemoryJobQueue(clock, **options.kwargs())

  A backend without `capabilities.admission` refuses an admission policy with
  UnsupportedOperationError naming ``admission``: as it is built, or at `submit`.
- ``factory.elapse(seconds)`` lets time pass on the queue's clock (a fake clock advances;
  a backend on Redis's clock sleeps).
- ``factory.now(queue)`` reads the queue's clock: run_at and deadlines are set from it.
- ``factory.drain(queue, ids)`` runs `dummy` jobs the backend's own way.

Capabilities: each flag of the lifecycle API has a scenario that checks it either way. With
the flag false, the operation it rules out raises UnsupportedOperationError naming the flag,
and nothing was stored or changed. Every other scenario that reaches a call its backend
refuses ends there (see `refusing` in tests/queue_contract.py): on a backend without
`worker_claims`, the scenarios that need an active job end at their first claim. Nothing is
skipped. Two flags rule nothing out: without `priorities` claims are FIFO (the scenarios
expect the order the flag says), and `heartbeat`/`forget_worker` are accepted by every
backend (a worker calls them whatever the backend), the figures saying ``workers=None``
without `worker_presence`.

Semantics the port leaves implicit, as the in-memory queue defines them:
- IdempotencyConflictError.index is the item's position in the submitted sequence (0 alone).
- Admission counts the jobs a call would create: a repeat under a held key is answered even
  when its queue is full. Scheduled and active jobs are not in a queue's depth.
- A cancel request outlives the attempt it was made on: an attempt that fails, is released
  or whose lease lapses ends the job `cancelled` (its history says so), never retried. A
  second cancel keeps the first request's time.
- A claim clears `retry_at` and `heartbeat_at`: they describe the attempt before.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime, timedelta

import attrs
import pytest

from domain.errors import (
    AdmissionRefusedError,
    IdempotencyConflictError,
    InvalidTransitionError,
    JobNotFoundError,
    UnsupportedOperationError,
)
from domain.jobs import AttemptOutcome, ErrorKind, Job, JobError, JobStatus, Lease
from domain.ports import (
    AdmissionPolicy,
    JobQuery,
    JobQueue,
    NewJob,
    QueueLimits,
    QueueStats,
    Submitted,
)
from tests.queue_contract import (
    FOREVER,
    LEASE,
    PAST_LEASE,
    RETRY_IN,
    QueueFactory,
    QueueOptions,
    StatusLog,
    all_pages,
    claim,
    claim_one,
    enqueue_all,
    new_job,
    scenario,
    scenario_with,
    status_of,
)
from tests.queue_driving import driven_job

S = JobStatus
SOON = 0.3  # seconds: a run_at, deadline or retention that comes during a test
PAST_SOON = 0.5  # long enough after SOON for it to have come
ERROR = JobError("smtp said no", "SMTPError")

ADMISSION = AdmissionPolicy(
    default=QueueLimits(max_depth=2),
    queues={
        "bulk": QueueLimits(max_depth=4),
        "open": QueueLimits(),
        "fresh": QueueLimits(max_age=SOON),
    },
    retry_after=7.0,
)
RETENTION = QueueOptions(result_ttl=SOON, dead_ttl=3 * SOON)


def at(moment: datetime, seconds: float) -> datetime:
    return moment + timedelta(seconds=seconds)


def keyed(job: Job, key: str, fingerprint: str) -> NewJob:
    """A submission under an idempotency key, as the submit use case makes it."""
    return NewJob(
        job=attrs.evolve(job, idempotency_key=key), idempotency_key=key, fingerprint=fingerprint
    )


async def stored(queue: JobQueue, job_id: str) -> Job:
    job = await queue.get(job_id)
    assert job is not None, f"job {job_id} is not stored"
    return job


async def claimed_ids(
    queue: JobQueue, queues: Sequence[str] = ("default",), n: int = 1
) -> list[str]:
    """The ids of up to `n` jobs claimed one at a time, in the order the queue hands them out."""
    ids: list[str] = []
    for _ in range(n):
        leases = await claim(queue, queues, limit=1)
        ids += [lease.job_id for lease in leases]
    return ids


async def stats_of(queue: JobQueue, name: str = "default") -> QueueStats:
    (stats,) = await queue.queue_stats([name])
    assert stats.name == name
    return stats


def counts(stats: QueueStats) -> dict[JobStatus, int]:
    """Every status's count; a backend may leave the zeros out."""
    return {status: stats.counts.get(status, 0) for status in JobStatus}


async def refused(call: Callable[[], Awaitable[object]], capability: str) -> None:
    with pytest.raises(UnsupportedOperationError) as refusal:
        await call()
    assert refusal.value.capability == capability, refusal.value


class LifecycleContract:
    """What every backend promises about the job lifecycle. Subclasses provide the
    `queue_factory` fixture."""

    @pytest.fixture
    def queue_factory(self) -> QueueFactory:
        raise NotImplementedError("a backend's test class provides queue_factory")

    # -- submit -----------------------------------------------------------------------------

    @scenario
    async def test_submit_stores_a_batch_and_answers_each_job_in_order(
        self, queue: JobQueue, clock: QueueFactory
    ) -> None:
        jobs = [new_job(queue=name, n=n) for n, name in enumerate(["a", "b", "a"])]
        answers = await queue.submit([NewJob(job=job) for job in jobs])
        assert list(answers) == [Submitted(job.id, created=True) for job in jobs]
        for job in jobs:
            assert await queue.get(job.id) == job
        assert await claimed_ids(queue, ["a"], n=3) == [jobs[0].id, jobs[2].id]

    @scenario
    async def test_submit_answers_created_false_for_an_existing_id_and_stores_the_others(
        self, queue: JobQueue, clock: QueueFactory
    ) -> None:
        old, fresh = new_job(n=0), new_job(n=1)
        await queue.enqueue(old)
        copy = attrs.evolve(fresh, payload={"copy": True})
        answers = await queue.submit([NewJob(job=old), NewJob(job=fresh), NewJob(job=copy)])
        assert list(answers) == [
            Submitted(old.id, created=False),
            Submitted(fresh.id, created=True),
            Submitted(fresh.id, created=False),
        ]
        assert (await stored(queue, fresh.id)).payload == fresh.payload
        assert await all_pages(queue, JobQuery()) == [[fresh.id, old.id]]
        assert await claimed_ids(queue, n=3) == [old.id, fresh.id]

    @scenario
    async def test_a_batch_with_one_job_neither_queued_nor_scheduled_stores_none_of_it(
        self, queue: JobQueue, clock: QueueFactory
    ) -> None:
        good, bad = new_job(n=0), new_job(n=1).transition(S.CANCELLED)
        with pytest.raises(ValueError, match="must be queued"):
            await queue.submit([NewJob(job=good), NewJob(job=bad)])
        assert await queue.get(good.id) is None
        assert await queue.get(bad.id) is None
        assert await all_pages(queue, JobQuery()) == [[]]

    # -- idempotency keys -------------------------------------------------------------------

    @scenario
    async def test_a_repeat_under_an_idempotency_key_answers_the_first_job_as_idempotency_says(
        self, queue: JobQueue, clock: QueueFactory
    ) -> None:
        first, repeat = new_job(n=0), new_job(n=1)
        if not queue.capabilities.idempotency:
            await refused(lambda: queue.submit([keyed(first, "order-1", "f")]), "idempotency")
            assert await queue.get(first.id) is None
            return
        assert await queue.submit([keyed(first, "order-1", "f")]) == [Submitted(first.id, True)]
        assert await queue.submit([keyed(repeat, "order-1", "f")]) == [Submitted(first.id, False)]
        assert await queue.get(repeat.id) is None
        assert (await stored(queue, first.id)).idempotency_key == "order-1"
        assert await all_pages(queue, JobQuery()) == [[first.id]]

    @scenario
    async def test_a_key_reused_for_another_body_is_a_conflict_naming_the_item_storing_nothing(
        self, queue: JobQueue, clock: QueueFactory
    ) -> None:
        first, other, bystander = new_job(n=0), new_job(n=1), new_job(n=2)
        await queue.submit([keyed(first, "k", "body-1")])
        with pytest.raises(IdempotencyConflictError) as conflict:
            await queue.submit([NewJob(job=bystander), keyed(other, "k", "body-2")])
        assert (conflict.value.key, conflict.value.index) == ("k", 1)
        with pytest.raises(IdempotencyConflictError) as alone:
            await queue.submit([keyed(other, "k", "body-2")])
        assert (alone.value.key, alone.value.index) == ("k", 0)
        assert await queue.get(other.id) is None
        assert await queue.get(bystander.id) is None
        assert await all_pages(queue, JobQuery()) == [[first.id]]

    @scenario
    async def test_a_key_given_twice_in_one_batch_answers_the_first_item_or_conflicts(
        self, queue: JobQueue, clock: QueueFactory
    ) -> None:
        a, b, c, d = (new_job(n=n) for n in range(4))
        answers = await queue.submit([keyed(a, "k", "f"), keyed(b, "k", "f")])
        assert list(answers) == [Submitted(a.id, True), Submitted(a.id, False)]
        assert await queue.get(b.id) is None
        with pytest.raises(IdempotencyConflictError) as conflict:
            await queue.submit([keyed(c, "k2", "f"), keyed(d, "k2", "g")])
        assert conflict.value.index == 1
        assert await queue.get(c.id) is None
        # Nothing was stored, so the key is free.
        assert await queue.submit([keyed(d, "k2", "g")]) == [Submitted(d.id, True)]

    @scenario
    async def test_fifty_concurrent_submits_under_one_key_create_exactly_one_job(
        self, queue: JobQueue, clock: QueueFactory
    ) -> None:
        jobs = [new_job(n=n) for n in range(50)]
        answers = await asyncio.gather(*(queue.submit([keyed(j, "once", "f")]) for j in jobs))
        flat = [answer for (answer,) in answers]
        created = [answer.job_id for answer in flat if answer.created]
        assert len(created) == 1
        assert {answer.job_id for answer in flat} == set(created)
        assert await all_pages(queue, JobQuery(limit=500)) == [created]

    @scenario_with(QueueOptions(idempotency_ttl=SOON))
    async def test_an_idempotency_key_is_released_after_its_ttl(
        self, queue: JobQueue, clock: QueueFactory
    ) -> None:
        first, later = new_job(n=0), new_job(n=1)
        await queue.submit([keyed(first, "k", "body-1")])
        await clock.elapse(SOON / 3)
        assert await queue.submit([keyed(later, "k", "body-1")]) == [Submitted(first.id, False)]
        await clock.elapse(PAST_SOON)
        await queue.recover(["default"])
        assert await queue.submit([keyed(later, "k", "body-2")]) == [Submitted(later.id, True)]
        assert await status_of(queue, first.id) == S.QUEUED  # the job outlives its key

    # -- admission --------------------------------------------------------------------------

    @scenario_with(QueueOptions(admission=ADMISSION))
    async def test_admission_refuses_a_job_over_max_depth_storing_nothing_as_admission_says(
        self, queue: JobQueue, clock: QueueFactory
    ) -> None:
        first, second, third = (new_job(n=n) for n in range(3))
        if not queue.capabilities.admission:
            await refused(lambda: queue.enqueue(first), "admission")
            assert await queue.get(first.id) is None
            return
        await enqueue_all(queue, [first, second])
        with pytest.raises(AdmissionRefusedError) as refusal:
            await queue.enqueue(third)
        assert (refusal.value.queue, refusal.value.retry_after) == ("default", 7.0)
        assert refusal.value.reason
        assert await queue.get(third.id) is None

    @scenario_with(QueueOptions(admission=ADMISSION))
    async def test_admission_counts_the_whole_batch_and_refuses_it_all_or_nothing(
        self, queue: JobQueue, clock: QueueFactory
    ) -> None:
        await queue.enqueue(new_job())
        over = [new_job(queue="open"), new_job(n=1), new_job(n=2)]
        with pytest.raises(AdmissionRefusedError) as refusal:
            await queue.submit([NewJob(job=job) for job in over])
        assert refusal.value.queue == "default"
        for job in over:
            assert await queue.get(job.id) is None
        fits = [new_job(queue="open", n=3), new_job(n=4)]
        answers = await queue.submit([NewJob(job=job) for job in fits])
        assert [answer.created for answer in answers] == [True, True]

    @scenario_with(QueueOptions(admission=ADMISSION))
    async def test_admission_limits_are_per_queue(
        self, queue: JobQueue, clock: QueueFactory
    ) -> None:
        await enqueue_all(queue, [new_job(queue="bulk", n=n) for n in range(4)])
        with pytest.raises(AdmissionRefusedError) as refusal:
            await queue.enqueue(new_job(queue="bulk", n=4))
        assert refusal.value.queue == "bulk"
        await enqueue_all(queue, [new_job(queue="open", n=n) for n in range(10)])  # no limit
        # Queues without limits of their own take the default's, each counted apart.
        await enqueue_all(queue, [new_job(n=n) for n in range(2)])
        await enqueue_all(queue, [new_job(queue="another", n=n) for n in range(2)])
        for name in ("default", "another"):
            with pytest.raises(AdmissionRefusedError) as refusal:
                await queue.enqueue(new_job(queue=name, n=2))
            assert refusal.value.queue == name

    @scenario_with(QueueOptions(admission=ADMISSION))
    async def test_admission_depth_leaves_out_scheduled_and_claimed_jobs(
        self, queue: JobQueue, clock: QueueFactory
    ) -> None:
        now = await clock.now(queue)
        later = [new_job(n=n, run_at=at(now, FOREVER), now=now) for n in range(3)]
        await enqueue_all(queue, later)
        await enqueue_all(queue, [new_job(n=10), new_job(n=11)])
        with pytest.raises(AdmissionRefusedError):
            await queue.enqueue(new_job(n=12))
        await claim_one(queue)
        await queue.enqueue(new_job(n=13))

    @scenario_with(QueueOptions(admission=ADMISSION))
    async def test_admission_refuses_while_the_oldest_queued_job_has_waited_past_max_age(
        self, queue: JobQueue, clock: QueueFactory
    ) -> None:
        oldest, younger = new_job(queue="fresh", n=0), new_job(queue="fresh", n=1)
        await enqueue_all(queue, [oldest, younger])
        await clock.elapse(PAST_SOON)
        late = new_job(queue="fresh", n=2)
        with pytest.raises(AdmissionRefusedError) as refusal:
            await queue.enqueue(late)
        assert (refusal.value.queue, refusal.value.retry_after) == ("fresh", 7.0)
        assert await queue.get(late.id) is None
        await queue.enqueue(new_job(n=3))  # other queues are not held back
        assert await claimed_ids(queue, ["fresh"], n=2) == [oldest.id, younger.id]
        await queue.enqueue(late)  # nothing has waited long now

    @scenario_with(QueueOptions(admission=ADMISSION))
    async def test_a_repeat_under_a_held_key_is_answered_even_when_its_queue_is_full(
        self, queue: JobQueue, clock: QueueFactory
    ) -> None:
        first = new_job(n=0)
        await queue.submit([keyed(first, "k", "f")])
        await queue.enqueue(new_job(n=1))  # the queue is full now
        assert await queue.submit([keyed(new_job(n=2), "k", "f")]) == [Submitted(first.id, False)]
        with pytest.raises(AdmissionRefusedError):
            await queue.submit([keyed(new_job(n=3), "k2", "f")])

    # -- scheduling -------------------------------------------------------------------------

    @scenario
    async def test_a_job_due_later_waits_scheduled_then_is_queued_as_scheduling_says(
        self, queue: JobQueue, clock: QueueFactory
    ) -> None:
        now = await clock.now(queue)
        job = new_job(run_at=at(now, SOON), now=now)
        assert job.status == S.SCHEDULED
        if not queue.capabilities.scheduling:
            await refused(lambda: queue.enqueue(job), "scheduling")
            assert await queue.get(job.id) is None
            return
        await queue.enqueue(job)
        assert await queue.get(job.id) == job
        assert await queue.recover(["default"]) == 0
        await clock.elapse(PAST_SOON)
        assert await queue.recover(["default"]) == 1
        promoted = await stored(queue, job.id)
        assert (promoted.status, promoted.attempts, promoted.run_at) == (S.QUEUED, 0, job.run_at)

    @scenario
    async def test_the_queue_decides_scheduled_or_queued_on_its_own_clock(
        self, queue: JobQueue, clock: QueueFactory
    ) -> None:
        now = await clock.now(queue)
        # A submitter whose clock runs ahead thinks run_at has come; one behind, that it has not.
        ahead = new_job(n=0, run_at=at(now, FOREVER), now=at(now, 2 * FOREVER))
        behind = new_job(n=1, run_at=at(now, -1), now=at(now, -FOREVER))
        assert (ahead.status, behind.status) == (S.QUEUED, S.SCHEDULED)
        await queue.submit([NewJob(job=ahead), NewJob(job=behind)])
        assert await status_of(queue, ahead.id) == S.SCHEDULED
        assert await status_of(queue, behind.id) == S.QUEUED
        assert await claimed_ids(queue, n=2) == [behind.id]

    @scenario
    async def test_scheduled_jobs_are_claimed_once_due_in_the_order_they_fall_due(
        self, queue: JobQueue, clock: QueueFactory
    ) -> None:
        now = await clock.now(queue)
        late = new_job(n=0, run_at=at(now, 2 * SOON), now=now)
        early = new_job(n=1, run_at=at(now, SOON), now=now)
        ready = new_job(n=2)
        await enqueue_all(queue, [late, early, ready])
        assert await claimed_ids(queue, n=3) == [ready.id]
        await clock.elapse(2 * SOON + 0.2)
        assert await claimed_ids(queue, n=3) == [early.id, late.id]

    @scenario
    async def test_a_scheduled_job_runs_once_due_and_not_before(
        self, queue: JobQueue, clock: QueueFactory
    ) -> None:
        now = await clock.now(queue)
        due = driven_job({"mode": "succeed"})
        later = attrs.evolve(driven_job({"mode": "succeed"}), run_at=at(now, SOON))
        await enqueue_all(queue, [due, attrs.evolve(later, status=S.SCHEDULED)])
        await clock.drain(queue, [due.id])
        waiting = await stored(queue, later.id)
        assert (waiting.status, waiting.attempts, waiting.started_at) == (S.SCHEDULED, 0, None)
        await clock.elapse(PAST_SOON)
        await clock.drain(queue, [later.id])
        ran = await stored(queue, later.id)
        assert (ran.status, ran.attempts) == (S.SUCCEEDED, 1)
        assert ran.started_at is not None
        assert ran.started_at >= at(now, SOON)

    # -- priorities -------------------------------------------------------------------------

    @scenario
    async def test_higher_priorities_are_claimed_first_fifo_within_one_queue_by_queue(
        self, queue: JobQueue, clock: QueueFactory
    ) -> None:
        jobs = [new_job(n=n, priority=p) for n, p in enumerate([0, 5, -3, 5, 0, 100, -100])]
        await enqueue_all(queue, jobs)
        expected = jobs
        if queue.capabilities.priorities:
            expected = sorted(jobs, key=lambda job: -job.priority)  # stable: FIFO within one
        assert await claimed_ids(queue, n=len(jobs)) == [job.id for job in expected]
        # Queues are taken in the order asked for, whatever the priorities inside them.
        low, high = new_job(queue="first", priority=-5), new_job(queue="second", priority=5)
        await enqueue_all(queue, [high, low])
        assert await claimed_ids(queue, ["first", "second"], n=2) == [low.id, high.id]

    @scenario
    async def test_a_released_job_goes_back_to_the_head_of_its_priority(
        self, queue: JobQueue, clock: QueueFactory
    ) -> None:
        low1, low2, high = new_job(n=0), new_job(n=1), new_job(n=2, priority=5)
        await enqueue_all(queue, [low1, low2])
        lease = await claim_one(queue)
        assert lease.job_id == low1.id
        await queue.enqueue(high)
        assert await queue.release(lease)
        order = [high, low1, low2] if queue.capabilities.priorities else [low1, low2, high]
        assert await claimed_ids(queue, n=3) == [job.id for job in order]

    @scenario
    async def test_a_reclaimed_job_goes_back_to_the_head_of_its_priority(
        self, queue: JobQueue, clock: QueueFactory
    ) -> None:
        low1, low2, high = new_job(n=0), new_job(n=1), new_job(n=2, priority=5)
        await enqueue_all(queue, [low1, low2])
        lapsed = await claim_one(queue, lease_seconds=LEASE)
        assert lapsed.job_id == low1.id
        await queue.enqueue(high)
        await clock.elapse(PAST_LEASE)
        order = [high, low1, low2] if queue.capabilities.priorities else [low1, low2, high]
        assert await claimed_ids(queue, n=3) == [job.id for job in order]

    # -- deadlines --------------------------------------------------------------------------

    @scenario
    async def test_a_waiting_job_past_its_deadline_expires_unrun_as_deadlines_says(
        self, queue: JobQueue, clock: QueueFactory
    ) -> None:
        now = await clock.now(queue)
        job = new_job(deadline=at(now, SOON), now=now)
        if not queue.capabilities.deadlines:
            await refused(lambda: queue.enqueue(job), "deadlines")
            assert await queue.get(job.id) is None
            return
        await queue.enqueue(job)
        assert await queue.get(job.id) == job
        assert await queue.recover(["default"]) == 0
        await clock.elapse(PAST_SOON)
        assert await queue.recover(["default"]) == 1
        expired = await stored(queue, job.id)
        assert (expired.status, expired.attempts, expired.started_at) == (S.EXPIRED, 0, None)
        assert expired.finished_at is not None
        assert expired.history == ()

    @scenario
    async def test_a_claim_expires_queued_jobs_past_their_deadline_instead_of_claiming_them(
        self, queue: JobQueue, clock: QueueFactory
    ) -> None:
        now = await clock.now(queue)
        doomed = new_job(n=0, deadline=at(now, SOON), now=now)
        kept = new_job(n=1, deadline=at(now, FOREVER), now=now)
        plain = new_job(n=2)
        await enqueue_all(queue, [doomed, kept, plain])
        await clock.elapse(PAST_SOON)
        assert await claimed_ids(queue, n=3) == [kept.id, plain.id]
        expired = await stored(queue, doomed.id)
        assert (expired.status, expired.attempts) == (S.EXPIRED, 0)

    @scenario
    async def test_a_failed_job_waiting_for_its_retry_expires_at_its_deadline(
        self, queue: JobQueue, clock: QueueFactory
    ) -> None:
        now = await clock.now(queue)
        job = new_job(deadline=at(now, 2 * SOON), now=now)
        await queue.enqueue(job)
        lease = await claim_one(queue)
        assert await queue.fail(lease, ERROR, retry_in=SOON / 3)
        assert await status_of(queue, job.id) == S.FAILED  # its retry is due before the deadline
        await clock.elapse(2 * SOON + 0.2)
        await queue.recover(["default"])
        expired = await stored(queue, job.id)
        assert (expired.status, expired.attempts, expired.error) == (S.EXPIRED, 1, ERROR)
        assert [r.outcome for r in expired.history] == [AttemptOutcome.FAILED]
        assert await claim(queue) == []

    @scenario
    async def test_fail_after_the_deadline_passed_ends_expired_with_an_expired_attempt(
        self, queue: JobQueue, clock: QueueFactory
    ) -> None:
        now = await clock.now(queue)
        job = new_job(deadline=at(now, SOON), now=now)
        await queue.enqueue(job)
        lease = await claim_one(queue)
        await clock.elapse(PAST_SOON)
        assert await queue.fail(lease, ERROR, retry_in=0.0)
        expired = await stored(queue, job.id)
        assert (expired.status, expired.attempts, expired.error) == (S.EXPIRED, 1, ERROR)
        assert expired.finished_at is not None
        (record,) = expired.history
        assert (record.attempt, record.outcome, record.error) == (
            1,
            AttemptOutcome.EXPIRED,
            "SMTPError: smtp said no",
        )
        await clock.elapse(0.1)
        assert await claim(queue) == []

    @scenario
    async def test_fail_whose_retry_would_be_due_after_the_deadline_ends_expired_at_once(
        self, queue: JobQueue, clock: QueueFactory
    ) -> None:
        now = await clock.now(queue)
        tight = new_job(n=0, deadline=at(now, FOREVER / 2), now=now)
        roomy = new_job(n=1, deadline=at(now, 2 * FOREVER), now=now)
        await enqueue_all(queue, [tight, roomy])
        first, second = await claim_one(queue), await claim_one(queue)
        assert (first.job_id, second.job_id) == (tight.id, roomy.id)
        assert await queue.fail(first, ERROR, retry_in=FOREVER)
        assert await queue.fail(second, ERROR, retry_in=FOREVER)
        expired, retried = await stored(queue, tight.id), await stored(queue, roomy.id)
        assert expired.status == S.EXPIRED
        assert [r.outcome for r in expired.history] == [AttemptOutcome.EXPIRED]
        assert retried.status == S.FAILED
        assert [r.outcome for r in retried.history] == [AttemptOutcome.FAILED]

    @scenario
    async def test_a_lapsed_lease_past_the_deadline_ends_expired_instead_of_being_retried(
        self, queue: JobQueue, clock: QueueFactory
    ) -> None:
        now = await clock.now(queue)
        doomed = new_job(n=0, deadline=at(now, SOON), now=now)
        retried = new_job(n=1, deadline=at(now, FOREVER), now=now)
        await enqueue_all(queue, [doomed, retried])
        await claim_one(queue, lease_seconds=LEASE, worker_id="lost")
        await claim_one(queue, lease_seconds=LEASE, worker_id="lost")
        await clock.elapse(PAST_LEASE)
        assert await queue.recover(["default"]) == 2
        expired = await stored(queue, doomed.id)
        assert (expired.status, expired.attempts) == (S.EXPIRED, 1)
        assert expired.finished_at is not None
        assert expired.error is not None
        assert expired.error.kind == ErrorKind.WORKER_LOST
        (record,) = expired.history
        assert (record.worker, record.outcome) == ("lost", AttemptOutcome.EXPIRED)
        assert record.error is not None
        assert record.error.startswith("LeaseExpired")
        assert await status_of(queue, retried.id) == S.QUEUED
        assert await claimed_ids(queue, n=2) == [retried.id]

    # -- cancellation -----------------------------------------------------------------------

    @scenario
    async def test_cancel_of_a_queued_job_ends_it_at_once_as_cancel_queued_says(
        self, queue: JobQueue, clock: QueueFactory
    ) -> None:
        job, other = new_job(n=0), new_job(n=1)
        await enqueue_all(queue, [job, other])
        if not queue.capabilities.cancel_queued:
            before = await queue.get(job.id)
            await refused(lambda: queue.cancel(job.id), "cancel_queued")
            assert await queue.get(job.id) == before
            return
        cancelled = await queue.cancel(job.id)
        assert (cancelled.status, cancelled.attempts, cancelled.started_at) == (
            S.CANCELLED,
            0,
            None,
        )
        assert cancelled.finished_at is not None
        assert await queue.get(job.id) == cancelled
        assert await status_of(queue, other.id) == S.QUEUED
        assert await claimed_ids(queue, n=2) == [other.id]

    @scenario
    async def test_a_cancelled_job_never_runs(self, queue: JobQueue, clock: QueueFactory) -> None:
        doomed, kept = driven_job({"mode": "succeed"}), driven_job({"mode": "succeed"})
        await enqueue_all(queue, [doomed, kept])
        await queue.cancel(doomed.id)
        await clock.drain(queue, [kept.id])
        assert await status_of(queue, kept.id) == S.SUCCEEDED
        cancelled = await stored(queue, doomed.id)
        assert (cancelled.status, cancelled.attempts, cancelled.started_at) == (
            S.CANCELLED,
            0,
            None,
        )

    @scenario
    async def test_cancel_of_a_scheduled_or_failed_job_ends_it_at_once(
        self, queue: JobQueue, clock: QueueFactory
    ) -> None:
        now = await clock.now(queue)
        scheduled = new_job(n=0, run_at=at(now, SOON), now=now)
        await queue.enqueue(scheduled)
        assert (await queue.cancel(scheduled.id)).status == S.CANCELLED
        failing = new_job(n=1)
        await queue.enqueue(failing)
        assert await queue.fail(await claim_one(queue), ERROR, retry_in=SOON)
        cancelled = await queue.cancel(failing.id)
        assert (cancelled.status, cancelled.attempts, cancelled.error) == (S.CANCELLED, 1, ERROR)
        assert cancelled.finished_at is not None
        await clock.elapse(PAST_SOON)
        assert await claim(queue) == []
        for job in (scheduled, failing):
            assert await status_of(queue, job.id) == S.CANCELLED

    @scenario
    async def test_cancel_of_an_active_job_asks_its_worker_to_stop_as_cancel_active_says(
        self, queue: JobQueue, clock: QueueFactory
    ) -> None:
        job, bystander = new_job(n=0), new_job(n=1)
        await enqueue_all(queue, [job, bystander])
        lease, other = await claim_one(queue), await claim_one(queue)
        assert await queue.cancel_requested([lease, other]) == set()
        if not queue.capabilities.cancel_active:
            before = await queue.get(job.id)
            await refused(lambda: queue.cancel(job.id), "cancel_active")
            await refused(lambda: queue.cancelled(lease), "cancel_active")
            assert await queue.get(job.id) == before
            return
        asked = await queue.cancel(job.id)
        assert (asked.status, asked.attempts, asked.finished_at) == (S.ACTIVE, 1, None)
        assert asked.cancel_requested_at is not None
        assert await queue.get(job.id) == asked
        await clock.elapse(0.1)
        again = await queue.cancel(job.id)
        assert again.cancel_requested_at == asked.cancel_requested_at  # asked once, when first
        assert await queue.cancel_requested([lease, other]) == {job.id}
        assert await queue.set_progress(lease, 50)  # still its worker's until it stops
        assert await queue.cancelled(lease) is True
        cancelled = await stored(queue, job.id)
        assert (cancelled.status, cancelled.attempts, cancelled.progress) == (S.CANCELLED, 1, 50)
        assert cancelled.finished_at is not None
        (record,) = cancelled.history
        assert (record.attempt, record.worker, record.outcome) == (
            1,
            "worker-1",
            AttemptOutcome.CANCELLED,
        )
        assert await queue.cancelled(lease) is False  # that attempt is over
        assert await queue.complete(lease, "late") is False
        assert await queue.complete(other, "done") is True

    @scenario
    async def test_cancelled_with_a_stale_lease_is_refused_and_changes_nothing(
        self, queue: JobQueue, clock: QueueFactory
    ) -> None:
        job = new_job()
        await queue.enqueue(job)
        lease = await claim_one(queue)
        await queue.cancel(job.id)
        before = await queue.get(job.id)
        assert await queue.cancelled(Lease(lease.job, lease.token + "x")) is False
        assert await queue.get(job.id) == before
        assert await queue.cancelled(lease) is True

    @scenario
    async def test_cancel_of_a_finished_job_is_refused_and_of_an_unknown_one_not_found(
        self, queue: JobQueue, clock: QueueFactory
    ) -> None:
        for job_id in (uuid.uuid4().hex, "not-a-job-id"):
            with pytest.raises(JobNotFoundError):
                await queue.cancel(job_id)
        done, fatal = driven_job({"mode": "succeed"}), driven_job({"mode": "fatal"})
        await enqueue_all(queue, [done, fatal])
        await clock.drain(queue, [done.id, fatal.id])
        cancelled = new_job()
        await queue.enqueue(cancelled)
        await queue.cancel(cancelled.id)
        now = await clock.now(queue)
        expired = new_job(deadline=at(now, SOON), now=now)
        await queue.enqueue(expired)
        await clock.elapse(PAST_SOON)
        await queue.recover(["default"])
        finished = {done.id: S.SUCCEEDED, fatal.id: S.DEAD, cancelled.id: S.CANCELLED}
        finished[expired.id] = S.EXPIRED
        for job_id, status in finished.items():
            before = await stored(queue, job_id)
            assert before.status == status
            with pytest.raises(InvalidTransitionError) as refusal:
                await queue.cancel(job_id)
            assert (refusal.value.current, refusal.value.target) == (status, S.CANCELLED)
            assert await queue.get(job_id) == before

    @scenario
    async def test_a_lease_lapsing_on_a_job_with_a_cancel_request_ends_it_cancelled(
        self, queue: JobQueue, clock: QueueFactory
    ) -> None:
        job = new_job(max_attempts=3)
        await queue.enqueue(job)
        await claim_one(queue, lease_seconds=LEASE)
        await queue.cancel(job.id)
        await clock.elapse(PAST_LEASE)
        assert await queue.recover(["default"]) == 1
        cancelled = await stored(queue, job.id)
        assert (cancelled.status, cancelled.attempts) == (S.CANCELLED, 1)
        assert cancelled.finished_at is not None
        assert [r.outcome for r in cancelled.history] == [AttemptOutcome.CANCELLED]
        assert await claim(queue) == []

    @scenario
    async def test_an_attempt_failed_or_released_after_a_cancel_request_ends_the_job_cancelled(
        self, queue: JobQueue, clock: QueueFactory
    ) -> None:
        failing, releasing = new_job(n=0), new_job(n=1)
        await enqueue_all(queue, [failing, releasing])
        failed, released = await claim_one(queue), await claim_one(queue)
        await queue.cancel(failing.id)
        await queue.cancel(releasing.id)
        assert await queue.fail(failed, ERROR, retry_in=0.0)  # not retried
        assert await queue.release(released)  # not handed back to the queue
        for job in (failing, releasing):
            cancelled = await stored(queue, job.id)
            assert (cancelled.status, cancelled.attempts) == (S.CANCELLED, 1)
            assert cancelled.finished_at is not None
            assert [r.outcome for r in cancelled.history] == [AttemptOutcome.CANCELLED]
        assert (await stored(queue, failing.id)).error == ERROR
        await clock.elapse(0.1)
        assert await claim(queue) == []

    @scenario
    async def test_requeue_of_a_cancelled_job_clears_its_cancel_request_and_it_runs_again(
        self, queue: JobQueue, clock: QueueFactory
    ) -> None:
        job = new_job()
        await queue.enqueue(job)
        lease = await claim_one(queue)
        await queue.cancel(job.id)
        assert await queue.cancelled(lease)
        requeued = await queue.requeue(job.id)
        assert (requeued.status, requeued.attempts, requeued.cancel_requested_at) == (
            S.QUEUED,
            0,
            None,
        )
        assert requeued.finished_at is None
        again = await claim_one(queue)
        assert again.job.cancel_requested_at is None
        assert await queue.cancel_requested([again]) == set()
        assert await queue.complete(again, "ok")
        done = await stored(queue, job.id)
        assert [r.outcome for r in done.history] == [
            AttemptOutcome.CANCELLED,
            AttemptOutcome.SUCCEEDED,
        ]

    @scenario
    async def test_a_cancel_racing_a_claim_cancels_the_job_unclaimed_or_asks_its_worker(
        self, queue: JobQueue, clock: QueueFactory
    ) -> None:
        for n in range(20):
            job = new_job(n=n)
            await queue.enqueue(job)
            if n % 2:
                leases, answer = await asyncio.gather(claim(queue, limit=1), queue.cancel(job.id))
            else:
                answer, leases = await asyncio.gather(queue.cancel(job.id), claim(queue, limit=1))
            current = await stored(queue, job.id)
            if leases:  # claimed first: never also cancelled unclaimed
                assert [lease.job_id for lease in leases] == [job.id]
                assert (current.status, current.attempts) == (S.ACTIVE, 1)
                assert current.cancel_requested_at is not None
                assert answer.status == S.ACTIVE
                assert await queue.cancel_requested(leases) == {job.id}
                assert await queue.cancelled(leases[0])
            else:  # cancelled first: never claimed
                assert (current.status, current.attempts, current.started_at) == (
                    S.CANCELLED,
                    0,
                    None,
                )
                assert answer == current
            assert await claim(queue) == []

    # -- paused queues ----------------------------------------------------------------------

    @scenario
    async def test_pause_and_resume_are_refused_or_reported_as_pause_says(
        self, queue: JobQueue, clock: QueueFactory
    ) -> None:
        job = new_job()
        await queue.enqueue(job)
        if not queue.capabilities.pause:
            await refused(lambda: queue.pause("default"), "pause")
            await refused(lambda: queue.resume("default"), "pause")
            assert await queue.get(job.id) == job
            return
        await queue.pause("default")
        await queue.pause("default")  # again: still paused
        later = new_job(n=1)
        await queue.enqueue(later)  # a paused queue accepts jobs
        assert await status_of(queue, later.id) == S.QUEUED
        if queue.capabilities.queue_stats:
            assert (await stats_of(queue)).paused is True
            assert (await stats_of(queue, "other")).paused is False
        await queue.resume("default")
        await queue.resume("default")
        await queue.resume("never-paused")
        if queue.capabilities.queue_stats:
            assert (await stats_of(queue)).paused is False

    @scenario
    async def test_a_paused_queue_hands_out_nothing_until_resumed_while_others_flow(
        self, queue: JobQueue, clock: QueueFactory
    ) -> None:
        await queue.pause("held")
        held, flowing = new_job(queue="held"), new_job(queue="flowing")
        await enqueue_all(queue, [held, flowing])
        leases = await claim(queue, ["held", "flowing"], limit=10)
        assert [lease.job_id for lease in leases] == [flowing.id]
        assert await claim(queue, ["held"]) == []
        await queue.resume("held")
        assert [lease.job_id for lease in await claim(queue, ["held"])] == [held.id]

    @scenario
    async def test_a_claimer_waiting_on_a_paused_queue_gets_its_job_once_resumed(
        self, queue: JobQueue, clock: QueueFactory
    ) -> None:
        job = new_job()
        await queue.pause("default")
        await queue.enqueue(job)
        started = time.monotonic()
        waiting = asyncio.create_task(claim(queue, wait_seconds=5.0))
        await asyncio.sleep(0.3)
        if queue.capabilities.blocking_claim:
            assert not waiting.done()
        await queue.resume("default")
        leases = list(await waiting)
        if queue.capabilities.blocking_claim:
            assert [lease.job_id for lease in leases] == [job.id]
            assert time.monotonic() - started < 1.5  # woken by resume, not by the 5 s wait
        else:
            assert leases == []
            assert [lease.job_id for lease in await claim(queue)] == [job.id]

    # -- figures: queue stats, situation, live workers --------------------------------------

    @scenario
    async def test_queue_stats_answer_each_queue_asked_for_as_queue_stats_says(
        self, queue: JobQueue, clock: QueueFactory
    ) -> None:
        await enqueue_all(queue, [new_job(n=n) for n in range(3)])
        await queue.enqueue(new_job(queue="other"))
        if not queue.capabilities.queue_stats:
            await refused(lambda: queue.queue_stats(), "queue_stats")
            await refused(lambda: queue.queue_stats(["default"]), "queue_stats")
            await refused(lambda: queue.situation(uuid.uuid4().hex), "queue_stats")
            return
        stats = await queue.queue_stats(["default", "other", "empty"])
        assert [s.name for s in stats] == ["default", "other", "empty"]
        assert [counts(s)[S.QUEUED] for s in stats] == [3, 1, 0]
        assert [sum(counts(s).values()) for s in stats] == [3, 1, 0]
        default, _, empty = stats
        assert default.oldest_queued_age is not None
        assert default.oldest_queued_age >= 0
        assert empty.oldest_queued_age is None
        assert [s.paused for s in stats] == [False, False, False]
        workers = 0 if queue.capabilities.worker_presence else None
        assert [s.workers for s in stats] == [workers] * 3

    @scenario
    async def test_queue_stats_count_jobs_by_status_with_the_oldest_queued_age(
        self, queue: JobQueue, clock: QueueFactory
    ) -> None:
        now = await clock.now(queue)
        done, failing, running, dead = (new_job(n=n) for n in range(4))
        await enqueue_all(queue, [done, failing, running, dead])
        leases = [await claim_one(queue) for _ in range(4)]
        assert await queue.complete(leases[0], "ok")
        assert await queue.fail(leases[1], ERROR, retry_in=FOREVER)
        assert await queue.fail(leases[3], ERROR, retry_in=None)
        cancelled = new_job(n=4)
        await queue.enqueue(cancelled)
        await queue.cancel(cancelled.id)
        await queue.enqueue(new_job(n=5, run_at=at(now, FOREVER), now=now))
        await queue.enqueue(new_job(n=6))
        await clock.elapse(PAST_SOON)
        stats = await stats_of(queue)
        expected = dict.fromkeys(JobStatus, 0)
        for status in (S.SUCCEEDED, S.FAILED, S.ACTIVE, S.DEAD, S.CANCELLED, S.SCHEDULED):
            expected[status] = 1
        expected[S.QUEUED] = 1
        assert counts(stats) == expected
        assert stats.oldest_queued_age is not None
        assert PAST_SOON <= stats.oldest_queued_age < PAST_SOON + 5

    @scenario
    async def test_queue_stats_without_names_cover_every_queue_known(
        self, queue: JobQueue, clock: QueueFactory
    ) -> None:
        await enqueue_all(queue, [new_job(queue="alpha"), new_job(queue="beta", n=1)])
        known = {"alpha", "beta"}
        if queue.capabilities.pause:
            await queue.pause("gamma")
            known.add("gamma")
        stats = await queue.queue_stats()
        names = [s.name for s in stats]
        assert len(names) == len(set(names))
        assert known <= set(names)
        by_name = {s.name: s for s in stats}
        assert counts(by_name["alpha"])[S.QUEUED] == 1
        assert by_name.get("gamma") is None or by_name["gamma"].paused

    @scenario
    async def test_situation_says_how_many_jobs_are_ahead_and_whether_the_queue_is_paused(
        self, queue: JobQueue, clock: QueueFactory
    ) -> None:
        a, b, c = new_job(n=0), new_job(n=1), new_job(n=2, priority=5)
        await enqueue_all(queue, [a, b, c])
        order = [c, a, b] if queue.capabilities.priorities else [a, b, c]
        workers = 0 if queue.capabilities.worker_presence else None
        for ahead, job in enumerate(order):
            situation = await queue.situation(job.id)
            assert situation is not None
            assert situation.job == await queue.get(job.id)
            assert (situation.ahead, situation.paused, situation.workers) == (
                ahead,
                False,
                workers,
            )
        assert await queue.situation(uuid.uuid4().hex) is None
        if queue.capabilities.pause:
            await queue.pause("default")
            situation = await queue.situation(a.id)
            assert situation is not None
            assert situation.paused is True
            await queue.resume("default")
        lease = await claim_one(queue)
        assert lease.job_id == order[0].id
        running = await queue.situation(lease.job_id)
        assert running is not None
        assert (running.job.status, running.ahead) == (S.ACTIVE, None)
        last = await queue.situation(order[2].id)
        assert last is not None
        assert last.ahead == 1

    @scenario
    async def test_heartbeats_count_live_workers_per_queue_as_worker_presence_says(
        self, queue: JobQueue, clock: QueueFactory
    ) -> None:
        job = new_job()
        await queue.enqueue(job)
        # Every backend accepts these: a worker calls them whatever the backend.
        await queue.heartbeat("w1", ["default", "other"], SOON)
        await queue.heartbeat("w2", ["default"], FOREVER)
        if not queue.capabilities.queue_stats:
            assert not queue.capabilities.worker_presence  # presence shows in the figures
            await queue.forget_worker("w1")
            return

        async def workers() -> list[int | None]:
            stats = await queue.queue_stats(["default", "other", "idle"])
            return [s.workers for s in stats]

        if not queue.capabilities.worker_presence:
            assert await workers() == [None, None, None]
            await queue.forget_worker("w1")
            return
        assert await workers() == [2, 1, 0]
        situation = await queue.situation(job.id)
        assert situation is not None
        assert situation.workers == 2
        await clock.elapse(PAST_SOON)  # w1's heartbeat lapses
        assert await workers() == [1, 0, 0]
        await queue.heartbeat("w1", ["other"], FOREVER)
        assert await workers() == [1, 1, 0]
        await queue.forget_worker("w2")
        await queue.forget_worker("never-seen")
        assert await workers() == [0, 1, 0]

    # -- what an attempt records ------------------------------------------------------------

    @scenario
    async def test_renew_records_a_heartbeat_fail_records_the_retry_time_and_claim_clears_them(
        self, queue: JobQueue, clock: QueueFactory
    ) -> None:
        job = new_job()
        await queue.enqueue(job)
        lease = await claim_one(queue, lease_seconds=LEASE)
        assert lease.job.heartbeat_at is None
        assert lease.job.retry_at is None
        await clock.elapse(0.1)
        assert await queue.renew([lease], FOREVER) == {job.id}
        alive = await stored(queue, job.id)
        assert alive.heartbeat_at is not None
        assert alive.started_at is not None
        assert alive.heartbeat_at > alive.started_at
        assert await queue.fail(lease, ERROR, retry_in=RETRY_IN)
        failed = await stored(queue, job.id)
        assert failed.retry_at is not None
        ended = failed.history[-1].ended_at
        assert ended is not None
        assert abs((failed.retry_at - ended).total_seconds() - RETRY_IN) < 0.05
        await clock.elapse(RETRY_IN + 0.2)
        again = await claim_one(queue)
        assert (again.job.retry_at, again.job.heartbeat_at) == (None, None)
        assert await queue.get(job.id) == again.job

    # -- retention --------------------------------------------------------------------------

    @scenario_with(RETENTION)
    async def test_finished_jobs_are_forgotten_after_their_retention_and_dead_ones_later(
        self, queue: JobQueue, clock: QueueFactory
    ) -> None:
        now = await clock.now(queue)
        done, dead, requeued, running = (new_job(n=n, max_attempts=1) for n in range(4))
        await enqueue_all(queue, [done, dead, requeued, running])
        leases = [await claim_one(queue) for _ in range(4)]
        assert await queue.complete(leases[0], "ok")
        assert await queue.fail(leases[1], ERROR, retry_in=None)
        assert await queue.fail(leases[2], ERROR, retry_in=None)
        cancelled, waiting = new_job(n=4), new_job(n=5)
        expired = new_job(n=6, deadline=at(now, 0.1), now=now)
        await enqueue_all(queue, [cancelled, waiting, expired])
        await queue.cancel(cancelled.id)
        await clock.elapse(0.2)
        await queue.recover(["default"])
        assert await status_of(queue, expired.id) == S.EXPIRED

        await clock.elapse(PAST_SOON)
        await queue.recover(["default"])
        for job in (done, cancelled, expired):
            assert await queue.get(job.id) is None, "kept past result_ttl"
        assert await status_of(queue, dead.id) == S.DEAD
        await queue.requeue(requeued.id)

        await clock.elapse(3 * SOON)
        await queue.recover(["default"])
        assert await queue.get(dead.id) is None, "kept past dead_ttl"
        listed = {job_id for page in await all_pages(queue, JobQuery()) for job_id in page}
        assert listed == {requeued.id, running.id, waiting.id}
        assert await status_of(queue, requeued.id) == S.QUEUED
        assert await status_of(queue, running.id) == S.ACTIVE

    # -- the state machine ------------------------------------------------------------------

    @scenario
    async def test_every_lifecycle_status_sequence_observed_obeys_the_transitions(
        self, queue: JobQueue, clock: QueueFactory
    ) -> None:
        log = StatusLog(queue)
        now = await clock.now(queue)
        asked, failing = new_job(n=0), new_job(n=1)
        doomed = new_job(n=2, deadline=at(now, SOON), now=now)
        scheduled = new_job(n=3, run_at=at(now, SOON), now=now)
        ids = (asked.id, failing.id, doomed.id, scheduled.id)
        await enqueue_all(queue, [asked, failing, doomed, scheduled])
        await log.look(*ids)
        await clock.elapse(PAST_SOON)
        leases = {lease.job_id: lease for lease in await claim(queue, limit=10)}
        assert set(leases) == {asked.id, failing.id, scheduled.id}
        await log.look(*ids)
        await queue.cancel(asked.id)
        assert await queue.fail(leases[failing.id], ERROR, retry_in=FOREVER)
        assert await queue.complete(leases[scheduled.id], "ok")
        await log.look(*ids)
        assert await queue.cancelled(leases[asked.id])
        await queue.cancel(failing.id)
        await log.look(*ids)

        assert log.statuses(asked.id) == [S.QUEUED, S.ACTIVE, S.ACTIVE, S.CANCELLED]
        assert log.statuses(failing.id) == [S.QUEUED, S.ACTIVE, S.FAILED, S.CANCELLED]
        assert log.statuses(doomed.id) == [S.QUEUED, S.EXPIRED, S.EXPIRED, S.EXPIRED]
        assert log.statuses(scheduled.id) == [S.SCHEDULED, S.ACTIVE, S.SUCCEEDED, S.SUCCEEDED]
        assert log.illegal_moves() == []
