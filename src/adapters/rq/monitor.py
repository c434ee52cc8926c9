"""Figures per queue from RQ's queues and registries, and which workers serve each."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from rq.queue import Queue
from rq.utils import utcparse
from rq.worker import Worker

from adapters.rq.client import text
from adapters.rq.connection import RqConnection
from adapters.rq.jobs import ConveyorRqJob
from adapters.rq.scripts import HEARTBEAT
from domain.jobs import JobStatus, is_name
from domain.ports import QueueMonitor, QueueStats, WorkerInfo, WorkerLoad

# What one queue's first round of `_stats` asks for, in order.
_PER_QUEUE = 8


class RqQueueMonitor(QueueMonitor):
    """Counts by status from RQ's queue and registries (succeeded, dead and cancelled jobs
    while retained), the age of the oldest queued job. Telling jobs scheduled by their run_at
    from retries waiting for theirs reads one field of every job in the scheduled registry.

    The workers serving a queue are RQ's workers alive on it (they register themselves; a
    SIGKILLed one counts until its key expires, `worker_ttl` + 60 s) plus any process that
    says so through `heartbeat`. RQ has no per-queue pause: a queue is never paused.

    No rates: RQ's own worker takes jobs off its lists, so no step of ours sees each claim to
    count it (`rate_in`, `rate_out` and `drain_rate` are None, and so a waiting job has no
    estimated start). The workers listed are RQ's, as RQ registers them.
    """

    def __init__(self, rq: RqConnection) -> None:
        self._rq = rq
        self._heartbeat_script = rq.client.register_script(HEARTBEAT)

    async def queue_stats(self, queues: Sequence[str] | None = None) -> Sequence[QueueStats]:
        names = None if queues is None else list(queues)
        return await self._rq.read(self._stats, names)

    def _stats(self, names: list[str] | None) -> list[QueueStats]:
        if names is None:
            names = self._known_queues()
        now = time.time()
        client = self._rq.client
        with client.pipeline(transaction=False) as pipe:
            for name in names:
                keys = self._rq.keys(name)
                pipe.llen(keys.queue)
                pipe.lindex(keys.queue, 0)
                pipe.zrange(keys.scheduled, 0, -1)
                pipe.zcard(keys.started)
                pipe.zcount(keys.finished, now, "+inf")
                pipe.zcount(keys.failed, now, "+inf")
                pipe.zcount(keys.canceled, now, "+inf")
                pipe.smembers(keys.workers)
            first: list[Any] = pipe.execute()
        with client.pipeline(transaction=False) as pipe:
            for n in range(len(names)):
                base = n * _PER_QUEUE
                head, scheduled, workers = first[base + 1], first[base + 2], first[base + 7]
                if head is not None:
                    pipe.hget(ConveyorRqJob.key_for(text(head)), "enqueued_at")
                for job_id in scheduled:
                    pipe.hmget(ConveyorRqJob.key_for(text(job_id)), "status", "started_at")
                for worker_key in workers:
                    pipe.exists(worker_key)
                self._rq.present_script(keys=[self._rq.keys(names[n]).presence], client=pipe)
            second = iter(pipe.execute())
        stats: list[QueueStats] = []
        for n, name in enumerate(names):
            (queued, head, scheduled_ids, active, succeeded, dead, cancelled, workers) = first[
                n * _PER_QUEUE : (n + 1) * _PER_QUEUE
            ]
            oldest: float | None = None
            if head is not None:
                enqueued_at = next(second)
                if enqueued_at:
                    oldest = max(0.0, now - utcparse(text(enqueued_at)).timestamp())
            scheduled = retrying = 0
            for _ in scheduled_ids:
                status, started_at = next(second)
                if status is None:
                    continue  # its hash is gone: nothing will run
                if started_at:
                    retrying += 1  # a retry waiting for its time
                else:
                    scheduled += 1
            live = sum(1 for _ in workers if next(second)) + int(next(second))
            counts = {
                JobStatus.SCHEDULED: scheduled,
                JobStatus.QUEUED: int(queued),
                JobStatus.ACTIVE: int(active),
                JobStatus.SUCCEEDED: int(succeeded),
                JobStatus.FAILED: retrying,
                JobStatus.DEAD: int(dead),
                JobStatus.CANCELLED: int(cancelled),
                JobStatus.EXPIRED: 0,
            }
            stats.append(
                QueueStats(
                    name=name, counts=counts, oldest_queued_age=oldest, paused=False, workers=live
                )
            )
        return stats

    def _known_queues(self) -> list[str]:
        """Our queues RQ knows of (those it has ever been given a job for), and those a worker
        said it serves."""
        ours = f"{Queue.redis_queue_namespace_prefix}{self._rq.prefix}:"
        with self._rq.client.pipeline(transaction=False) as pipe:
            pipe.smembers(Queue.redis_queues_keys)
            pipe.smembers(self._rq.presence_key)
            queue_keys, served = pipe.execute()
        names = {text(key)[len(ours) :] for key in queue_keys if text(key).startswith(ours)}
        names |= {text(name) for name in served}
        return sorted(name for name in names if is_name(name))

    async def workers(self) -> Sequence[WorkerInfo]:
        return await self._rq.read(self._workers)

    def _workers(self) -> list[WorkerInfo]:
        ours = f"{self._rq.prefix}:"
        found: list[WorkerInfo] = []
        for worker in Worker.all(connection=self._rq.client):
            queues = [q[len(ours) :] for q in worker.queue_names() if q.startswith(ours)]
            if not queues:
                continue  # another deployment's, or another user's of RQ
            found.append(
                WorkerInfo(
                    id=worker.name,
                    host=worker.hostname,
                    pid=worker.pid,
                    queues=tuple(queues),
                    in_flight=1 if worker.get_current_job_id() else 0,
                    done=worker.successful_job_count + worker.failed_job_count,
                )
            )
        # And the processes that said they serve a queue (`heartbeat`): what they run is not
        # told here, so only their ids and queues are known.
        client = self._rq.client
        now = time.time()
        served: dict[str, list[str]] = {}
        for name in sorted(text(n) for n in client.smembers(self._rq.presence_key)):
            for worker_id in client.zrangebyscore(self._rq.keys(name).presence, f"({now}", "+inf"):
                served.setdefault(text(worker_id), []).append(name)
        known = {worker.id for worker in found}
        found += [
            WorkerInfo(
                id=worker_id, host=None, pid=None, queues=tuple(queues), in_flight=None, done=None
            )
            for worker_id, queues in served.items()
            if worker_id not in known
        ]
        return sorted(found, key=lambda worker: worker.id)

    async def heartbeat(
        self, worker_id: str, queues: Sequence[str], ttl: float, load: WorkerLoad | None = None
    ) -> None:
        """Count `worker_id` as serving `queues` for `ttl` seconds (RQ's own workers count
        without it: they register themselves)."""
        if not queues:
            return
        names = list(queues)
        keys = [
            self._rq.presence_key,
            self._rq.queues_key,
            *(self._rq.keys(name).presence for name in names),
        ]
        args = [worker_id, repr(float(ttl)), *names]
        await self._rq.read(self._heartbeat_script, keys, args)

    async def forget_worker(self, worker_id: str) -> None:
        await self._rq.read(self._forget_worker, worker_id)

    def _forget_worker(self, worker_id: str) -> None:
        client = self._rq.client
        names = [text(name) for name in client.smembers(self._rq.presence_key)]
        if names:
            with client.pipeline(transaction=False) as pipe:
                for name in names:
                    pipe.zrem(self._rq.keys(name).presence, worker_id)
                pipe.execute()
