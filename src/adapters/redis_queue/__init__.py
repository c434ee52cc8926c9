"""The native Redis backend: every role, on `redis.asyncio`, one Lua script per move.

Jobs live in Redis, shared by every process that uses the same server and key prefix. The
semantics are the memory backend's (`adapters.memory`, the reference): leases on the Redis
clock fenced by a token, claims in priority order (FIFO within a priority), scheduled jobs
and retries waiting in a delayed set, deadlines enforced on the Redis clock, attempts
settled by `domain.settlement` (rendered in Lua, `lua/lib/decide.lua`), lapsed leases
settled by the next claim on their queue or by `recover`, cancellation (at once while
waiting, by request while active), paused queues, idempotency keys, and admission checked in
the script that stores the jobs. Succeeded, cancelled and expired jobs are kept for
`result_ttl` seconds, dead ones for `dead_ttl` (None: for good).

Layout: `core.py` (the client, keys, running scripts, the batcher) and `registry.py` (the
queue names: finding a job's queue from its id, the most queues, forgetting idle ones) under
the roles (`store.py`, `submitter.py`, `leases.py`, `control.py`, `connection.py`,
`watch.py`: readers waiting for jobs to finish, woken by one subscription); the scripts in
`lua/`, loaded by `scripts.py`, each called through its builder in `calls.py`; the keys in
`keys.py`, the hash fields in `codec.py`.

Every script takes the keys of one hash tag (one queue, or the registry of queue names) in
KEYS, so the backend runs on Redis Cluster (`adapters.redis_cluster`): each queue on one
primary, different queues spread over the primaries. There a submission spanning queues is
stored queue by queue (`submitter.py`), and a waiting claim over several queues waits per
hash slot (`leases.py`); with `min_replicas`, each primary written confirms its part of a
round trip with a WAIT of its own (`adapters.redis_cluster_pipeline`). Rate and concurrency
limits (global per job type, under the prefix's own hash tag: see `keys.py`) are checked in
the claim script on one server; on a cluster, by scripts of their own slot around a queue's
claim, renewal and settlement (`permits.py`).
"""

from __future__ import annotations

from collections.abc import Sequence

import redis.asyncio

from adapters.redis_client import redis_errors
from adapters.redis_cluster import is_cluster
from adapters.redis_queue.connection import RedisConnection
from adapters.redis_queue.control import RedisJobControl, RedisQueueMonitor, RedisQueuePauser
from adapters.redis_queue.core import RedisCore
from adapters.redis_queue.leases import RedisLeaseQueue
from adapters.redis_queue.registry import DEFAULT_GRACE, DEFAULT_SWEEP_INTERVAL
from adapters.redis_queue.store import RedisJobStore
from adapters.redis_queue.submitter import RedisJobSubmitter
from adapters.redis_queue.watch import RedisJobWatcher
from domain.limits import FlowLimits
from domain.ports import AdmissionPolicy, Backend

__all__ = [
    "RedisConnection",
    "RedisJobControl",
    "RedisJobStore",
    "RedisJobSubmitter",
    "RedisJobWatcher",
    "RedisLeaseQueue",
    "RedisQueueMonitor",
    "RedisQueuePauser",
    "redis_backend",
    "stale_writes",
]

_DAY = 86400.0


def redis_backend(
    client: redis.asyncio.Redis,
    *,
    prefix: str = "conveyor",
    result_ttl: float = _DAY,
    dead_ttl: float | None = 7 * _DAY,
    idempotency_ttl: float = _DAY,
    admission: AdmissionPolicy | None = None,
    max_queues: int | None = None,
    max_result_bytes: int | None = None,
    sweep_interval: float = DEFAULT_SWEEP_INTERVAL,
    queue_grace: float = DEFAULT_GRACE,
    limits: FlowLimits | None = None,
    min_replicas: int = 0,
    replica_timeout_ms: int = 500,
) -> Backend:
    """Every role, over `client` (bytes replies: see `adapters.redis_client.create_redis`),
    under the key prefix `prefix`. Closing the connection closes the client.

    At most `max_queues` queue names are kept (None: no limit); idle ones unused for
    `queue_grace` seconds are forgotten by a sweep at most every `sweep_interval` seconds
    (see `registry.py`). A result longer than
    `max_result_bytes` as JSON is refused (ResultTooLargeError). `limits`: the rate and
    concurrency limits per job type, enforced by every claim (`domain.limits`).
    `min_replicas`: submissions and settlements are answered once that many replicas
    confirmed them (Redis WAIT, waiting up to `replica_timeout_ms`), else they raise
    NotReplicatedError (see `core.py`; on a cluster, every primary a round trip writes to
    must confirm its part); 0: they are answered once on the primary."""
    core = RedisCore(
        client,
        prefix=prefix,
        result_ttl=result_ttl,
        dead_ttl=dead_ttl,
        idempotency_ttl=idempotency_ttl,
        admission=admission,
        max_queues=max_queues,
        max_result_bytes=max_result_bytes,
        sweep_interval=sweep_interval,
        queue_grace=queue_grace,
        limits=limits,
        min_replicas=min_replicas,
        replica_timeout_ms=replica_timeout_ms,
    )
    return Backend(
        name="redis",
        connection=RedisConnection(core),
        store=RedisJobStore(core),
        submitter=RedisJobSubmitter(core),
        control=RedisJobControl(core),
        monitor=RedisQueueMonitor(core),
        pauser=RedisQueuePauser(core),
        leases=RedisLeaseQueue(core),
        watcher=core.watcher,
        shared_across_processes=True,
    )


async def stale_writes(backend: Backend, queues: Sequence[str] | None = None) -> int:
    """Writes a Redis backend rejected for a stale lease token so far, over `queues` (default:
    every queue of its prefix): for tests and the fault harness."""
    if not isinstance(backend.connection, RedisConnection):
        raise TypeError(f"not a Redis backend: {backend.name}")
    core = backend.connection.core
    with redis_errors():
        names = sorted(await core.queues()) if queues is None else list(queues)
        if not names:
            return 0
        stale = [core.keys(q).stale for q in names]
        if is_cluster(core.client):  # one MGET per slot
            counts = await core.client.mget_nonatomic(stale)  # type: ignore[attr-defined]
        else:
            counts = await core.client.mget(stale)
    return sum(int(c) for c in counts if c is not None)
