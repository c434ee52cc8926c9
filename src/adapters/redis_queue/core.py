"""What every role of the Redis backend shares: the client, the keys, running scripts.

Every operation is one round trip (a script call, or a pipeline), except a claim over several
queues (one script call per queue until the limit is filled), the calls that must first find
a job's queue (`requeue`, `cancel`, `situation`: one read, like `get`, then the script),
`queue_stats` and `forget_worker` over every queue (the queue names first) and `list_jobs`
(see `listing.py`). `submit` and `settle` calls made in the same event-loop tick share one
round trip (see `batching.py`).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import redis.asyncio
from redis.asyncio.client import Pipeline
from redis.exceptions import NoScriptError

from adapters.redis_queue import calls, scripts
from adapters.redis_queue.batching import Batch, TickBatcher
from adapters.redis_queue.calls import Attempt, Retention, ScriptCall, ms
from adapters.redis_queue.codec import RawFields, UndecodableJobError, decode_job
from adapters.redis_queue.keys import QueueKeys, queues_key
from adapters.redis_queue.submission import Item
from domain.jobs import Job, Lease, is_job_id
from domain.ports import AdmissionPolicy

log = logging.getLogger("conveyor.redis_queue")

Build = Callable[[Pipeline], None]


def evalsha(pipe: Pipeline, call: ScriptCall) -> None:
    """Queue `call` on a pipeline (see `RedisCore.pipeline`)."""
    pipe.evalsha(call.script.sha, len(call.keys), *call.keys, *call.args)


class RedisCore:
    """The client, the key prefix and retentions, the keys of each queue, the queues known
    so far, the scripts (loaded again when the server lost them), and the batcher of the
    calls made in one event-loop tick."""

    def __init__(
        self,
        client: redis.asyncio.Redis,
        *,
        prefix: str,
        result_ttl: float,
        dead_ttl: float | None,
        idempotency_ttl: float,
        admission: AdmissionPolicy | None,
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
        self.client = client
        self.prefix = prefix
        self.retention = Retention(ms(result_ttl), 0 if dead_ttl is None else ms(dead_ttl))
        self.idempotency_ttl_ms = ms(idempotency_ttl)
        self.admission = admission if admission is not None and admission.enabled else None
        self.queues_key = queues_key(prefix)
        self.known_queues: set[str] = set()
        self.batcher = TickBatcher(self._run_batches)
        self.closed = False
        self._keys: dict[str, QueueKeys] = {}

    def keys(self, queue: str) -> QueueKeys:
        keys = self._keys.get(queue)
        if keys is None:
            keys = self._keys[queue] = QueueKeys.of(self.prefix, queue)
        return keys

    # -- running scripts --------------------------------------------------------------------

    async def run(self, call: ScriptCall) -> Any:
        """Run one script call by its SHA, loading the scripts first if the server lost
        them."""
        args = (*call.keys, *call.args)
        try:
            return await self.client.evalsha(call.script.sha, len(call.keys), *args)
        except NoScriptError:
            await self._load_scripts()
            return await self.client.evalsha(call.script.sha, len(call.keys), *args)

    async def pipeline(self, build: Build) -> list[Any]:
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
            pipe = self.client.pipeline(transaction=False)
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
            sha = await self.client.script_load(script.source)
            if sha != script.sha:  # pragma: no cover - sha1 of the same bytes
                raise RuntimeError(f"script {script.name}: server SHA {sha} != {script.sha}")

    # -- calls coalesced per event-loop tick ------------------------------------------------

    # Plain functions answering the batcher's coroutine: no coroutine of their own on the
    # hot paths.

    def submit(self, items: Sequence[Item], group: str) -> Awaitable[Any]:
        """SUBMIT's answer to one submission, sent with the others of this tick."""
        return self.batcher.submit(scripts.SUBMIT, group, items)

    def settle(self, queue: str, attempt: Attempt) -> Awaitable[Any]:
        """SETTLE's answer for one attempt, sent with the others of its queue this tick."""
        return self.batcher.submit(scripts.SETTLE, queue, attempt)

    async def _run_batches(self, batches: Sequence[Batch]) -> list[list[Any]]:
        def build(pipe: Pipeline) -> None:
            for batch in batches:
                if batch.script is scripts.SUBMIT:
                    call = calls.submit(
                        batch.calls,
                        idempotency_ttl_ms=self.idempotency_ttl_ms,
                        admission=self.admission,
                    )
                    queues = {item.queue for items in batch.calls for item in items}
                    pipe.sadd(self.queues_key, *sorted(queues))  # idempotent: safe to resend
                    evalsha(pipe, call)
                elif batch.script is scripts.SETTLE:
                    evalsha(pipe, calls.settle(self.keys(batch.group), self.retention, batch.calls))
                else:  # pragma: no cover - only the two above are batched
                    raise AssertionError(batch.script)

        results = await self.pipeline(build)
        return [r for r in results if isinstance(r, list)]  # drop the SADD answers

    # -- finding jobs and queues ------------------------------------------------------------

    async def queues(self) -> set[str]:
        """Every queue used under the prefix."""
        members: set[bytes] = await self.client.smembers(self.queues_key)  # type: ignore[assignment]
        names = {m.decode() for m in members}
        self.known_queues |= names
        return names

    async def queue_of(self, job_id: str) -> str | None:
        """The queue holding job `job_id`, or None."""
        if not is_job_id(job_id):
            return None
        found = await self.read_everywhere(job_id, ("status",))
        return next((queue for queue, (status,) in found if status is not None), None)

    async def read_everywhere(
        self, job_id: str, fields: Sequence[str]
    ) -> list[tuple[str, RawFields]]:
        """`fields` of the job's hash in every queue we know of, by queue name.

        The job's queue is unknown: read it from every queue we know of, and the set of
        known queues in the same round trip; look again only if that set grew.
        """
        searched = sorted(self.known_queues)

        def build(pipe: Pipeline) -> None:
            pipe.smembers(self.queues_key)
            for queue in searched:
                pipe.hmget(self.keys(queue).job(job_id), fields)

        members, *found = await self.pipeline(build)
        self.known_queues |= {m.decode() for m in members}
        unseen = sorted(self.known_queues.difference(searched))
        if unseen:

            def build_more(pipe: Pipeline) -> None:
                for queue in unseen:
                    pipe.hmget(self.keys(queue).job(job_id), fields)

            found += await self.pipeline(build_more)
        return list(zip([*searched, *unseen], found, strict=True))

    async def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        await self.batcher.drain()
        await self.client.aclose()


def lease_from(raw: RawFields) -> Lease:
    """The lease from a script's answer: the job's FIELDS, then its token."""
    job, token = decode_job(raw), raw[-1]
    if job is None or token is None:
        raise UndecodableJobError("the claimed job has no hash or no token")
    return Lease(job, token.decode())


def decoded_or_none(raw: RawFields) -> Job | None:
    """The job from its FIELDS, or None when there is none or it cannot be read (logged)."""
    try:
        return decode_job(raw)
    except UndecodableJobError as exc:
        log.warning("job %r is stored in a form that cannot be read: %s", raw[0], exc)
        return None
