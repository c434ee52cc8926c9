"""Shared builders and readers for the contract scenarios."""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Final

import attrs

from domain.jobs import Job, JobStatus, Lease, can_transition
from domain.ports import ClaimRequest, JobQuery, JobStore, JobSubmitter, LeaseQueue, store_new

LEASE: Final = 0.3  # seconds; short so expiry tests stay fast
PAST_LEASE: Final = 0.5  # long enough after LEASE for an expiry to be certain
RETRY_IN: Final = 0.3
FOREVER: Final = 60.0  # a lease that does not expire during a test
S = JobStatus


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


async def enqueue(submitter: JobSubmitter, job: Job) -> None:
    await store_new(submitter, job)


async def enqueue_all(submitter: JobSubmitter, jobs: Sequence[Job]) -> None:
    for job in jobs:
        await store_new(submitter, job)


async def claim(
    leases: LeaseQueue,
    queues: Sequence[str] = ("default",),
    *,
    limit: int = 10,
    lease_seconds: float = FOREVER,
    wait_seconds: float = 0.0,
    worker_id: str = "worker-1",
) -> Sequence[Lease]:
    return await leases.claim(
        ClaimRequest(
            queues=tuple(queues),
            worker_id=worker_id,
            limit=limit,
            lease_seconds=lease_seconds,
            wait_seconds=wait_seconds,
        )
    )


async def claim_one(
    leases: LeaseQueue,
    queues: Sequence[str] = ("default",),
    *,
    lease_seconds: float = FOREVER,
    worker_id: str = "worker-1",
) -> Lease:
    claimed = await claim(leases, queues, limit=1, lease_seconds=lease_seconds, worker_id=worker_id)
    assert len(claimed) == 1, claimed
    return claimed[0]


async def stored(store: JobStore, job_id: str) -> Job:
    job = await store.get(job_id)
    assert job is not None, f"job {job_id} is not stored"
    return job


async def status_of(store: JobStore, job_id: str) -> JobStatus:
    return (await stored(store, job_id)).status


async def all_pages(store: JobStore, query: JobQuery, max_pages: int = 100) -> list[list[str]]:
    """The ids on every page of `query`, following cursors until there is none."""
    pages: list[list[str]] = []
    cursor = query.cursor
    for _ in range(max_pages):
        page = await store.list_jobs(attrs.evolve(query, cursor=cursor))
        pages.append([job.id for job in page.jobs])
        cursor = page.next_cursor
        if cursor is None:
            return pages
    raise AssertionError(f"still paging after {max_pages} pages")


class StatusLog:
    """Every status a job was seen in, read through `get` after each step of a scenario."""

    def __init__(self, store: JobStore) -> None:
        self._store = store
        self.seen: dict[str, list[tuple[JobStatus, int]]] = {}

    async def look(self, *job_ids: str) -> None:
        for job_id in job_ids:
            job = await stored(self._store, job_id)
            self.seen.setdefault(job_id, []).append((job.status, job.attempts))

    def statuses(self, job_id: str) -> list[JobStatus]:
        return [status for status, _ in self.seen[job_id]]

    def illegal_moves(self) -> list[tuple[str, JobStatus, JobStatus]]:
        illegal = []
        for job_id, seen in self.seen.items():
            for (before, tries_before), (after, tries_after) in itertools.pairwise(seen):
                if before == after and tries_before == tries_after:
                    continue  # no move between these two looks
                if before == after == S.ACTIVE or (
                    before in (S.FAILED, S.SCHEDULED) and after == S.ACTIVE
                ):
                    # Reclaimed (or a due retry or scheduled job queued) and claimed again
                    # between two looks: it went through queued.
                    ok = can_transition(before, S.QUEUED) and can_transition(S.QUEUED, after)
                else:
                    ok = can_transition(before, after)
                if not ok:
                    illegal.append((job_id, before, after))
        return illegal
