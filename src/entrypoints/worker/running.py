"""A job a worker process runs: its lease, its task and context, and how it was stopped."""

from __future__ import annotations

import asyncio

import attrs

from domain.jobs import AttemptOutcome, Lease
from entrypoints.worker.context import WorkerJobContext


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
