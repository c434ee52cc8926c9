"""`RqJobQueue`: the JobQueue port on RQ (3.x), for teams that already run RQ.

RQ's own worker runs the jobs (`conveyor worker` with QUEUE_BACKEND=rq, see
`entrypoints/worker/rq_worker.py`), so this adapter is the API side of the port: enqueue, read,
list, requeue from dead, cancel a waiting job, and `recover`. The worker-side claim protocol
(claim, renew, progress, complete, fail, release, held_by) is not RQ's model: those calls raise
`UnsupportedOperationError`, as `capabilities` says.

Every job is enqueued with RQ's JSON serializer (never pickle) as a call of one dispatcher named
by a string (see `rq_codec.py`), with `Retry` intervals computed from the job type's
RetryPolicy at enqueue time (whole seconds, rounded up), and RQ's `job_timeout` set to our
timeout plus `HARD_TIMEOUT_GRACE` (the dispatcher enforces our timeout itself; RQ's limit is
the backstop). RQ's statuses map to ours; RQ's failed-job registry is our dead-letter set.

rq talks to Redis synchronously (it cannot use `redis.asyncio`, nor `decode_responses=True`),
so each call runs in a thread: reads in the default executor, writes in one dedicated thread
so concurrent submissions keep their order.

Listing: RQ keeps no index of all jobs, so `enqueue` also adds the job's id to one sorted set
per key prefix (`<prefix>:rq:jobs`), scored by a counter (submission order). A listing walks
it newest first and filters what it reads, so a filtered listing costs time in proportion to
the jobs it skips; ids whose job hash has expired are dropped from the index as they are met.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random as _random
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Final, TypeVar

import redis
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.retry import Retry as RedisRetry
from rq import Queue, Retry
from rq.exceptions import AbandonedJobError, DuplicateJobError, InvalidJobOperation, NoSuchJobError
from rq.job import JobStatus as RqStatus
from rq.registry import (
    CanceledJobRegistry,
    FailedJobRegistry,
    ScheduledJobRegistry,
    StartedJobRegistry,
)
from rq.results import Result
from rq.scheduler import RQScheduler
from rq.scripts import acquire_or_refresh_lock, release_lock

from adapters import rq_codec
from adapters.redis_client import redis_errors
from adapters.rq_codec import (
    ATTEMPT,
    DISPATCHER,
    HISTORY,
    SERIALIZER,
    ConveyorRqJob,
    UndecodableJobError,
    decode_job,
    job_args,
    rq_queue_name,
)
from domain.errors import (
    InvalidTransitionError,
    JobNotFoundError,
    UnsafeBackendError,
    UnsupportedOperationError,
)
from domain.job_types import JobTypeRegistry
from domain.jobs import Job, JobError, JobStatus, JSONValue, Lease, is_job_id
from domain.ports import Capabilities, JobPage, JobQuery, JobQueue
from domain.retry import Random, RetryPolicy

log = logging.getLogger("conveyor.rq_queue")

T = TypeVar("T")

# RQ's hard time limit for an attempt is our timeout plus this: the dispatcher stops the handler
# at our timeout itself (cancel, then a grace of at most HARD_TIMEOUT_GRACE - 5 seconds); RQ's
# death penalty only catches a handler that blocks the whole process.
HARD_TIMEOUT_GRACE: Final = 15
_LIST_CHUNK: Final = 200
_LOCK_TTL: Final = 30
# Assigns the next position in submission order and indexes the job, once (NX).
_INDEX_SCRIPT: Final = """
local n = redis.call('INCR', KEYS[1])
redis.call('ZADD', KEYS[2], 'NX', n, ARGV[1])
return n
"""
_NO_CLAIMS: Final = "RQ's worker takes jobs itself; run `conveyor worker` with QUEUE_BACKEND=rq"
_NO_LEASES: Final = "RQ has no leases: a job's liveness is its worker's heartbeat"


def create_rq_redis(
    url: str, *, connect_timeout: float, socket_timeout: float | None
) -> redis.Redis:
    """A synchronous, bytes-mode client for RQ (which cannot use redis.asyncio or decoded
    responses). Connection errors are retried twice, like the async client's."""
    client: redis.Redis = redis.Redis.from_url(
        url,
        decode_responses=False,
        socket_connect_timeout=connect_timeout,
        socket_timeout=socket_timeout,
        socket_keepalive=True,
        health_check_interval=30,
        retry=RedisRetry(ExponentialBackoff(cap=0.25, base=0.02), 2),
        retry_on_error=[RedisConnectionError],
    )
    return client


def retry_intervals(policy: RetryPolicy, max_attempts: int, random: Random) -> list[int]:
    """RQ's retry intervals for a job: the policy's delay before each retry, in whole seconds
    (RQ counts in seconds), rounded up so no retry comes sooner than the policy asks."""
    return [math.ceil(policy.delay(n, random)) for n in range(1, max_attempts)]


class RqJobQueue(JobQueue):
    """Jobs in RQ's queues and registries, readable through the port by any process.

    What it cannot do, each an explicit `Capabilities` flag checked by the contract suite:
    no worker-side claim protocol (RQ's worker dequeues and runs jobs itself), no leases or
    fencing (a lost worker is detected by its heartbeat expiring, and a stalled-but-alive
    worker may finish a job another one re-ran), no batch claims, no priorities (each queue
    is FIFO; the priority is stored).
    """

    capabilities = Capabilities(
        leases=False,
        shared_across_processes=True,
        blocking_claim=False,
        worker_claims=False,
        batch_claims=False,
        priorities=False,
    )

    def __init__(
        self,
        client: redis.Redis,
        registry: JobTypeRegistry,
        *,
        prefix: str = "conveyor",
        result_ttl: float = 86400.0,
        random: Random = _random.random,
    ) -> None:
        if not prefix or ":" in prefix:
            raise ValueError(f"prefix must be non-empty and hold no colon, got {prefix!r}")
        self._client = client
        self._registry = registry
        self._prefix = prefix
        self._result_ttl = max(1, math.ceil(result_ttl))
        self._random = random
        self._queues: dict[str, Queue] = {}
        self._index_key = f"{prefix}:rq:jobs"
        self._seq_key = f"{prefix}:rq:seq"
        self._index = client.register_script(_INDEX_SCRIPT)
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rq-queue-writer")
        self._closed = False

    # -- writing ----------------------------------------------------------------------------

    async def enqueue(self, job: Job) -> None:
        if job.status is not JobStatus.QUEUED:
            raise ValueError(f"job {job.id} must be queued to be enqueued, not {job.status}")
        job_type = self._registry.get(job.type)
        policy = job_type.retry if job_type is not None else RetryPolicy()
        intervals = retry_intervals(policy, job.max_attempts, self._random)
        await self._write(self._enqueue, job, intervals)

    def _enqueue(self, job: Job, intervals: list[int]) -> None:
        try:
            self._queue(job.queue).enqueue_call(
                DISPATCHER,
                args=job_args(job),
                job_id=job.id,
                timeout=math.ceil(job.timeout) + HARD_TIMEOUT_GRACE,
                result_ttl=self._result_ttl,
                description=f"conveyor {job.type}",  # not the call: the payload may hold secrets
                retry=Retry(max=len(intervals), interval=intervals) if intervals else None,
                unique=True,
            )
        except DuplicateJobError:
            raise ValueError(f"job {job.id} already exists") from None
        self._index(keys=[self._seq_key, self._index_key], args=[job.id])

    async def requeue(self, job_id: str) -> Job:
        if not is_job_id(job_id):
            raise JobNotFoundError(job_id)
        return await self._write(self._requeue, job_id)

    def _requeue(self, job_id: str) -> Job:
        rq_job, job = self._read_one(job_id)
        if rq_job is None or job is None:
            raise JobNotFoundError(job_id)
        if job.status not in (JobStatus.DEAD, JobStatus.CANCELLED):
            raise InvalidTransitionError(job_id, job.status, JobStatus.QUEUED)
        # Attempts start again, the last error and progress go; the history stays.
        meta = rq_job.conveyor_meta()
        rq_job.meta = {ATTEMPT: 0, **({HISTORY: meta[HISTORY]} if HISTORY in meta else {})}
        rq_job.retries_left = job.max_attempts - 1 or None
        status = rq_job.get_status(refresh=False)
        registry_class = CanceledJobRegistry if status is RqStatus.CANCELED else FailedJobRegistry
        registry = registry_class(
            queue=self._queue(job.queue), job_class=ConveyorRqJob, serializer=SERIALIZER
        )
        try:
            registry.requeue(rq_job)
        except InvalidJobOperation:  # someone else moved it first
            raise InvalidTransitionError(job_id, job.status, JobStatus.QUEUED) from None
        _, requeued = self._read_one(job_id)
        if requeued is None:  # pragma: no cover - it was just written
            raise JobNotFoundError(job_id)
        return requeued

    async def cancel(self, job_id: str) -> Job:
        """Cancel a job that waits (queued, scheduled, or failed with a retry pending).

        RQ cannot stop a running job cooperatively: an active job answers
        InvalidTransitionError, like a job that has settled.
        """
        if not is_job_id(job_id):
            raise JobNotFoundError(job_id)
        return await self._write(self._cancel, job_id)

    def _cancel(self, job_id: str) -> Job:
        rq_job, job = self._read_one(job_id)
        if rq_job is None or job is None:
            raise JobNotFoundError(job_id)
        if not job.status.is_waiting:
            raise InvalidTransitionError(job_id, job.status, JobStatus.CANCELLED)
        try:
            rq_job.cancel()
        except InvalidJobOperation:
            raise InvalidTransitionError(job_id, job.status, JobStatus.CANCELLED) from None
        _, cancelled = self._read_one(job_id)
        if cancelled is None:  # pragma: no cover - it was just written
            raise JobNotFoundError(job_id)
        return cancelled

    async def recover(self, queues: Sequence[str]) -> int:
        """Move due retries to their queue and retry (or dead-letter) abandoned jobs, now.

        `conveyor worker` does both on its own (its RQ scheduler and maintenance); this is for
        a deployment or a test without them. Each move runs under the lock RQ uses for it,
        so it is safe beside running RQ workers.
        """
        return await asyncio.to_thread(self._guarded, self._recover, list(queues))

    def _recover(self, queues: list[str]) -> int:
        moved = 0
        token = uuid.uuid4().hex
        for name in queues:
            queue = self._queue(name)
            lock = RQScheduler.get_locking_key(queue.name)
            if acquire_or_refresh_lock(self._client, lock, token, _LOCK_TTL) != "taken":
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
                    started.cleanup(exception_handlers=[record_abandoned])
                finally:
                    queue.release_maintenance_lock()  # type: ignore[no-untyped-call]
        return moved

    def _promote_due(self, queue: Queue) -> int:
        registry = ScheduledJobRegistry(queue=queue, job_class=ConveyorRqJob, serializer=SERIALIZER)  # type: ignore[no-untyped-call]
        moved = 0
        for job_id in registry.get_jobs_to_schedule():
            try:
                rq_job = ConveyorRqJob.fetch(job_id, connection=self._client, serializer=SERIALIZER)
            except NoSuchJobError:
                registry.remove(job_id)
                continue
            with self._client.pipeline() as pipe:
                queue.enqueue_job(rq_job, pipeline=pipe)
                registry.remove(rq_job.id, pipeline=pipe)
                pipe.execute()
            moved += 1
        return moved

    # -- reading ----------------------------------------------------------------------------

    async def get(self, job_id: str) -> Job | None:
        if not is_job_id(job_id):
            return None
        return (await asyncio.to_thread(self._guarded, self._read_one, job_id))[1]

    def _read_one(self, job_id: str) -> tuple[ConveyorRqJob | None, Job | None]:
        with self._client.pipeline(transaction=False) as pipe:
            pipe.hgetall(ConveyorRqJob.key_for(job_id))
            pipe.xrevrange(Result.get_key(job_id), "+", "-", count=1)  # type: ignore[no-untyped-call]
            raw, latest = pipe.execute()
        return self._decode(job_id, raw, latest)

    def _decode(
        self, job_id: str, raw: dict[bytes, bytes], latest: list[Any]
    ) -> tuple[ConveyorRqJob | None, Job | None]:
        if not raw:
            return None, None
        rq_job = ConveyorRqJob(job_id, connection=self._client, serializer=SERIALIZER)
        try:
            rq_job.restore(raw)
            result = None
            if latest:
                result_id, payload = latest[0]
                result = Result.restore(
                    job_id, result_id.decode(), payload, self._client, serializer=SERIALIZER
                )
            return rq_job, decode_job(rq_job, result)
        except (UndecodableJobError, NoSuchJobError, ValueError, TypeError) as exc:
            log.warning("job %r in RQ is not a Conveyor job we can read: %s", job_id, exc)
            return rq_job, None

    async def list_jobs(self, query: JobQuery) -> JobPage:
        """Newest first by submission; the cursor is a position in submission order."""
        return await asyncio.to_thread(self._guarded, self._list, query)

    def _list(self, query: JobQuery) -> JobPage:
        upper = f"({int(query.cursor)}" if query.cursor and query.cursor.isdigit() else "+inf"
        found: list[tuple[Job, int]] = []
        while len(found) <= query.limit:
            entries: list[tuple[bytes, float]] = self._client.zrevrangebyscore(  # type: ignore[assignment]
                self._index_key, upper, "-inf", start=0, num=_LIST_CHUNK, withscores=True
            )
            if not entries:
                break
            ids = [member.decode() for member, _ in entries]
            with self._client.pipeline(transaction=False) as pipe:
                for job_id in ids:
                    pipe.hgetall(ConveyorRqJob.key_for(job_id))
                    pipe.xrevrange(Result.get_key(job_id), "+", "-", count=1)  # type: ignore[no-untyped-call]
                replies = pipe.execute()
            gone: list[str] = []
            for n, (job_id, (_, score)) in enumerate(zip(ids, entries, strict=True)):
                raw, latest = replies[2 * n], replies[2 * n + 1]
                if not raw:
                    gone.append(job_id)
                    continue
                _, job = self._decode(job_id, raw, latest)
                if job is not None and _matches(job, query):
                    found.append((job, int(score)))
            if gone:
                self._client.zrem(self._index_key, *gone)
            upper = f"({int(entries[-1][1])}"
        page = found[: query.limit]
        more = len(found) > query.limit
        return JobPage([job for job, _ in page], str(page[-1][1]) if more else None)

    # -- what RQ's worker does itself ---------------------------------------------------------

    async def claim(
        self,
        queues: Sequence[str],
        *,
        worker_id: str,
        limit: int,
        lease_seconds: float,
        wait_seconds: float,
    ) -> Sequence[Lease]:
        raise UnsupportedOperationError("claim", "worker_claims", _NO_CLAIMS)

    async def renew(self, leases: Sequence[Lease], lease_seconds: float) -> set[str]:
        raise UnsupportedOperationError("renew", "leases", _NO_LEASES)

    async def set_progress(self, lease: Lease, progress: int) -> bool:
        raise UnsupportedOperationError("set_progress", "worker_claims", _NO_CLAIMS)

    async def complete(self, lease: Lease, result: JSONValue) -> bool:
        raise UnsupportedOperationError("complete", "worker_claims", _NO_CLAIMS)

    async def fail(self, lease: Lease, error: JobError, retry_in: float | None) -> bool:
        raise UnsupportedOperationError("fail", "worker_claims", _NO_CLAIMS)

    async def release(self, lease: Lease) -> bool:
        raise UnsupportedOperationError("release", "worker_claims", _NO_CLAIMS)

    async def held_by(self, worker_id: str, queues: Sequence[str]) -> Sequence[Lease]:
        raise UnsupportedOperationError("held_by", "leases", _NO_LEASES)

    # -- operations -------------------------------------------------------------------------

    async def ping(self) -> None:
        await asyncio.to_thread(self._guarded, self._client.ping)

    async def verify(self) -> Sequence[str]:
        return await asyncio.to_thread(self._guarded, self._verify)

    def _verify(self) -> Sequence[str]:
        try:
            reply: dict[Any, Any] = dict(self._client.config_get("maxmemory-policy"))
        except ResponseError as exc:  # CONFIG refused (an ACL user, a managed Redis)
            return [f"could not read maxmemory-policy ({exc}); make sure it is noeviction"]
        policy = _text(reply.get(b"maxmemory-policy", reply.get("maxmemory-policy", b"")))
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
        await asyncio.to_thread(self._client.close)

    # -- plumbing ---------------------------------------------------------------------------

    def _queue(self, name: str) -> Queue:
        queue = self._queues.get(name)
        if queue is None:
            queue = self._queues[name] = Queue(
                rq_queue_name(self._prefix, name),
                connection=self._client,
                job_class=ConveyorRqJob,
                serializer=SERIALIZER,
            )
        return queue

    async def _write(self, fn: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._writer, self._guarded, fn, *args)

    @staticmethod
    def _guarded(fn: Callable[..., T], *args: Any) -> T:
        with redis_errors():
            return fn(*args)


def record_abandoned(job: Any, kind: type[BaseException], *_: Any) -> bool:
    """An RQ exception handler: a job whose worker vanished gets our WORKER_LOST error before
    RQ retries or dead-letters it."""
    if issubclass(kind, AbandonedJobError) and isinstance(job, ConveyorRqJob):
        with contextlib.suppress(Exception):  # bookkeeping only: never block RQ's cleanup
            job.get_meta(refresh=True)
            lost = rq_codec.worker_lost(
                "the worker running this attempt stopped heartbeating (killed or lost)"
            )
            job.meta = rq_codec.note_failure(job, lost)
            job.save_meta()  # type: ignore[no-untyped-call]
    return True


def _matches(job: Job, query: JobQuery) -> bool:
    return (
        (query.status is None or job.status == query.status)
        and (query.type is None or job.type == query.type)
        and (query.queue is None or job.queue == query.queue)
    )


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
