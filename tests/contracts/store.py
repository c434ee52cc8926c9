"""JobStore: reading one job, listing them page by page, and where a waiting one stands."""

from __future__ import annotations

import uuid

from domain.jobs import JobStatus
from domain.ports import JobQuery, LeaseQueue
from domain.settlement import Ending
from tests.contracts.base import Rig, scenario
from tests.contracts.builders import (
    all_pages,
    claim_one,
    enqueue,
    enqueue_all,
    new_job,
    stored,
)

S = JobStatus


class StoreContract:
    """What every backend's store answers: jobs as stored, pages of them, their situation."""

    # -- one job ----------------------------------------------------------------------------

    @scenario()
    async def test_a_submitted_job_reads_back_queued_as_it_was_submitted(self, rig: Rig) -> None:
        job = new_job()
        await enqueue(rig.submitter, job)
        read = await stored(rig.store, job.id)
        assert read == job
        assert read.payload == job.payload
        assert (read.status, read.attempts) == (S.QUEUED, 0)
        assert read.created_at == job.created_at

    @scenario()
    async def test_an_unknown_id_reads_as_none(self, rig: Rig) -> None:
        await enqueue(rig.submitter, new_job())
        assert await rig.store.get(uuid.uuid4().hex) is None
        assert await rig.store.get("not-a-job-id") is None

    # -- listing ----------------------------------------------------------------------------

    @scenario(LeaseQueue)
    async def test_listing_filters_by_status_type_and_queue(self, rig: Rig) -> None:
        alpha_dummy = [new_job(queue="alpha", n=n) for n in range(3)]
        alpha_email = [new_job(queue="alpha", type="email", n=n) for n in range(2)]
        beta_dummy = [new_job(queue="beta", n=n) for n in range(2)]
        await enqueue_all(rig.submitter, [*alpha_dummy, *alpha_email, *beta_dummy])
        done = await claim_one(rig.leases, ["alpha"])  # alpha_dummy[0]
        assert await rig.leases.settle(done, Ending.succeeded(None)) == S.SUCCEEDED
        running = await claim_one(rig.leases, ["beta"])  # beta_dummy[0]

        async def ids(
            status: JobStatus | None = None, type: str | None = None, queue: str | None = None
        ) -> set[str]:
            query = JobQuery(status=status, type=type, queue=queue, limit=2)
            flat = [job_id for page in await all_pages(rig.store, query) for job_id in page]
            assert len(flat) == len(set(flat)), f"repeated on some page: {query}"
            return set(flat)

        everything = {j.id for j in [*alpha_dummy, *alpha_email, *beta_dummy]}
        assert await ids() == everything
        assert await ids(status=S.SUCCEEDED) == {done.job_id}
        assert await ids(status=S.ACTIVE) == {running.job_id}
        assert await ids(status=S.QUEUED) == everything - {done.job_id, running.job_id}
        assert await ids(type="email") == {j.id for j in alpha_email}
        assert await ids(queue="beta") == {j.id for j in beta_dummy}
        assert await ids(queue="alpha", type="dummy", status=S.QUEUED) == {
            j.id for j in alpha_dummy[1:]
        }
        assert await ids(queue="gamma") == set()
        assert await ids(status=S.DEAD) == set()

    @scenario()
    async def test_listing_pages_newest_first_without_repeats_or_gaps(self, rig: Rig) -> None:
        jobs = [new_job(n=n) for n in range(7)]
        await enqueue_all(rig.submitter, jobs)
        newest_first = [job.id for job in reversed(jobs)]
        assert await all_pages(rig.store, JobQuery(limit=3)) == [
            newest_first[0:3],
            newest_first[3:6],
            newest_first[6:7],
        ]
        assert await all_pages(rig.store, JobQuery(limit=7)) == [newest_first]
        assert await all_pages(rig.store, JobQuery(limit=500)) == [newest_first]

    @scenario()
    async def test_listing_pages_stay_put_while_new_jobs_arrive(self, rig: Rig) -> None:
        jobs = [new_job(n=n) for n in range(6)]
        await enqueue_all(rig.submitter, jobs)
        first = await rig.store.list_jobs(JobQuery(limit=2))
        await enqueue_all(rig.submitter, [new_job(n=n) for n in range(10, 13)])
        rest = await all_pages(rig.store, JobQuery(limit=2, cursor=first.next_cursor))
        seen = [job.id for job in first.jobs] + [job_id for page in rest for job_id in page]
        assert seen == [job.id for job in reversed(jobs)]

    # -- situation --------------------------------------------------------------------------

    @scenario()
    async def test_situation_counts_the_jobs_ahead_in_claim_order(self, rig: Rig) -> None:
        a, b, c = new_job(n=0), new_job(n=1), new_job(n=2, priority=5)
        await enqueue_all(rig.submitter, [a, b, c])
        # A submitter that honours priorities hands out `c` first; one that does not, FIFO.
        order = [c, a, b] if rig.submitter.traits.priorities else [a, b, c]
        for ahead, job in enumerate(order):
            situation = await rig.store.situation(job.id)
            assert situation is not None
            assert situation.job == await rig.store.get(job.id)
            assert (situation.ahead, situation.paused) == (ahead, False), job.id
        assert await rig.store.situation(uuid.uuid4().hex) is None

    @scenario(LeaseQueue)
    async def test_a_claimed_job_has_no_place_in_line_and_the_ones_behind_it_move_up(
        self, rig: Rig
    ) -> None:
        a, b, c = new_job(n=0), new_job(n=1), new_job(n=2, priority=5)
        await enqueue_all(rig.submitter, [a, b, c])
        order = [c, a, b] if rig.submitter.traits.priorities else [a, b, c]
        lease = await claim_one(rig.leases)
        assert lease.job_id == order[0].id
        running = await rig.store.situation(lease.job_id)
        assert running is not None
        assert (running.job.status, running.ahead) == (S.ACTIVE, None)
        last = await rig.store.situation(order[2].id)
        assert last is not None
        assert last.ahead == 1
