"""The timings of Conveyor's RQ worker."""

from __future__ import annotations

import enum

import attrs


class WorkerKind(enum.StrEnum):
    FORK = "fork"
    SIMPLE = "simple"


@attrs.frozen(kw_only=True)
class RqWorkerConfig:
    """Timings of the RQ worker, in whole seconds."""

    kind: WorkerKind = WorkerKind.FORK
    # How often a busy worker refreshes its job's heartbeat (RQ's job_monitoring_interval).
    heartbeat: int = 5
    # How long a heartbeat outlives the next one being due (RQ: 60).
    grace: int = 5
    # How often the registries are swept for abandoned jobs (RQ: 600).
    maintenance: int = 5
    # The longest an idle worker blocks waiting for a job before it looks around again (it
    # waits 1 s at a time: see ConveyorBaseWorker.dequeue_job_and_maintain_ttl).
    idle_wait: int = 5

    @property
    def worker_ttl(self) -> int:
        return self.idle_wait + 15  # RQ blocks for worker_ttl - 15 seconds

    @property
    def abandoned_bound(self) -> int:
        """Seconds from a SIGKILL of a forking worker (and its work-horse) until a live worker
        of the queue has retried or dead-lettered the job: its heartbeat entry expires within
        `heartbeat + grace`, and a sweep follows within `maintenance + max(idle_wait,
        heartbeat)`."""
        return self.heartbeat + self.grace + self.maintenance + max(self.idle_wait, self.heartbeat)
