"""A job a worker process runs: its lease, its task and context, how it was stopped, and the
line that says it started."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

import attrs

from domain.jobs import AttemptOutcome, Lease
from domain.processing import describe
from entrypoints.logs import log_events
from entrypoints.worker.context import WorkerJobContext

log = logging.getLogger("conveyor.worker")


@attrs.define
class Running:
    lease: Lease
    task: asyncio.Task[None]
    context: WorkerJobContext
    # Set once the worker stops the job's task, with how its attempt then ends: RELEASED
    # (the worker is stopping: hand the job back), CANCELLED (its cancel request outlived
    # the grace), or None (the lease was lost: someone else owns the job now, write nothing).
    stopped: bool = False
    ending: AttemptOutcome | None = None
    seen_stop: bool = False  # the task caught its cancellation and is acting on it
    cancel_seen: bool = False  # the worker learnt of the job's cancel request
    cancel_timer: asyncio.TimerHandle | None = None  # ends the grace the handler has left

    def stop(self, ending: AttemptOutcome | None) -> None:
        self.stopped, self.ending = True, ending
        self.task.cancel()


def log_claimed(leases: Sequence[Lease]) -> None:
    """The `job claimed` lines of `leases`, in one write. A claim's lines are written before
    any of its jobs' handlers runs, so one that blocks the event loop (and is killed by the
    watchdog) still leaves the line saying which job it was running."""
    if leases and log.isEnabledFor(logging.INFO):
        log_events(log, logging.INFO, "job claimed", [describe(lease.job) for lease in leases])
