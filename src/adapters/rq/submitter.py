"""Storing new jobs in RQ's keys: a whole batch in one Lua script, all or nothing.

Submitting writes exactly what RQ's own enqueue and schedule write (the job hash RQ's `Job`
serializes, its queue or scheduled registry, the set of queues), for every job of a batch in
one script (`scripts.SUBMIT`), so a batch is stored whole or not at all, a job id is never
stored twice, and an idempotency key is claimed in the same step as its job.

Every job is stored as a call of the dispatcher (`codec`), with RQ's `job_timeout` set to our
timeout plus `HARD_TIMEOUT_GRACE` (the dispatcher enforces our timeout itself; RQ's limit is
the backstop). No RQ `Retry` is stored: the worker settles each failure by the domain's rule,
and schedules the retry it asks for.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, Final

from rq.queue import Queue
from rq.utils import utcformat

from adapters.rq.client import text
from adapters.rq.codec import DISPATCHER, job_args
from adapters.rq.connection import RqConnection
from adapters.rq.scripts import IDLE, SUBMIT
from domain.errors import IdempotencyConflictError, TooManyQueuesError, UnsupportedOperationError
from domain.jobs import JobStatus, is_name
from domain.ports import JobSubmitter, NewJob, Submitted, SubmitTraits

# RQ's hard time limit for an attempt is our timeout plus this: the dispatcher stops the handler
# at our timeout itself (cancel, then a grace of at most HARD_TIMEOUT_GRACE - 5 seconds); RQ's
# death penalty only catches a handler that blocks the whole process.
HARD_TIMEOUT_GRACE: Final = 15
_NO_DEADLINES: Final = "RQ has no deadline it could enforce across attempts and retries"


class RqSubmitter(JobSubmitter):
    """Idempotency keys are held `idempotency_ttl` seconds from the submission that stored
    their job (`<prefix>:rq:idem:<sha256 of the key>`, holding the job id and the request's
    fingerprint). A job whose run_at is ahead on Redis's clock waits `scheduled` in RQ's
    scheduled registry, scored by its run_at, until RQ's scheduler (or `RqMaintenance`)
    queues it. Priorities are stored, not honoured: each RQ queue is FIFO.

    At most `max_queues` queues are kept: a job that would open one more is refused
    (TooManyQueuesError, nothing stored), after the queues nothing uses were forgotten
    (`scripts.IDLE`, at most once per `sweep_interval` seconds). The check, the count and
    the write are one script: all of RQ's keys live on one Redis server."""

    traits = SubmitTraits(deadlines=False, priorities=False)

    def __init__(
        self,
        rq: RqConnection,
        *,
        result_ttl: float,
        dead_ttl: float,
        idempotency_ttl: float,
        max_queues: int | None = None,
        sweep_interval: float = 10.0,
    ) -> None:
        self._rq = rq
        self._result_ttl = max(1, math.ceil(result_ttl))
        self._dead_ttl = max(1, math.ceil(dead_ttl))
        self._idempotency_ttl_ms = max(1, math.ceil(idempotency_ttl * 1000))
        self._max_queues = max_queues
        self._sweep_interval = sweep_interval
        self._next_sweep = 0.0
        self._script = rq.client.register_script(SUBMIT)
        self._idle_script = rq.client.register_script(IDLE)

    async def submit(self, jobs: Sequence[NewJob]) -> Sequence[Submitted]:
        for new in jobs:
            _check(new)
        if not jobs:
            return []
        return await self._rq.write(self._submit, jobs)

    def _submit(self, jobs: Sequence[NewJob]) -> list[Submitted]:
        keys: list[str] = [
            self._rq.seq_key,
            self._rq.index_key,
            Queue.redis_queues_keys,
            self._rq.queues_key,
        ]
        args: list[Any] = [self._idempotency_ttl_ms, len(jobs), self._max_queues or ""]
        for new in jobs:
            self._describe(new, keys, args)
        reply: list[Any] = self._script(keys=keys, args=args)
        if reply[0] == -2 and self.forget_idle():
            reply = self._script(keys=keys, args=args)
        if reply[0] == -2:
            raise TooManyQueuesError(
                text(reply[1]), self._max_queues or 0, max(1.0, self._sweep_interval)
            )
        if reply[0] == -1:
            index = int(reply[1]) - 1
            raise IdempotencyConflictError(jobs[index].idempotency_key or "", index)
        return [Submitted(text(reply[n + 1]), bool(reply[n])) for n in range(0, len(reply), 2)]

    def _describe(self, new: NewJob, keys: list[str], args: list[Any]) -> None:
        """Add one job's keys and arguments for the script: the hash RQ would write."""
        job = new.job
        queue = self._rq.queue(job.queue)
        rq_job = queue.create_job(
            DISPATCHER,
            args=job_args(job),
            job_id=job.id,
            timeout=math.ceil(job.timeout) + HARD_TIMEOUT_GRACE,
            result_ttl=self._result_ttl,
            failure_ttl=self._dead_ttl,
            description=f"conveyor {job.type}",  # not the call: the payload may hold secrets
        )
        fields: list[Any] = []
        for name, value in rq_job.to_dict().items():
            if value is not None and name not in ("status", "enqueued_at"):
                fields += (name, value)
        key = new.idempotency_key
        keys += (
            rq_job.key,
            queue.key,
            self._rq.keys(job.queue).scheduled,
            rq_job.key if key is None else self._idempotency_key(key),
        )
        args += (
            job.id,
            "" if job.run_at is None else repr(job.run_at.timestamp()),
            utcformat(datetime.now(UTC)),
            "0" if key is None else "1",
            new.fingerprint,
            job.queue,
            len(fields),
            *fields,
        )

    def forget_idle(self) -> bool:
        """Forget our queues that nothing uses, unless this process did lately; answers
        whether any was forgotten."""
        now = time.monotonic()
        if now < self._next_sweep:
            return False
        self._next_sweep = now + self._sweep_interval
        client = self._rq.client
        names = sorted(
            n for n in (text(m) for m in client.smembers(self._rq.queues_key)) if is_name(n)
        )
        with client.pipeline(transaction=False) as pipe:
            for name in names:
                pipe.smembers(self._rq.keys(name).workers)
            workers: list[set[bytes]] = pipe.execute()
        with client.pipeline(transaction=False) as pipe:
            for members in workers:
                if members:
                    pipe.exists(*members)
                else:
                    pipe.echo(b"0")
            alive = [int(n) > 0 for n in pipe.execute()]
        with client.pipeline(transaction=False) as pipe:
            for name, served in zip(names, alive, strict=True):
                if served:  # by a live RQ worker
                    continue
                k = self._rq.keys(name)
                keys = [
                    self._rq.queues_key,
                    Queue.redis_queues_keys,
                    k.queue,
                    k.scheduled,
                    k.started,
                    k.finished,
                    k.failed,
                    k.canceled,
                    k.workers,
                    k.presence,
                    self._rq.presence_key,
                ]
                self._idle_script(keys=keys, args=[name], client=pipe)
            forgotten = sum(int(n) for n in pipe.execute())
        return forgotten > 0

    def _idempotency_key(self, key: str) -> str:
        return f"{self._rq.prefix}:rq:idem:{hashlib.sha256(key.encode()).hexdigest()}"


def _check(new: NewJob) -> None:
    """Refuse, before anything is written, a job this backend cannot store as asked."""
    job = new.job
    if job.status not in (JobStatus.QUEUED, JobStatus.SCHEDULED):
        raise ValueError(f"job {job.id} must be queued or scheduled to be stored, not {job.status}")
    if job.status is JobStatus.SCHEDULED and job.run_at is None:
        raise ValueError(f"job {job.id} is scheduled without a run_at")
    if job.deadline is not None:
        # The service refuses it first (`traits`); a caller that does not must not have it
        # stored as if it could be enforced.
        raise UnsupportedOperationError("submit", "deadlines", _NO_DEADLINES)
