"""The JobQueue port contract, written once and run against every backend.

A backend's test module subclasses `QueueContract` (the class itself has no ``Test`` prefix,
so pytest collects only the subclasses) and provides a ``queue_factory`` fixture: a
`QueueFactory` that opens a fresh, empty queue and says how time passes for it.

Time: leases and retry delays use short real durations (a few hundred ms). A backend on a
fake clock makes `QueueFactory.elapse` advance that clock, and `QueueFactory.now` read it; one
on Redis's clock sleeps, and reads the local clock. Claims that wait always use real time.
Every test runs under `TEST_TIMEOUT`.

Retention and admission are set when a queue is built: `QueueOptions` carries them, and
`QueueFactory.configured(options)` opens a queue built with them (`scenario_with(options)`
runs a test on one). The lifecycle suite (`tests/queue_contract_lifecycle.py`) relies on it.
"""

from __future__ import annotations

import abc
import asyncio
import itertools
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager, AsyncExitStack
from datetime import UTC, datetime
from typing import Any

import attrs
import pytest

from domain.errors import InvalidTransitionError, JobNotFoundError, UnsupportedOperationError
from domain.jobs import (
    HISTORY_LIMIT,
    AttemptOutcome,
    ErrorKind,
    Job,
    JobError,
    JobStatus,
    Lease,
    can_transition,
)
from domain.ports import AdmissionPolicy, JobQuery, JobQueue
from tests.queue_driving import claim_and_process, driven_job

TEST_TIMEOUT = 20.0
LEASE = 0.3  # seconds; short so expiry tests stay fast
PAST_LEASE = 0.5  # long enough after LEASE for an expiry to be certain
RETRY_IN = 0.3
FOREVER = 60.0  # a lease that does not expire during a test
S = JobStatus


@attrs.frozen(kw_only=True)
class QueueOptions:
    """What a queue is built with besides its connection: retention and admission.

    The names are the adapters' constructor keywords: `kwargs()` passes them on as they are,
    e.g. ``RedisJobQueue(client, prefix=prefix, **options.kwargs())``.
    """

    result_ttl: float = 86400.0  # seconds succeeded, cancelled and expired jobs are kept
    dead_ttl: float = 7 * 86400.0  # seconds dead jobs are kept
    idempotency_ttl: float = 86400.0  # seconds an idempotency key is held
    admission: AdmissionPolicy | None = None

    def kwargs(self) -> dict[str, Any]:
        return attrs.asdict(self, recurse=False)


DEFAULTS = QueueOptions()


class QueueFactory(abc.ABC):
    """Opens queues for one backing, and controls how time passes for them."""

    @abc.abstractmethod
    def __call__(self) -> AbstractAsyncContextManager[JobQueue]:
        """A fresh, empty queue, closed (and its data removed) on exit."""

    def configured(self, options: QueueOptions) -> AbstractAsyncContextManager[JobQueue]:
        """A fresh, empty queue built with `options`, closed (and its data removed) on exit.

        A backend without `capabilities.admission` refuses a policy it cannot enforce: here,
        or at its first `submit`, with UnsupportedOperationError naming `admission`.
        """
        if options == DEFAULTS:
            return self()
        raise NotImplementedError(f"{type(self).__name__} cannot build a queue with {options}")

    async def elapse(self, seconds: float) -> None:
        """Let `seconds` pass on the clock the queue reads for leases and delays."""
        await asyncio.sleep(seconds)

    async def now(self, queue: JobQueue) -> datetime:
        """The time on the clock the queue reads: what run_at and deadlines are measured on."""
        return datetime.now(UTC)

    async def stale_writes(self, queue: JobQueue) -> int | None:
        """The backend's count of rejected stale writes, or None if it exposes none."""
        return None

    async def drain(self, queue: JobQueue, job_ids: Sequence[str]) -> None:
        """Run jobs the way this backend's workers do, until every one of `job_ids` has settled
        (succeeded, dead, cancelled). The default drives the port's claim protocol; a backend
        without `worker_claims` runs its own worker instead."""
        await claim_and_process(queue, job_ids)


Scenario = Callable[[Any, JobQueue, QueueFactory], Awaitable[None]]


def scenario(fn: Scenario) -> Callable[[Any, QueueFactory], None]:
    """Turns `async def test_x(self, queue, clock)` into a sync pytest test on a fresh queue.

    (No pytest-asyncio: each test runs its own event loop with `asyncio.run`.)
    """
    return scenario_with(DEFAULTS)(fn)


def scenario_with(
    options: QueueOptions,
) -> Callable[[Scenario], Callable[[Any, QueueFactory], None]]:
    """`scenario`, on a fresh queue built with `options` (see `QueueFactory.configured`)."""

    def decorate(fn: Scenario) -> Callable[[Any, QueueFactory], None]:
        def test(self: Any, queue_factory: QueueFactory) -> None:
            async def main() -> None:
                async with AsyncExitStack() as stack:
                    try:
                        opened = queue_factory.configured(options)
                        queue = await stack.enter_async_context(opened)
                    except UnsupportedOperationError as refused:
                        await refused_when_built(queue_factory, refused)
                        return
                    await asyncio.wait_for(
                        refusing(fn(self, queue, queue_factory), queue), TEST_TIMEOUT
                    )

            asyncio.run(main())

        test.__name__ = fn.__name__
        test.__qualname__ = fn.__qualname__
        test.__doc__ = fn.__doc__
        return test

    return decorate


async def refused_when_built(factory: QueueFactory, refused: UnsupportedOperationError) -> None:
    """A backend may refuse, as it is built, options a capability flag says it cannot honour
    (an admission policy without `admission`); a refusal the flags do not admit fails."""
    async with factory() as plain:
        flag = getattr(plain.capabilities, refused.capability, None)
    if flag is not False:
        message = f"{refused}, but capabilities.{refused.capability} is {flag}"
        raise AssertionError(message) from refused


async def refusing(scenario: Awaitable[None], queue: JobQueue) -> None:
    """Run a scenario; a backend may end it early by refusing a call one of its capability
    flags says it cannot do (RQ: the worker-side claim protocol). Not a skip: the refusal is
    what the test checks on such a backend, and a refusal the flags do not admit fails it."""
    try:
        await scenario
    except UnsupportedOperationError as refused:
        flag = getattr(queue.capabilities, refused.capability, None)
        if flag is not False:
            message = f"{refused}, but capabilities.{refused.capability} is {flag}"
            raise AssertionError(message) from refused


def new_job(
    *,
    queue: str = "default",
    type: str = "dummy",
    max_attempts: int = 3,
    n: int = 0,
    priority: int = 0,
    run_at: datetime | None = None,
    deadline: datetime | None = None,
    now: datetime | None = None,
) -> Job:
    """A job as a client submits it: queued, or scheduled when `run_at` is after `now`."""
    return Job.submitted(
        id=uuid.uuid4().hex,
        type=type,
        payload={"n": n, "nested": {"list": [1, 2.5, "three", None, True]}},
        queue=queue,
        max_attempts=max_attempts,
        timeout=30.0,
        now=now or datetime.now(UTC),
        priority=priority,
        run_at=run_at,
        deadline=deadline,
    )


async def enqueue_all(queue: JobQueue, jobs: Sequence[Job]) -> None:
    for job in jobs:
        await queue.enqueue(job)


async def claim(
    queue: JobQueue,
    queues: Sequence[str] = ("default",),
    *,
    limit: int = 10,
    lease_seconds: float = FOREVER,
    wait_seconds: float = 0.0,
    worker_id: str = "worker-1",
) -> Sequence[Lease]:
    return await queue.claim(
        queues,
        worker_id=worker_id,
        limit=limit,
        lease_seconds=lease_seconds,
        wait_seconds=wait_seconds,
    )


async def claim_one(queue: JobQueue, **kwargs: Any) -> Lease:
    leases = await claim(queue, limit=1, **kwargs)
    assert len(leases) == 1, leases
    return leases[0]


async def status_of(queue: JobQueue, job_id: str) -> JobStatus:
    job = await queue.get(job_id)
    assert job is not None
    return job.status


async def all_pages(queue: JobQueue, query: JobQuery, max_pages: int = 100) -> list[list[str]]:
    """The ids on every page of `query`, following cursors until there is none."""
    pages: list[list[str]] = []
    cursor = query.cursor
    for _ in range(max_pages):
        page = await queue.list_jobs(JobQuery(**{**_fields(query), "cursor": cursor}))
        pages.append([job.id for job in page.jobs])
        cursor = page.next_cursor
        if cursor is None:
            return pages
    raise AssertionError(f"still paging after {max_pages} pages")


def _fields(query: JobQuery) -> dict[str, Any]:
    return {
        "status": query.status,
        "type": query.type,
        "queue": query.queue,
        "limit": query.limit,
        "cursor": query.cursor,
    }


class StatusLog:
    """Every status a job was seen in, read through `get` after each step of a scenario."""

    def __init__(self, queue: JobQueue) -> None:
        self._queue = queue
        self.seen: dict[str, list[tuple[JobStatus, int]]] = {}

    async def look(self, *job_ids: str) -> None:
        for job_id in job_ids:
            job = await self._queue.get(job_id)
            assert job is not None
            self.seen.setdefault(job_id, []).append((job.status, job.attempts))

    def statuses(self, job_id: str) -> list[JobStatus]:
        return [status for status, _ in self.seen[job_id]]

    def illegal_moves(self) -> list[tuple[str, JobStatus, JobStatus]]:
        illegal = []
        for job_id, seen in self.seen.items():
            for (before, tries_before), (after, tries_after) in itertools.pairwise(seen):
                if before == after and tries_before == tries_after:
                    continue  # no move between these two looks
                if before == after == JobStatus.ACTIVE:
                    # Reclaimed and claimed again between two looks: it went through queued.
                    ok = can_transition(before, JobStatus.QUEUED) and can_transition(
                        JobStatus.QUEUED, after
                    )
                elif (
                    before in (JobStatus.FAILED, JobStatus.SCHEDULED) and after == JobStatus.ACTIVE
                ):
                    # A due retry or scheduled job is queued, then claimed, within one claim.
                    ok = can_transition(before, JobStatus.QUEUED) and can_transition(
                        JobStatus.QUEUED, after
                    )
                else:
                    ok = can_transition(before, after)
                if not ok:
                    illegal.append((job_id, before, after))
        return illegal


class QueueContract:
    """What every JobQueue backend promises. Subclasses provide the `queue_factory` fixture."""

    @pytest.fixture
    def queue_factory(self) -> QueueFactory:
        raise NotImplementedError("a backend's test class provides queue_factory")

    @pytest.fixture
    def drain(self, queue_factory: QueueFactory) -> Callable[[JobQueue, Sequence[str]], Any]:
        """Runs jobs until the ones named have settled, the way this backend runs them."""
        return queue_factory.drain

    # -- enqueue and get --------------------------------------------------------------------

    @scenario
    async def test_an_enqueued_job_is_queued_and_readable(
        self, queue: JobQueue, clock: QueueFactory
    ) -> None:
        job = new_job()
        await queue.enqueue(job)
        stored = await queue.get(job.id)
        assert stored == job
        assert stored is not None
        assert stored.payload == job.payload
        assert stored.status == JobStatus.QUEUED
        assert stored.attempts == 0
        assert stored.created_at == job.created_at

    @scenario
    async def test_an_unknown_id_gives_none(self, queue: JobQueue, clock: QueueFactory) -> None:
        await queue.enqueue(new_job())
        assert await queue.get(uuid.uuid4().hex) is None
        assert await queue.get("not-a-job-id") is None

    @scenario
    async def test_enqueue_of_an_existing_id_is_refused(
        self, queue: JobQueue, clock: QueueFactory
    ) -> None:
        job = new_job()
        await queue.enqueue(job)
        with pytest.raises(ValueError, match="already exists"):
            await queue.enqueue(job)
        assert len(await claim(queue)) == 1  # queued once, not twice

    @scenario
    async def test_concurrent_enqueues_of_one_id_store_it_once(
        self, queue: JobQueue, clock: QueueFactory
    ) -> None:
        job = new_job()
        outcomes = await asyncio.gather(
            queue.enqueue(job), queue.enqueue(job), return_exceptions=True
        )
        assert outcomes[0] is None
        assert isinstance(outcomes[1], ValueError)
        assert [lease.job_id for lease in await claim(queue)] == [job.id]

    @scenario
    async def test_concurrent_enqueues_keep_their_order_within_each_queue(
        self, queue: JobQueue, clock: QueueFactory
    ) -> None:
        jobs = [new_job(queue=q, n=n) for n in range(30) for q in ("a", "b")]
        await asyncio.gather(*(queue.enqueue(job) for job in jobs))
        for name in ("a", "b"):
            leases = await claim(queue, [name], limit=100)
            assert [lease.job_id for lease in leases] == [j.id for j in jobs if j.queue == name]

    @scenario
    async def test_enqueue_refuses_a_job_that_is_not_queued(
        self, queue: JobQueue, clock: QueueFactory
    ) -> None:
        job = new_job().transition(JobStatus.CANCELLED)
        with pytest.raises(ValueError, match="must be queued"):
            await queue.enqueue(job)
        assert await queue.get(job.id) is None

    # -- claim ------------------------------------------------------------------------------

    @scenario
    async def test_claim_returns_jobs_fifo_within_a_queue_and_respects_the_limit(
        self, queue: JobQueue, clock: QueueFactory
    ) -> None:
        jobs = [new_job(n=n) for n in range(5)]
        await enqueue_all(queue, jobs)
        first = await claim(queue, limit=3)
        second = await claim(queue, limit=3)
        assert [lease.job_id for lease in first] == [job.id for job in jobs[:3]]
        assert [lease.job_id for lease in second] == [job.id for job in jobs[3:]]
        assert await claim(queue, limit=3) == []

    @scenario
    async def test_claim_marks_active_with_the_attempt_counted_and_started_at_set(
        self, queue: JobQueue, clock: QueueFactory
    ) -> None:
        job = new_job()
        await queue.enqueue(job)
        lease = await claim_one(queue)
        assert lease.job.status == JobStatus.ACTIVE
        assert lease.attempt == lease.job.attempts == 1
        assert lease.job.started_at is not None
        assert lease.job.payload == job.payload
        assert lease.token
        stored = await queue.get(job.id)
        assert stored is not None
        assert (stored.status, stored.attempts) == (JobStatus.ACTIVE, 1)
        assert stored.started_at == lease.job.started_at

    @scenario
    async def test_claim_takes_earlier_queues_first(
        self, queue: JobQueue, clock: QueueFactory
    ) -> None:
        low = [new_job(queue="low", n=n) for n in range(2)]
        high = [new_job(queue="high", n=n) for n in range(2)]
        await enqueue_all(queue, [*low, *high])  # low-priority work was there first
        leases = await claim(queue, ["high", "low"], limit=3)
        assert [lease.job_id for lease in leases] == [high[0].id, high[1].id, low[0].id]
        assert await claim(queue, ["other"], limit=3) == []

    @scenario
    async def test_claim_on_an_empty_queue_returns_nothing_after_waiting_about_wait_seconds(
        self, queue: JobQueue, clock: QueueFactory
    ) -> None:
        started = time.monotonic()
        leases = await claim(queue, wait_seconds=0.4)
        waited = time.monotonic() - started
        assert leases == []
        if queue.capabilities.blocking_claim:
            assert 0.35 <= waited < 1.5, waited
        else:
            assert waited < 0.2, waited

    @scenario
    async def test_a_job_enqueued_while_a_claimer_waits_is_returned_promptly(
        self, queue: JobQueue, clock: QueueFactory
    ) -> None:
        job = new_job()
        started = time.monotonic()
        waiting = asyncio.create_task(claim(queue, wait_seconds=5.0))
        await asyncio.sleep(0.2)
        await queue.enqueue(job)
        leases = await waiting
        waited = time.monotonic() - started
        if queue.capabilities.blocking_claim:
            assert [lease.job_id for lease in leases] == [job.id]
            assert waited < 1.0, waited  # woken by the enqueue, not by the 5 s timeout
        else:
            assert leases == []  # answered at once, before the job existed
            assert [lease.job_id for lease in await claim(queue)] == [job.id]

    @scenario
    async def test_two_concurrent_claimers_never_receive_the_same_job(
        self, queue: JobQueue, clock: QueueFactory
    ) -> None:
        jobs = [new_job(n=n) for n in range(200)]
        await enqueue_all(queue, jobs)
        received: list[str] = []
        refused: list[str] = []

        async def worker() -> None:
            while leases := await claim(queue, limit=7):
                for lease in leases:
                    received.append(lease.job_id)
                    if not await queue.complete(lease, {"by": id(asyncio.current_task())}):
                        refused.append(lease.job_id)

        await asyncio.gather(*(worker() for _ in range(4)))
        counts = Counter(received)
        assert len(received) == 200
        assert set(counts) == {job.id for job in jobs}
        assert counts.most_common(1)[0][1] == 1
        assert refused == []

    # -- outcomes ---------------------------------------------------------------------------

    @scenario
    async def test_complete_stores_the_result_and_succeeds(
        self, queue: JobQueue, clock: QueueFactory
    ) -> None:
        job = new_job()
        await queue.enqueue(job)
        lease = await claim_one(queue)
        assert await queue.complete(lease, {"sent": True, "count": 3}) is True
        stored = await queue.get(job.id)
        assert stored is not None
        assert stored.status == JobStatus.SUCCEEDED
        assert stored.result == {"sent": True, "count": 3}
        assert stored.progress == 100
        assert stored.finished_at is not None
        assert stored.attempts == 1
        assert await claim(queue) == []

    @scenario
    async def test_fail_with_retry_goes_failed_then_is_claimable_again_after_the_delay(
        self, queue: JobQueue, clock: QueueFactory
    ) -> None:
        job = new_job(max_attempts=3)
        await queue.enqueue(job)
        lease = await claim_one(queue)
        error = JobError("smtp said no", "SMTPError", ErrorKind.ERROR, "Traceback ...")
        assert await queue.fail(lease, error, retry_in=RETRY_IN) is True
        stored = await queue.get(job.id)
        assert stored is not None
        assert (stored.status, stored.error, stored.finished_at) == (JobStatus.FAILED, error, None)
        assert await claim(queue) == []  # not before its delay
        await clock.elapse(RETRY_IN + 0.2)
        again = await claim_one(queue)
        assert again.job_id == job.id
        assert again.attempt == 2
        assert again.token != lease.token
        assert again.job.error == error  # the last failure stays visible while it runs

    @scenario
    async def test_fail_without_retry_goes_dead_with_the_error_kept(
        self, queue: JobQueue, clock: QueueFactory
    ) -> None:
        job = new_job(max_attempts=3)
        await queue.enqueue(job)
        lease = await claim_one(queue)
        error = JobError("bad input", "ValueError", ErrorKind.NON_RETRYABLE)
        assert await queue.fail(lease, error, retry_in=None) is True
        stored = await queue.get(job.id)
        assert stored is not None
        assert (stored.status, stored.error, stored.attempts) == (JobStatus.DEAD, error, 1)
        assert stored.finished_at is not None
        await clock.elapse(PAST_LEASE)
        assert await claim(queue) == []

    @scenario
    async def test_a_stale_token_is_rejected_for_complete_fail_and_progress(
        self, queue: JobQueue, clock: QueueFactory
    ) -> None:
        job = new_job()
        await queue.enqueue(job)
        lease = await claim_one(queue)
        forged = Lease(lease.job, lease.token + "x")
        before = await clock.stale_writes(queue)
        assert await queue.set_progress(forged, 10) is False
        assert await queue.complete(forged, "forged") is False
        assert await queue.fail(forged, JobError("no", "E"), retry_in=None) is False
        stored = await queue.get(job.id)
        assert stored is not None
        assert (stored.status, stored.progress, stored.result) == (JobStatus.ACTIVE, None, None)
        assert await queue.complete(lease, "real") is True
        assert await queue.complete(lease, "twice") is False  # the lease ended
        stored = await queue.get(job.id)
        assert stored is not None
        assert (stored.status, stored.result) == (JobStatus.SUCCEEDED, "real")
        after = await clock.stale_writes(queue)
        if before is not None:
            assert after == before + 4

    @scenario
    async def test_concurrent_completions_each_get_their_own_answer(
        self, queue: JobQueue, clock: QueueFactory
    ) -> None:
        jobs = [new_job(n=n) for n in range(3)]
        await enqueue_all(queue, jobs)
        first, second, third = await claim(queue, limit=3)
        answers = await asyncio.gather(
            queue.complete(first, 1),
            queue.complete(Lease(second.job, "forged"), 2),
            queue.complete(third, 3),
            queue.complete(first, "again"),
        )
        assert answers == [True, False, True, False]
        stored = [await queue.get(job.id) for job in jobs]
        assert [(j.status, j.result) for j in stored if j is not None] == [
            (S.SUCCEEDED, 1),
            (S.ACTIVE, None),
            (S.SUCCEEDED, 3),
        ]

    # -- leases -----------------------------------------------------------------------------

    @scenario
    async def test_an_expired_lease_is_reclaimed_and_claimed_again_with_the_attempt_counted(
        self, queue: JobQueue, clock: QueueFactory
    ) -> None:
        job = new_job(max_attempts=3)
        await queue.enqueue(job)
        lost = await claim_one(queue, lease_seconds=LEASE)
        await clock.elapse(PAST_LEASE)
        again = await claim_one(queue)
        assert again.job_id == job.id
        assert again.attempt == 2  # the lost attempt counted
        assert again.job.error is not None
        assert again.job.error.kind == ErrorKind.WORKER_LOST
        assert await queue.complete(lost, "late") is False  # the first worker was fenced off
        assert await queue.complete(again, "on time") is True
        stored = await queue.get(job.id)
        assert stored is not None
        assert (stored.status, stored.result) == (JobStatus.SUCCEEDED, "on time")

    @scenario
    async def test_an_expired_lease_with_no_attempts_left_goes_dead(
        self, queue: JobQueue, clock: QueueFactory
    ) -> None:
        job = new_job(max_attempts=1)
        await queue.enqueue(job)
        await claim_one(queue, lease_seconds=LEASE)
        await clock.elapse(PAST_LEASE)
        assert await claim(queue) == []
        stored = await queue.get(job.id)
        assert stored is not None
        assert (stored.status, stored.attempts) == (JobStatus.DEAD, 1)
        assert stored.error is not None
        assert stored.error.kind == ErrorKind.WORKER_LOST
        assert stored.finished_at is not None

    @scenario
    async def test_renew_keeps_a_lease_alive_past_its_original_expiry(
        self, queue: JobQueue, clock: QueueFactory
    ) -> None:
        job = new_job()
        await queue.enqueue(job)
        lease = await claim_one(queue, lease_seconds=LEASE)
        for _ in range(4):  # 4 x 0.15 s = twice the original lease
            await clock.elapse(LEASE / 2)
            assert await queue.renew([lease], LEASE) == {job.id}
        assert await claim(queue) == []  # not reclaimed
        assert await queue.complete(lease, "kept") is True

    @scenario
    async def test_renew_answers_only_the_leases_still_held(
        self, queue: JobQueue, clock: QueueFactory
    ) -> None:
        jobs = [new_job(n=n, queue=q) for n, q in enumerate(["a", "a", "b"])]
        await enqueue_all(queue, jobs)
        kept, done, lapsed = await claim(queue, ["a", "b"], limit=3, lease_seconds=LEASE)
        assert await queue.complete(done, None) is True
        forged = Lease(kept.job, "not-the-token")
        await clock.elapse(LEASE / 2)
        assert await queue.renew([kept, done, forged], FOREVER) == {kept.job_id}
        await clock.elapse(PAST_LEASE)  # `lapsed` was not renewed: it expired
        assert await queue.renew([kept, lapsed], FOREVER) == {kept.job_id}
        assert await queue.renew([], FOREVER) == set()

    @scenario
    async def test_progress_is_visible_via_get(self, queue: JobQueue, clock: QueueFactory) -> None:
        job = new_job()
        await queue.enqueue(job)
        lease = await claim_one(queue)
        assert await queue.set_progress(lease, 40) is True
        stored = await queue.get(job.id)
        assert stored is not None
        assert (stored.status, stored.progress) == (JobStatus.ACTIVE, 40)
        assert await queue.set_progress(lease, 90) is True
        stored = await queue.get(job.id)
        assert stored is not None
        assert stored.progress == 90

    # -- listing ----------------------------------------------------------------------------

    @scenario
    async def test_list_jobs_filters_by_status_type_and_queue(
        self, queue: JobQueue, clock: QueueFactory
    ) -> None:
        alpha_dummy = [new_job(queue="alpha", n=n) for n in range(3)]
        alpha_email = [new_job(queue="alpha", type="email", n=n) for n in range(2)]
        beta_dummy = [new_job(queue="beta", n=n) for n in range(2)]
        await enqueue_all(queue, [*alpha_dummy, *alpha_email, *beta_dummy])
        done = await claim_one(queue, queues=["alpha"])  # alpha_dummy[0]
        assert await queue.complete(done, None)
        running = await claim_one(queue, queues=["beta"])  # beta_dummy[0]

        async def ids(**filters: Any) -> set[str]:
            pages = await all_pages(queue, JobQuery(limit=2, **filters))
            flat = [job_id for page in pages for job_id in page]
            assert len(flat) == len(set(flat)), f"repeated on some page: {filters}"
            return set(flat)

        everything = {j.id for j in [*alpha_dummy, *alpha_email, *beta_dummy]}
        assert await ids() == everything
        assert await ids(status=JobStatus.SUCCEEDED) == {done.job_id}
        assert await ids(status=JobStatus.ACTIVE) == {running.job_id}
        assert await ids(status=JobStatus.QUEUED) == everything - {done.job_id, running.job_id}
        assert await ids(type="email") == {j.id for j in alpha_email}
        assert await ids(queue="beta") == {j.id for j in beta_dummy}
        assert await ids(queue="alpha", type="dummy", status=JobStatus.QUEUED) == {
            j.id for j in alpha_dummy[1:]
        }
        assert await ids(queue="gamma") == set()
        assert await ids(status=JobStatus.DEAD) == set()

    @scenario
    async def test_list_jobs_paginates_newest_first_without_repeats_or_gaps(
        self, queue: JobQueue, clock: QueueFactory
    ) -> None:
        jobs = [new_job(n=n) for n in range(7)]
        await enqueue_all(queue, jobs)
        newest_first = [job.id for job in reversed(jobs)]
        assert await all_pages(queue, JobQuery(limit=3)) == [
            newest_first[0:3],
            newest_first[3:6],
            newest_first[6:7],
        ]
        assert await all_pages(queue, JobQuery(limit=7)) == [newest_first]
        assert await all_pages(queue, JobQuery(limit=500)) == [newest_first]

    @scenario
    async def test_list_jobs_pages_stay_put_while_new_jobs_arrive(
        self, queue: JobQueue, clock: QueueFactory
    ) -> None:
        jobs = [new_job(n=n) for n in range(6)]
        await enqueue_all(queue, jobs)
        first = await queue.list_jobs(JobQuery(limit=2))
        await enqueue_all(queue, [new_job(n=n) for n in range(10, 13)])
        rest = await all_pages(queue, JobQuery(limit=2, cursor=first.next_cursor))
        seen = [job.id for job in first.jobs] + [job_id for page in rest for job_id in page]
        assert seen == [job.id for job in reversed(jobs)]

    # -- the state machine ------------------------------------------------------------------

    @scenario
    async def test_every_status_sequence_observed_obeys_the_transitions(
        self, queue: JobQueue, clock: QueueFactory
    ) -> None:
        log = StatusLog(queue)
        retried, lost, failing = new_job(), new_job(max_attempts=2), new_job(max_attempts=2)
        ids = (retried.id, lost.id, failing.id)
        await enqueue_all(queue, [retried, lost, failing])
        await log.look(*ids)
        first = {lease.job_id: lease for lease in await claim(queue, lease_seconds=LEASE)}
        await log.look(*ids)
        assert await queue.fail(first[retried.id], JobError("e", "E"), retry_in=0.1)
        assert await queue.renew([first[failing.id]], FOREVER) == {failing.id}
        await log.look(*ids)
        await clock.elapse(PAST_LEASE)  # `lost` expires: attempt 1 of 2 spent
        second = {lease.job_id: lease for lease in await claim(queue, lease_seconds=LEASE)}
        assert set(second) == {retried.id, lost.id}
        await log.look(*ids)
        assert await queue.complete(second[retried.id], "ok")
        error = JobError("bad", "E", ErrorKind.NON_RETRYABLE)
        assert await queue.fail(first[failing.id], error, retry_in=None)
        await clock.elapse(PAST_LEASE)  # `lost` expires again: no attempt left
        assert await claim(queue) == []
        await log.look(*ids)

        assert log.statuses(retried.id) == [S.QUEUED, S.ACTIVE, S.FAILED, S.ACTIVE, S.SUCCEEDED]
        assert log.statuses(lost.id) == [S.QUEUED, S.ACTIVE, S.ACTIVE, S.ACTIVE, S.DEAD]
        assert [tries for _, tries in log.seen[lost.id]] == [0, 1, 1, 2, 2]
        assert log.statuses(failing.id) == [S.QUEUED, S.ACTIVE, S.ACTIVE, S.ACTIVE, S.DEAD]
        assert log.illegal_moves() == []

    # -- workers and attempt history --------------------------------------------------------

    @scenario
    async def test_claim_records_the_worker_that_holds_the_lease(
        self, queue: JobQueue, clock: QueueFactory
    ) -> None:
        job = new_job()
        await queue.enqueue(job)
        lease = await claim_one(queue, worker_id="host-a:1234")
        assert lease.job.worker == "host-a:1234"
        stored = await queue.get(job.id)
        assert stored is not None
        assert stored.worker == "host-a:1234"

    @scenario
    async def test_history_records_each_attempt_a_failure_then_a_success(
        self, queue: JobQueue, clock: QueueFactory
    ) -> None:
        job = new_job(max_attempts=3)
        await queue.enqueue(job)
        first = await claim_one(queue, worker_id='worker-a/"1"')
        error = JobError("smtp said no", "SMTPError", ErrorKind.ERROR, "Traceback ...")
        assert await queue.fail(first, error, retry_in=RETRY_IN)
        await clock.elapse(RETRY_IN + 0.2)
        second = await claim_one(queue, worker_id="worker-b")
        assert [r.outcome for r in second.job.history] == [AttemptOutcome.FAILED]
        assert await queue.complete(second, "ok")

        stored = await queue.get(job.id)
        assert stored is not None
        failed, succeeded = stored.history
        assert (failed.attempt, failed.worker, failed.outcome, failed.error) == (
            1,
            'worker-a/"1"',
            AttemptOutcome.FAILED,
            "SMTPError: smtp said no",
        )
        assert failed.started_at == first.job.started_at
        assert failed.ended_at is not None
        assert first.job.started_at is not None
        assert failed.ended_at >= first.job.started_at
        assert (succeeded.attempt, succeeded.worker, succeeded.outcome, succeeded.error) == (
            2,
            "worker-b",
            AttemptOutcome.SUCCEEDED,
            None,
        )
        assert succeeded.started_at == second.job.started_at
        assert succeeded.ended_at == stored.finished_at

    @scenario
    async def test_history_records_the_outcome_of_the_error_kind_and_a_short_error(
        self, queue: JobQueue, clock: QueueFactory
    ) -> None:
        kinds = list(ErrorKind)
        jobs = [new_job(n=n) for n in range(len(kinds))]
        await enqueue_all(queue, jobs)
        leases = await claim(queue, limit=len(jobs))
        for lease, kind in zip(leases, kinds, strict=True):
            assert await queue.fail(lease, JobError("x" * 1000, "Boom", kind), retry_in=None)
        for job, kind in zip(jobs, kinds, strict=True):
            stored = await queue.get(job.id)
            assert stored is not None
            (record,) = stored.history
            assert record.outcome == AttemptOutcome.of(kind)
            assert record.error is not None
            assert record.error.startswith("Boom: xxx")
            assert len(record.error) <= 200
            assert stored.error is not None
            assert stored.error.message == "x" * 1000  # the job's own error is whole

    @scenario
    async def test_history_keeps_only_the_most_recent_attempts(
        self, queue: JobQueue, clock: QueueFactory
    ) -> None:
        job = new_job()
        await queue.enqueue(job)
        rounds = HISTORY_LIMIT + 5
        for n in range(rounds):
            assert await queue.release(await claim_one(queue, worker_id=f"w{n}"))
        stored = await queue.get(job.id)
        assert stored is not None
        assert [r.worker for r in stored.history] == [f"w{n}" for n in range(5, rounds)]
        assert {r.outcome for r in stored.history} == {AttemptOutcome.RELEASED}

    @scenario
    async def test_a_lapsed_lease_is_recorded_as_worker_lost_in_the_history(
        self, queue: JobQueue, clock: QueueFactory
    ) -> None:
        retried, spent = new_job(max_attempts=2), new_job(max_attempts=1)
        await enqueue_all(queue, [retried, spent])
        await claim(queue, lease_seconds=LEASE, worker_id="worker-a")
        await clock.elapse(PAST_LEASE)
        again = await claim_one(queue, worker_id="worker-b")
        assert again.job_id == retried.id
        for job in (again.job, await queue.get(spent.id)):
            assert job is not None
            (record,) = job.history
            assert (record.attempt, record.worker, record.outcome) == (
                1,
                "worker-a",
                AttemptOutcome.WORKER_LOST,
            )
            assert record.error is not None
            assert record.error.startswith("LeaseExpired: lease expired")
        stored = await queue.get(spent.id)
        assert stored is not None
        assert stored.status == JobStatus.DEAD

    @scenario
    async def test_fail_keeps_the_exit_code_or_signal_of_the_process_that_died(
        self, queue: JobQueue, clock: QueueFactory
    ) -> None:
        exited, killed = new_job(max_attempts=1), new_job(max_attempts=3)
        await enqueue_all(queue, [exited, killed])
        first, second = await claim(queue, limit=2)
        by_exit = JobError("worker exited", "WorkerLost", ErrorKind.WORKER_LOST, exit_code=3)
        by_signal = JobError("worker killed", "WorkerLost", ErrorKind.WORKER_LOST, signal="SIGKILL")
        assert await queue.fail(first, by_exit, retry_in=None)
        assert await queue.fail(second, by_signal, retry_in=FOREVER)
        dead, failed = await queue.get(exited.id), await queue.get(killed.id)
        assert dead is not None
        assert failed is not None
        assert (dead.status, dead.error) == (JobStatus.DEAD, by_exit)
        assert dead.error is not None
        assert (dead.error.exit_code, dead.error.signal) == (3, None)
        assert (failed.status, failed.error) == (JobStatus.FAILED, by_signal)
        assert failed.error is not None
        assert (failed.error.exit_code, failed.error.signal) == (None, "SIGKILL")
        assert [r.outcome for r in (*dead.history, *failed.history)] == [
            AttemptOutcome.WORKER_LOST,
            AttemptOutcome.WORKER_LOST,
        ]

    # -- release and held_by ----------------------------------------------------------------

    @scenario
    async def test_release_puts_the_job_back_first_in_line_with_the_attempt_not_counted(
        self, queue: JobQueue, clock: QueueFactory
    ) -> None:
        handed_back, waiting = new_job(), new_job()
        await enqueue_all(queue, [handed_back, waiting])
        lease = await claim_one(queue, worker_id="stopping")
        before = await clock.stale_writes(queue)
        assert await queue.release(lease) is True
        stored = await queue.get(handed_back.id)
        assert stored is not None
        assert (stored.status, stored.attempts, stored.error) == (S.QUEUED, 0, None)
        (record,) = stored.history
        assert (record.attempt, record.worker, record.outcome) == (
            1,
            "stopping",
            AttemptOutcome.RELEASED,
        )
        assert await queue.release(lease) is False  # released already: the token is stale
        assert await queue.complete(lease, "late") is False
        again = await claim_one(queue, worker_id="next")
        assert (again.job_id, again.attempt) == (handed_back.id, 1)  # ahead of `waiting`
        assert again.token != lease.token
        assert await queue.complete(again, "done") is True
        after = await clock.stale_writes(queue)
        if before is not None:
            assert after == before + 2

    @scenario
    async def test_release_rejects_a_stale_token_and_changes_nothing(
        self, queue: JobQueue, clock: QueueFactory
    ) -> None:
        job = new_job()
        await queue.enqueue(job)
        lease = await claim_one(queue)
        before = await clock.stale_writes(queue)
        assert await queue.release(Lease(lease.job, lease.token + "x")) is False
        stored = await queue.get(job.id)
        assert stored is not None
        assert (stored.status, stored.attempts, stored.history) == (S.ACTIVE, 1, ())
        assert await claim(queue) == []
        assert await queue.complete(lease, "ok") is True
        after = await clock.stale_writes(queue)
        if before is not None:
            assert after == before + 1

    @scenario
    async def test_a_claimer_waiting_for_work_gets_a_released_job_promptly(
        self, queue: JobQueue, clock: QueueFactory
    ) -> None:
        job = new_job()
        await queue.enqueue(job)
        lease = await claim_one(queue)
        started = time.monotonic()
        waiting = asyncio.create_task(claim(queue, wait_seconds=5.0))
        await asyncio.sleep(0.2)
        assert await queue.release(lease)
        leases = await waiting
        if queue.capabilities.blocking_claim:
            assert [lease.job_id for lease in leases] == [job.id]
            assert time.monotonic() - started < 1.0
        else:
            assert [lease.job_id for lease in leases + list(await claim(queue))] == [job.id]

    @scenario
    async def test_held_by_returns_exactly_the_leases_one_worker_holds(
        self, queue: JobQueue, clock: QueueFactory
    ) -> None:
        await enqueue_all(queue, [new_job(n=n) for n in range(6)])
        await queue.enqueue(new_job(queue="other"))
        a_leases = [*await claim(queue, limit=2, worker_id="a")]
        b_leases = [*await claim(queue, limit=2, worker_id="b")]
        a_leases += await claim(queue, ["other"], limit=1, worker_id="a")

        def pairs(leases: Sequence[Lease]) -> set[tuple[str, str]]:
            return {(lease.job_id, lease.token) for lease in leases}

        assert pairs(await queue.held_by("a", ["default"])) == pairs(a_leases[:2])
        assert pairs(await queue.held_by("a", ["default", "other"])) == pairs(a_leases)
        assert pairs(await queue.held_by("b", ["default", "other"])) == pairs(b_leases)
        assert await queue.held_by("c", ["default", "other"]) == []
        assert await queue.held_by("a", []) == []

        assert await queue.complete(a_leases[0], "done")
        held = await queue.held_by("a", ["default", "other"])
        assert pairs(held) == pairs(a_leases[1:])
        assert all(lease.job.status == S.ACTIVE and lease.job.worker == "a" for lease in held)
        # What a supervisor does with a dead child's leases: they are current.
        lost = JobError("worker died", "WorkerLost", ErrorKind.WORKER_LOST, signal="SIGKILL")
        for lease in held:
            assert await queue.fail(lease, lost, retry_in=None)
        assert await queue.held_by("a", ["default", "other"]) == []
        assert pairs(await queue.held_by("b", ["default"])) == pairs(b_leases)

    # -- recover ----------------------------------------------------------------------------

    @scenario
    async def test_recover_reclaims_expired_leases_and_promotes_due_retries_without_a_claim(
        self, queue: JobQueue, clock: QueueFactory
    ) -> None:
        lapsed, spent, retried, running = (
            new_job(max_attempts=3),
            new_job(max_attempts=1),
            new_job(max_attempts=3),
            new_job(max_attempts=3),
        )
        await enqueue_all(queue, [lapsed, spent])
        await claim(queue, limit=2, lease_seconds=LEASE)
        await enqueue_all(queue, [retried, running])
        to_retry, kept = await claim(queue, limit=2)
        assert await queue.fail(to_retry, JobError("x", "E"), retry_in=RETRY_IN)
        assert await queue.recover(["default"]) == 0  # nothing due yet
        await clock.elapse(PAST_LEASE)

        assert await queue.recover(["other"]) == 0  # only the queues asked for
        assert await queue.recover(["default", "other"]) == 3
        assert await queue.recover(["default"]) == 0

        statuses = {job.id: await status_of(queue, job.id) for job in (lapsed, spent, retried)}
        assert statuses == {lapsed.id: S.QUEUED, spent.id: S.DEAD, retried.id: S.QUEUED}
        stored = await queue.get(lapsed.id)
        assert stored is not None
        assert stored.error is not None
        assert stored.error.kind == ErrorKind.WORKER_LOST
        assert [r.outcome for r in stored.history] == [AttemptOutcome.WORKER_LOST]
        assert await status_of(queue, running.id) == S.ACTIVE  # its lease did not lapse
        again = await claim(queue, limit=10)
        assert {lease.job_id for lease in again} == {lapsed.id, retried.id}
        assert await queue.complete(kept, "ok")

    @scenario
    async def test_recover_run_concurrently_by_four_tasks_moves_each_job_exactly_once(
        self, queue: JobQueue, clock: QueueFactory
    ) -> None:
        jobs = [new_job(n=n) for n in range(40)]
        await enqueue_all(queue, jobs)
        await claim(queue, limit=40, lease_seconds=LEASE)
        await clock.elapse(PAST_LEASE)
        moved = await asyncio.gather(*(queue.recover(["default"]) for _ in range(4)))
        assert sum(moved) == len(jobs)
        for job in jobs:
            stored = await queue.get(job.id)
            assert stored is not None
            assert (stored.status, stored.attempts) == (S.QUEUED, 1)
            assert [r.outcome for r in stored.history] == [AttemptOutcome.WORKER_LOST]
        again = await claim(queue, limit=100)
        assert sorted(lease.job_id for lease in again) == sorted(job.id for job in jobs)

    # -- requeue ----------------------------------------------------------------------------

    @scenario
    async def test_requeue_of_a_dead_job_gives_fresh_attempts_and_it_runs_to_completion(
        self, queue: JobQueue, clock: QueueFactory
    ) -> None:
        job = new_job(max_attempts=1)
        await queue.enqueue(job)
        lease = await claim_one(queue)
        assert await queue.set_progress(lease, 30)
        error = JobError("bad input", "ValueError", ErrorKind.NON_RETRYABLE)
        assert await queue.fail(lease, error, retry_in=None)

        requeued = await queue.requeue(job.id)

        assert (requeued.status, requeued.attempts) == (S.QUEUED, 0)
        assert (requeued.error, requeued.result, requeued.progress) == (None, None, None)
        assert (requeued.started_at, requeued.finished_at) == (None, None)
        assert [r.outcome for r in requeued.history] == [AttemptOutcome.NON_RETRYABLE]
        assert requeued.payload == job.payload
        assert await queue.get(job.id) == requeued
        dead = await all_pages(queue, JobQuery(status=S.DEAD))
        queued = await all_pages(queue, JobQuery(status=S.QUEUED))
        assert (dead, queued) == ([[]], [[job.id]])

        again = await claim_one(queue)
        assert (again.job_id, again.attempt) == (job.id, 1)
        assert await queue.complete(again, "fixed")
        stored = await queue.get(job.id)
        assert stored is not None
        assert (stored.status, stored.result, stored.attempts) == (S.SUCCEEDED, "fixed", 1)
        assert [r.outcome for r in stored.history] == [
            AttemptOutcome.NON_RETRYABLE,
            AttemptOutcome.SUCCEEDED,
        ]
        assert await claim(queue) == []  # queued once

    @scenario
    async def test_requeue_of_a_queued_active_failed_or_succeeded_job_is_refused(
        self, queue: JobQueue, clock: QueueFactory
    ) -> None:
        succeeded, failed, active, queued = (new_job(n=n) for n in range(4))
        await enqueue_all(queue, [succeeded, failed, active])
        done, to_fail, running = await claim(queue, limit=3)
        assert await queue.complete(done, "ok")
        assert await queue.fail(to_fail, JobError("x", "E"), retry_in=FOREVER)
        await queue.enqueue(queued)
        jobs = {job.id: job for job in (succeeded, failed, active, queued)}
        before = {job_id: await queue.get(job_id) for job_id in jobs}

        for job_id, expected in zip(jobs, (S.SUCCEEDED, S.FAILED, S.ACTIVE, S.QUEUED), strict=True):
            with pytest.raises(InvalidTransitionError) as refused:
                await queue.requeue(job_id)
            assert (refused.value.job_id, refused.value.current) == (job_id, expected)
            assert refused.value.target == S.QUEUED

        after = {job_id: await queue.get(job_id) for job_id in jobs}
        assert after == before
        assert (after[succeeded.id] or succeeded).result == "ok"
        assert [lease.job_id for lease in await claim(queue)] == [queued.id]  # once
        assert await queue.complete(running, "still mine") is True

    @scenario
    async def test_requeue_of_an_unknown_id_raises_job_not_found(
        self, queue: JobQueue, clock: QueueFactory
    ) -> None:
        await queue.enqueue(new_job())
        for job_id in (uuid.uuid4().hex, "not-a-job-id"):
            with pytest.raises(JobNotFoundError):
                await queue.requeue(job_id)

    # -- capabilities: what a backend cannot do, it refuses ---------------------------------

    @scenario
    async def test_the_claim_protocol_works_or_is_refused_as_worker_claims_says(
        self, queue: JobQueue, clock: QueueFactory
    ) -> None:
        job = new_job()
        await queue.enqueue(job)
        if queue.capabilities.worker_claims:
            lease = await claim_one(queue)
            assert await queue.set_progress(lease, 10) is True
            assert await queue.release(lease) is True
            lease = await claim_one(queue)
            assert await queue.fail(lease, JobError("e", "E"), retry_in=FOREVER) is True
            return
        probe = Lease(job.transition(S.ACTIVE, attempts=1), "no-such-token")
        calls: dict[str, Callable[[], Awaitable[object]]] = {
            "claim": lambda: claim(queue),
            "set_progress": lambda: queue.set_progress(probe, 10),
            "complete": lambda: queue.complete(probe, "result"),
            "fail": lambda: queue.fail(probe, JobError("e", "E"), retry_in=None),
            "release": lambda: queue.release(probe),
        }
        for operation, call in calls.items():
            with pytest.raises(UnsupportedOperationError) as refused:
                await call()
            assert (refused.value.operation, refused.value.capability) == (
                operation,
                "worker_claims",
            )
        assert await queue.get(job.id) == job  # nothing happened to it

    @scenario
    async def test_leases_are_renewed_and_listed_or_refused_as_leases_says(
        self, queue: JobQueue, clock: QueueFactory
    ) -> None:
        job = new_job()
        await queue.enqueue(job)
        if not queue.capabilities.leases:
            probe = Lease(job.transition(S.ACTIVE, attempts=1), "no-such-token")
            for call in (
                lambda: queue.renew([probe], FOREVER),
                lambda: queue.held_by("worker-1", ["default"]),
            ):
                with pytest.raises(UnsupportedOperationError) as refused:
                    await call()
                assert refused.value.capability == "leases"
            assert await queue.get(job.id) == job
            return
        lease = await claim_one(queue, lease_seconds=LEASE)
        assert await queue.renew([lease], FOREVER) == {job.id}
        assert [held.job_id for held in await queue.held_by("worker-1", ["default"])] == [job.id]
        assert await queue.complete(Lease(lease.job, "forged"), "x") is False  # fenced

    @scenario
    async def test_one_claim_hands_out_several_jobs_only_with_batch_claims(
        self, queue: JobQueue, clock: QueueFactory
    ) -> None:
        jobs = [new_job(n=n) for n in range(3)]
        await enqueue_all(queue, jobs)
        leases = await claim(queue, limit=3)  # refused without worker_claims
        if queue.capabilities.batch_claims:
            assert [lease.job_id for lease in leases] == [job.id for job in jobs]
        else:
            assert len(leases) <= 1

    @scenario
    async def test_priority_orders_runs_only_with_priorities(
        self, queue: JobQueue, clock: QueueFactory
    ) -> None:
        low = driven_job({"mode": "succeed"})
        high = driven_job({"mode": "succeed"}, priority=5)
        await enqueue_all(queue, [low, high])  # the low-priority job was there first
        if queue.capabilities.worker_claims:
            order = [lease.job_id for lease in await claim(queue, limit=1)]
            order += [lease.job_id for lease in await claim(queue, limit=1)]
        else:
            await clock.drain(queue, [low.id, high.id])
            started = {job.id: (await queue.get(job.id) or job).started_at for job in (low, high)}
            order = sorted(
                started, key=lambda job_id: started[job_id] or datetime.max.replace(tzinfo=UTC)
            )
        expected = [high.id, low.id] if queue.capabilities.priorities else [low.id, high.id]
        assert order == expected

    # -- driven end to end: each backend runs jobs its own way (see QueueFactory.drain) ------

    @scenario
    async def test_a_driven_job_runs_and_succeeds_with_its_result(
        self, queue: JobQueue, clock: QueueFactory
    ) -> None:
        job = driven_job({"mode": "succeed", "result": {"sent": True, "n": [1, 2.5, None]}})
        await queue.enqueue(job)
        await clock.drain(queue, [job.id])
        stored = await queue.get(job.id)
        assert stored is not None
        assert (stored.status, stored.attempts, stored.progress) == (S.SUCCEEDED, 1, 100)
        assert stored.result == {"sent": True, "n": [1, 2.5, None]}
        assert stored.started_at is not None
        assert stored.finished_at is not None
        assert stored.finished_at >= stored.started_at
        assert stored.error is None

    @scenario
    async def test_a_driven_job_failing_once_succeeds_on_its_retry(
        self, queue: JobQueue, clock: QueueFactory
    ) -> None:
        job = driven_job({"mode": "fail", "times": 1}, max_attempts=3)
        await queue.enqueue(job)
        await clock.drain(queue, [job.id])
        stored = await queue.get(job.id)
        assert stored is not None
        assert (stored.status, stored.attempts) == (S.SUCCEEDED, 2)
        assert stored.result == {"ok": True, "attempt": 2}

    @scenario
    async def test_a_driven_job_that_keeps_failing_is_retried_then_dead(
        self, queue: JobQueue, clock: QueueFactory
    ) -> None:
        job = driven_job({"mode": "fail"}, max_attempts=3)
        await queue.enqueue(job)
        await clock.drain(queue, [job.id])
        stored = await queue.get(job.id)
        assert stored is not None
        assert (stored.status, stored.attempts) == (S.DEAD, 3)
        assert stored.error is not None
        assert (stored.error.kind, stored.error.type) == (ErrorKind.ERROR, "DummyFailureError")
        assert stored.error.message == "dummy failure on attempt 3"
        assert stored.finished_at is not None
        dead = await all_pages(queue, JobQuery(status=S.DEAD))
        assert dead == [[job.id]]

    @scenario
    async def test_a_driven_non_retryable_failure_goes_dead_at_once(
        self, queue: JobQueue, clock: QueueFactory
    ) -> None:
        job = driven_job({"mode": "fatal"}, max_attempts=3)
        await queue.enqueue(job)
        await clock.drain(queue, [job.id])
        stored = await queue.get(job.id)
        assert stored is not None
        assert (stored.status, stored.attempts) == (S.DEAD, 1)
        assert stored.error is not None
        assert stored.error.kind == ErrorKind.NON_RETRYABLE

    @scenario
    async def test_a_driven_job_the_registry_cannot_vouch_for_is_dead_lettered_unrun(
        self, queue: JobQueue, clock: QueueFactory
    ) -> None:
        unknown = new_job(type="no-such-type")
        invalid = driven_job({"mode": "succeed", "unexpected": 1})
        await enqueue_all(queue, [unknown, invalid])
        await clock.drain(queue, [unknown.id, invalid.id])
        for job in (unknown, invalid):
            stored = await queue.get(job.id)
            assert stored is not None
            assert (stored.status, stored.attempts, stored.result) == (S.DEAD, 1, None)
            assert stored.error is not None
            assert stored.error.kind == ErrorKind.INVALID

    @scenario
    async def test_a_driven_dead_job_requeued_runs_again_with_fresh_attempts(
        self, queue: JobQueue, clock: QueueFactory
    ) -> None:
        job = driven_job({"mode": "fatal"}, max_attempts=2)
        await queue.enqueue(job)
        await clock.drain(queue, [job.id])
        requeued = await queue.requeue(job.id)
        assert (requeued.status, requeued.attempts) == (S.QUEUED, 0)
        with pytest.raises(InvalidTransitionError):
            await queue.requeue(job.id)  # queued now, not dead
        await clock.drain(queue, [job.id])
        stored = await queue.get(job.id)
        assert stored is not None
        assert (stored.status, stored.attempts) == (S.DEAD, 1)
