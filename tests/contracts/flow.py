"""Rate and concurrency limits per job type: a claim starts no job past its type's limits,
leaves it queued (listed, counted, cancellable, expirable), does not hold other types back
behind it, and every way an attempt ends gives its slot back."""

from __future__ import annotations

from typing import Final

from domain.jobs import ErrorKind, JobError, JobStatus
from domain.limits import FlowLimits, LimitKind, RateLimit
from domain.ports import JobControl, JobQuery, LeaseQueue, QueueMonitor
from domain.settlement import Ending
from tests.contracts.base import BackendOptions, Rig, scenario
from tests.contracts.builders import (
    ERROR,
    LEASE,
    PAST_LEASE,
    PAST_SOON,
    SOON,
    at,
    claim,
    enqueue_all,
    ids_of,
    new_job,
    stats_of,
    status_of,
)

S = JobStatus
WINDOW: Final = 0.6  # seconds: the rate's window, long enough for a claim or two inside it
THREE_PER_WINDOW = BackendOptions(limits=FlowLimits.of({"dummy": RateLimit(3, WINDOW)}, {}))
TWO_AT_ONCE = BackendOptions(limits=FlowLimits.of({}, {"dummy": 2}))
ONE_AT_ONCE = BackendOptions(limits=FlowLimits.of({}, {"dummy": 1}))


async def queued_ids(rig: Rig) -> set[str]:
    page = await rig.store.list_jobs(JobQuery(status=S.QUEUED, limit=100))
    return {job.id for job in page.jobs}


class FlowLimitsContract:
    """What claims do under rate and concurrency limits per job type."""

    @scenario(LeaseQueue, QueueMonitor, options=THREE_PER_WINDOW)
    async def test_a_rate_starts_no_more_than_its_count_per_window_and_the_rest_wait_queued(
        self, rig: Rig
    ) -> None:
        limited = [new_job(n=n) for n in range(5)]
        other = new_job(type="email", n=9)  # behind them in line, not limited
        await enqueue_all(rig.submitter, [*limited, other])
        first = ids_of(await claim(rig.leases, limit=10))
        assert first == [j.id for j in limited[:3]] + [other.id]
        waiting = {j.id for j in limited[3:]}
        assert await claim(rig.leases, limit=10) == []
        assert await queued_ids(rig) == waiting
        assert (await stats_of(rig.monitor)).counts.get(S.QUEUED) == 2
        situation = await rig.store.situation(limited[3].id)
        assert situation is not None
        assert situation.throttle is not None
        assert situation.throttle.kind is LimitKind.RATE
        assert situation.throttle.until is not None
        assert situation.throttle.until <= at(await rig.now(), WINDOW + 0.05)
        await rig.elapse(WINDOW + 0.1)
        assert set(ids_of(await claim(rig.leases, limit=10))) == waiting

    @scenario(LeaseQueue, options=THREE_PER_WINDOW)
    async def test_starts_from_two_queues_leave_the_window_in_full(self, rig: Rig) -> None:
        # Each queue numbers its own fencing tokens: the first claim of each starts at the
        # same token, and both starts must be counted, then both given back.
        first = [new_job(n=0, queue="a"), new_job(n=1, queue="b")]
        await enqueue_all(rig.submitter, first)
        assert ids_of(await claim(rig.leases, ["a"], limit=10)) == [first[0].id]
        assert ids_of(await claim(rig.leases, ["b"], limit=10)) == [first[1].id]
        await rig.elapse(WINDOW + 0.1)
        later = [new_job(n=n, queue="a") for n in range(2, 6)]
        await enqueue_all(rig.submitter, later)
        assert ids_of(await claim(rig.leases, ["a"], limit=10)) == [j.id for j in later[:3]]

    @scenario(LeaseQueue, options=TWO_AT_ONCE)
    async def test_a_concurrency_limit_holds_back_a_type_until_a_running_attempt_ends(
        self, rig: Rig
    ) -> None:
        jobs = [new_job(n=n) for n in range(4)]
        await enqueue_all(rig.submitter, jobs)
        running = await claim(rig.leases, limit=10)
        assert ids_of(running) == [jobs[0].id, jobs[1].id]
        assert await claim(rig.leases, limit=10) == []
        situation = await rig.store.situation(jobs[2].id)
        assert situation is not None
        assert situation.throttle is not None
        assert situation.throttle.kind is LimitKind.CONCURRENCY
        await rig.leases.settle(running[0], Ending.succeeded(None))
        assert ids_of(await claim(rig.leases, limit=10)) == [jobs[2].id]
        assert await claim(rig.leases, limit=10) == []

    @scenario(LeaseQueue, JobControl, options=ONE_AT_ONCE)
    async def test_a_job_held_back_by_a_limit_can_be_cancelled(self, rig: Rig) -> None:
        first, second, third = (new_job(n=n) for n in range(3))
        await enqueue_all(rig.submitter, [first, second, third])
        (running,) = await claim(rig.leases, limit=10)
        assert await claim(rig.leases, limit=10) == []  # the others are held back
        await rig.control.cancel(second.id)
        assert await status_of(rig.store, second.id) is S.CANCELLED
        await rig.leases.settle(running, Ending.succeeded(None))
        assert ids_of(await claim(rig.leases, limit=10)) == [third.id]

    @scenario(LeaseQueue, traits=("deadlines",), options=ONE_AT_ONCE)
    async def test_a_job_held_back_by_a_limit_expires_at_its_deadline(self, rig: Rig) -> None:
        first = new_job(n=0)
        late = new_job(n=1, deadline=at(await rig.now(), SOON))
        await enqueue_all(rig.submitter, [first, late])
        (running,) = await claim(rig.leases, limit=10)
        assert await claim(rig.leases, limit=10) == []
        await rig.elapse(PAST_SOON)
        assert await claim(rig.leases, limit=10) == []
        assert await status_of(rig.store, late.id) is S.EXPIRED
        await rig.leases.settle(running, Ending.succeeded(None))

    @scenario(LeaseQueue, options=ONE_AT_ONCE)
    async def test_a_renewed_lease_keeps_its_slot(self, rig: Rig) -> None:
        first, second = new_job(n=0), new_job(n=1)
        await enqueue_all(rig.submitter, [first, second])
        (running,) = await claim(rig.leases, limit=10, lease_seconds=LEASE)
        for _ in range(3):
            await rig.elapse(LEASE / 2)
            assert await rig.leases.renew([running], LEASE) == {first.id}
        assert await claim(rig.leases, limit=10, lease_seconds=LEASE) == []

    # -- every way an attempt ends gives its slot back --------------------------------------

    async def _frees_its_slot(self, rig: Rig, end: Ending | None, status: S | None) -> None:
        """Claim one job of two under a concurrency of one, end its attempt with `end` (None:
        let its lease lapse), and claim again: a job starts, so the slot came back."""
        first, second = new_job(n=0), new_job(n=1)
        await enqueue_all(rig.submitter, [first, second])
        (running,) = await claim(rig.leases, limit=10, lease_seconds=LEASE)
        assert await claim(rig.leases, limit=10) == []
        if end is None:
            await rig.elapse(PAST_LEASE)
        else:
            assert await rig.leases.settle(running, end) is status
        assert len(await claim(rig.leases, limit=10)) == 1, "the slot was not given back"

    @scenario(LeaseQueue, options=ONE_AT_ONCE)
    async def test_a_success_frees_its_slot(self, rig: Rig) -> None:
        await self._frees_its_slot(rig, Ending.succeeded(None), S.SUCCEEDED)

    @scenario(LeaseQueue, options=ONE_AT_ONCE)
    async def test_a_failure_with_a_retry_frees_its_slot(self, rig: Rig) -> None:
        await self._frees_its_slot(rig, Ending.failed(ERROR, 30.0), S.FAILED)

    @scenario(LeaseQueue, options=ONE_AT_ONCE)
    async def test_a_dead_end_frees_its_slot(self, rig: Rig) -> None:
        error = JobError("no", "ValueError", ErrorKind.NON_RETRYABLE)
        await self._frees_its_slot(rig, Ending.failed(error, None), S.DEAD)

    @scenario(LeaseQueue, options=ONE_AT_ONCE)
    async def test_a_timeout_frees_its_slot(self, rig: Rig) -> None:
        error = JobError("took too long", "TimeoutError", ErrorKind.TIMED_OUT)
        await self._frees_its_slot(rig, Ending.failed(error, 30.0), S.FAILED)

    @scenario(LeaseQueue, options=ONE_AT_ONCE)
    async def test_a_cancelled_attempt_frees_its_slot(self, rig: Rig) -> None:
        await self._frees_its_slot(rig, Ending.cancelled(), S.CANCELLED)

    @scenario(LeaseQueue, options=ONE_AT_ONCE)
    async def test_a_released_attempt_frees_its_slot(self, rig: Rig) -> None:
        await self._frees_its_slot(rig, Ending.released(), S.QUEUED)

    @scenario(LeaseQueue, options=ONE_AT_ONCE)
    async def test_a_lapsed_lease_frees_its_slot(self, rig: Rig) -> None:
        await self._frees_its_slot(rig, None, None)

    @scenario(LeaseQueue)
    async def test_without_limits_a_claim_takes_every_type_in_order(self, rig: Rig) -> None:
        jobs = [new_job(n=n) for n in range(4)]
        await enqueue_all(rig.submitter, jobs)
        assert ids_of(await claim(rig.leases, limit=10)) == [j.id for j in jobs]
