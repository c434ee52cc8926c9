"""What every role of the Redis backend shares: the client, the keys, running scripts.

Every operation is one round trip (a script call, or a pipeline), except a claim over several
queues (one script call per queue until the limit is filled), the calls that must first find
a job's queue (`get`, `requeue`, `cancel`, `situation`: one or two reads whatever the number
of queues, see `registry.py`, then the script), the first submit or pause of a queue this
process has not registered lately (one more, see `registry.py`), `queue_stats` and
`forget_worker` over every queue (the queue names first) and `list_jobs` (see `listing.py`).
`submit` and `settle` calls made in the same event-loop tick share one round trip (see
`batching.py`). On Redis Cluster with flow limits, a claim, and a renewal or settlement of
jobs of a type with a concurrency, also run scripts on the limits' own slot, before or after
the queue's (`permits.py`).

On Redis Cluster that round trip goes primary by primary (`adapters.redis_cluster_pipeline`):
a primary lost fails only the calls whose keys it holds. With `min_replicas` set, it ends
with ``WAIT min_replicas timeout`` on each connection that wrote: a call is answered once
that many replicas of the primaries holding its writes have them, or as `Unconfirmed`.
Claims, renewals and the other writes do not wait: a claim lost in a failover only means
the job is claimed again, and fencing tokens refuse the old holder's writes.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Final

import attrs
import redis.asyncio
from redis.asyncio.client import Pipeline
from redis.exceptions import NoScriptError

from adapters.redis_cluster import is_cluster
from adapters.redis_cluster_pipeline import execute_per_node
from adapters.redis_queue import calls, scripts
from adapters.redis_queue.batching import Batch, TickBatcher
from adapters.redis_queue.calls import Attempt, Retention, ScriptCall, evalsha, ms
from adapters.redis_queue.codec import RawFields, UndecodableJobError, decode_job
from adapters.redis_queue.keys import QueueKeys, finished_channel
from adapters.redis_queue.limits import LimitArgs
from adapters.redis_queue.registry import DEFAULT_GRACE, DEFAULT_SWEEP_INTERVAL, QueueRegistry
from adapters.redis_queue.submission import Item
from adapters.redis_queue.watch import RedisJobWatcher
from domain.errors import NotReplicatedError
from domain.jobs import JobStatus, Lease, is_job_id
from domain.limits import FlowLimits
from domain.ports import AdmissionPolicy

__all__ = ["RedisCore", "Unconfirmed", "evalsha", "lease_from", "log"]

log = logging.getLogger("conveyor.redis_queue")

Build = Callable[[Pipeline], None]

# The queues whose keys this process keeps made (an LRU cache: any name a client sends is
# made once in a while, never kept for good).
KEYS_CACHE: Final = 1024


@attrs.frozen
class Unconfirmed:
    """A script's answer to one call, from a round trip whose WAIT saw fewer replicas than
    required: what the call wrote is on the primary, not confirmed on the replicas."""

    answer: Any
    acknowledged: int
    required: int
    timeout: float  # seconds WAIT waited

    def error(self, settled: JobStatus | None = None) -> NotReplicatedError:
        return NotReplicatedError(self.acknowledged, self.required, self.timeout, settled=settled)


class RedisCore:
    """The client, the key prefix and retentions, the keys of each queue (an LRU cache), the
    registry of queue names, the scripts (loaded again when the server lost them), and the
    batcher of the calls made in one event-loop tick."""

    def __init__(
        self,
        client: redis.asyncio.Redis,
        *,
        prefix: str,
        result_ttl: float,
        dead_ttl: float | None,
        idempotency_ttl: float,
        admission: AdmissionPolicy | None,
        max_queues: int | None = None,
        max_result_bytes: int | None = None,
        sweep_interval: float = DEFAULT_SWEEP_INTERVAL,
        queue_grace: float = DEFAULT_GRACE,
        limits: FlowLimits | None = None,
        min_replicas: int = 0,
        replica_timeout_ms: int = 500,
    ) -> None:
        if min_replicas < 0 or replica_timeout_ms <= 0:
            raise ValueError("min_replicas must be 0 or more and replica_timeout_ms positive")
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
        if max_result_bytes is not None and max_result_bytes < 1:
            raise ValueError("max_result_bytes must be at least 1")
        self.max_result_bytes = max_result_bytes
        # Until when (wall clock, s) submits also read the idempotency keys an older version
        # held prefix-wide: for ever until start-up learns the window (`RedisConnection.
        # verify`); never on a cluster, where they would cross slots.
        self.legacy_idempotency_until = 0.0 if is_cluster(client) else float("inf")
        # Submits write compact job hashes once start-up learned the prefix's layout says so.
        self.compact_jobs = False
        # Replicas that must confirm a submission's or settlement's round trip (0: none),
        # and how long WAIT may wait for them.
        self.min_replicas = min_replicas
        self.replica_timeout_ms = replica_timeout_ms
        self.cluster = is_cluster(client)
        self.flow_limits = limits or FlowLimits()
        every = LimitArgs.of(prefix, self.flow_limits)
        # What a queue's scripts get of the limits. On Redis Cluster the limits' keys live
        # in another slot: the queue's scripts get the names only, and the limits' own
        # scripts run apart, before or after them (`permits.py`, given `cluster_limits`).
        self.limits = every.names_only() if self.cluster else every
        self.cluster_limits = every if self.cluster and self.flow_limits else None
        self.finished_channel = finished_channel(prefix)
        self.batcher = TickBatcher(self._run_batches)
        self.closed = False
        self.keys: Callable[[str], QueueKeys] = functools.lru_cache(maxsize=KEYS_CACHE)(
            functools.partial(QueueKeys.of, prefix)
        )
        self.registry = QueueRegistry(
            self, max_queues=max_queues, sweep_interval=sweep_interval, grace=queue_grace
        )
        self.watcher = RedisJobWatcher(self)

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
        them and run again the scripts that answered NOSCRIPT (they did not run), and only
        those, so that no command runs twice.
        """
        results, _ = await self._pipeline(build, wait=False)
        return results

    async def _pipeline(
        self, build: Build, *, wait: bool, in_place: bool = False
    ) -> tuple[list[Any], list[int] | None]:
        """`pipeline`'s answers and, `wait`: per command, how many replicas WAIT saw confirm
        it (on one server one WAIT closes the round trip, on its connection, so it covers
        every write made before; on a cluster each primary's commands get their own).
        `in_place` (a cluster only): an error is its command's answer, not raised."""
        pipe = self.client.pipeline(transaction=False)
        build(pipe)
        commands = _commands(pipe)
        if self.cluster:
            return await self._per_node(commands, wait=wait, in_place=in_place)
        if wait:
            pipe.wait(self.min_replicas, self.replica_timeout_ms)
        results: list[Any] = await pipe.execute(raise_on_error=False)
        acknowledged = results.pop() if wait else None
        lost = [i for i, r in enumerate(results) if isinstance(r, NoScriptError)]
        if lost:
            # A script that answered NOSCRIPT did not run: run just those, once, after
            # loading. Only some of them are lost when another connection reloaded the
            # scripts while this pipeline ran (a restarted Redis under load); running the
            # whole pipeline again would run the others twice.
            await self._load_scripts()
            again = self.client.pipeline(transaction=False)
            for i in lost:
                args, options = commands[i]
                again.execute_command(*args, **options)
            if wait:  # the scripts run now were not covered by the first WAIT
                again.wait(self.min_replicas, self.replica_timeout_ms)
            answers: list[Any] = await again.execute(raise_on_error=False)
            if wait:
                acknowledged = answers.pop()
            for i, result in zip(lost, answers, strict=True):
                results[i] = result
        for result in results:
            if isinstance(result, Exception):
                raise result
        if isinstance(acknowledged, Exception):
            raise acknowledged
        return results, None if acknowledged is None else [int(acknowledged)] * len(results)

    async def _per_node(
        self, commands: list[tuple[Any, Any]], *, wait: bool, in_place: bool
    ) -> tuple[list[Any], list[int] | None]:
        """`_pipeline` on a cluster: each primary's commands on one of its connections, then,
        with `wait`, WAIT there (`adapters.redis_cluster_pipeline`); the scripts that
        answered NOSCRIPT run again, once, after loading (with a WAIT of their own)."""
        confirm = (self.min_replicas, self.replica_timeout_ms) if wait else None
        results, acknowledged = await execute_per_node(self.client, commands, confirm)
        lost = [i for i, r in enumerate(results) if isinstance(r, NoScriptError)]
        if lost:
            await self._load_scripts()
            again = [commands[i] for i in lost]
            answers, counts = await execute_per_node(self.client, again, confirm)
            for i, result, count in zip(lost, answers, counts, strict=True):
                results[i], acknowledged[i] = result, count
        confirmed: list[int] = []
        for i, count in enumerate(acknowledged):
            if isinstance(count, Exception):  # it ran, but WAIT failed: an error, in place
                results[i], count = count, None
            # None: a command that did not run (or unconfirmed as above), its error in place.
            confirmed.append(self.min_replicas if count is None else count)
        for result in () if in_place else results:
            if isinstance(result, Exception):
                raise result
        return results, None if confirm is None else confirmed

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

    def release(self, job_type: str, job_id: str) -> Awaitable[Any]:
        """On Redis Cluster, RELEASE's answer for the slot of one ended attempt (1: it held
        one), sent with the others of this tick (`permits.py`)."""
        return self.batcher.submit(scripts.RELEASE, "", (job_type, job_id))

    def wake_parked(self, queue: str, job_id: str) -> Awaitable[Any]:
        """On Redis Cluster, WAKE_PARKED on `queue` after the slot of `job_id` was freed,
        sent with the others of its queue this tick (`permits.py`)."""
        return self.batcher.submit(scripts.WAKE_PARKED, queue, job_id)

    def _call_of(self, batch: Batch) -> ScriptCall:
        """The one call of a batch that answers each of its calls in order."""
        if batch.script is scripts.SETTLE:
            return calls.settle(self.keys(batch.group), self.retention, batch.calls, self.limits)
        if batch.script is scripts.RELEASE and self.cluster_limits is not None:
            return calls.release(self.cluster_limits, batch.calls)
        if batch.script is scripts.WAKE_PARKED:
            return calls.wake_parked(self.keys(batch.group), batch.calls)
        raise AssertionError(batch.script)  # pragma: no cover - only these and SUBMIT

    async def _run_batches(self, batches: Sequence[Batch]) -> list[list[Any]]:
        refused = await self._admit_queues(batches)
        # Per batch, one entry per call: where its answer is among the pipeline's (the index
        # of its script's answer, and its place in that answer), or the refusal it gets.
        places: list[list[tuple[int, int] | Exception]] = []
        sends: list[ScriptCall] = []
        submits: set[int] = set()  # the SUBMIT sends, each followed by its REGISTER
        numbered = 0  # submissions so far, as `_admit_queues` numbers them
        for batch in batches:
            if batch.script is not scripts.SUBMIT:
                places.append([(len(sends), n) for n in range(len(batch.calls))])
                sends.append(self._call_of(batch))
                continue
            sent: list[Sequence[Item]] = []
            place: list[tuple[int, int] | Exception] = []
            for items in batch.calls:
                number, numbered = numbered, numbered + 1
                if number in refused:
                    place.append(self.registry.refusal(self.registry.first_new(items)))
                else:
                    place.append((len(sends), len(sent)))
                    sent.append(items)
            places.append(place)
            if sent:
                submits.add(len(sends))
                sends.append(
                    calls.submit(
                        sent, idempotency_ttl_ms=self.idempotency_ttl_ms, admission=self.admission
                    )
                )
                # After the write: its queues are registered once the caller is answered,
                # even if a sweep forgot one in between (see `registry.py`). It always
                # writes, which `min_replicas` relies on: WAIT covers what the server wrote
                # up to this connection's last write, and a repeat under an idempotency key
                # writes no job, yet vouches for the first request's (on Valkey 8, unlike
                # Redis 7.0, a connection that wrote nothing has its WAIT satisfied at once).
                # On a cluster the REGISTER may be on another primary than the queue: there
                # a repeat's WAIT covers the first write on Redis 7.0, not on Valkey 8.
                used = {(item.queue, item.legacy) for items in sent for item in items}
                sends.append(self.registry.register([sorted(used)]))

        def build(pipe: Pipeline) -> None:
            for call in sends:
                evalsha(pipe, call)

        results: list[Any] = []
        counts: list[int] | None = None
        if sends:
            # WAIT closes the round trip (on a cluster, each primary's part of it). On a
            # cluster a primary lost fails only the calls it holds: errors come in place.
            wait = self.min_replicas > 0
            results, counts = await self._pipeline(build, wait=wait, in_place=self.cluster)
        timeout = self.replica_timeout_ms / 1000

        def answer(p: tuple[int, int]) -> Any:
            # A submission depends on its REGISTER too (on a cluster, maybe another primary).
            sent = (p[0], p[0] + 1) if p[0] in submits else (p[0],)
            failed = [results[i] for i in sent if isinstance(results[i], Exception)]
            if failed:
                return failed[0]
            a = results[p[0]][p[1]]
            count = self.min_replicas if counts is None else min(counts[i] for i in sent)
            if count >= self.min_replicas:
                return a
            return Unconfirmed(a, count, self.min_replicas, timeout)

        return [[p if isinstance(p, Exception) else answer(p) for p in place] for place in places]

    async def _admit_queues(self, batches: Sequence[Batch]) -> set[int]:
        """The submissions of these batches whose queues the registry refuses, numbered in
        the order of the batches and their calls (see `registry.py`)."""
        submissions = [
            items for batch in batches if batch.script is scripts.SUBMIT for items in batch.calls
        ]
        if not submissions:
            return set()
        return await self.registry.admit([[item.queue for item in i] for i in submissions])

    # -- finding jobs and queues ------------------------------------------------------------

    async def queues(self) -> set[str]:
        """Every queue registered under the prefix."""
        return await self.registry.names()

    async def queue_of(self, job_id: str) -> str | None:
        """The queue holding job `job_id`, or None."""
        found = await self.find(job_id, ("status",))
        return None if found is None else found[0]

    async def find(self, job_id: str, fields: Sequence[str]) -> tuple[str, RawFields] | None:
        """The queue holding job `job_id` and `fields` of its hash, or None."""
        if not is_job_id(job_id):
            return None
        return await self.registry.find(job_id, fields)

    async def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        await self.watcher.close()
        await self.batcher.drain()
        await self.client.aclose()


def _commands(pipe: Pipeline) -> list[tuple[Any, Any]]:
    """The commands queued on `pipe`, as (args, options), to send again after NOSCRIPT.
    redis-py's cluster pipeline keeps them in its execution strategy, not a command stack."""
    stack = getattr(pipe, "command_stack", None)
    if stack is not None:
        return list(stack)
    queued = pipe._execution_strategy._command_queue  # type: ignore[attr-defined]
    return [(command.args, dict(command.kwargs)) for command in queued]


def lease_from(raw: RawFields) -> Lease:
    """The lease from a script's answer: the job's FIELDS, then its token."""
    job, token = decode_job(raw), raw[-1]
    if job is None or token is None:
        raise UndecodableJobError("the claimed job has no hash or no token")
    return Lease(job, token.decode())
