"""Housekeeping RQ does in its workers, on demand: queue due scheduled jobs and retries, and
settle abandoned attempts.

A `conveyor worker` does both on its own (its RQ scheduler and its registry sweeps, with the
same settlement handler); `RqMaintenance` is for a process or a test without one, and does it
to the microsecond where RQ's scheduler counts whole seconds. Each move runs under the lock
RQ uses for it, so it is safe beside running RQ workers.
"""

from __future__ import annotations

import random as _random
import time
import uuid
from collections.abc import Sequence
from typing import Final, cast

import redis
from rq.exceptions import NoSuchJobError
from rq.queue import Queue
from rq.registry import StartedJobRegistry
from rq.scheduler import RQScheduler
from rq.scripts import acquire_or_refresh_lock, release_lock

from adapters.rq.codec import SERIALIZER, rq_queue_name
from adapters.rq.jobs import ConveyorRqJob
from adapters.rq.settling import SettleUnsettled
from domain.job_types import JobTypeRegistry
from domain.retry import Random

# RQ holds a queue's maintenance lock 899 s: a worker killed mid-sweep would block sweeps.
MAINTENANCE_LOCK_SECONDS: Final = 60
_SCHEDULER_LOCK_SECONDS: Final = 30


class ConveyorRqQueue(Queue):
    """RQ's queue, with a maintenance lock that a killed worker holds only briefly, and a
    sweep that trims the canceled registry too."""

    def acquire_maintenance_lock(self) -> bool:
        return bool(
            self.connection.set(self.registry_cleaning_key, 1, nx=True, ex=MAINTENANCE_LOCK_SECONDS)
        )

    def release_maintenance_lock(self) -> None:
        """End a sweep of the queue's registries. RQ's sweep leaves its canceled registry
        alone; ours drops the jobs past their retention (their hashes expired then) first."""
        canceled_key: str = self.canceled_job_registry.key
        with self.connection.pipeline() as pipeline:
            pipeline.zremrangebyscore(canceled_key, 0, time.time())
            pipeline.delete(self.registry_cleaning_key)
            pipeline.execute()


class RqMaintenance:
    """Housekeeping of our queues in RQ, for `registry`'s job types (their retry policies
    decide when an abandoned attempt runs again; `random` draws the delays)."""

    def __init__(
        self,
        client: redis.Redis,
        registry: JobTypeRegistry,
        *,
        prefix: str = "conveyor",
        random: Random = _random.random,
    ) -> None:
        self._client = client
        self._prefix = prefix
        self._settler = SettleUnsettled(registry, random)

    def recover(self, queues: Sequence[str]) -> int:
        """Queue the due scheduled jobs and retries of `queues`, and settle their abandoned
        attempts (RQ's started registry entries whose heartbeat has lapsed); answers how many
        jobs moved. Blocking: call it from a thread in async code."""
        moved = 0
        token = uuid.uuid4().hex
        for name in queues:
            queue = ConveyorRqQueue(
                rq_queue_name(self._prefix, name),
                connection=self._client,
                job_class=ConveyorRqJob,
                serializer=SERIALIZER,
            )
            lock = RQScheduler.get_locking_key(queue.name)
            held = acquire_or_refresh_lock(self._client, lock, token, _SCHEDULER_LOCK_SECONDS)
            if held != "taken":
                try:
                    moved += self._promote_due(queue)
                finally:
                    release_lock(self._client, lock, token)
            if queue.acquire_maintenance_lock():
                try:
                    started = StartedJobRegistry(
                        queue=queue, job_class=ConveyorRqJob, serializer=SERIALIZER
                    )
                    moved += len(started.get_expired_job_ids())
                    started.cleanup(exception_handlers=[self._settler])
                finally:
                    queue.release_maintenance_lock()
        return moved

    def _promote_due(self, queue: Queue) -> int:
        """Queue the jobs of `queue`'s scheduled registry whose time has come, to the
        microsecond (RQ's scheduler compares whole seconds, so it can be a second late)."""
        registry_key: str = queue.scheduled_job_registry.key
        due = cast(list[bytes], self._client.zrangebyscore(registry_key, 0, time.time()))
        moved = 0
        for raw_id in due:
            job_id = raw_id.decode()
            try:
                rq_job = ConveyorRqJob.fetch(job_id, connection=self._client, serializer=SERIALIZER)
            except NoSuchJobError:
                self._client.zrem(registry_key, job_id)
                continue
            with self._client.pipeline() as pipe:
                queue.enqueue_job(rq_job, pipeline=pipe)
                pipe.zrem(registry_key, job_id)
                pipe.execute()
            moved += 1
        return moved
