"""`RedisJobQueue`: the JobQueue port on `redis.asyncio`, one Lua script per move.

Every operation is one round trip (a script call, or a pipeline), except a claim over several
queues (one script call per queue until the limit is filled), `requeue` (finding the job's
queue, like `get`, then the script) and `list_jobs` (see `listing.py`). `enqueue` and
`complete` calls made in the same event-loop tick share one round trip (see `batching.py`).
Key layout and scripts: `scripts.py`.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any, Final

import redis.asyncio
from redis.asyncio.client import Pipeline
from redis.exceptions import NoScriptError, ResponseError

from adapters.redis_client import redis_errors
from adapters.redis_queue import listing, scripts
from adapters.redis_queue.batching import Batch, TickBatcher
from adapters.redis_queue.codec import (
    FIELDS,
    RawFields,
    UndecodableJobError,
    decode_job,
    encode_error,
    encode_job,
    encode_json,
)
from adapters.redis_queue.keys import QueueKeys
from adapters.redis_queue.scripts import Script
from domain.errors import (
    InvalidTransitionError,
    JobNotFoundError,
    UnsafeBackendError,
    UnstorableResultError,
)
from domain.jobs import (
    LEASE_EXPIRED,
    AttemptOutcome,
    ErrorKind,
    Job,
    JobError,
    JobStatus,
    JSONValue,
    Lease,
    error_summary,
    is_job_id,
)
from domain.ports import Capabilities, JobPage, JobQuery, JobQueue

log = logging.getLogger("conveyor.redis_queue")

# What a reclaimed job records: its error, and that error's line in the job's history.
_LEASE_EXPIRED: Final = (encode_error(LEASE_EXPIRED), error_summary(LEASE_EXPIRED))


class RedisJobQueue(JobQueue):
    """Jobs in Redis, shared by every process that uses the same server and prefix.

    Semantics follow `InMemoryJobQueue`: leases on the Redis clock fenced by a token, failed
    attempts retried from a delayed set, expired leases reclaimed by the next claim on their
    queue (or by `recover`, for a queue no claimer asks for), dead jobs kept (the
    dead-letter set), succeeded jobs kept for `result_ttl` seconds, each job's last
    attempts in its history. What it cannot do (yet): order by job priority (each queue is
    FIFO; the priority is stored). On Redis Cluster every
    script works (one hash tag per queue), but a *waiting* claim over several queues BLPOPs
    their markers together, which Cluster refuses unless they share a slot.
    """

    capabilities = Capabilities(
        leases=True,
        shared_across_processes=True,
        blocking_claim=True,
        worker_claims=True,
        batch_claims=True,
        priorities=False,
    )

    # The longest single BLPOP of a waiting claim: a waiting claimer re-checks for due
    # retries and expired leases at least this often. The client's socket timeout must
    # exceed it.
    MAX_BLOCK_SECONDS: Final = 1.0

    def __init__(
        self, client: redis.asyncio.Redis, *, prefix: str = "conveyor", result_ttl: float = 86400.0
    ) -> None:
        if not prefix or "{" in prefix or "}" in prefix:
            raise ValueError(f"prefix must be non-empty and hold no braces, got {prefix!r}")
        if result_ttl <= 0:
            raise ValueError("result_ttl must be positive")
        self._client = client
        self._prefix = prefix
        self._result_ttl_ms = max(1, round(result_ttl * 1000))
        self._queues_key = f"{prefix}:queues"
        self._keys: dict[str, QueueKeys] = {}
        self._known_queues: set[str] = set()
        self._batcher = TickBatcher(self._run_batches)
        self._closed = False

    # -- writing ----------------------------------------------------------------------------

    async def enqueue(self, job: Job) -> None:
        if job.status is not JobStatus.QUEUED:
            raise ValueError(f"job {job.id} must be queued to be enqueued, not {job.status}")
        self._keys_of(job.queue)  # validates the name before anything is sent
        fields = encode_job(job)
        with redis_errors():
            stored = await self._batcher.submit(
                scripts.ENQUEUE, job.queue, (job.id, len(fields), *fields)
            )
        self._known_queues.add(job.queue)
        if not stored:
            raise ValueError(f"job {job.id} already exists")

    async def claim(
        self,
        queues: Sequence[str],
        *,
        worker_id: str,
        limit: int,
        lease_seconds: float,
        wait_seconds: float,
    ) -> Sequence[Lease]:
        keys = [self._keys_of(queue) for queue in queues]
        lease_ms = max(1, round(lease_seconds * 1000))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait_seconds
        with redis_errors():
            while True:
                leases, wake_in = await self._claim_now(keys, worker_id, limit, lease_ms)
                remaining = deadline - loop.time()
                if leases or remaining <= 0 or limit <= 0 or not keys:
                    return leases
                # Sleep until work is enqueued (the marker), a retry is due or a lease
                # expires, or the wait ends; whichever comes first.
                block = min(remaining, self.MAX_BLOCK_SECONDS)
                if wake_in is not None:
                    block = min(block, wake_in)
                await self._client.blpop([k.marker for k in keys], timeout=max(block, 0.01))

    async def _claim_now(
        self, keys: Sequence[QueueKeys], worker_id: str, limit: int, lease_ms: int
    ) -> tuple[list[Lease], float | None]:
        leases: list[Lease] = []
        wake_in: float | None = None
        for queue_keys in keys:
            wanted = limit - len(leases)
            if wanted <= 0:
                break
            claimed, wake_ms = await self._eval(
                scripts.CLAIM,
                (
                    queue_keys.ready,
                    queue_keys.active,
                    queue_keys.delayed,
                    queue_keys.marker,
                    queue_keys.tokens,
                ),
                (queue_keys.base, wanted, lease_ms, worker_id, *_LEASE_EXPIRED),
            )
            for raw in claimed:
                try:
                    leases.append(_lease_from(raw))
                except UndecodableJobError as exc:
                    await self._dead_letter(queue_keys, raw, exc)
            if wake_ms >= 0 and (wake_in is None or wake_ms / 1000 < wake_in):
                wake_in = wake_ms / 1000
        return leases, wake_in

    async def _dead_letter(self, keys: QueueKeys, raw: RawFields, exc: Exception) -> None:
        """Whatever sits in Redis is data: a job we just claimed but cannot even decode goes
        to the dead-letter set here, and nothing in it runs."""
        job_id, token = raw[0], raw[-1]
        log.warning("dead-lettering undecodable job %r: %s", job_id, exc)
        if job_id is None or token is None:  # pragma: no cover - the claim just wrote both
            return
        error = JobError(
            f"stored job cannot be decoded: {exc}", "UndecodableJob", ErrorKind.INVALID
        )
        await self._eval(
            scripts.FAIL,
            (keys.active, keys.stale, keys.delayed),
            (keys.base, job_id, token, *_failure_args(error)),
        )

    async def renew(self, leases: Sequence[Lease], lease_seconds: float) -> set[str]:
        if not leases:
            return set()
        lease_ms = max(1, round(lease_seconds * 1000))
        by_queue: dict[str, list[str]] = defaultdict(list)
        for lease in leases:
            by_queue[lease.job.queue] += (lease.job_id, lease.token)

        def build(pipe: Pipeline) -> None:
            for queue, pairs in by_queue.items():
                keys = self._keys_of(queue)
                pipe.evalsha(scripts.RENEW.sha, 1, keys.active, keys.base, lease_ms, *pairs)

        with redis_errors():
            results = await self._pipeline(build)
        return {job_id.decode() for held in results for job_id in held}

    async def set_progress(self, lease: Lease, progress: int) -> bool:
        if not 0 <= progress <= 100:
            raise ValueError(f"progress must be 0-100, got {progress}")
        keys = self._keys_of(lease.job.queue)
        with redis_errors():
            done = await self._eval(
                scripts.SET_PROGRESS,
                (keys.active, keys.stale),
                (keys.base, lease.job_id, lease.token, progress),
            )
        return bool(done)

    async def complete(self, lease: Lease, result: JSONValue) -> bool:
        try:
            encoded = encode_json(result)
        except (TypeError, ValueError, OverflowError) as exc:
            raise UnstorableResultError(str(exc)) from None
        call = (lease.job_id, lease.token, encoded)
        with redis_errors():
            return bool(await self._batcher.submit(scripts.COMPLETE, lease.job.queue, call))

    async def fail(self, lease: Lease, error: JobError, retry_in: float | None) -> bool:
        keys = self._keys_of(lease.job.queue)
        retry_ms = "" if retry_in is None else str(max(0, round(retry_in * 1000)))
        with redis_errors():
            done = await self._eval(
                scripts.FAIL,
                (keys.active, keys.stale, keys.delayed),
                (keys.base, lease.job_id, lease.token, *_failure_args(error, retry_ms)),
            )
        return bool(done)

    async def release(self, lease: Lease) -> bool:
        keys = self._keys_of(lease.job.queue)
        with redis_errors():
            done = await self._eval(
                scripts.RELEASE,
                (keys.ready, keys.active, keys.marker, keys.stale),
                (keys.base, lease.job_id, lease.token),
            )
        return bool(done)

    async def recover(self, queues: Sequence[str]) -> int:
        if not queues:
            return 0
        keys = [self._keys_of(queue) for queue in queues]

        def build(pipe: Pipeline) -> None:
            for k in keys:
                pipe.evalsha(
                    scripts.RECOVER.sha,
                    4,
                    k.ready,
                    k.active,
                    k.delayed,
                    k.marker,
                    k.base,
                    *_LEASE_EXPIRED,
                )

        with redis_errors():
            moved = await self._pipeline(build)
        return sum(int(m) for m in moved)

    async def requeue(self, job_id: str) -> Job:
        if not is_job_id(job_id):
            raise JobNotFoundError(job_id)
        with redis_errors():
            found = [
                queue
                for queue, (status,) in await self._read_everywhere(job_id, ("status",))
                if status is not None
            ]
            if not found:
                raise JobNotFoundError(job_id)
            keys = self._keys_of(found[0])
            answer = await self._eval(
                scripts.REQUEUE,
                (keys.ready, keys.active, keys.delayed, keys.marker),
                (keys.base, job_id),
            )
        if answer[0] != 1:
            if len(answer) < 2:  # gone since we looked
                raise JobNotFoundError(job_id)
            raise InvalidTransitionError(job_id, answer[1].decode(), JobStatus.QUEUED)
        job = decode_job(answer[1])
        if job is None:  # pragma: no cover - the script just wrote it
            raise JobNotFoundError(job_id)
        return job

    async def _run_batches(self, batches: Sequence[Batch]) -> list[list[int]]:
        """One pipeline for the coalesced enqueue and complete calls (see `batching.py`)."""

        def build(pipe: Pipeline) -> None:
            for batch in batches:
                keys = self._keys_of(batch.queue)
                args = [arg for call in batch.calls for arg in call]
                if batch.script is scripts.ENQUEUE:
                    pipe.sadd(self._queues_key, batch.queue)  # idempotent, so safe to resend
                    pipe.evalsha(scripts.ENQUEUE.sha, 2, keys.ready, keys.marker, keys.base, *args)
                elif batch.script is scripts.COMPLETE:
                    pipe.evalsha(
                        scripts.COMPLETE.sha,
                        2,
                        keys.active,
                        keys.stale,
                        keys.base,
                        self._result_ttl_ms,
                        *args,
                    )
                else:  # pragma: no cover - only the two above are submitted
                    raise AssertionError(batch.script)

        results = await self._pipeline(build)
        return [r for r in results if isinstance(r, list)]  # drop the SADD answers

    # -- reading ----------------------------------------------------------------------------

    async def get(self, job_id: str) -> Job | None:
        if not is_job_id(job_id):
            return None
        with redis_errors():
            found = await self._read_everywhere(job_id, FIELDS)
        for _, raw in found:
            job = _decoded_or_none(raw)
            if job is not None:
                return job
        return None

    async def _read_everywhere(
        self, job_id: str, fields: Sequence[str]
    ) -> list[tuple[str, RawFields]]:
        """`fields` of the job's hash in every queue we know of, by queue name.

        The job's queue is unknown: read it from every queue we know of, and the set of
        known queues in the same round trip; look again only if that set grew.
        """
        searched = sorted(self._known_queues)

        def build(pipe: Pipeline) -> None:
            pipe.smembers(self._queues_key)
            for queue in searched:
                pipe.hmget(self._keys_of(queue).job(job_id), fields)

        members, *found = await self._pipeline(build)
        self._known_queues |= {m.decode() for m in members}
        unseen = sorted(self._known_queues.difference(searched))
        if unseen:

            def build_more(pipe: Pipeline) -> None:
                for queue in unseen:
                    pipe.hmget(self._keys_of(queue).job(job_id), fields)

            found += await self._pipeline(build_more)
        return list(zip([*searched, *unseen], found, strict=True))

    async def held_by(self, worker_id: str, queues: Sequence[str]) -> Sequence[Lease]:
        if not queues:
            return []
        keys = [self._keys_of(queue) for queue in queues]

        def build(pipe: Pipeline) -> None:
            for k in keys:
                pipe.evalsha(scripts.HELD_BY.sha, 1, k.active, k.base, worker_id)

        with redis_errors():
            per_queue = await self._pipeline(build)
        leases: list[Lease] = []
        for raw in (raw for held in per_queue for raw in held):
            try:
                leases.append(_lease_from(raw))
            except UndecodableJobError as exc:
                # Left to its lease's expiry; the claim that takes it next dead-letters it.
                log.warning("held job %r cannot be decoded: %s", raw[0], exc)
        return leases

    async def list_jobs(self, query: JobQuery) -> JobPage:
        """Newest first by the time each job entered its current status (see `listing.py`)."""
        with redis_errors():
            queues = [query.queue] if query.queue is not None else sorted(await self._queues())
            return await listing.list_jobs(
                query,
                queues=[self._keys_of(queue) for queue in queues],
                pipeline=self._pipeline,
                decode=_decoded_or_none,
            )

    async def _queues(self) -> set[str]:
        members: set[bytes] = await self._client.smembers(self._queues_key)  # type: ignore[assignment]
        names = {m.decode() for m in members}
        self._known_queues |= names
        return names

    # -- operations -------------------------------------------------------------------------

    async def stale_writes(self, queues: Sequence[str] | None = None) -> int:
        """Writes rejected for a stale lease token so far, over `queues` (default: all)."""
        with redis_errors():
            names = sorted(await self._queues()) if queues is None else list(queues)
            if not names:
                return 0
            counts = await self._client.mget([self._keys_of(q).stale for q in names])
        return sum(int(c) for c in counts if c is not None)

    async def ping(self) -> None:
        with redis_errors():
            await self._client.ping()

    async def verify(self) -> list[str]:
        """Refuse a server that may lose jobs by design; answer warnings for lesser risks.

        Raises UnsafeBackendError when `maxmemory-policy` lets Redis evict keys (anything but
        ``noeviction``: an evicted job hash or list is a job lost without a trace). Answers
        warnings: AOF off (a restart loses what was acknowledged since the last snapshot),
        or that the check could not be made (CONFIG refused by an ACL or renamed away, as
        managed services do).
        """
        try:
            with redis_errors():
                pipe = self._client.pipeline(transaction=False)
                pipe.config_get("maxmemory-policy")
                pipe.config_get("appendonly")
                policy_reply, aof_reply = await pipe.execute()
        except ResponseError as exc:
            return [
                f"could not check the Redis configuration (CONFIG GET refused: {exc}); make"
                " sure maxmemory-policy is noeviction and appendonly is yes"
            ]
        policy = _config_value(policy_reply, "maxmemory-policy")
        aof = _config_value(aof_reply, "appendonly")
        warnings: list[str] = []
        if policy is None:
            warnings.append(
                "could not read maxmemory-policy from CONFIG GET; make sure it is noeviction"
            )
        elif policy != "noeviction":
            raise UnsafeBackendError(
                f"Redis maxmemory-policy is {policy!r}: the server may evict job keys and"
                " lose jobs; set maxmemory-policy to noeviction"
            )
        if aof is None:
            warnings.append("could not read appendonly from CONFIG GET; make sure AOF is on")
        elif aof != "yes":
            warnings.append(
                f"AOF is off (appendonly {aof}): a Redis restart loses jobs answered 202"
            )
        return warnings

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        await self._batcher.drain()
        await self._client.aclose()

    # -- plumbing ---------------------------------------------------------------------------

    def _keys_of(self, queue: str) -> QueueKeys:
        keys = self._keys.get(queue)
        if keys is None:
            keys = self._keys[queue] = QueueKeys.of(self._prefix, queue)
        return keys

    async def _eval(self, script: Script, keys: Sequence[str], args: Sequence[Any]) -> Any:
        """Run a script by its SHA, loading the scripts first if the server lost them."""
        try:
            return await self._client.evalsha(script.sha, len(keys), *keys, *args)
        except NoScriptError:
            await self._load_scripts()
            return await self._client.evalsha(script.sha, len(keys), *keys, *args)

    async def _pipeline(self, build: Callable[[Pipeline], None]) -> list[Any]:
        """One round trip of the commands `build` queues (not a transaction).

        redis-py's own script support in pipelines asks SCRIPT EXISTS on every execute (a
        second round trip); we EVALSHA directly and, if the server lost the scripts, load
        them and run the pipeline again. Only when *every* script in it answered NOSCRIPT,
        so none ran; the other commands we pipeline with scripts are idempotent reads or
        SADDs. (If the scripts vanished halfway through, which takes a SCRIPT FLUSH landing
        inside the pipeline, the error is raised instead of running some scripts twice.)
        """
        for attempt in range(2):
            pipe = self._client.pipeline(transaction=False)
            build(pipe)
            scripted = sum(1 for args, _ in pipe.command_stack if args[0] == "EVALSHA")
            results: list[Any] = await pipe.execute(raise_on_error=False)
            lost = sum(1 for r in results if isinstance(r, NoScriptError))
            if attempt == 0 and lost and lost == scripted:
                await self._load_scripts()
                continue
            for result in results:
                if isinstance(result, Exception):
                    raise result
            return results
        raise AssertionError("unreachable")  # pragma: no cover

    async def _load_scripts(self) -> None:
        for script in scripts.ALL:
            sha = await self._client.script_load(script.source)
            if sha != script.sha:  # pragma: no cover - sha1 of the same bytes
                raise RuntimeError(f"script {script.name}: server SHA {sha} != {script.sha}")


def _failure_args(error: JobError, retry_ms: str = "") -> tuple[bytes | str, ...]:
    """FAIL's ARGV[4..7]: error JSON, retry in ms ('' for dead), outcome, error summary."""
    outcome = AttemptOutcome.of(error.kind).value
    return encode_error(error), retry_ms, outcome, error_summary(error)


def _config_value(reply: Any, name: str) -> str | None:
    """One setting from a CONFIG GET reply (a dict, or a flat list on some clients)."""
    if isinstance(reply, list):
        reply = dict(zip(reply[::2], reply[1::2], strict=False))
    if not isinstance(reply, dict):
        return None
    for key, value in reply.items():
        text = key.decode() if isinstance(key, bytes) else str(key)
        if text == name:
            return value.decode() if isinstance(value, bytes) else str(value)
    return None


def _lease_from(raw: RawFields) -> Lease:
    """The lease from a claim script's answer: the job's FIELDS, then its new token."""
    job, token = decode_job(raw), raw[-1]
    if job is None or token is None:
        raise UndecodableJobError("the claimed job has no hash or no token")
    return Lease(job, token.decode())


def _decoded_or_none(raw: RawFields) -> Job | None:
    try:
        return decode_job(raw)
    except UndecodableJobError as exc:
        log.warning("job %r is stored in a form that cannot be read: %s", raw[0], exc)
        return None
