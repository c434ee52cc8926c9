"""The RQ backend's connection: one synchronous Redis client, the keys of our queues in RQ's
keyspace, and the threads every call runs in.

rq talks to Redis synchronously (it cannot use `redis.asyncio`, nor `decode_responses=True`),
so each call of a role runs in a thread: reads in the default executor, writes in one
dedicated thread so concurrent submissions keep their order.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Final, TypeVar

import attrs
import redis
from redis.exceptions import ResponseError
from rq import worker_registration
from rq.queue import Queue

from adapters.rq.client import guarded, text
from adapters.rq.codec import SERIALIZER, rq_queue_name
from adapters.rq.jobs import ConveyorRqJob
from adapters.rq.scripts import PRESENT
from domain.errors import UnsafeBackendError
from domain.ports import Connection

T = TypeVar("T")

_CACHED: Final = 1024


@attrs.frozen
class QueueKeys:
    """RQ's keys for one of our queues."""

    queue: str
    scheduled: str
    started: str
    finished: str
    failed: str
    canceled: str
    workers: str  # the set of RQ workers serving it
    presence: str  # workers that said through `heartbeat` that they serve it


class RqConnection(Connection):
    """Our corner of RQ's Redis, shared by the backend's roles."""

    def __init__(self, client: redis.Redis, *, prefix: str) -> None:
        if not prefix or ":" in prefix:
            raise ValueError(f"prefix must be non-empty and hold no colon, got {prefix!r}")
        self.client = client
        self.prefix = prefix
        # Every job's id, scored by a counter in submission order (RQ keeps no index of all
        # jobs): what a listing walks.
        self.index_key = f"{prefix}:rq:jobs"
        self.seq_key = f"{prefix}:rq:seq"
        # The names of our queues some process said it serves (see `QueueKeys.presence`).
        self.presence_key = f"{prefix}:rq:presence"
        # Our queues' names: every queue a job was stored in, until forgotten (the most
        # queues are counted here).
        self.queues_key = f"{prefix}:rq:queues"
        self.present_script = client.register_script(PRESENT)
        # What we make per queue is cached, but only so many: any name a client sends is
        # made once in a while, never kept for good.
        self.queue: Callable[[str], Queue] = functools.lru_cache(maxsize=_CACHED)(self._queue)
        self.keys: Callable[[str], QueueKeys] = functools.lru_cache(maxsize=_CACHED)(self._keys)
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rq-queue-writer")
        self._closed = False

    def _queue(self, name: str) -> Queue:
        """RQ's queue for our queue `name`."""
        return Queue(
            rq_queue_name(self.prefix, name),
            connection=self.client,
            job_class=ConveyorRqJob,
            serializer=SERIALIZER,
        )

    def _keys(self, name: str) -> QueueKeys:
        queue = self.queue(name)
        return QueueKeys(
            queue=queue.key,
            scheduled=queue.scheduled_job_registry.key,
            started=queue.started_job_registry.key,
            finished=queue.finished_job_registry.key,
            failed=queue.failed_job_registry.key,
            canceled=queue.canceled_job_registry.key,
            workers=worker_registration.WORKERS_BY_QUEUE_KEY % queue.name,
            presence=f"{self.presence_key}:{name}",
        )

    async def read(self, fn: Callable[..., T], *args: Any) -> T:
        """`fn(*args)` in a thread; QueueUnavailableError when Redis cannot be reached."""
        return await asyncio.to_thread(guarded, fn, *args)

    async def write(self, fn: Callable[..., T], *args: Any) -> T:
        """Like `read`, in the one writer thread: writes happen in the order they were asked."""
        running = asyncio.get_running_loop()
        return await running.run_in_executor(self._writer, guarded, fn, *args)

    async def ping(self) -> None:
        await self.read(self.client.ping)

    async def verify(self) -> Sequence[str]:
        return await self.read(self._verify)

    def _verify(self) -> Sequence[str]:
        try:
            reply: dict[Any, Any] = dict(self.client.config_get("maxmemory-policy"))
        except ResponseError as exc:  # CONFIG refused (an ACL user, a managed Redis)
            return [f"could not read maxmemory-policy ({exc}); make sure it is noeviction"]
        policy = text(reply.get(b"maxmemory-policy", reply.get("maxmemory-policy", b"")))
        if policy and policy != "noeviction":
            raise UnsafeBackendError(
                f"redis maxmemory-policy is {policy!r}: it may evict jobs; set noeviction"
            )
        return ()

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._writer.shutdown(wait=True)
        await asyncio.to_thread(self.client.close)
