"""An in-process backend: the reference semantics for unit tests and single-process demos.

It keeps the same contract as the Redis backend (leases fenced by tokens, priorities, delayed
retries and scheduled jobs, deadlines, cancellation, paused queues, idempotency keys,
admission limits, retention, an attempt history per job) and plays every role, but lives in
one process's memory, so it cannot serve an API and workers in different processes.
"""

from __future__ import annotations

from adapters.memory.control import (
    MemoryConnection,
    MemoryJobControl,
    MemoryJobStore,
    MemoryJobWatcher,
    MemoryQueueMonitor,
    MemoryQueuePauser,
)
from adapters.memory.leases import MemoryLeaseQueue
from adapters.memory.state import MemoryState
from adapters.memory.submitter import MemorySubmitter
from domain.limits import FlowLimits
from domain.ports import AdmissionPolicy, Backend, Clock

__all__ = ["MemoryState", "memory_backend", "memory_roles"]


def memory_backend(
    clock: Clock,
    *,
    result_ttl: float = 86400.0,
    dead_ttl: float = 7 * 86400.0,
    idempotency_ttl: float = 86400.0,
    admission: AdmissionPolicy | None = None,
    max_queues: int | None = None,
    max_result_bytes: int | None = None,
    limits: FlowLimits | None = None,
) -> Backend:
    """Every role, over one in-memory state read on `clock`. At most `max_queues` queues
    are kept (one is kept while it holds a job, is paused or a live worker serves it); a
    result longer than `max_result_bytes` as JSON is refused; `limits`, the rate and
    concurrency limits per job type, hold claims back."""
    state = MemoryState(
        clock,
        result_ttl=result_ttl,
        dead_ttl=dead_ttl,
        idempotency_ttl=idempotency_ttl,
        admission=admission,
        max_queues=max_queues,
        max_result_bytes=max_result_bytes,
        limits=limits,
    )
    return memory_roles(state)


def memory_roles(state: MemoryState) -> Backend:
    """Every role, over `state` (which a test may read: its stale writes, its clock)."""
    return Backend(
        name="memory",
        connection=MemoryConnection(),
        store=MemoryJobStore(state),
        submitter=MemorySubmitter(state),
        control=MemoryJobControl(state),
        monitor=MemoryQueueMonitor(state),
        pauser=MemoryQueuePauser(state),
        leases=MemoryLeaseQueue(state),
        watcher=MemoryJobWatcher(state),
        shared_across_processes=False,
    )
