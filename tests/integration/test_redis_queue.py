"""The port contract on a real Redis, plus what only a real server can show.

Each test uses its own key prefix (``test-<uuid>``) and deletes that prefix's keys afterwards,
so a developer's REDIS_URL is never flushed.
"""

from __future__ import annotations

import asyncio
import hashlib
import pickle
import random
import socket
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import pytest
import redis.asyncio
from redis.crc import key_slot

from adapters.redis_client import create_redis
from adapters.redis_queue import RedisJobQueue
from adapters.redis_queue.codec import encode_job
from domain.errors import (
    AdmissionRefusedError,
    IdempotencyConflictError,
    QueueUnavailableError,
    UnsafeBackendError,
)
from domain.job_types import JobContext, JobTypeRegistry
from domain.jobs import AttemptOutcome, ErrorKind, JobError, JobStatus, Lease
from domain.ports import AdmissionPolicy, JobQuery, JobQueue, NewJob, QueueLimits, Submitted
from domain.services import JobProcessor, Outcome
from tests.queue_contract import (
    DEFAULTS,
    FOREVER,
    QueueContract,
    QueueFactory,
    QueueOptions,
    all_pages,
    claim,
    claim_one,
    new_job,
    scenario,
    status_of,
)
from tests.queue_contract_lifecycle import LifecycleContract

T = TypeVar("T")
S = JobStatus


class RedisFactory(QueueFactory):
    def __init__(self, url: str, options: QueueOptions = DEFAULTS) -> None:
        self.url = url
        self.prefix = f"test-{uuid.uuid4().hex}"
        self.options = options

    def __call__(self) -> AbstractAsyncContextManager[JobQueue]:
        return self.open()

    def configured(self, options: QueueOptions) -> AbstractAsyncContextManager[JobQueue]:
        return self.open(options)

    def client(self) -> redis.asyncio.Redis:
        return create_redis(self.url, connect_timeout=2.0, socket_timeout=5.0)

    @asynccontextmanager
    async def open(self, options: QueueOptions | None = None) -> AsyncIterator[RedisJobQueue]:
        kwargs = (options or self.options).kwargs()
        queue = RedisJobQueue(self.client(), prefix=self.prefix, **kwargs)
        try:
            yield queue
        finally:
            await queue.close()
            await self.delete_keys()

    async def now(self, queue: JobQueue) -> datetime:
        async with self.raw() as client:
            seconds, micros = await client.time()
        return datetime.fromtimestamp(seconds + micros / 1e6, UTC)

    @asynccontextmanager
    async def raw(self) -> AsyncIterator[redis.asyncio.Redis]:
        """A client of its own, to read or plant keys the way another program would."""
        client = self.client()
        try:
            yield client
        finally:
            await client.aclose()

    def tag(self, queue: str = "default") -> str:
        return f"{{{self.prefix}:{queue}}}"

    async def keys(self) -> set[str]:
        client = self.client()
        try:
            found: set[str] = set()
            for pattern in (f"{{{self.prefix}:*", f"{self.prefix}:*"):
                async for key in client.scan_iter(match=pattern, count=1000):
                    found.add(key.decode())
            return found
        finally:
            await client.aclose()

    async def delete_keys(self) -> None:
        keys = await self.keys()
        client = self.client()
        try:
            for start in range(0, len(keys), 500):
                await client.unlink(*sorted(keys)[start : start + 500])
        finally:
            await client.aclose()

    async def stale_writes(self, queue: JobQueue) -> int | None:
        assert isinstance(queue, RedisJobQueue)
        return await queue.stale_writes()


# Set if anything ever unpickles the planted payload below.
_UNPICKLED: list[str] = []


def _record_unpickling(note: str) -> str:
    _UNPICKLED.append(note)
    return note


class _Booby:
    def __reduce__(self) -> tuple[Callable[[str], str], tuple[str]]:
        return (_record_unpickling, ("the planted pickle was loaded",))


class _Context(JobContext):
    def __init__(self, job_id: str, attempt: int) -> None:
        self._job_id, self._attempt = job_id, attempt

    @property
    def job_id(self) -> str:
        return self._job_id

    @property
    def attempt(self) -> int:
        return self._attempt

    def report_progress(self, percent: int) -> None:
        return None

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)

    async def run_blocking(self, fn: Callable[..., T], *args: Any) -> T:
        return fn(*args)


async def _config(client: redis.asyncio.Redis, name: str) -> str:
    """One setting, as text (redis-py answers CONFIG GET with str keys and values)."""
    reply = await client.config_get(name)
    value = reply.get(name, reply.get(name.encode()))  # type: ignore[call-overload]
    return value.decode() if isinstance(value, bytes) else str(value)


async def dataset_memory(client: redis.asyncio.Redis) -> int:
    """The server's memory for data: what it uses less its own overhead (client buffers,
    script caches, ...)."""
    info = await client.info("memory")
    return int(info["used_memory_dataset"])


async def _script_calls(client: redis.asyncio.Redis) -> int:
    """How many EVALSHA calls the server has run so far."""
    stats = await client.info("commandstats")
    return int(stats.get("cmdstat_evalsha", {}).get("calls", 0))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class TestRedisJobQueueOnRedis(QueueContract):
    @pytest.fixture
    def queue_factory(self, redis_url: str) -> RedisFactory:
        return RedisFactory(redis_url)

    # -- what only Redis shows --------------------------------------------------------------

    @scenario
    async def test_every_key_of_a_queue_shares_its_hash_tag(
        self, queue: JobQueue, factory: QueueFactory
    ) -> None:
        assert isinstance(queue, RedisJobQueue)
        assert isinstance(factory, RedisFactory)
        p = factory.prefix
        now = await factory.now(queue)
        done, dead, retried, running, waiting = (new_job(n=n) for n in range(5))
        doomed = new_job(n=5, deadline=now + timedelta(seconds=FOREVER), now=now)
        later = new_job(n=6, run_at=now + timedelta(seconds=FOREVER), now=now)
        for job in (done, dead, retried, running, waiting, doomed, later):
            await queue.enqueue(job)
        leases = {lease.job_id: lease for lease in await claim(queue, limit=4)}
        assert await queue.complete(leases[done.id], "ok")
        assert await queue.fail(leases[dead.id], JobError("x", "E"), retry_in=None)
        assert await queue.fail(leases[retried.id], JobError("x", "E"), retry_in=FOREVER)
        assert not await queue.complete(leases[done.id], "again")  # counted as stale
        await queue.cancel(running.id)  # active: a cancel request
        await queue.pause("default")
        await queue.heartbeat("w1", ["default"], FOREVER)
        await queue.submit([NewJob(job=new_job(n=7), idempotency_key="k", fingerprint="f")])

        tag = factory.tag()
        jobs = (done, dead, retried, running, waiting, doomed, later)
        statuses = ("scheduled", "queued", "active", "succeeded", "failed", "dead")
        keys = await factory.keys()
        assert {k for k in keys if not k.startswith(tag)} == {
            f"{p}:queues",
            f"{p}:idem:{hashlib.sha256(b'k').hexdigest()}",
        }
        assert {k for k in keys if k.startswith(tag) and ":job:" not in k} == {
            f"{tag}:queued",
            f"{tag}:active",
            f"{tag}:delayed",
            f"{tag}:deadlines",
            f"{tag}:cancelling",
            f"{tag}:marker",
            f"{tag}:paused",
            f"{tag}:seq",
            f"{tag}:tokens",
            f"{tag}:stale",
            f"{tag}:workers",
            *(f"{tag}:index:{s}" for s in statuses),
        }
        assert {f"{tag}:job:{job.id}" for job in jobs} < keys
        slots = {key_slot(k.encode()) for k in keys if k.startswith(tag)}
        assert len(slots) == 1

    @scenario
    async def test_finished_jobs_expire_after_their_retention_and_recover_forgets_them(
        self, queue: JobQueue, factory: QueueFactory
    ) -> None:
        assert isinstance(factory, RedisFactory)
        short_lived = RedisFactory(factory.url, QueueOptions(result_ttl=0.5, dead_ttl=1.0))
        tag = short_lived.tag()
        async with short_lived.open() as short, short_lived.raw() as client:
            done, dead, later = new_job(), new_job(), new_job()
            for job in (done, dead, later):
                await short.enqueue(job)
            first, second = await claim(short, limit=2)
            assert await short.complete(first, {"n": 1})
            assert await short.fail(second, JobError("x", "E"), retry_in=None)
            assert 0 < await client.pttl(f"{tag}:job:{done.id}") <= 500
            assert 500 < await client.pttl(f"{tag}:job:{dead.id}") <= 1000
            assert await client.pttl(f"{tag}:job:{later.id}") == -1  # waiting: kept
            await asyncio.sleep(0.7)
            assert await short.get(done.id) is None
            assert await status_of(short, dead.id) == JobStatus.DEAD
            # Maintenance forgets the index entry of the expired result, not the dead job's.
            assert await client.zscore(f"{tag}:index:succeeded", done.id) is not None
            assert await short.recover(["default"]) == 0
            assert await client.zscore(f"{tag}:index:succeeded", done.id) is None
            assert await client.zscore(f"{tag}:index:dead", dead.id) is not None
            await asyncio.sleep(0.5)
            assert await short.get(dead.id) is None
            await short.recover(["default"])
            assert await client.zcard(f"{tag}:index:dead") == 0
            # A requeued job is kept for good again.
            assert await short.fail(await claim_one(short), JobError("x", "E"), retry_in=None)
            assert await client.pttl(f"{tag}:job:{later.id}") > 0
            await short.requeue(later.id)
            assert await client.pttl(f"{tag}:job:{later.id}") == -1

    @scenario
    async def test_a_dead_job_stored_without_an_expiry_is_forgotten_once_past_dead_ttl(
        self, queue: JobQueue, factory: QueueFactory
    ) -> None:
        assert isinstance(factory, RedisFactory)
        short_lived = RedisFactory(factory.url, QueueOptions(dead_ttl=0.3))
        tag = short_lived.tag()
        async with short_lived.open() as short, short_lived.raw() as client:
            job = new_job()
            await short.enqueue(job)
            assert await short.fail(await claim_one(short), JobError("x", "E"), retry_in=None)
            # As an earlier version left dead jobs: kept for good.
            await client.persist(f"{tag}:job:{job.id}")
            await asyncio.sleep(0.5)
            assert await status_of(short, job.id) == JobStatus.DEAD
            await short.recover(["default"])
            assert await short.get(job.id) is None
            assert await client.zcard(f"{tag}:index:dead") == 0

    @scenario
    async def test_memory_returns_to_its_baseline_once_finished_jobs_are_past_retention(
        self, queue: JobQueue, factory: QueueFactory
    ) -> None:
        assert isinstance(factory, RedisFactory)
        options = QueueOptions(result_ttl=2.0, dead_ttl=2.0, idempotency_ttl=2.0)
        short_lived = RedisFactory(factory.url, options)
        tag = short_lived.tag()
        async with short_lived.open() as short, short_lived.raw() as client:

            async def settle() -> None:
                await asyncio.sleep(2.2)
                await short.recover(["default"])
                await claim(short, wait_seconds=0.05)  # takes the marker, if any

            warm = new_job()
            await short.enqueue(warm)
            assert await short.complete(await claim_one(short), "ok")
            await settle()
            baseline_keys = await short_lived.keys()
            baseline_memory = await dataset_memory(client)

            n = 2000
            now = await short_lived.now(short)
            soon, later = now + timedelta(seconds=0.2), now + timedelta(seconds=FOREVER)
            # Every fifth job is scheduled for later with a deadline before then: it expires.
            jobs = [
                new_job(n=i, run_at=later, deadline=soon, now=now) if i % 5 == 4 else new_job(n=i)
                for i in range(n)
            ]
            await short.submit(
                [
                    NewJob(job=job, idempotency_key=f"key-{i}" if i % 2 else None, fingerprint="f")
                    for i, job in enumerate(jobs)
                ]
            )
            await asyncio.gather(*(short.cancel(job.id) for job in jobs[3::5]))  # queued
            leases = await claim(short, limit=n)
            assert len(leases) == 3 * n // 5

            async def finish(i: int, lease: Lease) -> None:
                if i % 3 == 0:
                    assert await short.complete(lease, {"i": i, "pad": "x" * 200})
                elif i % 3 == 1:
                    assert await short.fail(lease, JobError("boom", "E"), retry_in=None)
                else:
                    await short.cancel(lease.job_id)
                    assert await short.cancelled(lease)

            await asyncio.gather(*(finish(i, lease) for i, lease in enumerate(leases)))
            await asyncio.sleep(0.3)
            await short.recover(["default"])  # the deadlines pass: the rest expire
            finished = {S.SUCCEEDED: n // 5, S.DEAD: n // 5, S.CANCELLED: 2 * n // 5}
            finished[S.EXPIRED] = n // 5
            for status in JobStatus:
                count = await client.zcard(f"{tag}:index:{status.value}")
                assert count == finished.get(status, 0), status
            grown = await dataset_memory(client) - baseline_memory
            assert grown > 1_000_000

            await settle()
            assert await short_lived.keys() == baseline_keys
            for status in JobStatus:
                assert await client.zcard(f"{tag}:index:{status.value}") == 0, status
            # Back to the baseline, give or take what the server keeps for itself (its
            # slow log, for one).
            assert await dataset_memory(client) - baseline_memory < grown / 10

    @scenario
    async def test_a_job_that_cannot_be_decoded_is_dead_lettered_and_nothing_in_it_runs(
        self, queue: JobQueue, factory: QueueFactory
    ) -> None:
        assert isinstance(factory, RedisFactory)
        planted, sound = new_job(), new_job()
        await queue.enqueue(planted)
        await queue.enqueue(sound)
        tag = factory.tag()
        async with factory.raw() as client:  # planting data the way an attacker could
            await client.hset(f"{tag}:job:{planted.id}", "payload", pickle.dumps(_Booby()))

            leases = await claim(queue, limit=10)

            assert [lease.job_id for lease in leases] == [sound.id]
            assert _UNPICKLED == []
            fields = await client.hmget(f"{tag}:job:{planted.id}", ["status", "attempts", "error"])
            assert fields[:2] == [b"dead", b"1"]
            assert b'"kind":"invalid"' in fields[2]
            assert await client.zscore(f"{tag}:index:dead", planted.id) is not None
            assert await client.zscore(f"{tag}:active", planted.id) is None
        assert await queue.get(planted.id) is None  # unreadable, so never shown as a Job
        assert await claim(queue) == []

    @scenario
    async def test_a_job_of_an_unknown_type_is_claimed_as_data_and_the_processor_rejects_it(
        self, queue: JobQueue, factory: QueueFactory
    ) -> None:
        assert isinstance(factory, RedisFactory)
        planted = new_job()
        await queue.enqueue(planted)
        async with factory.raw() as client:
            await client.hset(
                f"{factory.tag()}:job:{planted.id}",
                mapping={"type": "os-system", "payload": '{"cmd":"rm"}'},
            )
        lease = await claim_one(queue)
        assert (lease.job.type, lease.job.payload) == ("os-system", {"cmd": "rm"})

        processor = JobProcessor(queue, JobTypeRegistry([]), random.random)
        outcome = await processor.process(lease, _Context(lease.job_id, lease.attempt))

        assert outcome.outcome == Outcome.DEAD
        stored = await queue.get(planted.id)
        assert stored is not None
        assert stored.status == JobStatus.DEAD
        assert stored.error is not None
        assert stored.error.kind == ErrorKind.INVALID

    @scenario
    async def test_an_id_in_line_whose_job_is_gone_is_skipped(
        self, queue: JobQueue, factory: QueueFactory
    ) -> None:
        assert isinstance(factory, RedisFactory)
        gone, kept = new_job(), new_job()
        await queue.enqueue(gone)
        await queue.enqueue(kept)
        async with factory.raw() as client:
            await client.delete(f"{factory.tag()}:job:{gone.id}")
            leases = await claim(queue, limit=10)
            assert [lease.job_id for lease in leases] == [kept.id]
            assert await client.zcard(f"{factory.tag()}:queued") == 0
            assert await client.exists(f"{factory.tag()}:job:{gone.id}") == 0

    @scenario
    async def test_a_waiting_claim_wakes_when_a_retry_falls_due(
        self, queue: JobQueue, factory: QueueFactory
    ) -> None:
        job = new_job()
        await queue.enqueue(job)
        lease = await claim_one(queue)
        assert await queue.fail(lease, JobError("x", "E"), retry_in=0.3)
        started = time.monotonic()
        again = await claim(queue, wait_seconds=5.0)
        waited = time.monotonic() - started
        assert [(a.job_id, a.attempt) for a in again] == [(job.id, 2)]
        # Woken by the retry's due time, not by the 1 s BLPOP slice or the 5 s wait.
        assert 0.25 <= waited < 0.8, waited

    @scenario
    async def test_a_claimer_in_one_process_wakes_for_a_job_another_process_enqueues(
        self, queue: JobQueue, factory: QueueFactory
    ) -> None:
        assert isinstance(factory, RedisFactory)
        other = RedisJobQueue(factory.client(), prefix=factory.prefix)  # its own connections
        try:
            job = new_job(queue="mail")
            started = time.monotonic()
            waiting = asyncio.create_task(claim(queue, ["mail"], wait_seconds=5.0))
            await asyncio.sleep(0.3)
            await other.enqueue(job)
            leases = await waiting
            assert [lease.job_id for lease in leases] == [job.id]
            assert time.monotonic() - started < 1.0
            # `other` never saw queue "mail" listed when it started, yet finds the job.
            fresh = RedisJobQueue(factory.client(), prefix=factory.prefix)
            try:
                stored = await fresh.get(job.id)
                assert stored is not None
                assert stored.status == JobStatus.ACTIVE
            finally:
                await fresh.close()
        finally:
            await other.close()

    @scenario
    async def test_a_page_filtered_by_type_is_bounded_and_paging_still_reaches_every_match(
        self, queue: JobQueue, factory: QueueFactory
    ) -> None:
        wanted = [new_job(type="email", n=n) for n in range(3)]
        for job in wanted:  # the oldest
            await queue.enqueue(job)
        others = [new_job(n=n) for n in range(2500)]
        for start in range(0, len(others), 250):
            await asyncio.gather(*(queue.enqueue(j) for j in others[start : start + 250]))

        first = await queue.list_jobs(JobQuery(type="email", limit=10))
        assert first.jobs == []  # the scan stopped at its bound, 2000 newer jobs in
        assert first.next_cursor is not None
        pages = await all_pages(queue, JobQuery(type="email", limit=10, cursor=first.next_cursor))
        assert pages == [[job.id for job in reversed(wanted)]]

    @scenario
    async def test_a_corrupt_history_does_not_fail_the_reclaim_of_the_jobs_around_it(
        self, queue: JobQueue, factory: QueueFactory
    ) -> None:
        assert isinstance(factory, RedisFactory)
        planted, sound = new_job(), new_job()
        await queue.enqueue(planted)
        await queue.enqueue(sound)
        await claim(queue, limit=2, lease_seconds=0.2)
        async with factory.raw() as client:
            await client.hset(f"{factory.tag()}:job:{planted.id}", "history", "{not json")
        assert await queue.get(planted.id) is None  # unreadable, so never shown as a Job
        await asyncio.sleep(0.4)
        # One script run reclaims both: the planted history must not abort it.
        assert await queue.recover(["default"]) == 2
        for job in (planted, sound):
            stored = await queue.get(job.id)
            assert stored is not None
            assert stored.status == JobStatus.QUEUED
            assert [r.outcome for r in stored.history] == [AttemptOutcome.WORKER_LOST]

    @scenario
    async def test_a_retained_result_keeps_the_compact_hash_encoding(
        self, queue: JobQueue, factory: QueueFactory
    ) -> None:
        assert isinstance(factory, RedisFactory)
        job = new_job()
        await queue.enqueue(job)
        assert await queue.complete(await claim_one(queue), {"ok": True})
        async with factory.raw() as client:
            key = f"{factory.tag()}:job:{job.id}"
            assert await client.hexists(key, "history") == 0  # the record is implied
            assert await client.object("encoding", key) in (b"listpack", b"ziplist")
        stored = await queue.get(job.id)
        assert stored is not None
        assert [r.outcome for r in stored.history] == [AttemptOutcome.SUCCEEDED]

    @scenario
    async def test_jobs_left_in_the_earlier_layouts_list_are_recovered_first_in_their_order(
        self, queue: JobQueue, factory: QueueFactory
    ) -> None:
        assert isinstance(factory, RedisFactory)
        tag = factory.tag()
        old = [new_job(n=n) for n in range(3)]
        async with factory.raw() as client:  # as the FIFO-list layout stored them
            for job in old:
                await client.hset(f"{tag}:job:{job.id}", items=encode_job(job))
                await client.rpush(f"{tag}:ready", job.id)
            await client.sadd(f"{factory.prefix}:queues", "default")
        fresh = new_job(n=3)
        await queue.enqueue(fresh)
        assert [lease.job_id for lease in await claim(queue, limit=10)] == [fresh.id]
        await queue.release((await queue.held_by("worker-1", ["default"]))[0])
        assert await queue.recover(["default"]) == 0  # moved in line, no status changed
        leases = await claim(queue, limit=10)
        assert [lease.job_id for lease in leases] == [*(job.id for job in old), fresh.id]
        assert leases[0].job.run_at is None  # a hash without the later fields decodes
        async with factory.raw() as client:
            assert await client.exists(f"{tag}:ready") == 0

    @scenario
    async def test_idempotency_keys_are_stored_hashed_and_expire_after_their_retention(
        self, queue: JobQueue, factory: QueueFactory
    ) -> None:
        assert isinstance(factory, RedisFactory)
        options = QueueOptions(idempotency_ttl=5.0)
        async with factory.configured(options) as keyed, factory.raw() as client:
            key = "order {42}: caf\u00e9 *\r\n"
            job = new_job()
            answer = await keyed.submit([NewJob(job=job, idempotency_key=key, fingerprint="a b")])
            assert list(answer) == [Submitted(job.id, created=True)]
            name = f"{factory.prefix}:idem:{hashlib.sha256(key.encode()).hexdigest()}"
            assert await client.get(name) == f"a b {job.id}".encode()
            assert 4000 < await client.pttl(name) <= 5000
            again = await keyed.submit(
                [NewJob(job=new_job(), idempotency_key=key, fingerprint="a b")]
            )
            assert list(again) == [Submitted(job.id, created=False)]
            with pytest.raises(IdempotencyConflictError):
                await keyed.submit([NewJob(job=new_job(), idempotency_key=key, fingerprint="a")])

    @scenario
    async def test_memory_admission_reads_used_memory_in_the_submitting_script(
        self, queue: JobQueue, factory: QueueFactory
    ) -> None:
        assert isinstance(factory, RedisFactory)
        tight = QueueOptions(admission=AdmissionPolicy(max_memory=1, retry_after=2.5))
        async with factory.configured(tight) as full:
            job = new_job()
            with pytest.raises(AdmissionRefusedError) as refusal:
                await full.submit([NewJob(job=job)])
            assert (refusal.value.queue, refusal.value.retry_after) == (None, 2.5)
            assert "bytes of memory, over the limit of 1" in refusal.value.reason
            assert await full.get(job.id) is None
            assert await full.verify() is not None  # INFO answers: no warning about it
            assert not any("memory" in w for w in await full.verify())
        roomy = QueueOptions(admission=AdmissionPolicy(max_memory=2**50))
        async with factory.configured(roomy) as spacious:
            job = new_job()
            assert list(await spacious.submit([NewJob(job=job)])) == [Submitted(job.id, True)]

    @scenario
    async def test_calls_coalesced_in_one_tick_each_get_their_own_answer_or_refusal(
        self, queue: JobQueue, factory: QueueFactory
    ) -> None:
        assert isinstance(factory, RedisFactory)
        policy = AdmissionPolicy(queues={"tight": QueueLimits(max_depth=0)})
        async with factory.configured(QueueOptions(admission=policy)) as limited:
            held = new_job(n=0)
            await limited.submit([NewJob(job=held, idempotency_key="k", fingerprint="1")])
            fine, clash, twin = new_job(n=1), new_job(n=2), new_job(n=4)
            refused = new_job(n=3, queue="tight")
            await limited.enqueue(twin)
            outcomes = await asyncio.gather(
                limited.submit([NewJob(job=fine)]),
                limited.submit([NewJob(job=clash, idempotency_key="k", fingerprint="2")]),
                limited.submit([NewJob(job=refused)]),
                limited.enqueue(twin),
                limited.submit([NewJob(job=new_job(n=5), idempotency_key="k", fingerprint="1")]),
                return_exceptions=True,
            )
            assert outcomes[0] == [Submitted(fine.id, True)]
            assert isinstance(outcomes[1], IdempotencyConflictError)
            assert isinstance(outcomes[2], AdmissionRefusedError)
            assert outcomes[2].queue == "tight"
            assert isinstance(outcomes[3], ValueError)
            assert outcomes[4] == [Submitted(held.id, False)]
            assert await limited.get(fine.id) is not None
            assert await limited.get(clash.id) is None
            assert await limited.get(refused.id) is None

    @scenario
    async def test_a_claimer_waiting_on_a_paused_queue_with_work_in_it_does_not_spin(
        self, queue: JobQueue, factory: QueueFactory
    ) -> None:
        assert isinstance(factory, RedisFactory)
        await queue.pause("default")
        for n in range(5):
            await queue.enqueue(new_job(n=n))
        async with factory.raw() as client:
            before = await _script_calls(client)
            started = time.monotonic()
            assert await claim(queue, wait_seconds=1.5) == []
            assert time.monotonic() - started >= 1.4
            # One claim at first, one after the marker the enqueues left, one per 1 s slice.
            assert await _script_calls(client) - before <= 6

    @scenario
    async def test_cancel_requested_answers_only_for_the_lease_currently_held(
        self, queue: JobQueue, factory: QueueFactory
    ) -> None:
        job = new_job()
        await queue.enqueue(job)
        lease = await claim_one(queue)
        await queue.cancel(job.id)
        stale = Lease(lease.job, lease.token + "-old")
        assert await queue.cancel_requested([stale]) == set()
        assert await queue.cancel_requested([lease, stale]) == {job.id}

    @scenario
    async def test_verify_refuses_a_maxmemory_policy_that_evicts(
        self, queue: JobQueue, factory: QueueFactory
    ) -> None:
        assert isinstance(queue, RedisJobQueue)
        assert isinstance(factory, RedisFactory)
        async with factory.raw() as client:
            previous = await _config(client, "maxmemory-policy")
            await client.config_set("maxmemory-policy", "allkeys-lru")
            try:
                with pytest.raises(UnsafeBackendError, match=r"maxmemory-policy.*allkeys-lru"):
                    await queue.verify()
            finally:
                await client.config_set("maxmemory-policy", previous)
            if previous == "noeviction":
                await queue.verify()  # accepted again (warnings aside)

    @scenario
    async def test_verify_warns_when_aof_is_off(
        self, queue: JobQueue, factory: QueueFactory
    ) -> None:
        assert isinstance(queue, RedisJobQueue)
        assert isinstance(factory, RedisFactory)
        async with factory.raw() as client:
            if await _config(client, "maxmemory-policy") != "noeviction":
                pytest.skip("this server's maxmemory-policy is refused before AOF is looked at")
            previous = await _config(client, "appendonly")
            await client.config_set("appendonly", "no")
            try:
                warnings = await queue.verify()
            finally:
                await client.config_set("appendonly", previous)
            assert warnings == [
                "AOF is off (appendonly no): a Redis restart loses jobs answered 202"
            ]
            if previous == "yes":
                assert await queue.verify() == []

    def test_an_unreachable_server_raises_queue_unavailable_quickly(self) -> None:
        async def main() -> None:
            url = f"redis://127.0.0.1:{_free_port()}/0"
            queue = RedisJobQueue(create_redis(url, connect_timeout=0.5, socket_timeout=1.0))
            started = time.monotonic()
            try:
                for call in (
                    queue.ping(),
                    queue.enqueue(new_job()),
                    queue.get(new_job().id),
                    claim(queue, wait_seconds=1.0),
                    queue.list_jobs(JobQuery()),
                ):
                    with pytest.raises(QueueUnavailableError):
                        await call
            finally:
                await queue.close()
            assert time.monotonic() - started < 5.0

        asyncio.run(main())


class TestRedisJobQueueLifecycleOnRedis(LifecycleContract):
    @pytest.fixture
    def queue_factory(self, redis_url: str) -> RedisFactory:
        return RedisFactory(redis_url)
