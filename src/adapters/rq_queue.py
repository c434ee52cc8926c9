"""`RqJobQueue`: the JobQueue port on RQ (3.x), for teams that already run RQ.

RQ's own worker runs the jobs (`conveyor worker` with QUEUE_BACKEND=rq, see
`entrypoints/worker/rq_worker.py`), so this adapter is the API side of the port: submit, read,
list, cancel, requeue from dead or cancelled, queue figures, and `recover`. The worker-side
claim protocol (claim, renew, progress, complete, fail, release, held_by) is not RQ's model:
those calls raise `UnsupportedOperationError`, as `capabilities` says.

Every job is stored with RQ's JSON serializer (never pickle) as a call of one dispatcher named
by a string (see `rq_codec.py`), with `Retry` intervals computed from the job type's
RetryPolicy at submission (whole seconds, rounded up), and RQ's `job_timeout` set to our
timeout plus `HARD_TIMEOUT_GRACE` (the dispatcher enforces our timeout itself; RQ's limit is
the backstop). RQ's statuses map to ours; RQ's failed-job registry is our dead-letter set.

Submitting writes exactly what RQ's own enqueue and schedule write (the job hash RQ's `Job`
serializes, its queue or scheduled registry, the set of queues), for every job of a batch in
one Lua script, so a batch is stored whole or not at all, a job id is never stored twice, and
an idempotency key is claimed in the same step as its job.

rq talks to Redis synchronously (it cannot use `redis.asyncio`, nor `decode_responses=True`),
so each call runs in a thread: reads in the default executor, writes in one dedicated thread
so concurrent submissions keep their order.

Listing: RQ keeps no index of all jobs, so a submission also adds the job's id to one sorted
set per key prefix (`<prefix>:rq:jobs`), scored by a counter (submission order). A listing
walks it newest first and filters what it reads, so a filtered listing costs time in
proportion to the jobs it skips; ids whose job hash has expired are dropped from the index as
they are met.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import math
import random as _random
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any, Final, TypeVar

import attrs
import redis
from redis.backoff import ExponentialBackoff
from redis.driver_info import DriverInfo
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.retry import Retry as RedisRetry
from rq import Queue, Retry, worker_registration
from rq.exceptions import AbandonedJobError, InvalidJobOperation, NoSuchJobError
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
from rq.utils import utcformat, utcparse

from adapters import rq_codec
from adapters.redis_client import redis_errors
from adapters.rq_codec import (
    ATTEMPT,
    CANCEL_REQUESTED_AT,
    CANCELLED_AT,
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
    IdempotencyConflictError,
    InvalidTransitionError,
    JobNotFoundError,
    UnsafeBackendError,
    UnsupportedOperationError,
)
from domain.job_types import JobTypeRegistry
from domain.jobs import Job, JobError, JobStatus, JSONValue, Lease, is_job_id, is_name
from domain.ports import (
    AdmissionPolicy,
    Capabilities,
    JobPage,
    JobQuery,
    JobQueue,
    JobSituation,
    NewJob,
    QueueStats,
    Submitted,
)
from domain.retry import Random, RetryPolicy

log = logging.getLogger("conveyor.rq_queue")
# RQ's worker dequeues from every queue it serves; nothing in its protocol could hold one back.
_NO_PAUSE: Final = "RQ has no per-queue pause"

T = TypeVar("T")

# RQ's hard time limit for an attempt is our timeout plus this: the dispatcher stops the handler
# at our timeout itself (cancel, then a grace of at most HARD_TIMEOUT_GRACE - 5 seconds); RQ's
# death penalty only catches a handler that blocks the whole process.
HARD_TIMEOUT_GRACE: Final = 15
_LIST_CHUNK: Final = 200
_STATS_CHUNK: Final = 1000
_LOCK_TTL: Final = 30

# Store new jobs the way RQ's own enqueue and schedule do (its `save_unique_job` and
# `schedule_unique_job` scripts, for many jobs at once), all of them or none.
# KEYS[1] our submission counter, KEYS[2] our listing index, KEYS[3] RQ's set of queue keys;
#   then 4 per job: its hash, its RQ queue (a list), that queue's scheduled registry, its
#   idempotency key (its hash again when it has none).
# ARGV[1] idempotency key retention (ms), ARGV[2] number of jobs; then per job: id, run_at
#   (Unix time, '' for none), enqueued_at (RQ's format), '1' if it has an idempotency key,
#   fingerprint, n, then n strings: the field/value pairs of RQ's job hash (not its status).
# A job whose run_at is still ahead on Redis's clock is stored `scheduled`, scored by run_at
# (RQ's scheduler takes jobs whose score is at most the current whole second: never early);
# any other, `queued` at the tail of its queue.
# Answers {-1, i} when job i's idempotency key holds another fingerprint (nothing is written);
# else per job: 1 if it was stored (0 if its id or its key named a job already), and the id of
# the job it names.
_SUBMIT_SCRIPT: Final = """
local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
local count = tonumber(ARGV[2])
local answers, stored = {}, {}
local new_ids, new_keys = {}, {}
local a = 3
for i = 1, count do
  local k = 3 + (i - 1) * 4
  local id, has_key, fingerprint = ARGV[a], ARGV[a + 3], ARGV[a + 4]
  local first, n = a + 6, tonumber(ARGV[a + 5])
  local held = nil
  if has_key == '1' then
    held = new_keys[KEYS[k + 4]] or redis.call('GET', KEYS[k + 4])
  end
  if held then
    local cut = string.find(held, '\\n', 1, true)
    if string.sub(held, cut + 1) ~= fingerprint then
      return {-1, i}
    end
    answers[#answers + 1] = 0
    answers[#answers + 1] = string.sub(held, 1, cut - 1)
  elseif new_ids[id] or redis.call('EXISTS', KEYS[k + 1]) == 1 then
    answers[#answers + 1] = 0
    answers[#answers + 1] = id
  else
    answers[#answers + 1] = 1
    answers[#answers + 1] = id
    new_ids[id] = true
    if has_key == '1' then
      new_keys[KEYS[k + 4]] = id .. '\\n' .. fingerprint
    end
    stored[#stored + 1] = {k, a, first, n}
  end
  a = first + n
end
for _, job in ipairs(stored) do
  local k, a, first, n = job[1], job[2], job[3], job[4]
  local id = ARGV[a]
  redis.call('HSET', KEYS[k + 1], unpack(ARGV, first, first + n - 1))
  local run_at = tonumber(ARGV[a + 1])
  if run_at and run_at > now then
    redis.call('HSET', KEYS[k + 1], 'status', 'scheduled')
    redis.call('ZADD', KEYS[k + 3], ARGV[a + 1], id)
  else
    redis.call('HSET', KEYS[k + 1], 'status', 'queued', 'enqueued_at', ARGV[a + 2])
    redis.call('RPUSH', KEYS[k + 2], id)
  end
  redis.call('SADD', KEYS[3], KEYS[k + 2])
  if ARGV[a + 3] == '1' then
    redis.call('SET', KEYS[k + 4], id .. '\\n' .. ARGV[a + 4], 'PX', ARGV[1])
  end
  redis.call('ZADD', KEYS[2], 'NX', redis.call('INCR', KEYS[1]), id)
end
return answers
"""

# Cancel a job: a waiting one (queued, or scheduled, including a retry waiting for its time)
# at once, a running one by asking for it to stop.
# KEYS[1] the job's hash, KEYS[2] its RQ queue, KEYS[3] its scheduled registry, KEYS[4] its
#   canceled registry.
# ARGV[1] job id, ARGV[2] now (RQ's format), ARGV[3] now (ISO 8601), ARGV[4] retention of a
#   cancelled job (s), ARGV[5] its canceled-registry score (now + retention), ARGV[6] the
#   waiting-cancel field, ARGV[7] the cancel-request field.
# A cancelled job keeps a mark (ARGV[6]) that survives RQ rewriting its status: a worker that
# had already taken it off its queue sees the mark as the attempt starts and runs nothing.
# Answers 'cancelled', 'requested' (it runs: its attempt is asked to stop), 'missing', or the
# RQ status that cannot be cancelled.
_CANCEL_SCRIPT: Final = """
local status = redis.call('HGET', KEYS[1], 'status')
if not status then
  return 'missing'
end
if status == 'queued' or status == 'scheduled' or status == 'created' then
  redis.call('LREM', KEYS[2], 0, ARGV[1])
  redis.call('ZREM', KEYS[3], ARGV[1])
  redis.call('HSET', KEYS[1], 'status', 'canceled', 'ended_at', ARGV[2], ARGV[6], ARGV[3])
  redis.call('ZADD', KEYS[4], ARGV[5], ARGV[1])
  redis.call('EXPIRE', KEYS[1], ARGV[4])
  return 'cancelled'
end
if status == 'started' then
  redis.call('HSETNX', KEYS[1], ARGV[7], ARGV[3])
  return 'requested'
end
return status
"""

# Say that a worker is alive and serves some queues until now + ttl, on Redis's clock.
# KEYS[1] the set of our queues with presence entries; then each queue's presence (a sorted
#   set: worker id -> when it lapses).
# ARGV[1] worker id, ARGV[2] ttl (s), then the queue names, in the order of their KEYS.
_HEARTBEAT_SCRIPT: Final = """
local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
for i = 2, #KEYS do
  redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', now)
  redis.call('ZADD', KEYS[i], now + tonumber(ARGV[2]), ARGV[1])
  redis.call('SADD', KEYS[1], ARGV[i + 1])
end
return #KEYS - 1
"""

# The workers whose presence has not lapsed on Redis's clock. KEYS[1] a queue's presence.
_PRESENT_SCRIPT: Final = """
local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
return redis.call('ZCOUNT', KEYS[1], '(' .. now, '+inf')
"""

_NO_CLAIMS: Final = "RQ's worker takes jobs itself; run `conveyor worker` with QUEUE_BACKEND=rq"
_NO_LEASES: Final = "RQ has no leases: a job's liveness is its worker's heartbeat"
_NO_DEADLINES: Final = "RQ has no deadline it could enforce across attempts and retries"


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
        # Resolved once, here: otherwise redis-py reads its package metadata for every new
        # connection, and each work-horse RQ forks opens one (about 4 ms a job).
        driver_info=DriverInfo(),
    )
    return client


def retry_intervals(policy: RetryPolicy, max_attempts: int, random: Random) -> list[int]:
    """RQ's retry intervals for a job: the policy's delay before each retry, in whole seconds
    (RQ counts in seconds), rounded up so no retry comes sooner than the policy asks."""
    return [math.ceil(policy.delay(n, random)) for n in range(1, max_attempts)]


@attrs.frozen
class _Keys:
    """RQ's keys for one of our queues."""

    queue: str
    scheduled: str
    started: str
    finished: str
    failed: str
    canceled: str
    workers: str  # the set of RQ workers serving it
    presence: str  # workers that said through `heartbeat` that they serve it


class RqJobQueue(JobQueue):
    """Jobs in RQ's queues and registries, readable through the port by any process.

    What it does, flag by flag (the contract suites check each flag either way):

    - `submit`: every job of a batch in one Lua script (`_SUBMIT_SCRIPT`), all or none.
    - idempotency: a job's key is claimed (`<prefix>:rq:idem:<sha256 of the key>`, holding
      the job id and the request's fingerprint) in that same script, so concurrent
      submissions under one key store one job. A key is held `idempotency_ttl` seconds from
      the submission that stored its job.
    - scheduling: a job whose run_at is ahead on Redis's clock waits `scheduled` in RQ's
      scheduled registry, scored by its run_at. The RQ scheduler of a running `conveyor
      worker` serving its queue moves it to the queue once the current whole second has
      reached that score (it looks every second): never early, at most about 2 s late;
      `recover` does it to the microsecond.
    - cancel_queued: a queued or scheduled job (a pending retry too) becomes `cancelled` in
      one atomic step (`_CANCEL_SCRIPT`) and never runs: a worker that had already taken it
      off its queue, or RQ's scheduler racing the cancel, cannot start it, because the
      attempt reads the job's cancel mark in the step that marks it started and then runs
      nothing. Cancelled jobs are kept `result_ttl` seconds.
    - cancel_active: an active job keeps running with `cancel_requested_at` set. Its handler
      sees `JobContext.cancel_requested` (read from Redis at most every 0.25 s) and stops by
      raising JobCancelledError: the job ends `cancelled`. A forking worker kills a handler
      that has not stopped `CONVEYOR_CANCEL_GRACE_SECONDS` after the request (it looks at each
      heartbeat, so within grace + heartbeat), and the job ends `cancelled`; a simple worker
      (no work-horse to kill) lets it run to its end. Any later attempt of a job with a
      cancel request (after its worker was lost) stops before it runs: it ends `cancelled`.
    - queue_stats: counts by status from RQ's queue and registries, the age of the oldest
      queued job, a queued job's position in its queue. Telling jobs scheduled by their
      run_at from retries waiting for theirs reads one field of every job in the scheduled
      registry.
    - worker_presence: the workers serving a queue are RQ's workers alive on it (they
      register themselves; a SIGKILLed one counts until its key expires, `worker_ttl` + 60 s)
      plus any process that says so through `heartbeat`.
    - Dead jobs are kept `dead_ttl` seconds (RQ's failure_ttl).
    - Not supported, each refused with UnsupportedOperationError before anything is read or
      written: deadlines (RQ can drop a waiting job, not expire it; a job with a deadline is
      refused), pause (RQ has no per-queue pause), admission (RQ's enqueue has no check to
      add limits to: a policy is refused as the queue is built), the worker-side claim
      protocol (RQ's worker dequeues and runs jobs itself), leases and fencing (a lost worker
      is detected by its heartbeat expiring, and a stalled-but-alive worker may finish a job
      another one re-ran), batch claims, and priorities (each queue is FIFO; the priority is
      stored).
    """

    capabilities = Capabilities(
        leases=False,
        shared_across_processes=True,
        blocking_claim=False,
        worker_claims=False,
        batch_claims=False,
        priorities=False,
        idempotency=True,
        scheduling=True,
        deadlines=False,
        pause=False,
        cancel_queued=True,
        cancel_active=True,
        admission=False,
        queue_stats=True,
        worker_presence=True,
    )

    def __init__(
        self,
        client: redis.Redis,
        registry: JobTypeRegistry,
        *,
        prefix: str = "conveyor",
        result_ttl: float = 86400.0,
        dead_ttl: float = 7 * 86400.0,
        idempotency_ttl: float = 86400.0,
        admission: AdmissionPolicy | None = None,
        random: Random = _random.random,
    ) -> None:
        if not prefix or ":" in prefix:
            raise ValueError(f"prefix must be non-empty and hold no colon, got {prefix!r}")
        if admission is not None:
            raise UnsupportedOperationError(
                "admission", "admission", "RQ's enqueue has no admission check to add limits to"
            )
        self._client = client
        self._registry = registry
        self._prefix = prefix
        self._result_ttl = max(1, math.ceil(result_ttl))
        self._dead_ttl = max(1, math.ceil(dead_ttl))
        self._idempotency_ttl_ms = max(1, math.ceil(idempotency_ttl * 1000))
        self._random = random
        self._queues: dict[str, Queue] = {}
        self._keys_of: dict[str, _Keys] = {}
        self._index_key = f"{prefix}:rq:jobs"
        self._seq_key = f"{prefix}:rq:seq"
        self._presence_key = f"{prefix}:rq:presence"
        self._submit_script = client.register_script(_SUBMIT_SCRIPT)
        self._cancel_script = client.register_script(_CANCEL_SCRIPT)
        self._heartbeat_script = client.register_script(_HEARTBEAT_SCRIPT)
        self._present_script = client.register_script(_PRESENT_SCRIPT)
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rq-queue-writer")
        self._closed = False

    # -- writing ----------------------------------------------------------------------------

    async def submit(self, jobs: Sequence[NewJob]) -> Sequence[Submitted]:
        for new in jobs:
            _check(new)
        if not jobs:
            return []
        return await self._write(self._submit, jobs)

    def _describe(self, new: NewJob, keys: list[str], args: list[Any]) -> None:
        """Add one job's keys and arguments for `_SUBMIT_SCRIPT`: the hash RQ would write."""
        job = new.job
        job_type = self._registry.get(job.type)
        policy = job_type.retry if job_type is not None else RetryPolicy()
        intervals = retry_intervals(policy, job.max_attempts, self._random)
        queue = self._queue(job.queue)
        rq_job = queue.create_job(
            DISPATCHER,
            args=job_args(job),
            job_id=job.id,
            timeout=math.ceil(job.timeout) + HARD_TIMEOUT_GRACE,
            result_ttl=self._result_ttl,
            failure_ttl=self._dead_ttl,
            description=f"conveyor {job.type}",  # not the call: the payload may hold secrets
            retry=Retry(max=len(intervals), interval=intervals) if intervals else None,
        )
        fields: list[Any] = []
        for name, value in rq_job.to_dict().items():
            if value is not None and name not in ("status", "enqueued_at"):
                fields += (name, value)
        key = new.idempotency_key
        keys += (
            rq_job.key,
            queue.key,
            self._keys(job.queue).scheduled,
            rq_job.key if key is None else self._idempotency_key(key),
        )
        args += (
            job.id,
            "" if job.run_at is None else repr(job.run_at.timestamp()),
            utcformat(datetime.now(UTC)),
            "0" if key is None else "1",
            new.fingerprint,
            len(fields),
            *fields,
        )

    def _submit(self, jobs: Sequence[NewJob]) -> list[Submitted]:
        keys: list[str] = [self._seq_key, self._index_key, Queue.redis_queues_keys]
        args: list[Any] = [self._idempotency_ttl_ms, len(jobs)]
        for new in jobs:
            self._describe(new, keys, args)
        reply: list[Any] = self._submit_script(keys=keys, args=args)
        if reply[0] == -1:
            index = int(reply[1]) - 1
            raise IdempotencyConflictError(jobs[index].idempotency_key or "", index)
        return [Submitted(_text(reply[n + 1]), bool(reply[n])) for n in range(0, len(reply), 2)]

    def _idempotency_key(self, key: str) -> str:
        return f"{self._prefix}:rq:idem:{hashlib.sha256(key.encode()).hexdigest()}"

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
        with self._client.pipeline() as pipe:
            # Its cancellation is over, and a cancelled job's hash was set to expire.
            pipe.hdel(rq_job.key, CANCELLED_AT, CANCEL_REQUESTED_AT)
            pipe.persist(rq_job.key)
            pipe.execute()
        try:
            registry.requeue(rq_job)
        except InvalidJobOperation:  # someone else moved it first
            raise InvalidTransitionError(job_id, job.status, JobStatus.QUEUED) from None
        _, requeued = self._read_one(job_id)
        if requeued is None:  # pragma: no cover - it was just written
            raise JobNotFoundError(job_id)
        return requeued

    async def cancel(self, job_id: str) -> Job:
        if not is_job_id(job_id):
            raise JobNotFoundError(job_id)
        return await self._write(self._cancel, job_id)

    def _cancel(self, job_id: str) -> Job:
        rq_job, job = self._read_one(job_id)
        if rq_job is None or job is None:
            raise JobNotFoundError(job_id)
        keys = self._keys(job.queue)
        now = datetime.now(UTC)
        outcome = _text(
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
        _, current = self._read_one(job_id)
        if current is None:
            raise JobNotFoundError(job_id)
        if outcome not in ("cancelled", "requested"):
            raise InvalidTransitionError(job_id, current.status, JobStatus.CANCELLED)
        return current

    async def recover(self, queues: Sequence[str]) -> int:
        """Move due scheduled jobs and retries to their queue and retry (or dead-letter)
        abandoned jobs, now; drop cancelled jobs past their retention from the registry.

        `conveyor worker` does the moves on its own (its RQ scheduler and maintenance); this
        is for a deployment or a test without them. Each move runs under the lock RQ uses for
        it, so it is safe beside running RQ workers.
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
                    self._client.zremrangebyscore(self._keys(name).canceled, 0, time.time())
                finally:
                    queue.release_maintenance_lock()  # type: ignore[no-untyped-call]
        return moved

    def _promote_due(self, queue: Queue) -> int:
        registry = ScheduledJobRegistry(queue=queue, job_class=ConveyorRqJob, serializer=SERIALIZER)  # type: ignore[no-untyped-call]
        moved = 0
        # To the microsecond (RQ's scheduler compares whole seconds, so it can be a second late).
        for job_id in registry.get_jobs_to_schedule(time.time()):  # type: ignore[arg-type]
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
        rq_job, job = self._decode(job_id, raw, latest)
        if job is not None and job.status is JobStatus.FAILED:
            (job,) = self._with_retry_times([job])
        return rq_job, job

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
            return rq_job, decode_job(
                rq_job,
                result,
                cancelled_at=_moment(raw.get(CANCELLED_AT.encode())),
                cancel_requested_at=_moment(raw.get(CANCEL_REQUESTED_AT.encode())),
            )
        except (UndecodableJobError, NoSuchJobError, ValueError, TypeError) as exc:
            log.warning("job %r in RQ is not a Conveyor job we can read: %s", job_id, exc)
            return rq_job, None

    def _with_retry_times(self, jobs: Sequence[Job]) -> list[Job]:
        """The jobs, each failed one with the time its retry is due (its score in RQ's
        scheduled registry)."""
        waiting = [job for job in jobs if job.status is JobStatus.FAILED]
        if not waiting:
            return list(jobs)
        with self._client.pipeline(transaction=False) as pipe:
            for job in waiting:
                pipe.zscore(self._keys(job.queue).scheduled, job.id)
            scores = dict(zip((job.id for job in waiting), pipe.execute(), strict=True))
        return [
            attrs.evolve(job, retry_at=datetime.fromtimestamp(scores[job.id], UTC))
            if scores.get(job.id) is not None
            else job
            for job in jobs
        ]

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
        jobs = self._with_retry_times([job for job, _ in page])
        return JobPage(jobs, str(page[-1][1]) if more else None)

    async def pause(self, queue: str) -> None:
        raise UnsupportedOperationError("pause", "pause", _NO_PAUSE)

    async def resume(self, queue: str) -> None:
        raise UnsupportedOperationError("resume", "pause", _NO_PAUSE)

    async def queue_stats(self, queues: Sequence[str] | None = None) -> Sequence[QueueStats]:
        names = None if queues is None else list(queues)
        return await asyncio.to_thread(self._guarded, self._stats, names)

    def _stats(self, names: list[str] | None) -> list[QueueStats]:
        if names is None:
            names = self._known_queues()
        now = time.time()
        per_queue = 8
        with self._client.pipeline(transaction=False) as pipe:
            for name in names:
                keys = self._keys(name)
                pipe.llen(keys.queue)
                pipe.lindex(keys.queue, 0)
                pipe.zrange(keys.scheduled, 0, -1)
                pipe.zcard(keys.started)
                pipe.zcount(keys.finished, now, "+inf")
                pipe.zcount(keys.failed, now, "+inf")
                pipe.zcount(keys.canceled, now, "+inf")
                pipe.smembers(keys.workers)
            first: list[Any] = pipe.execute()
        with self._client.pipeline(transaction=False) as pipe:
            for n in range(len(names)):
                base = n * per_queue
                head, scheduled, workers = first[base + 1], first[base + 2], first[base + 7]
                if head is not None:
                    pipe.hget(ConveyorRqJob.key_for(_text(head)), "enqueued_at")
                for job_id in scheduled:
                    pipe.hmget(ConveyorRqJob.key_for(_text(job_id)), "status", "started_at")
                for worker_key in workers:
                    pipe.exists(worker_key)
                self._present_script(keys=[self._keys(names[n]).presence], client=pipe)
            second = iter(pipe.execute())
        stats: list[QueueStats] = []
        for n, name in enumerate(names):
            (queued, head, scheduled_ids, active, succeeded, dead, cancelled, workers) = first[
                n * per_queue : (n + 1) * per_queue
            ]
            oldest: float | None = None
            if head is not None:
                enqueued_at = next(second)
                if enqueued_at:
                    oldest = max(0.0, now - _rq_time(enqueued_at).timestamp())
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
        ours = f"{Queue.redis_queue_namespace_prefix}{self._prefix}:"
        with self._client.pipeline(transaction=False) as pipe:
            pipe.smembers(Queue.redis_queues_keys)
            pipe.smembers(self._presence_key)
            queue_keys, served = pipe.execute()
        names = {_text(key)[len(ours) :] for key in queue_keys if _text(key).startswith(ours)}
        names |= {_text(name) for name in served}
        return sorted(name for name in names if is_name(name))

    async def situation(self, job_id: str) -> JobSituation | None:
        if not is_job_id(job_id):
            return None
        return await asyncio.to_thread(self._guarded, self._situation, job_id)

    def _situation(self, job_id: str) -> JobSituation | None:
        _, job = self._read_one(job_id)
        if job is None:
            return None
        keys = self._keys(job.queue)
        with self._client.pipeline(transaction=False) as pipe:
            pipe.lpos(keys.queue, job_id)
            pipe.smembers(keys.workers)
            self._present_script(keys=[keys.presence], client=pipe)
            position, workers, present = pipe.execute()
        live = int(present)
        if workers:
            with self._client.pipeline(transaction=False) as pipe:
                for worker_key in workers:
                    pipe.exists(worker_key)
                live += sum(1 for alive in pipe.execute() if alive)
        ahead = int(position) if job.status is JobStatus.QUEUED and position is not None else None
        return JobSituation(job=job, ahead=ahead, paused=False, workers=live)

    async def heartbeat(self, worker_id: str, queues: Sequence[str], ttl: float) -> None:
        """Count `worker_id` as serving `queues` for `ttl` seconds (RQ's own workers count
        without it: they register themselves)."""
        if not queues:
            return
        names = list(queues)
        keys = [self._presence_key, *(self._keys(name).presence for name in names)]
        args = [worker_id, repr(float(ttl)), *names]
        await asyncio.to_thread(self._guarded, self._heartbeat_script, keys, args)

    async def forget_worker(self, worker_id: str) -> None:
        await asyncio.to_thread(self._guarded, self._forget_worker, worker_id)

    def _forget_worker(self, worker_id: str) -> None:
        names = [_text(name) for name in self._client.smembers(self._presence_key)]
        if names:
            with self._client.pipeline(transaction=False) as pipe:
                for name in names:
                    pipe.zrem(self._keys(name).presence, worker_id)
                pipe.execute()

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

    async def cancel_requested(self, leases: Sequence[Lease]) -> set[str]:
        raise UnsupportedOperationError("cancel_requested", "worker_claims", _NO_CLAIMS)

    async def cancelled(self, lease: Lease) -> bool:
        raise UnsupportedOperationError("cancelled", "worker_claims", _NO_CLAIMS)

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

    def _keys(self, name: str) -> _Keys:
        keys = self._keys_of.get(name)
        if keys is None:
            queue = self._queue(name)
            keys = self._keys_of[name] = _Keys(
                queue=queue.key,
                scheduled=queue.scheduled_job_registry.key,
                started=queue.started_job_registry.key,
                finished=queue.finished_job_registry.key,
                failed=queue.failed_job_registry.key,
                canceled=queue.canceled_job_registry.key,
                workers=worker_registration.WORKERS_BY_QUEUE_KEY % queue.name,
                presence=f"{self._presence_key}:{name}",
            )
        return keys

    async def _write(self, fn: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._writer, self._guarded, fn, *args)

    @staticmethod
    def _guarded(fn: Callable[..., T], *args: Any) -> T:
        with redis_errors():
            return fn(*args)


def _check(new: NewJob) -> None:
    """Refuse, before anything is written, a job this backend cannot store as asked."""
    job = new.job
    if job.status not in (JobStatus.QUEUED, JobStatus.SCHEDULED):
        raise ValueError(f"job {job.id} must be queued or scheduled to be stored, not {job.status}")
    if job.status is JobStatus.SCHEDULED and job.run_at is None:
        raise ValueError(f"job {job.id} is scheduled without a run_at")
    if job.deadline is not None:
        raise UnsupportedOperationError("submit", "deadlines", _NO_DEADLINES)


def record_abandoned(job: Any, kind: type[BaseException], *_: Any) -> bool:
    """An RQ exception handler: a job whose worker vanished gets our WORKER_LOST error before
    RQ retries or dead-letters it. One whose cancellation was asked for is retried, only to be
    stopped as its attempt starts: it ends `cancelled`."""
    if issubclass(kind, AbandonedJobError) and isinstance(job, ConveyorRqJob):
        with contextlib.suppress(Exception):  # bookkeeping only: never block RQ's cleanup
            job.get_meta(refresh=True)
            lost = rq_codec.worker_lost(
                "the worker running this attempt stopped heartbeating (killed or lost)"
            )
            job.meta = rq_codec.note_failure(job, lost)
            job.save_meta()  # type: ignore[no-untyped-call]
            if job.connection.hexists(job.key, CANCEL_REQUESTED_AT):
                job.retries_left = max(job.retries_left or 0, 1)
    return True


def _matches(job: Job, query: JobQuery) -> bool:
    return (
        (query.status is None or job.status == query.status)
        and (query.type is None or job.type == query.type)
        and (query.queue is None or job.queue == query.queue)
    )


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _moment(raw: bytes | None) -> datetime | None:
    return datetime.fromisoformat(raw.decode()) if raw else None


def _rq_time(raw: bytes | str) -> datetime:
    return utcparse(_text(raw)).replace(tzinfo=UTC)
