"""Backends for the entry points' unit tests: steps a test takes by hand on the memory
backend (what a worker would do), and backends built to fail or to lack a role."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from domain.jobs import Job, JobStatus, Lease
from domain.ports import (
    Backend,
    ClaimRequest,
    Connection,
    JobControl,
    JobPage,
    JobQuery,
    JobSituation,
    JobStore,
    JobSubmitter,
    LeaseQueue,
    NewJob,
    QueueMonitor,
    QueuePauser,
    QueueStats,
    Submitted,
    SubmitTraits,
    WorkerInfo,
    WorkerLoad,
)
from domain.settlement import Ending


def leases_of(backend: Backend) -> LeaseQueue:
    assert backend.leases is not None, f"the {backend.name} backend hands out no leases"
    return backend.leases


def claim(
    backend: Backend, queues: Sequence[str] = ("default",), *, limit: int = 10
) -> list[Lease]:
    """Claim what is ready now, as a worker named `w1` would."""
    request = ClaimRequest(queues=tuple(queues), worker_id="w1", limit=limit, lease_seconds=30)
    return list(asyncio.run(leases_of(backend).claim(request)))


def claim_one(backend: Backend, queues: Sequence[str] = ("default",)) -> Lease:
    leases = claim(backend, queues, limit=1)
    assert len(leases) == 1, "expected one job ready to claim"
    return leases[0]


def settle(backend: Backend, lease: Lease, ending: Ending) -> JobStatus | None:
    return asyncio.run(leases_of(backend).settle(lease, ending))


def stored_jobs(backend: Backend) -> list[Job]:
    """Every job the backend keeps (up to 500), newest first."""
    return list(asyncio.run(backend.store.list_jobs(JobQuery(limit=500))).jobs)


class NoDeadlines(JobSubmitter):
    """A submitter that stores jobs through another but cannot enforce a deadline."""

    traits = SubmitTraits(deadlines=False, priorities=True)

    def __init__(self, inner: JobSubmitter) -> None:
        self._inner = inner

    async def submit(self, jobs: Sequence[NewJob]) -> Sequence[Submitted]:
        return await self._inner.submit(jobs)


class Broken(JobStore, JobSubmitter, JobControl, QueueMonitor, QueuePauser, Connection):
    """Every role of a backend every call of which fails with `error`; records whether its
    connection was closed."""

    traits = SubmitTraits(deadlines=True, priorities=True)

    def __init__(self, error: Exception) -> None:
        self.error = error
        self.closed = False

    def backend(self) -> Backend:
        return Backend(
            name="broken",
            connection=self,
            store=self,
            submitter=self,
            control=self,
            monitor=self,
            pauser=self,
        )

    async def get(self, job_id: str) -> Job | None:
        raise self.error

    async def list_jobs(self, query: JobQuery) -> JobPage:
        raise self.error

    async def situation(self, job_id: str) -> JobSituation | None:
        raise self.error

    async def submit(self, jobs: Sequence[NewJob]) -> Sequence[Submitted]:
        raise self.error

    async def cancel(self, job_id: str) -> Job:
        raise self.error

    async def requeue(self, job_id: str) -> Job:
        raise self.error

    async def queue_stats(self, queues: Sequence[str] | None = None) -> Sequence[QueueStats]:
        raise self.error

    async def heartbeat(
        self, worker_id: str, queues: Sequence[str], ttl: float, load: WorkerLoad | None = None
    ) -> None:
        raise self.error

    async def workers(self) -> Sequence[WorkerInfo]:
        raise self.error

    async def forget_worker(self, worker_id: str) -> None:
        raise self.error

    async def pause(self, queue: str) -> None:
        raise self.error

    async def resume(self, queue: str) -> None:
        raise self.error

    async def ping(self) -> None:
        raise self.error

    async def verify(self) -> Sequence[str]:
        return ()  # start-up passes: the requests are what fail

    async def close(self) -> None:
        self.closed = True
