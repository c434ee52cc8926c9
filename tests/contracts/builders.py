"""Shared builders and readers for the contract scenarios."""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Final

import attrs

from domain.jobs import Job, JobError, JobStatus, Lease, can_transition
from domain.ports import (
    ClaimRequest,
    JobQuery,
    JobStore,
    JobSubmitter,
    LeaseQueue,
    NewJob,
    QueueMonitor,
    QueueStats,
    store_new,
)

LEASE: Final = 0.3  # seconds; short so expiry tests stay fast
PAST_LEASE: Final = 0.5  # long enough after LEASE for an expiry to be certain
RETRY_IN: Final = 0.3
FOREVER: Final = 60.0  # a lease that does not expire during a test
A_YEAR: Final = 366 * 86400.0  # as far ahead as a job may be scheduled
SOON: Final = 0.3  # seconds: a run_at, deadline or retention that comes during a test
PAST_SOON: Final = 0.5  # long enough after SOON for it to have come
# A deadline the steps before it must beat: claims and settles on a loaded machine (a local
# cluster under the whole suite) can take longer than SOON. Wait for it with `Rig.elapse_past`.
LATER: Final = 2.0
ERROR: Final = JobError("smtp said no", "SMTPError")  # what a failed attempt reports
S = JobStatus


def at(moment: datetime, seconds: float) -> datetime:
    return moment + timedelta(seconds=seconds)


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


def keyed(job: Job, key: str, fingerprint: str) -> NewJob:
    """A submission under an idempotency key, as the submit use case makes it."""
    return NewJob(
        job=attrs.evolve(job, idempotency_key=key), idempotency_key=key, fingerprint=fingerprint
    )


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


async def claimed_ids(
    leases: LeaseQueue, queues: Sequence[str] = ("default",), n: int = 1
) -> list[str]:
    """The ids of up to `n` jobs claimed one at a time, in the order they are handed out."""
    ids: list[str] = []
    for _ in range(n):
        ids += [lease.job_id for lease in await claim(leases, queues, limit=1)]
    return ids


def ids_of(leases: Sequence[Lease]) -> list[str]:
    return [lease.job_id for lease in leases]


async def stored(store: JobStore, job_id: str) -> Job:
    job = await store.get(job_id)
    assert job is not None, f"job {job_id} is not stored"
    return job


async def status_of(store: JobStore, job_id: str) -> JobStatus:
    return (await stored(store, job_id)).status


async def stats_of(monitor: QueueMonitor, name: str = "default") -> QueueStats:
    (stats,) = await monitor.queue_stats([name])
    assert stats.name == name
    return stats


def counts(stats: QueueStats) -> dict[JobStatus, int]:
    """Every status's count; a backend may leave the zeros out."""
    return {status: stats.counts.get(status, 0) for status in JobStatus}


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
        illegal: list[tuple[str, JobStatus, JobStatus]] = []
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
