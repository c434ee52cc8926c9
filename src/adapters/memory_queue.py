"""An in-process JobQueue: the reference semantics for unit tests and single-process demos.

It keeps the same contract as the Redis backend (leases fenced by tokens, delayed retries,
expired leases reclaimed on the next claim or `recover`, an attempt history per job) but
lives in one process's memory, so it cannot serve an API and workers in different processes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections import deque
from collections.abc import Collection, Sequence
from datetime import datetime, timedelta

import attrs

from domain.errors import InvalidTransitionError, JobNotFoundError, UnstorableResultError
from domain.jobs import (
    HISTORY_LIMIT,
    LEASE_EXPIRED,
    REQUEUABLE,
    AttemptOutcome,
    AttemptRecord,
    Job,
    JobError,
    JobStatus,
    JSONValue,
    Lease,
    error_summary,
)
from domain.ports import Capabilities, Clock, JobPage, JobQuery, JobQueue


def _with_record(
    job: Job, outcome: AttemptOutcome, now: datetime, error: JobError | None = None
) -> tuple[AttemptRecord, ...]:
    """The job's history with its current attempt recorded as ended now, the last
    HISTORY_LIMIT kept."""
    record = AttemptRecord(
        attempt=job.attempts,
        worker=job.worker,
        started_at=job.started_at,
        ended_at=now,
        outcome=outcome,
        error=None if error is None else error_summary(error),
    )
    return (*job.history, record)[-HISTORY_LIMIT:]


@attrs.define
class _Held:
    token: str
    expires: datetime


class InMemoryJobQueue(JobQueue):
    capabilities = Capabilities(
        leases=True,
        shared_across_processes=False,
        blocking_claim=True,
        worker_claims=True,
        batch_claims=True,
        priorities=False,
    )

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
            leases = self._claim_now(queues, worker_id, limit, lease_seconds)
            remaining = deadline - loop.time()
            if leases or remaining <= 0:
                return leases
            # Wake for new work, or soon enough to promote retries and reclaim leases.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), timeout=min(remaining, 0.05))

    def _claim_now(
        self, queues: Sequence[str], worker_id: str, limit: int, lease_seconds: float
    ) -> list[Lease]:
        now = self._clock.now()
        self._maintain(now, None)
        leases: list[Lease] = []
        for queue in queues:
            ready = self._ready.get(queue)
            while ready and len(leases) < limit:
                job = self._jobs[ready.popleft()]
                token = uuid.uuid4().hex
                job = job.transition(
                    JobStatus.ACTIVE,
                    attempts=job.attempts + 1,
                    started_at=now,
                    progress=None,
                    worker=worker_id,
                )
                self._jobs[job.id] = job
                self._held[job.id] = _Held(token, now + timedelta(seconds=lease_seconds))
                leases.append(Lease(job, token))
        return leases

    async def recover(self, queues: Sequence[str]) -> int:
        moved = self._maintain(self._clock.now(), frozenset(queues))
        if moved:
            self._wakeup.set()
        return moved

    def _maintain(self, now: datetime, queues: Collection[str] | None) -> int:
        """Promote due retries and reclaim expired leases (of `queues`, or all); answers how
        many jobs moved. What claim does first, and `recover` on its own."""
        return self._promote_due(now, queues) + self._reclaim_expired(now, queues)

    def _promote_due(self, now: datetime, queues: Collection[str] | None) -> int:
        moved = 0
        for job_id, due in list(self._delayed.items()):
            job = self._jobs[job_id]
            if due <= now and (queues is None or job.queue in queues):
                del self._delayed[job_id]
                self._jobs[job_id] = job.transition(JobStatus.QUEUED)
                self._ready.setdefault(job.queue, deque()).append(job_id)
                moved += 1
        return moved

    def _reclaim_expired(self, now: datetime, queues: Collection[str] | None) -> int:
        moved = 0
        for job_id, held in list(self._held.items()):
            job = self._jobs[job_id]
            if held.expires > now or (queues is not None and job.queue not in queues):
                continue
            del self._held[job_id]
            # The attempt it had is spent. Reclaimed jobs go to the head of their queue.
            history = _with_record(job, AttemptOutcome.WORKER_LOST, now, LEASE_EXPIRED)
            if job.attempts < job.max_attempts:
                self._jobs[job_id] = job.transition(
                    JobStatus.QUEUED, error=LEASE_EXPIRED, history=history
                )
                self._ready.setdefault(job.queue, deque()).appendleft(job_id)
            else:
                self._jobs[job_id] = job.transition(
                    JobStatus.DEAD, error=LEASE_EXPIRED, finished_at=now, history=history
                )
            moved += 1
        return moved

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
        now = self._clock.now()
        self._jobs[job.id] = job.transition(
            JobStatus.SUCCEEDED,
            result=result,
            progress=100,
            finished_at=now,
            history=_with_record(job, AttemptOutcome.SUCCEEDED, now),
        )
        return True

    async def fail(self, lease: Lease, error: JobError, retry_in: float | None) -> bool:
        if not self._current(lease):
            return False
        del self._held[lease.job_id]
        job = self._jobs[lease.job_id]
        now = self._clock.now()
        history = _with_record(job, AttemptOutcome.of(error.kind), now, error)
        if retry_in is None:
            self._jobs[job.id] = job.transition(
                JobStatus.DEAD, error=error, finished_at=now, history=history
            )
        else:
            self._jobs[job.id] = job.transition(JobStatus.FAILED, error=error, history=history)
            self._delayed[job.id] = now + timedelta(seconds=retry_in)
        return True

    async def release(self, lease: Lease) -> bool:
        if not self._current(lease):
            return False
        del self._held[lease.job_id]
        job = self._jobs[lease.job_id]
        # Handed back, not failed: the attempt is not counted, and the job is next in line.
        self._jobs[job.id] = job.transition(
            JobStatus.QUEUED,
            attempts=job.attempts - 1,
            history=_with_record(job, AttemptOutcome.RELEASED, self._clock.now()),
        )
        self._ready.setdefault(job.queue, deque()).appendleft(job.id)
        self._wakeup.set()
        return True

    async def held_by(self, worker_id: str, queues: Sequence[str]) -> Sequence[Lease]:
        wanted = frozenset(queues)
        leases: list[Lease] = []
        for job_id, held in self._held.items():
            job = self._jobs[job_id]
            if job.worker == worker_id and job.queue in wanted:
                leases.append(Lease(job, held.token))
        return leases

    async def requeue(self, job_id: str) -> Job:
        job = self._jobs.get(job_id)
        if job is None:
            raise JobNotFoundError(job_id)
        if job.status not in REQUEUABLE:
            raise InvalidTransitionError(job_id, job.status, JobStatus.QUEUED)
        job = job.transition(
            JobStatus.QUEUED,
            attempts=0,
            error=None,
            result=None,
            progress=None,
            started_at=None,
            finished_at=None,
        )
        self._jobs[job_id] = job
        self._delayed.pop(job_id, None)
        self._ready.setdefault(job.queue, deque()).append(job_id)
        self._wakeup.set()
        return job

    async def ping(self) -> None:
        return None

    async def close(self) -> None:
        return None
