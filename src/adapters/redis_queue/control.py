"""Operators' moves in Redis: on one job (cancel, requeue), on a queue (pause), its figures."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable, Sequence
from typing import Any, Final, cast

import msgspec
from redis.asyncio.client import Pipeline

from adapters.redis_client import redis_errors
from adapters.redis_queue import calls
from adapters.redis_queue.calls import ScriptCall, ms
from adapters.redis_queue.codec import decode_job
from adapters.redis_queue.core import RedisCore, evalsha
from adapters.redis_queue.keys import QueueKeys
from domain.errors import InvalidTransitionError, JobNotFoundError, UniqueKeyHeldError
from domain.jobs import Job, JobStatus
from domain.ports import (
    JobControl,
    QueueMonitor,
    QueuePauser,
    QueueStats,
    WorkerInfo,
    WorkerLoad,
)


class RedisJobControl(JobControl):
    def __init__(self, core: RedisCore) -> None:
        self._core = core

    async def requeue(self, job_id: str) -> Job:
        answer = await self._on_job(job_id, calls.requeue)
        if answer[0] != 1:
            if len(answer) > 2:
                current, holder, key = (part.decode() for part in answer[1:4])
                raise UniqueKeyHeldError(job_id, current, key, holder)
            raise InvalidTransitionError(job_id, answer[1].decode(), JobStatus.QUEUED)
        return _job_from(job_id, answer[1])

    async def cancel(self, job_id: str) -> Job:
        retention = self._core.retention
        answer = await self._on_job(job_id, lambda keys, i: calls.cancel(keys, i, retention))
        if answer[0] != 1:
            raise InvalidTransitionError(job_id, answer[1].decode(), JobStatus.CANCELLED)
        return _job_from(job_id, answer[1])

    async def _on_job(self, job_id: str, call: Callable[[QueueKeys, str], ScriptCall]) -> Any:
        """Run the script `call` makes for the job's queue. Raises JobNotFoundError when
        there is no such job (the script answers ``{0}``)."""
        with redis_errors():
            queue = await self._core.queue_of(job_id)
            if queue is None:
                raise JobNotFoundError(job_id)
            answer = await self._core.run(call(self._core.keys(queue), job_id))
        if answer[0] != 1 and len(answer) < 2:  # gone since we looked
            raise JobNotFoundError(job_id)
        return answer


class RedisQueuePauser(QueuePauser):
    def __init__(self, core: RedisCore) -> None:
        self._core = core

    async def pause(self, queue: str) -> None:
        core = self._core
        keys = core.keys(queue)

        def build(pipe: Pipeline) -> None:
            pipe.set(keys.paused, 1)
            # Not draining while paused: the time until the next claim is not counted.
            pipe.hset(keys.rates, "busy", 0)
            evalsha(pipe, core.registry.register([[(queue, False)]]))  # after: see registry.py

        with redis_errors():
            if await core.registry.admit([[queue]]):
                raise core.registry.refusal(queue)
            await core.pipeline(build)

    async def resume(self, queue: str) -> None:
        """Registers nothing: a queue that was never paused is left as it was."""
        with redis_errors():
            await self._core.run(calls.resume(self._core.keys(queue)))


class RedisQueueMonitor(QueueMonitor):
    # A heartbeat records its queues' use in the registry (a queue a live worker serves is
    # kept registered: see registry.py) at most this often, well within the registry's
    # grace; and at once when this process's presence may have lapsed since its last beat.
    REGISTER_EVERY: Final = 30.0

    def __init__(self, core: RedisCore) -> None:
        self._core = core
        self._registered_at: float | None = None  # monotonic, by the last heartbeat
        self._beat_at: float | None = None  # monotonic: the last heartbeat that got through

    async def queue_stats(self, queues: Sequence[str] | None = None) -> Sequence[QueueStats]:
        core = self._core
        with redis_errors():
            names = sorted(await core.queues()) if queues is None else list(queues)
            keys = [core.keys(queue) for queue in names]
            if not keys:
                return []

            def build(pipe: Pipeline) -> None:
                for k in keys:
                    evalsha(pipe, calls.queue_stats(k))

            answers = await core.pipeline(build)
        return [
            QueueStats(
                name=name,
                counts=dict(zip(JobStatus, (int(c) for c in counts), strict=True)),
                oldest_queued_age=None if oldest < 0 else oldest / 1e6,
                paused=bool(paused),
                workers=int(workers),
                rate_in=float(rate_in),
                rate_out=float(rate_out),
                drain_rate=None if drain is None else float(drain),
            )
            for name, (counts, oldest, paused, workers, rate_in, rate_out, drain) in zip(
                names, answers, strict=True
            )
        ]

    async def heartbeat(
        self, worker_id: str, queues: Sequence[str], ttl: float, load: WorkerLoad | None = None
    ) -> None:
        if not queues:
            return
        core = self._core
        keys = [core.keys(queue) for queue in queues]
        ttl_ms = ms(ttl)
        # The process that beats is the worker: its host and pid are this process's.
        info = _Seen(
            host=socket.gethostname(),
            pid=os.getpid(),
            queues=list(queues),
            in_flight=None if load is None else load.in_flight,
            done=None if load is None else load.done,
        )
        seen = calls.worker_seen(core.registry.keys, worker_id, msgspec.json.encode(info), ttl_ms)
        now = time.monotonic()
        register = (
            self._registered_at is None
            or self._beat_at is None
            or now - self._registered_at >= self.REGISTER_EVERY
            or now - self._beat_at >= ttl
        )

        def build(pipe: Pipeline) -> None:
            for k in keys:
                evalsha(pipe, calls.heartbeat(k, worker_id, ttl_ms))
            if register:  # after: a queue with a live worker is registered (see registry.py)
                evalsha(pipe, core.registry.register([[(queue, False) for queue in queues]]))
            evalsha(pipe, seen)

        with redis_errors():
            await core.pipeline(build)
        self._beat_at = now
        if register:
            self._registered_at = now

    async def forget_worker(self, worker_id: str) -> None:
        core = self._core
        with redis_errors():
            names = sorted(await core.queues())
            keys: list[QueueKeys] = [core.keys(queue) for queue in names]
            registry = core.registry.keys

            def build(pipe: Pipeline) -> None:
                for k in keys:
                    pipe.zrem(k.workers, worker_id)
                pipe.hdel(registry.workers, worker_id)
                pipe.zrem(registry.seen, worker_id)

            await core.pipeline(build)

    async def workers(self) -> Sequence[WorkerInfo]:
        """Two reads: the live ids, then what each said of itself."""
        registry = self._core.registry.keys
        client = self._core.client
        with redis_errors():
            now_ms = time.time_ns() // 1_000_000
            ids = cast(list[bytes], await client.zrangebyscore(registry.seen, f"({now_ms}", "+inf"))
            if not ids:
                return []
            said = await client.hmget(registry.workers, ids)
        found: list[WorkerInfo] = []
        for raw_id, raw in zip(ids, said, strict=True):
            worker_id = raw_id.decode()
            try:
                seen = msgspec.json.decode(raw, type=_Seen) if raw is not None else _Seen()
            except msgspec.DecodeError:
                seen = _Seen()  # written by another version: show the id alone
            found.append(
                WorkerInfo(
                    id=worker_id,
                    host=seen.host,
                    pid=seen.pid,
                    queues=tuple(seen.queues),
                    in_flight=seen.in_flight,
                    done=seen.done,
                )
            )
        return sorted(found, key=lambda worker: worker.id)


class _Seen(msgspec.Struct, frozen=True, kw_only=True):
    """What a worker says of itself with its heartbeat (`R workers`)."""

    host: str | None = None
    pid: int | None = None
    queues: list[str] = msgspec.field(default_factory=list)
    in_flight: int | None = None
    done: int | None = None


def _job_from(job_id: str, raw: Any) -> Job:
    job = decode_job(raw)
    if job is None:  # pragma: no cover - the script just read it
        raise JobNotFoundError(job_id)
    return job
