"""Operators' moves on one job in RQ: cancel it, send a parked one back to its queue."""

from __future__ import annotations

import math
from datetime import UTC, datetime

from rq.exceptions import InvalidJobOperation
from rq.job import JobStatus as RqStatus
from rq.registry import CanceledJobRegistry, FailedJobRegistry
from rq.utils import utcformat

from adapters.rq.client import text
from adapters.rq.codec import ATTEMPT, CANCEL_REQUESTED_AT, CANCELLED_AT, HISTORY, SERIALIZER
from adapters.rq.connection import RqConnection
from adapters.rq.jobs import ConveyorRqJob
from adapters.rq.scripts import CANCEL
from adapters.rq.store import RqJobStore
from domain.errors import InvalidTransitionError, JobNotFoundError
from domain.jobs import Job, JobStatus, is_job_id
from domain.ports import JobControl


class RqJobControl(JobControl):
    """Cancelling, on RQ.

    A queued or scheduled job (a pending retry too) becomes `cancelled` in one atomic step
    (`scripts.CANCEL`) and never runs: a worker that had already taken it off its queue, or
    RQ's scheduler racing the cancel, cannot start it, because the attempt reads the job's
    cancel mark in the step that marks it started and then runs nothing. Cancelled jobs are
    kept `result_ttl` seconds.

    An active job keeps running with `cancel_requested_at` set. Its handler sees
    `JobContext.cancel_requested` (read from Redis at most every 0.25 s) and stops by raising
    JobCancelledError: the job ends `cancelled`. A forking worker kills a handler that has not
    stopped `CONVEYOR_CANCEL_GRACE_SECONDS` after the request (it looks at each heartbeat, so
    within grace + heartbeat), and the job ends `cancelled`; a simple worker (no work-horse to
    kill) lets it run to its end. An attempt that ends any other way, with the request
    standing, ends the job `cancelled` too (the settlement rule).
    """

    def __init__(self, rq: RqConnection, store: RqJobStore, *, result_ttl: float) -> None:
        self._rq = rq
        self._store = store
        self._result_ttl = max(1, math.ceil(result_ttl))
        self._cancel_script = rq.client.register_script(CANCEL)

    async def cancel(self, job_id: str) -> Job:
        if not is_job_id(job_id):
            raise JobNotFoundError(job_id)
        return await self._rq.write(self._cancel, job_id)

    def _cancel(self, job_id: str) -> Job:
        rq_job, job = self._store.read_one(job_id)
        if rq_job is None or job is None:
            raise JobNotFoundError(job_id)
        keys = self._rq.keys(job.queue)
        now = datetime.now(UTC)
        outcome = text(
            self._cancel_script(
                keys=[rq_job.key, keys.queue, keys.scheduled, keys.canceled],
                args=[
                    job_id,
                    utcformat(now),
                    now.isoformat(),
                    self._result_ttl,
                    math.ceil(now.timestamp()) + self._result_ttl,
                    CANCELLED_AT,
                    CANCEL_REQUESTED_AT,
                ],
            )
        )
        if outcome == "missing":
            raise JobNotFoundError(job_id)
        _, current = self._store.read_one(job_id)
        if current is None:
            raise JobNotFoundError(job_id)
        if outcome not in ("cancelled", "requested"):
            raise InvalidTransitionError(job_id, current.status, JobStatus.CANCELLED)
        return current

    async def requeue(self, job_id: str) -> Job:
        if not is_job_id(job_id):
            raise JobNotFoundError(job_id)
        return await self._rq.write(self._requeue, job_id)

    def _requeue(self, job_id: str) -> Job:
        rq_job, job = self._store.read_one(job_id)
        if rq_job is None or job is None:
            raise JobNotFoundError(job_id)
        if job.status not in (JobStatus.DEAD, JobStatus.CANCELLED):
            raise InvalidTransitionError(job_id, job.status, JobStatus.QUEUED)
        # Attempts start again, the last error and progress go; the history stays.
        meta = rq_job.conveyor_meta()
        rq_job.meta = {ATTEMPT: 0, **({HISTORY: meta[HISTORY]} if HISTORY in meta else {})}
        status = rq_job.get_status(refresh=False)
        registry_class = CanceledJobRegistry if status is RqStatus.CANCELED else FailedJobRegistry
        registry = registry_class(
            queue=self._rq.queue(job.queue), job_class=ConveyorRqJob, serializer=SERIALIZER
        )
        with self._rq.client.pipeline() as pipe:
            # Its cancellation is over, and a cancelled job's hash was set to expire.
            pipe.hdel(rq_job.key, CANCELLED_AT, CANCEL_REQUESTED_AT)
            pipe.persist(rq_job.key)
            pipe.execute()
        try:
            registry.requeue(rq_job)
        except InvalidJobOperation:  # someone else moved it first
            raise InvalidTransitionError(job_id, job.status, JobStatus.QUEUED) from None
        _, requeued = self._store.read_one(job_id)
        if requeued is None:  # pragma: no cover - it was just written
            raise JobNotFoundError(job_id)
        return requeued
