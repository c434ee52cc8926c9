"""Operators' moves: on one job (cancel, requeue), on a queue (pause), and its figures."""

from __future__ import annotations

import abc
from collections.abc import Mapping, Sequence

import attrs

from domain.jobs import Job, JobStatus


class JobControl(abc.ABC):
    """Cancelling a job, and sending a parked one back to its queue."""

    @abc.abstractmethod
    async def cancel(self, job_id: str) -> Job:
        """Cancel a job. A waiting one (scheduled, queued, failed) becomes `cancelled` at once
        and never runs; an active one keeps running with `cancel_requested_at` set until its
        worker stops it (`cancelled`). Answers the job as it is now.

        Raises JobNotFoundError, or InvalidTransitionError for a finished job.
        """

    @abc.abstractmethod
    async def requeue(self, job_id: str) -> Job:
        """Send a dead or cancelled job back to the queue with its attempts reset.

        Raises JobNotFoundError, or InvalidTransitionError for a job in any other status.
        """


class QueuePauser(abc.ABC):
    """Holding a queue's jobs back from claims, and letting them go again."""

    @abc.abstractmethod
    async def pause(self, queue: str) -> None:
        """Stop claims from `queue` (it still accepts jobs) until `resume`.

        Raises TooManyQueuesError, changing nothing, when `queue` would be one more queue
        than the backend keeps."""

    @abc.abstractmethod
    async def resume(self, queue: str) -> None:
        """Let claims take jobs from `queue` again, and wake the workers waiting on it."""


@attrs.frozen(kw_only=True)
class QueueStats:
    name: str
    counts: Mapping[JobStatus, int]  # jobs by status (terminal ones while retained)
    oldest_queued_age: float | None  # seconds the oldest queued job has waited
    paused: bool
    workers: int | None  # live workers serving it; None when the backend cannot tell


class QueueMonitor(abc.ABC):
    """Figures per queue, and which workers are alive to serve each."""

    @abc.abstractmethod
    async def queue_stats(self, queues: Sequence[str] | None = None) -> Sequence[QueueStats]:
        """Figures per queue, by name; every queue the backend knows of when None.

        A queue that holds no job, is not paused and that no live worker serves is forgotten
        in time: it is no longer listed, nor counted against the most queues kept."""

    @abc.abstractmethod
    async def heartbeat(self, worker_id: str, queues: Sequence[str], ttl: float) -> None:
        """Say that `worker_id` is alive and serves `queues`, for the next `ttl` seconds."""

    @abc.abstractmethod
    async def forget_worker(self, worker_id: str) -> None:
        """`worker_id` has stopped: it no longer counts as serving its queues."""
