"""The port contract on a real Redis, plus what only a real server can show.

Each test uses its own key prefix (``test-<uuid>``) and deletes that prefix's keys afterwards,
so a developer's REDIS_URL is never flushed.
"""

from __future__ import annotations

import asyncio
import pickle
import random
import socket
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any, TypeVar

import pytest
import redis.asyncio
from redis.crc import key_slot

from adapters.redis_client import create_redis
from adapters.redis_queue import RedisJobQueue
from domain.errors import QueueUnavailableError, UnsafeBackendError
from domain.job_types import JobContext, JobTypeRegistry
from domain.jobs import AttemptOutcome, ErrorKind, JobError, JobStatus
from domain.ports import JobQuery, JobQueue
from domain.services import JobProcessor, Outcome
from tests.queue_contract import (
    FOREVER,
    QueueContract,
    QueueFactory,
    all_pages,
    claim,
    claim_one,
    new_job,
    scenario,
)

T = TypeVar("T")


class RedisFactory(QueueFactory):
    def __init__(self, url: str, *, result_ttl: float = 86400.0) -> None:
        self.url = url
        self.prefix = f"test-{uuid.uuid4().hex}"
        self.result_ttl = result_ttl

    def __call__(self) -> AbstractAsyncContextManager[JobQueue]:
        return self.open()

    def client(self) -> redis.asyncio.Redis:
        return create_redis(self.url, connect_timeout=2.0, socket_timeout=5.0)

    @asynccontextmanager
    async def open(self) -> AsyncIterator[RedisJobQueue]:
        queue = RedisJobQueue(self.client(), prefix=self.prefix, result_ttl=self.result_ttl)
        try:
            yield queue
        finally:
            await queue.close()
            await self.delete_keys()

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
        assert isinstance(factory, RedisFactory)
        p = factory.prefix
        done, dead, retried, running, waiting = (new_job(n=n) for n in range(5))
        for job in (done, dead, retried, running, waiting):
            await queue.enqueue(job)
        leases = {lease.job_id: lease for lease in await claim(queue, limit=4)}
        assert await queue.complete(leases[done.id], "ok")
        assert await queue.fail(leases[dead.id], JobError("x", "E"), retry_in=None)
        assert await queue.fail(leases[retried.id], JobError("x", "E"), retry_in=FOREVER)
        assert not await queue.complete(leases[done.id], "again")  # counted as stale

        tag = factory.tag()
        assert await factory.keys() == {
            f"{p}:queues",
            *(f"{tag}:job:{job.id}" for job in (done, dead, retried, running, waiting)),
            f"{tag}:ready",
            f"{tag}:active",
            f"{tag}:delayed",
            f"{tag}:marker",
            f"{tag}:tokens",
            f"{tag}:stale",
            *(f"{tag}:index:{s}" for s in ("queued", "active", "succeeded", "failed", "dead")),
        }
        slots = {key_slot(k.encode()) for k in await factory.keys() if k.startswith(tag)}
        assert len(slots) == 1

    @scenario
    async def test_a_succeeded_job_expires_after_result_ttl_and_a_dead_job_is_kept(
        self, queue: JobQueue, factory: QueueFactory
    ) -> None:
        assert isinstance(factory, RedisFactory)
        short_lived = RedisFactory(factory.url, result_ttl=0.5)
        tag = short_lived.tag()
        async with short_lived.open() as short, short_lived.raw() as client:
            done, dead, later = new_job(), new_job(), new_job()
            for job in (done, dead, later):
                await short.enqueue(job)
            first, second = await claim(short, limit=2)
            assert await short.complete(first, {"n": 1})
            assert await short.fail(second, JobError("x", "E"), retry_in=None)
            assert 0 < await client.pttl(f"{tag}:job:{done.id}") <= 500
            assert await client.pttl(f"{tag}:job:{dead.id}") == -1  # the dead-letter set
            await asyncio.sleep(0.7)
            assert await short.get(done.id) is None
            dead_job = await short.get(dead.id)
            assert dead_job is not None
            assert dead_job.status == JobStatus.DEAD
            # The next completion forgets the index entry of the expired result.
            assert await client.zscore(f"{tag}:index:succeeded", done.id) is not None
            assert await short.complete(await claim_one(short), None)
            assert await client.zscore(f"{tag}:index:succeeded", done.id) is None
            assert await client.zcard(f"{tag}:index:succeeded") == 1

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
    async def test_an_id_in_the_ready_list_whose_job_is_gone_is_skipped(
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
            assert await client.llen(f"{factory.tag()}:ready") == 0
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
