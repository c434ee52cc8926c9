"""Leases on jobs in Redis: claims, renewals, progress and settlements, fenced by tokens."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any, Final

from redis.asyncio.client import Pipeline

from adapters.redis_client import redis_errors
from adapters.redis_cluster import is_cluster
from adapters.redis_queue import calls
from adapters.redis_queue.calls import ScriptCall, ms
from adapters.redis_queue.codec import RawFields, UndecodableJobError
from adapters.redis_queue.core import RedisCore, Unconfirmed, evalsha, lease_from, log
from adapters.redis_queue.keys import QueueKeys
from adapters.redis_queue.permits import ClusterPermits
from adapters.redis_queue.slot_waits import SlotWaits
from domain.jobs import ErrorKind, JobError, JobStatus, Lease
from domain.ports import ClaimRequest, LeaseQueue
from domain.settlement import Ending

# The status SETTLE answers, by its name as the script returns it.
_STATUSES: Final = {s.value.encode(): s for s in JobStatus}


class RedisLeaseQueue(LeaseQueue):
    """Leases on the Redis clock, fenced by a token per attempt.

    Claims hand out jobs in priority order (FIFO within a priority). Expired leases are
    settled by the next claim on their queue, or by `recover` for a queue nobody claims
    from. Settlements made in one event-loop tick go to Redis as one SETTLE call per queue,
    in one round trip.

    A *waiting* claim over several queues BLPOPs their markers together; on Redis Cluster,
    where BLPOP takes the keys of one hash slot, it BLPOPs each slot's markers at once and
    wakes at the first answer (`SlotWaits`).

    With `min_replicas` set on the core, a settlement is answered once that many replicas
    confirmed its round trip; when fewer did in time it raises NotReplicatedError carrying
    the status written on the primary (`settled`). Claims do not wait: a claim lost in a
    failover only hands the job out again, and the fencing token refuses the writes of the
    attempt it started.
    """

    # The longest single BLPOP of a waiting claim. The client's socket timeout must exceed it.
    MAX_BLOCK_SECONDS: Final = 4.0
    # The longest a waiting claimer goes without running the claim script (nor longer than
    # the lease it asks for): it catches what nothing wakes it for (a lease granted since
    # it looked, with a shorter length than its own; a key changed by hand).
    IDLE_LOOK_SECONDS: Final = 30.0
    # Queue sets whose last waiting claim found nothing, at most this many remembered.
    _QUIET_KEPT: Final = 64

    def __init__(self, core: RedisCore) -> None:
        self._core = core
        # Per set of queues: when (event-loop time) a waiting claim must run the claim
        # script again, as the last one that found nothing answered (see `claim`).
        self._quiet: dict[frozenset[str], float] = {}
        # Queue sets whose last wait ended with work (a marker, or jobs the claim behind the
        # wait found): their next wait sends the claim behind it (see `_wait_then_claim`).
        self._arriving: set[frozenset[str]] = set()
        # On Redis Cluster a waiting claim waits per hash slot (see `SlotWaits`).
        self._cluster = is_cluster(core.client)
        # On Redis Cluster with flow limits, their steps around claims, renewals and
        # settlements (see `permits.py`).
        limits = core.cluster_limits
        self._permits = None if limits is None else ClusterPermits(core, limits)
        self._slot_waits = SlotWaits(core.client, self._QUIET_KEPT)

    async def claim(self, request: ClaimRequest) -> Sequence[Lease]:
        """Claims at once; a claim that found nothing waits on the queues' markers.

        A waiting claim that found nothing learns when its queues next change by
        themselves (the earliest due job, lease expiry, deadline or start a rate allows)
        and runs the claim script again only then, or when a marker says something changed
        sooner (a job queued, a queue resumed, an earlier due job or deadline), or after
        `IDLE_LOOK_SECONDS`. Until then the caller's next waiting claims only wait: an idle
        worker makes one BLPOP per `MAX_BLOCK_SECONDS` (or per wait, if shorter), and no
        script. While work arrives, each wait carries its claim (`_wait_then_claim`).
        """
        keys = [self._core.keys(queue) for queue in request.queues]
        if not keys:
            return []
        lease_ms = ms(request.lease_seconds)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + request.wait_seconds
        group = frozenset(request.queues)
        look = min(self.IDLE_LOOK_SECONDS, request.lease_seconds)
        # Forgotten until this claim ends quietly: an error or a cancellation runs the
        # script at the next claim.
        look_at = self._quiet.pop(group, None)
        stop = self._stop_key(request.worker_id, request.queues)
        with redis_errors():
            if look_at is None or request.wait_seconds <= 0 or loop.time() >= look_at:
                leases, look_at = await self._claim_now(
                    keys, request.worker_id, request.limit, lease_ms, look
                )
                if leases or request.wait_seconds <= 0:
                    return leases
            while True:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    if len(self._quiet) >= self._QUIET_KEPT:
                        self._quiet.clear()
                    self._quiet[group] = look_at
                    return []
                # Sleep until work is submitted or a queue resumes (the marker), the next
                # change the queues make by themselves, the worker is asked to stop, or the
                # wait ends.
                block = max(min(remaining, self.MAX_BLOCK_SECONDS, look_at - loop.time()), 0.01)
                # One server only: a cluster waits per slot, and takes its permits around a claim.
                if group in self._arriving and not self._cluster:
                    woken, leases, look_at = await self._wait_then_claim(
                        keys, stop, request, block, lease_ms, look
                    )
                    if woken is not None and woken[0] == stop.encode():
                        await self._hand_back(leases)
                        self._quiet[group] = look_at
                        return []
                    if woken is None and not leases:
                        self._arriving.discard(group)  # quiet again: waits alone
                    if leases:
                        return leases
                    continue
                if self._cluster:
                    woken = await self._slot_waits.wait(
                        request.worker_id, request.queues, keys, block, stop
                    )
                else:
                    woken = await self._core.client.blpop(
                        [*(k.marker for k in keys), stop], timeout=block
                    )
                if woken is not None and woken[0] == stop.encode():
                    self._quiet[group] = look_at
                    return []
                if woken is not None:
                    self._remember_arriving(group)
                elif loop.time() < look_at:
                    continue
                leases, look_at = await self._claim_now(
                    keys, request.worker_id, request.limit, lease_ms, look
                )
                if leases:
                    return leases

    async def stop_waiting(self, worker_id: str, queues: Sequence[str]) -> None:
        if not queues:
            return
        stops = [self._stop_key(worker_id, queues)]
        if self._cluster:
            keys = [self._core.keys(queue) for queue in queues]
            stops = [stop for _, stop in self._slot_waits.groups(worker_id, queues, keys)]

        def build(pipe: Pipeline) -> None:
            for stop in stops:
                pipe.rpush(stop, 1)
                # Gone soon if no claim was waiting to take it.
                pipe.pexpire(stop, ms(self.MAX_BLOCK_SECONDS) * 2)

        with redis_errors():
            await self._core.pipeline(build)

    def _stop_key(self, worker_id: str, queues: Sequence[str]) -> str:
        """The list a waiting claim of `worker_id` also waits on: the one `stop_waiting`
        pushes to. Under the tag of one of the queues, whatever their order."""
        return f"{self._core.keys(min(queues)).base}stop:{worker_id}"

    async def _claim_now(
        self, keys: Sequence[QueueKeys], worker_id: str, limit: int, lease_ms: int, look: float
    ) -> tuple[list[Lease], float]:
        """The leases claimed, and when (event-loop time) to look again if there are none:
        at the queues' next change by themselves, or `look` seconds from now."""
        leases: list[Lease] = []
        wake_in = look
        for queue_keys in keys:
            wanted = limit - len(leases)
            if wanted <= 0:
                break
            if self._permits is not None:
                claimed, wake_ms = await self._permits.claim(
                    queue_keys, limit=wanted, lease_ms=lease_ms, worker_id=worker_id
                )
            else:
                claimed, wake_ms = await self._core.run(
                    self._claim_call(queue_keys, wanted, lease_ms, worker_id)
                )
            leases += await self._leases_of(queue_keys, claimed)
            if wake_ms >= 0:
                wake_in = min(wake_in, wake_ms / 1000)
        return leases, asyncio.get_running_loop().time() + wake_in

    def _claim_call(self, keys: QueueKeys, limit: int, lease_ms: int, worker_id: str) -> ScriptCall:
        core = self._core
        return calls.claim(
            keys,
            limit=limit,
            lease_ms=lease_ms,
            worker_id=worker_id,
            retention=core.retention,
            limits=core.limits,
        )

    async def _leases_of(self, keys: QueueKeys, claimed: Sequence[RawFields]) -> list[Lease]:
        leases: list[Lease] = []
        for raw in claimed:
            try:
                leases.append(lease_from(raw))
            except UndecodableJobError as exc:
                await self._dead_letter(keys, raw, exc)
        return leases

    def _remember_arriving(self, group: frozenset[str]) -> None:
        if len(self._arriving) >= self._QUIET_KEPT:
            self._arriving.clear()
        self._arriving.add(group)

    async def _wait_then_claim(
        self,
        keys: Sequence[QueueKeys],
        stop: str,
        request: ClaimRequest,
        block: float,
        lease_ms: int,
        look: float,
    ) -> tuple[Any, list[Lease], float]:
        """A waiting claim's BLPOP with the claim of its first queue behind it, in one
        pipeline: Redis holds a client's next command until its blocked one answers, so the
        claim runs the moment the wait ends, without a round trip back to this process and
        out again. Answers what the BLPOP popped, the leases, and when to look again.

        Sent only while work is arriving (`_arriving`): the claim runs however the wait ends,
        so an idle worker, whose waits end by running out, waits alone and runs no script.
        A wait ended by `stop_waiting` hands back whatever its claim took.
        """
        first = keys[0]
        call = self._claim_call(first, request.limit, lease_ms, request.worker_id)

        def build(pipe: Pipeline) -> None:
            pipe.blpop([*(k.marker for k in keys), stop], timeout=block)
            evalsha(pipe, call)

        woken, (claimed, wake_ms) = await self._core.pipeline(build)
        leases = await self._leases_of(first, claimed)
        loop = asyncio.get_running_loop()
        look_at = loop.time() + (look if wake_ms < 0 else min(look, wake_ms / 1000))
        wanted = request.limit - len(leases)
        if woken is not None and wanted > 0 and len(keys) > 1 and woken[0] != stop.encode():
            more, later = await self._claim_now(keys[1:], request.worker_id, wanted, lease_ms, look)
            leases += more
            look_at = min(look_at, later)
        return woken, leases, look_at

    async def _hand_back(self, leases: Sequence[Lease]) -> None:
        """Return leases a stopping claimer took, their attempts uncounted. One that cannot
        be returned now lapses, and its job runs again then."""
        if leases:
            await asyncio.gather(
                *(self.settle(lease, Ending.released()) for lease in leases),
                return_exceptions=True,
            )

    async def _dead_letter(self, keys: QueueKeys, raw: RawFields, exc: Exception) -> None:
        """Whatever sits in Redis is data: a job we just claimed but cannot even decode is
        settled here as an invalid job (dead), and nothing in it runs."""
        job_id, token = raw[0], raw[-1]
        log.warning("dead-lettering undecodable job %r: %s", job_id, exc)
        if job_id is None or token is None:  # pragma: no cover - the claim just wrote both
            return
        error = JobError(
            f"stored job cannot be decoded: {exc}", "UndecodableJob", ErrorKind.INVALID
        )
        attempt = calls.attempt(job_id, token, Ending.failed(error, None))
        core = self._core
        settled = await core.run(calls.settle(keys, core.retention, [attempt], core.limits))
        if self._permits is not None and settled[0]:  # its slot, if its type has one
            job_type = self._permits.type_of(raw)
            if job_type is not None:
                await self._permits.release(job_type, job_id.decode(), None)

    async def renew(self, leases: Sequence[Lease], lease_seconds: float) -> set[str]:
        lease_ms = ms(lease_seconds)
        limits = self._core.limits
        if self._permits is not None:
            # First the slots, then the leases: a failure in between holds a slot longer.
            with redis_errors():
                await self._permits.extend(leases, lease_ms)
        return await self._per_queue(
            leases, lambda keys, held: calls.renew(keys, lease_ms, held, limits)
        )

    async def cancel_requested(self, leases: Sequence[Lease]) -> set[str]:
        return await self._per_queue(leases, calls.cancel_requested)

    async def _per_queue(
        self, leases: Sequence[Lease], call: Callable[[QueueKeys, Sequence[Lease]], ScriptCall]
    ) -> set[str]:
        """`call` once per queue of `leases`, all in one pipeline; the job ids answered."""
        if not leases:
            return set()
        by_queue: dict[str, list[Lease]] = defaultdict(list)
        for lease in leases:
            by_queue[lease.job.queue].append(lease)

        def build(pipe: Pipeline) -> None:
            for queue, held in by_queue.items():
                evalsha(pipe, call(self._core.keys(queue), held))

        with redis_errors():
            results = await self._core.pipeline(build)
        return {job_id.decode() for answered in results for job_id in answered}

    async def set_progress(self, lease: Lease, progress: int) -> bool:
        if not 0 <= progress <= 100:
            raise ValueError(f"progress must be 0-100, got {progress}")
        call = calls.set_progress(self._core.keys(lease.job.queue), lease, progress)
        with redis_errors():
            return bool(await self._core.run(call))

    async def settle(self, lease: Lease, ending: Ending) -> JobStatus | None:
        # Raises before anything is written.
        attempt = calls.attempt(lease.job_id, lease.token, ending, self._core.max_result_bytes)
        with redis_errors():
            status = await self._core.settle(lease.job.queue, attempt)
        if isinstance(status, Unconfirmed):
            if isinstance(status.answer, bytes):
                raise status.error(settled=_STATUSES[status.answer])
            status = status.answer  # a stale token: nothing of the attempt was written
        if not isinstance(status, bytes):
            return None
        if self._permits is not None:  # settled: now its slot is free
            await self._permits.release(lease.job.type, lease.job_id, lease.job.queue)
        return _STATUSES[status]

    async def held_by(self, worker_id: str, queues: Sequence[str]) -> Sequence[Lease]:
        if not queues:
            return []
        keys = [self._core.keys(queue) for queue in queues]

        def build(pipe: Pipeline) -> None:
            for k in keys:
                evalsha(pipe, calls.held_by(k, worker_id))

        with redis_errors():
            per_queue = await self._core.pipeline(build)
        leases: list[Lease] = []
        for raw in (raw for held in per_queue for raw in held):
            try:
                leases.append(lease_from(raw))
            except UndecodableJobError as exc:
                # Left to its lease's expiry; the claim that takes it next dead-letters it.
                log.warning("held job %r cannot be decoded: %s", raw[0], exc)
        return leases

    async def recover(self, queues: Sequence[str]) -> int:
        if not queues:
            return 0
        keys = [self._core.keys(queue) for queue in queues]
        retention = self._core.retention

        def build(pipe: Pipeline) -> None:
            for k in keys:
                evalsha(pipe, calls.recover(k, retention, self._core.limits))

        with redis_errors():
            moved = await self._core.pipeline(build)
            # Now and then, forget the queues nothing uses (see registry.py).
            await self._core.registry.maybe_sweep()
        return sum(int(m) for m in moved)
