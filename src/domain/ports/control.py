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
        """Send a dead or cancelled job back to the queue with its attempts reset. A job with
        a unique key takes it again.

        Raises JobNotFoundError, or InvalidTransitionError for a job in any other status, or
        UniqueKeyHeldError (an InvalidTransitionError) when another job, not finished, holds
        its unique key: nothing changes.
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
    # Jobs per second (`domain.rates`): submitted and claimed lately, and claimed while it had
    # jobs waiting (None until measured, or when the backend does not measure it).
    rate_in: float | None = None
    rate_out: float | None = None
    drain_rate: float | None = None


@attrs.frozen(kw_only=True)
class WorkerLoad:
    """What a worker process is doing, as it says with its heartbeat."""

    in_flight: int  # jobs it runs now
    done: int  # attempts it has finished since it started


@attrs.frozen(kw_only=True)
class WorkerInfo:
    """A live worker, as operators see it (`conveyor top`); None where the backend cannot
    tell."""

    id: str
    host: str | None
    pid: int | None
    queues: Sequence[str]
    in_flight: int | None
    done: int | None


class QueueMonitor(abc.ABC):
    """Figures per queue, and which workers are alive to serve each."""

    @abc.abstractmethod
    async def queue_stats(self, queues: Sequence[str] | None = None) -> Sequence[QueueStats]:
        """Figures per queue, by name; every queue the backend knows of when None.

        A queue that holds no job, is not paused and that no live worker serves is forgotten
        in time: it is no longer listed, nor counted against the most queues kept."""

    @abc.abstractmethod
    async def heartbeat(
        self, worker_id: str, queues: Sequence[str], ttl: float, load: WorkerLoad | None = None
    ) -> None:
        """Say that `worker_id` is alive and serves `queues`, for the next `ttl` seconds, and
        what it is doing (`load`), when it says."""

    @abc.abstractmethod
    async def workers(self) -> Sequence[WorkerInfo]:
        """The live workers, by id."""

    @abc.abstractmethod
    async def forget_worker(self, worker_id: str) -> None:
        """`worker_id` has stopped: it no longer counts as serving its queues."""
