"""`RedisJobQueue`: the JobQueue port on `redis.asyncio`, one Lua script per move.

Every operation is one round trip (a script call, or a pipeline), except a claim over several
queues (one script call per queue until the limit is filled), the calls that must first find
a job's queue (`requeue`, `cancel`, `situation`: one read, like `get`, then the script),
`queue_stats` and `forget_worker` over every queue (the queue names first) and `list_jobs`
(see `listing.py`). `submit` and `complete` calls made in the same event-loop tick share one
round trip (see `batching.py`). Key layout and scripts: `scripts.py`.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any, Final

import redis.asyncio
from redis.asyncio.client import Pipeline
from redis.exceptions import NoScriptError, RedisError, ResponseError

from adapters.redis_client import redis_errors
from adapters.redis_queue import listing, scripts, submission
from adapters.redis_queue.batching import Batch, TickBatcher
from adapters.redis_queue.codec import (
    FIELDS,
    RawFields,
    UndecodableJobError,
    decode_job,
    encode_error,
    encode_json,
)
from adapters.redis_queue.keys import QueueKeys, queues_key
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

log = logging.getLogger("conveyor.redis_queue")

# What a reclaimed job records: its error, and that error's line in the job's history.
_LEASE_EXPIRED: Final = (encode_error(LEASE_EXPIRED), error_summary(LEASE_EXPIRED))
_DAY: Final = 86400.0


class RedisJobQueue(JobQueue):
    """Jobs in Redis, shared by every process that uses the same server and prefix.

    Semantics follow `InMemoryJobQueue`: leases on the Redis clock fenced by a token, claims
    in priority order (FIFO within a priority), scheduled jobs and failed attempts' retries
    waiting in a delayed set, deadlines enforced on the Redis clock, expired leases
    reclaimed by the next claim on their queue (or by `recover`, for a queue no claimer asks
    for), cancellation (at once while waiting, by request while active), paused queues,
    idempotency keys held for `idempotency_ttl` seconds, and admission checked in the same
    script that stores the jobs. Succeeded, cancelled and expired jobs are kept for
    `result_ttl` seconds, dead ones for `dead_ttl` (None: for good); each job keeps its last
    attempts in its history.

    Every script of one queue works on Redis Cluster (one hash tag per queue), but a
    submission spanning queues or carrying an idempotency key, and a *waiting* claim over
    several queues (it BLPOPs their markers together), need one Redis primary.

    Memory admission reads ``used_memory`` from INFO inside the submitting script, so the
    check and the write are one atomic step; a server that refuses INFO to scripts
    (fakeredis does, an ACL may) cannot be checked, and a policy with `max_memory` then
    refuses every new job rather than admit it unchecked (`verify` warns of it).
    """

    capabilities = Capabilities(
        leases=True,
        shared_across_processes=True,
        blocking_claim=True,
        worker_claims=True,
        batch_claims=True,
        priorities=True,
        idempotency=True,
        scheduling=True,
        deadlines=True,
        pause=True,
        cancel_queued=True,
        cancel_active=True,
        admission=True,
        queue_stats=True,
        worker_presence=True,
    )

    # The longest single BLPOP of a waiting claim: a waiting claimer re-checks for due
    # retries and expired leases at least this often. The client's socket timeout must
    # exceed it.
    MAX_BLOCK_SECONDS: Final = 1.0

    def __init__(
        self,
        client: redis.asyncio.Redis,
        *,
        prefix: str = "conveyor",
        result_ttl: float = _DAY,
        dead_ttl: float | None = 7 * _DAY,
        idempotency_ttl: float = _DAY,
        admission: AdmissionPolicy | None = None,
    ) -> None:
        if not prefix or "{" in prefix or "}" in prefix:
            raise ValueError(f"prefix must be non-empty and hold no braces, got {prefix!r}")
        for name, ttl in (
            ("result_ttl", result_ttl),
            ("dead_ttl", dead_ttl),
            ("idempotency_ttl", idempotency_ttl),
        ):
            if ttl is not None and ttl <= 0:
                raise ValueError(f"{name} must be positive")
        self._client = client
        self._prefix = prefix
        self._result_ttl_ms = _ms(result_ttl)
        self._dead_ttl_ms = 0 if dead_ttl is None else _ms(dead_ttl)  # 0: kept for good
        self._idempotency_ttl_ms = _ms(idempotency_ttl)
        self._admission = admission if admission is not None and admission.enabled else None
        self._queues_key = queues_key(prefix)
        self._keys: dict[str, QueueKeys] = {}
        self._known_queues: set[str] = set()
        self._batcher = TickBatcher(self._run_batches)
        self._closed = False

    # -- writing ----------------------------------------------------------------------------

    async def submit(self, jobs: Sequence[NewJob]) -> Sequence[Submitted]:
        if not jobs:
            return []
        items = submission.items_of(jobs, prefix=self._prefix, keys_of=self._keys_of)
        with redis_errors():
            answer = await self._batcher.submit(scripts.SUBMIT, submission.group_of(items), items)
        self._known_queues.update(item.queue for item in items)
        return submission.answer_of(answer, items, self._admission)

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
                # Sleep until work is submitted or a queue resumes (the marker), a retry or
                # a scheduled job is due or a lease expires, or the wait ends; whichever
                # comes first.
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
                queue_keys.queued,
                (queue_keys.base, wanted, lease_ms, worker_id, *self._maintenance_args()),
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
            scripts.FAIL, keys.active, (keys.base, job_id, token, *self._failure_args(error))
        )

    async def renew(self, leases: Sequence[Lease], lease_seconds: float) -> set[str]:
        if not leases:
            return set()
        lease_ms = max(1, round(lease_seconds * 1000))
        return await self._per_queue(leases, scripts.RENEW, lambda keys: keys.active, lease_ms)

    async def set_progress(self, lease: Lease, progress: int) -> bool:
        if not 0 <= progress <= 100:
            raise ValueError(f"progress must be 0-100, got {progress}")
        keys = self._keys_of(lease.job.queue)
        with redis_errors():
            done = await self._eval(
                scripts.SET_PROGRESS,
                keys.active,
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
                keys.active,
                (keys.base, lease.job_id, lease.token, *self._failure_args(error, retry_ms)),
            )
        return bool(done)

    async def release(self, lease: Lease) -> bool:
        return await self._settle(scripts.RELEASE, lease)

    async def cancelled(self, lease: Lease) -> bool:
        return await self._settle(scripts.CANCELLED, lease)

    async def _settle(self, script: Script, lease: Lease) -> bool:
        keys = self._keys_of(lease.job.queue)
        with redis_errors():
            done = await self._eval(
                script,
                keys.active,
                (keys.base, lease.job_id, lease.token, self._result_ttl_ms),
            )
        return bool(done)

    async def recover(self, queues: Sequence[str]) -> int:
        if not queues:
            return 0
        keys = [self._keys_of(queue) for queue in queues]
        args = self._maintenance_args()

        def build(pipe: Pipeline) -> None:
            for k in keys:
                pipe.evalsha(scripts.RECOVER.sha, 1, k.queued, k.base, *args)

        with redis_errors():
            moved = await self._pipeline(build)
        return sum(int(m) for m in moved)

    async def requeue(self, job_id: str) -> Job:
        answer = await self._on_job(scripts.REQUEUE, job_id)
        if answer[0] != 1:
            raise InvalidTransitionError(job_id, answer[1].decode(), JobStatus.QUEUED)
        return _job_from(job_id, answer[1])

    async def cancel(self, job_id: str) -> Job:
        answer = await self._on_job(scripts.CANCEL, job_id, self._result_ttl_ms)
        if answer[0] != 1:
            raise InvalidTransitionError(job_id, answer[1].decode(), JobStatus.CANCELLED)
        return _job_from(job_id, answer[1])

    async def _on_job(self, script: Script, job_id: str, *args: Any) -> Any:
        """Run `script` on the job's queue. Raises JobNotFoundError when there is no such job
        (the script answers ``{0}``)."""
        with redis_errors():
            queue = await self._queue_of(job_id)
            if queue is None:
                raise JobNotFoundError(job_id)
            keys = self._keys_of(queue)
            answer = await self._eval(script, keys.queued, (keys.base, job_id, *args))
        if answer[0] != 1 and len(answer) < 2:  # gone since we looked
            raise JobNotFoundError(job_id)
        return answer

    async def cancel_requested(self, leases: Sequence[Lease]) -> set[str]:
        if not leases:
            return set()
        return await self._per_queue(leases, scripts.CANCEL_REQUESTED, lambda keys: keys.cancelling)

    async def pause(self, queue: str) -> None:
        keys = self._keys_of(queue)

        def build(pipe: Pipeline) -> None:
            pipe.sadd(self._queues_key, queue)
            pipe.set(keys.paused, 1)

        with redis_errors():
            await self._pipeline(build)
        self._known_queues.add(queue)

    async def resume(self, queue: str) -> None:
        keys = self._keys_of(queue)

        def build(pipe: Pipeline) -> None:
            pipe.sadd(self._queues_key, queue)
            pipe.evalsha(scripts.RESUME.sha, 1, keys.paused, keys.base)

        with redis_errors():
            await self._pipeline(build)
        self._known_queues.add(queue)

    async def heartbeat(self, worker_id: str, queues: Sequence[str], ttl: float) -> None:
        if not queues:
            return
        keys = [self._keys_of(queue) for queue in queues]
        ttl_ms = _ms(ttl)

        def build(pipe: Pipeline) -> None:
            pipe.sadd(self._queues_key, *queues)
            for k in keys:
                pipe.evalsha(scripts.HEARTBEAT.sha, 1, k.workers, k.base, worker_id, ttl_ms)

        with redis_errors():
            await self._pipeline(build)

    async def forget_worker(self, worker_id: str) -> None:
        with redis_errors():
            names = sorted(await self._queues())
            if not names:
                return

            def build(pipe: Pipeline) -> None:
                for queue in names:
                    pipe.zrem(self._keys_of(queue).workers, worker_id)

            await self._pipeline(build)

    async def _run_batches(self, batches: Sequence[Batch]) -> list[list[Any]]:
        """One pipeline for the coalesced submit and complete calls (see `batching.py`)."""

        def build(pipe: Pipeline) -> None:
            for batch in batches:
                if batch.script is scripts.SUBMIT:
                    names, args = submission.script_call(
                        batch.calls,
                        idempotency_ttl_ms=self._idempotency_ttl_ms,
                        admission=self._admission,
                    )
                    queues = {item.queue for items in batch.calls for item in items}
                    pipe.sadd(self._queues_key, *sorted(queues))  # idempotent: safe to resend
                    pipe.evalsha(scripts.SUBMIT.sha, len(names), *names, *args)
                elif batch.script is scripts.COMPLETE:
                    keys = self._keys_of(batch.group)
                    pipe.evalsha(
                        scripts.COMPLETE.sha,
                        1,
                        keys.active,
                        keys.base,
                        self._result_ttl_ms,
                        *(arg for call in batch.calls for arg in call),
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

    async def _queue_of(self, job_id: str) -> str | None:
        """The queue holding job `job_id`, or None."""
        if not is_job_id(job_id):
            return None
        found = await self._read_everywhere(job_id, ("status",))
        return next((queue for queue, (status,) in found if status is not None), None)

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

    async def queue_stats(self, queues: Sequence[str] | None = None) -> Sequence[QueueStats]:
        with redis_errors():
            names = sorted(await self._queues()) if queues is None else list(queues)
            keys = [self._keys_of(queue) for queue in names]
            if not keys:
                return []

            def build(pipe: Pipeline) -> None:
                for k in keys:
                    pipe.evalsha(scripts.QUEUE_STATS.sha, 1, k.queued, k.base)

            answers = await self._pipeline(build)
        return [
            QueueStats(
                name=name,
                counts=dict(zip(JobStatus, (int(c) for c in counts), strict=True)),
                oldest_queued_age=None if oldest < 0 else oldest / 1e6,
                paused=bool(paused),
                workers=int(workers),
            )
            for name, (counts, oldest, paused, workers) in zip(names, answers, strict=True)
        ]

    async def situation(self, job_id: str) -> JobSituation | None:
        with redis_errors():
            queue = await self._queue_of(job_id)
            if queue is None:
                return None
            keys = self._keys_of(queue)
            raw, ahead, paused, workers = await self._eval(
                scripts.SITUATION, keys.queued, (keys.base, job_id)
            )
        job = _decoded_or_none(raw)
        if job is None:
            return None
        return JobSituation(
            job=job,
            ahead=None if ahead < 0 else int(ahead),
            paused=bool(paused),
            workers=int(workers),
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
        that the check could not be made (CONFIG refused by an ACL or renamed away, as
        managed services do), or that the admission policy's memory limit cannot be checked
        (INFO refused: every new job would be refused).
        """
        warnings = await self._memory_warnings()
        try:
            with redis_errors():
                pipe = self._client.pipeline(transaction=False)
                pipe.config_get("maxmemory-policy")
                pipe.config_get("appendonly")
                policy_reply, aof_reply = await pipe.execute()
        except ResponseError as exc:
            return [
                f"could not check the Redis configuration (CONFIG GET refused: {exc}); make"
                " sure maxmemory-policy is noeviction and appendonly is yes",
                *warnings,
            ]
        policy = _config_value(policy_reply, "maxmemory-policy")
        aof = _config_value(aof_reply, "appendonly")
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

    async def _memory_warnings(self) -> list[str]:
        if self._admission is None or self._admission.max_memory is None:
            return []
        try:
            with redis_errors():
                await self._client.info("memory")
        except RedisError as exc:
            return [
                f"the admission limit on memory cannot be checked (INFO refused: {exc}):"
                " every new job will be refused"
            ]
        return []

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

    def _maintenance_args(self) -> tuple[bytes | str | int, ...]:
        """What maintenance needs: the lapsed lease's error and summary, the retentions."""
        return (*_LEASE_EXPIRED, self._result_ttl_ms, self._dead_ttl_ms)

    def _failure_args(self, error: JobError, retry_ms: str = "") -> tuple[bytes | str | int, ...]:
        """FAIL's ARGV[4..9]: error JSON, retry in ms ('' for dead), outcome, error summary,
        the retentions."""
        outcome = AttemptOutcome.of(error.kind).value
        return (
            encode_error(error),
            retry_ms,
            outcome,
            error_summary(error),
            self._result_ttl_ms,
            self._dead_ttl_ms,
        )

    async def _eval(self, script: Script, key: str, args: Sequence[Any]) -> Any:
        """Run a script of one queue by its SHA (`key` routes it), loading the scripts first
        if the server lost them."""
        try:
            return await self._client.evalsha(script.sha, 1, key, *args)
        except NoScriptError:
            await self._load_scripts()
            return await self._client.evalsha(script.sha, 1, key, *args)

    async def _per_queue(
        self,
        leases: Sequence[Lease],
        script: Script,
        key: Callable[[QueueKeys], str],
        *args: int,
    ) -> set[str]:
        """`script` once per queue of `leases`, all in one pipeline: KEYS[1] the queue's `key`,
        ARGV the key base, `args`, then the leases' id and token pairs. The job ids answered."""
        by_queue: dict[str, list[str]] = defaultdict(list)
        for lease in leases:
            by_queue[lease.job.queue] += (lease.job_id, lease.token)

        def build(pipe: Pipeline) -> None:
            for queue, pairs in by_queue.items():
                keys = self._keys_of(queue)
                pipe.evalsha(script.sha, 1, key(keys), keys.base, *args, *pairs)

        with redis_errors():
            results = await self._pipeline(build)
        return {job_id.decode() for answered in results for job_id in answered}

    async def _pipeline(self, build: Callable[[Pipeline], None]) -> list[Any]:
        """One round trip of the commands `build` queues (not a transaction).

        redis-py's own script support in pipelines asks SCRIPT EXISTS on every execute (a
        second round trip); we EVALSHA directly and, if the server lost the scripts, load
        them and run the pipeline again. Only when *every* script in it answered NOSCRIPT,
        so none ran; the other commands we pipeline with scripts are idempotent reads or
        writes (SADD, SET). (If the scripts vanished halfway through, which takes a SCRIPT
        FLUSH landing inside the pipeline, the error is raised instead of running some
        scripts twice.)
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


def _ms(seconds: float) -> int:
    return max(1, round(seconds * 1000))


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


def _job_from(job_id: str, raw: RawFields) -> Job:
    job = decode_job(raw)
    if job is None:  # pragma: no cover - the script just read it
        raise JobNotFoundError(job_id)
    return job


def _decoded_or_none(raw: RawFields) -> Job | None:
    try:
        return decode_job(raw)
    except UndecodableJobError as exc:
        log.warning("job %r is stored in a form that cannot be read: %s", raw[0], exc)
        return None
