"""An in-process JobQueue: the reference semantics for unit tests and single-process demos.

It keeps the same contract as the Redis backend (leases fenced by tokens, delayed retries,
expired leases reclaimed on the next claim) but lives in one process's memory, so it cannot
serve an API and workers in different processes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections import deque
from collections.abc import Sequence
from datetime import datetime, timedelta

import attrs

from domain.errors import UnstorableResultError
from domain.jobs import ErrorKind, Job, JobError, JobStatus, JSONValue, Lease
from domain.ports import Capabilities, Clock, JobPage, JobQuery, JobQueue


@attrs.define
class _Held:
    token: str
    expires: datetime


class InMemoryJobQueue(JobQueue):
    capabilities = Capabilities(leases=True, shared_across_processes=False, blocking_claim=True)

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._jobs: dict[str, Job] = {}
        self._order: list[str] = []  # submission order, for listing
        self._ready: dict[str, deque[str]] = {}
        self._delayed: dict[str, datetime] = {}
        self._held: dict[str, _Held] = {}
        self._wakeup = asyncio.Event()
        self.stale_writes = 0

    async def enqueue(self, job: Job) -> None:
        if job.status is not JobStatus.QUEUED:
            # Anything else in `_ready` would make the next claim's transition raise.
            raise ValueError(f"job {job.id} must be queued to be enqueued, not {job.status}")
        if job.id in self._jobs:
            raise ValueError(f"job {job.id} already exists")
        self._jobs[job.id] = job
        self._order.append(job.id)
        self._ready.setdefault(job.queue, deque()).append(job.id)
        self._wakeup.set()

    async def get(self, job_id: str) -> Job | None:
        return self._jobs.get(job_id)

    async def list_jobs(self, query: JobQuery) -> JobPage:
        # The cursor is a position in `_order`, which only grows at its end: jobs submitted
        # while a client pages do not shift the pages it has yet to read.
        end = len(self._order)
        if query.cursor and query.cursor.isdigit():
            end = min(end, int(query.cursor))
        page: list[Job] = []
        for position in range(end - 1, -1, -1):
            job = self._jobs[self._order[position]]
            if (
                (query.status is None or job.status == query.status)
                and (query.type is None or job.type == query.type)
                and (query.queue is None or job.queue == query.queue)
            ):
                if len(page) == query.limit:
                    return JobPage(page, str(position + 1))
                page.append(job)
        return JobPage(page, None)

    async def claim(
        self,
        queues: Sequence[str],
        *,
        worker_id: str,
        limit: int,
        lease_seconds: float,
        wait_seconds: float,
    ) -> Sequence[Lease]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait_seconds
        while True:
            self._wakeup.clear()
            leases = self._claim_now(queues, limit, lease_seconds)
            remaining = deadline - loop.time()
            if leases or remaining <= 0:
                return leases
            # Wake for new work, or soon enough to promote retries and reclaim leases.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), timeout=min(remaining, 0.05))

    def _claim_now(self, queues: Sequence[str], limit: int, lease_seconds: float) -> list[Lease]:
        now = self._clock.now()
        self._promote_due(now)
        self._reclaim_expired(now)
        leases: list[Lease] = []
        for queue in queues:
            ready = self._ready.get(queue)
            while ready and len(leases) < limit:
                job = self._jobs[ready.popleft()]
                token = uuid.uuid4().hex
                job = job.transition(
                    JobStatus.ACTIVE, attempts=job.attempts + 1, started_at=now, progress=None
                )
                self._jobs[job.id] = job
                self._held[job.id] = _Held(token, now + timedelta(seconds=lease_seconds))
                leases.append(Lease(job, token))
        return leases

    def _promote_due(self, now: datetime) -> None:
        for job_id, due in list(self._delayed.items()):
            if due <= now:
                del self._delayed[job_id]
                job = self._jobs[job_id].transition(JobStatus.QUEUED)
                self._jobs[job_id] = job
                self._ready.setdefault(job.queue, deque()).append(job_id)

    def _reclaim_expired(self, now: datetime) -> None:
        for job_id, held in list(self._held.items()):
            if held.expires <= now:
                del self._held[job_id]
                job = self._jobs[job_id]
                error = JobError(
                    message="lease expired: the worker stopped renewing it",
                    type="LeaseExpired",
                    kind=ErrorKind.WORKER_LOST,
                )
                if job.attempts < job.max_attempts:
                    self._jobs[job_id] = job.transition(JobStatus.QUEUED, error=error)
                    self._ready.setdefault(job.queue, deque()).appendleft(job_id)
                else:
                    self._jobs[job_id] = job.transition(
                        JobStatus.DEAD, error=error, finished_at=now
                    )

    def _current(self, lease: Lease) -> bool:
        held = self._held.get(lease.job_id)
        if held is None or held.token != lease.token:
            self.stale_writes += 1
            return False
        return True

    async def renew(self, leases: Sequence[Lease], lease_seconds: float) -> set[str]:
        now = self._clock.now()
        kept: set[str] = set()
        for lease in leases:
            held = self._held.get(lease.job_id)
            if held is not None and held.token == lease.token and held.expires > now:
                held.expires = now + timedelta(seconds=lease_seconds)
                kept.add(lease.job_id)
        return kept

    async def set_progress(self, lease: Lease, progress: int) -> bool:
        if not self._current(lease):
            return False
        job = self._jobs[lease.job_id]
        self._jobs[job.id] = attrs.evolve(job, progress=progress)
        return True

    async def complete(self, lease: Lease, result: JSONValue) -> bool:
        try:
            json.dumps(result, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise UnstorableResultError(str(exc)) from None
        if not self._current(lease):
            return False
        del self._held[lease.job_id]
        job = self._jobs[lease.job_id]
        self._jobs[job.id] = job.transition(
            JobStatus.SUCCEEDED, result=result, progress=100, finished_at=self._clock.now()
        )
        return True

    async def fail(self, lease: Lease, error: JobError, retry_in: float | None) -> bool:
        if not self._current(lease):
            return False
        del self._held[lease.job_id]
        job = self._jobs[lease.job_id]
        now = self._clock.now()
        if retry_in is None:
            self._jobs[job.id] = job.transition(JobStatus.DEAD, error=error, finished_at=now)
        else:
            self._jobs[job.id] = job.transition(JobStatus.FAILED, error=error)
            self._delayed[job.id] = now + timedelta(seconds=retry_in)
        return True

    async def ping(self) -> None:
        return None

    async def close(self) -> None:
        return None
