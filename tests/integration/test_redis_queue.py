"""What only a real Redis shows about the Redis backend, beyond the contracts
(`test_contracts_redis.py`): its keys, retention and memory, data planted in it, blocking
claims across processes, admission read from INFO, and its configuration checks."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import pickle
import random
import socket
import time
from collections import Counter
from collections.abc import Callable
from datetime import timedelta
from typing import Any, Final, TypeVar

import pytest
import redis.asyncio
from redis.crc import key_slot

from adapters.redis_client import create_redis
from adapters.redis_queue import RedisConnection, redis_backend
from adapters.redis_queue.keys import QueueKeys
from domain.errors import (
    AdmissionRefusedError,
    IdempotencyConflictError,
    QueueUnavailableError,
    UnsafeBackendError,
)
from domain.job_types import JobContext, JobTypeRegistry
from domain.jobs import AttemptOutcome, ErrorKind, JobError, JobStatus, Lease
from domain.ports import (
    AdmissionPolicy,
    JobControl,
    JobQuery,
    LeaseQueue,
    NewJob,
    QueueLimits,
    QueueMonitor,
    QueuePauser,
    Submitted,
)
from domain.processing import JobProcessor
from domain.settlement import Ending
from tests.contracts.base import BackendFactory, BackendOptions, Rig, scenario
from tests.contracts.builders import (
    FOREVER,
    all_pages,
    claim,
    claim_one,
    enqueue,
    new_job,
    status_of,
    stored,
)
from tests.integration.test_contracts_redis import RedisFactory

T = TypeVar("T")
S = JobStatus
BOOM: Final = JobError("x", "E")


@pytest.fixture
def backend_factory(redis_url: str) -> BackendFactory:
    return RedisFactory(redis_url)


def factory_of(rig: Rig) -> RedisFactory:
    assert isinstance(rig.factory, RedisFactory)
    return rig.factory


def connection_of(rig: Rig) -> RedisConnection:
    assert isinstance(rig.backend.connection, RedisConnection)
    return rig.backend.connection


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


class TestRedisBackendOnRedis:
    @scenario(LeaseQueue, JobControl, QueuePauser, QueueMonitor)
    async def test_every_key_of_a_queue_shares_its_hash_tag(self, rig: Rig) -> None:
        factory = factory_of(rig)
        p = factory.prefix
        now = await rig.now()
        done, dead, retried, running, waiting = (new_job(n=n) for n in range(5))
        doomed = new_job(n=5, deadline=now + timedelta(seconds=FOREVER), now=now)
        later = new_job(n=6, run_at=now + timedelta(seconds=FOREVER), now=now)
        for job in (done, dead, retried, running, waiting, doomed, later):
            await enqueue(rig.submitter, job)
        leases = {lease.job_id: lease for lease in await claim(rig.leases, limit=4)}
        assert await rig.leases.settle(leases[done.id], Ending.succeeded("ok")) == S.SUCCEEDED
        assert await rig.leases.settle(leases[dead.id], Ending.failed(BOOM, None)) == S.DEAD
        assert await rig.leases.settle(leases[retried.id], Ending.failed(BOOM, FOREVER)) == (
            S.FAILED
        )
        assert await rig.leases.settle(leases[done.id], Ending.succeeded("again")) is None
        await rig.control.cancel(running.id)  # active: a cancel request
        await rig.pauser.pause("default")
        await rig.monitor.heartbeat("w1", ["default"], FOREVER)
        await rig.submitter.submit([NewJob(job=new_job(n=7), idempotency_key="k", fingerprint="f")])

        tag = factory.tag()
        jobs = (done, dead, retried, running, waiting, doomed, later)
        statuses = ("scheduled", "queued", "active", "succeeded", "failed", "dead")
        keys = await factory.keys()
        # Outside the queue's slot: only the registry of queue names, whose keys share the
        # slot of `P:queues` (the test's ids do not start with the queue's tag, so its queue
        # is also in `legacy`), and the prefix's job layout, which scripts never touch.
        assert {k for k in keys if not k.startswith(tag)} == {
            f"{p}:queues",
            f"{p}:layout",
            *(
                f"{{{p}:queues}}:{name}"
                for name in ("tags", "touched", "generation", "legacy", "workers", "seen")
            ),
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
            f"{tag}:rates",
            f"{tag}:idem:{hashlib.sha256(b'k').hexdigest()}",
            *(f"{tag}:index:{s}" for s in statuses),
        }
        assert {f"{tag}:job:{job.id}" for job in jobs} < keys
        slots = {key_slot(k.encode()) for k in keys if k.startswith(tag)}
        assert len(slots) == 1

    @scenario(LeaseQueue, JobControl, options=BackendOptions(result_ttl=0.5, dead_ttl=1.0))
    async def test_finished_jobs_expire_after_their_retention_and_recover_forgets_them(
        self, rig: Rig
    ) -> None:
        factory = factory_of(rig)
        tag = factory.tag()
        async with factory.raw() as client:
            done, dead, later = new_job(), new_job(), new_job()
            for job in (done, dead, later):
                await enqueue(rig.submitter, job)
            first, second = await claim(rig.leases, limit=2)
            assert await rig.leases.settle(first, Ending.succeeded({"n": 1}))
            assert await rig.leases.settle(second, Ending.failed(BOOM, None))
            assert 0 < await client.pttl(f"{tag}:job:{done.id}") <= 500
            assert 500 < await client.pttl(f"{tag}:job:{dead.id}") <= 1000
            assert await client.pttl(f"{tag}:job:{later.id}") == -1  # waiting: kept
            await asyncio.sleep(0.7)
            assert await rig.store.get(done.id) is None
            assert await status_of(rig.store, dead.id) == S.DEAD
            # Maintenance forgets the index entry of the expired result, not the dead job's.
            assert await client.zscore(f"{tag}:index:succeeded", done.id) is not None
            assert await rig.leases.recover(["default"]) == 0
            assert await client.zscore(f"{tag}:index:succeeded", done.id) is None
            assert await client.zscore(f"{tag}:index:dead", dead.id) is not None
            await asyncio.sleep(0.5)
            assert await rig.store.get(dead.id) is None
            await rig.leases.recover(["default"])
            assert await client.zcard(f"{tag}:index:dead") == 0
            # A requeued job is kept for good again.
            last = await claim_one(rig.leases)
            assert await rig.leases.settle(last, Ending.failed(BOOM, None)) == S.DEAD
            assert await client.pttl(f"{tag}:job:{later.id}") > 0
            await rig.control.requeue(later.id)
            assert await client.pttl(f"{tag}:job:{later.id}") == -1

    @scenario(LeaseQueue, options=BackendOptions(dead_ttl=0.3))
    async def test_a_dead_job_stored_without_an_expiry_is_forgotten_once_past_dead_ttl(
        self, rig: Rig
    ) -> None:
        factory = factory_of(rig)
        tag = factory.tag()
        async with factory.raw() as client:
            job = new_job()
            await enqueue(rig.submitter, job)
            lease = await claim_one(rig.leases)
            assert await rig.leases.settle(lease, Ending.failed(BOOM, None)) == S.DEAD
            # As an earlier version left dead jobs: kept for good.
            await client.persist(f"{tag}:job:{job.id}")
            await asyncio.sleep(0.5)
            assert await status_of(rig.store, job.id) == S.DEAD
            await rig.leases.recover(["default"])
            assert await rig.store.get(job.id) is None
            assert await client.zcard(f"{tag}:index:dead") == 0

    @scenario(
        LeaseQueue,
        JobControl,
        # Long enough that none has passed its retention while the test still counts them
        # on a loaded machine (2 s was not, once), short enough to wait out twice.
        options=BackendOptions(result_ttl=4.0, dead_ttl=4.0, idempotency_ttl=4.0),
    )
    async def test_memory_returns_to_its_baseline_once_finished_jobs_are_past_retention(
        self, rig: Rig
    ) -> None:
        factory = factory_of(rig)
        tag = factory.tag()
        leases_, control = rig.leases, rig.control
        async with factory.raw() as client:

            async def settle() -> None:
                await asyncio.sleep(4.2)
                await leases_.recover(["default"])
                await claim(leases_, wait_seconds=0.05)  # takes the marker, if any

            warm = new_job()
            await enqueue(rig.submitter, warm)
            assert await leases_.settle(await claim_one(leases_), Ending.succeeded("ok"))
            await settle()
            baseline_keys = await factory.keys()
            baseline_memory = await dataset_memory(client)

            n = 2000
            now = await rig.now()
            soon, later = now + timedelta(seconds=0.2), now + timedelta(seconds=FOREVER)
            # Every fifth job is scheduled for later with a deadline before then: it expires.
            jobs = [
                new_job(n=i, run_at=later, deadline=soon, now=now) if i % 5 == 4 else new_job(n=i)
                for i in range(n)
            ]
            await rig.submitter.submit(
                [
                    NewJob(job=job, idempotency_key=f"key-{i}" if i % 2 else None, fingerprint="f")
                    for i, job in enumerate(jobs)
                ]
            )
            await asyncio.gather(*(control.cancel(job.id) for job in jobs[3::5]))  # queued
            leases = await claim(leases_, limit=n)
            assert len(leases) == 3 * n // 5

            async def finish(i: int, lease: Lease) -> None:
                if i % 3 == 0:
                    ending = Ending.succeeded({"i": i, "pad": "x" * 200})
                    assert await leases_.settle(lease, ending) == S.SUCCEEDED
                elif i % 3 == 1:
                    assert await leases_.settle(lease, Ending.failed(BOOM, None)) == S.DEAD
                else:
                    await control.cancel(lease.job_id)
                    assert await leases_.settle(lease, Ending.cancelled()) == S.CANCELLED

            await asyncio.gather(*(finish(i, lease) for i, lease in enumerate(leases)))
            await asyncio.sleep(0.3)
            await leases_.recover(["default"])  # the deadlines pass: the rest expire
            finished = {S.SUCCEEDED: n // 5, S.DEAD: n // 5, S.CANCELLED: 2 * n // 5}
            finished[S.EXPIRED] = n // 5
            for status in JobStatus:
                count = await client.zcard(f"{tag}:index:{status.value}")
                assert count == finished.get(status, 0), status
            grown = await dataset_memory(client) - baseline_memory
            assert grown > 1_000_000

            await settle()
            assert await factory.keys() == baseline_keys
            for status in JobStatus:
                assert await client.zcard(f"{tag}:index:{status.value}") == 0, status
            # Back to the baseline, give or take what the server keeps for itself (its
            # slow log, for one).
            assert await dataset_memory(client) - baseline_memory < grown / 10

    @scenario(LeaseQueue)
    async def test_a_job_that_cannot_be_decoded_is_dead_lettered_and_nothing_in_it_runs(
        self, rig: Rig
    ) -> None:
        factory = factory_of(rig)
        planted, sound = new_job(), new_job()
        await enqueue(rig.submitter, planted)
        await enqueue(rig.submitter, sound)
        tag = factory.tag()
        async with factory.raw() as client:  # planting data the way an attacker could
            await client.hset(f"{tag}:job:{planted.id}", "payload", pickle.dumps(_Booby()))

            leases = await claim(rig.leases, limit=10)

            assert [lease.job_id for lease in leases] == [sound.id]
            assert _UNPICKLED == []
            fields = await client.hmget(f"{tag}:job:{planted.id}", ["status", "attempts", "error"])
            assert fields[:2] == [b"dead", b"1"]
            assert isinstance(fields[2], bytes)
            assert b'"kind":"invalid"' in fields[2]
            assert await client.zscore(f"{tag}:index:dead", planted.id) is not None
            assert await client.zscore(f"{tag}:active", planted.id) is None
        assert await rig.store.get(planted.id) is None  # unreadable, so never shown as a Job
        assert await claim(rig.leases) == []

    @scenario(LeaseQueue)
    async def test_a_job_of_an_unknown_type_is_claimed_as_data_and_the_processor_rejects_it(
        self, rig: Rig
    ) -> None:
        factory = factory_of(rig)
        planted = new_job()
        await enqueue(rig.submitter, planted)
        async with factory.raw() as client:
            await client.hset(
                f"{factory.tag()}:job:{planted.id}",
                mapping={"type": "os-system", "payload": '{"cmd":"rm"}'},
            )
        lease = await claim_one(rig.leases)
        assert (lease.job.type, lease.job.payload) == ("os-system", {"cmd": "rm"})

        processor = JobProcessor(rig.leases, JobTypeRegistry([]), random.random)
        result = await processor.process(lease, _Context(lease.job_id, lease.attempt))

        assert result.status == S.DEAD
        job = await stored(rig.store, planted.id)
        assert job.status == S.DEAD
        assert job.error is not None
        assert job.error.kind == ErrorKind.INVALID

    @scenario(LeaseQueue)
    async def test_an_id_in_line_whose_job_is_gone_is_skipped(self, rig: Rig) -> None:
        factory = factory_of(rig)
        gone, kept = new_job(), new_job()
        await enqueue(rig.submitter, gone)
        await enqueue(rig.submitter, kept)
        async with factory.raw() as client:
            await client.delete(f"{factory.tag()}:job:{gone.id}")
            leases = await claim(rig.leases, limit=10)
            assert [lease.job_id for lease in leases] == [kept.id]
            assert await client.zcard(f"{factory.tag()}:queued") == 0
            assert await client.exists(f"{factory.tag()}:job:{gone.id}") == 0

    @scenario(LeaseQueue)
    async def test_a_waiting_claim_wakes_when_a_retry_falls_due(self, rig: Rig) -> None:
        job = new_job()
        await enqueue(rig.submitter, job)
        lease = await claim_one(rig.leases)
        assert await rig.leases.settle(lease, Ending.failed(BOOM, 0.3)) == S.FAILED
        started = time.monotonic()
        again = await claim(rig.leases, wait_seconds=5.0)
        waited = time.monotonic() - started
        assert [(a.job_id, a.attempt) for a in again] == [(job.id, 2)]
        # Woken by the retry's due time, not by the 1 s BLPOP slice or the 5 s wait.
        assert 0.25 <= waited < 0.8, waited

    @scenario(LeaseQueue)
    async def test_a_claimer_in_one_process_wakes_for_a_job_another_process_enqueues(
        self, rig: Rig
    ) -> None:
        factory = factory_of(rig)
        other = redis_backend(factory.client(), prefix=factory.prefix)  # its own connections
        try:
            job = new_job(queue="mail")
            started = time.monotonic()
            waiting = asyncio.create_task(claim(rig.leases, ["mail"], wait_seconds=5.0))
            await asyncio.sleep(0.3)
            await enqueue(other.submitter, job)
            leases = await waiting
            assert [lease.job_id for lease in leases] == [job.id]
            assert time.monotonic() - started < 1.0
            # `other` never saw queue "mail" listed when it started, yet finds the job.
            fresh = redis_backend(factory.client(), prefix=factory.prefix)
            try:
                assert await status_of(fresh.store, job.id) == S.ACTIVE
            finally:
                await fresh.connection.close()
        finally:
            await other.connection.close()

    @scenario(LeaseQueue)
    async def test_while_work_arrives_a_waiting_claim_sends_its_claim_behind_its_wait(
        self, rig: Rig
    ) -> None:
        core = connection_of(rig).core
        sent = Counter[str]()
        blpop, run, pipeline = core.client.blpop, core.run, core.pipeline

        async def counted_blpop(*args: Any, **kwargs: Any) -> Any:
            sent["plain wait"] += 1
            return await blpop(*args, **kwargs)

        async def counted_run(call: Any) -> Any:
            sent["script claim"] += call.script.name == "claim"  # (submits run others)
            return await run(call)

        async def counted_pipeline(build: Any) -> Any:
            def noted(pipe: Any) -> None:
                build(pipe)
                names = [str(args[0]).upper() for args, _ in pipe.command_stack]
                sent["wait and claim"] += names == ["BLPOP", "EVALSHA"]

            return await pipeline(noted)

        # The counting stands in on this backend's own client and core, closed with the rig.
        core.client.blpop, core.run, core.pipeline = (  # type: ignore[method-assign]
            counted_blpop,
            counted_run,
            counted_pipeline,
        )

        async def claimed_when_enqueued(job: Any) -> list[str]:
            waiting = asyncio.create_task(claim(rig.leases, wait_seconds=5.0))
            await asyncio.sleep(0.3)
            await enqueue(rig.submitter, job)
            return [lease.job_id for lease in await waiting]

        # Idle until now: the wait goes alone, and the claim follows the wake.
        first, second = new_job(n=1), new_job(n=2)
        assert await claimed_when_enqueued(first) == [first.id]
        assert sent == {"plain wait": 1, "script claim": 2}
        # Work arrived: the next wait carries its claim, answered in the wait's round trip.
        sent.clear()
        assert await claimed_when_enqueued(second) == [second.id]
        assert sent == {"script claim": 1, "wait and claim": 1}
        # A wait that ran out with nothing claimed: quiet again, the next wait goes alone.
        sent.clear()
        assert await claim(rig.leases, wait_seconds=0.3) == []
        assert await claim(rig.leases, wait_seconds=0.3) == []
        assert sent["wait and claim"] == 1
        assert sent["plain wait"] == 1

    @scenario(LeaseQueue)
    async def test_a_stop_that_ends_a_wait_hands_back_what_the_claim_behind_it_took(
        self, rig: Rig
    ) -> None:
        first, second = new_job(n=1), new_job(n=2)
        waiting = asyncio.create_task(claim(rig.leases, wait_seconds=5.0, worker_id="w1"))
        await asyncio.sleep(0.3)
        await enqueue(rig.submitter, first)
        [lease] = await waiting  # woken by work: the next wait carries a claim
        await rig.leases.settle(lease, Ending.succeeded(None))
        # Asked to stop with nothing queued: the wait ends at once, and the claimer does not
        # look at the queue before its next wait (it looked just now).
        await rig.leases.stop_waiting("w1", ["default"])
        assert await claim(rig.leases, wait_seconds=5.0, worker_id="w1") == []
        # A job queued with no wake left for it (its marker taken), and a stop already asked
        # for: the wait ends at once on the stop, and the claim behind it finds the job.
        await enqueue(rig.submitter, second)
        async with factory_of(rig).raw() as client:
            await client.delete(connection_of(rig).core.keys("default").marker)
        await rig.leases.stop_waiting("w1", ["default"])
        assert await claim(rig.leases, wait_seconds=5.0, worker_id="w1") == []
        back = await stored(rig.store, second.id)
        assert (back.status, back.attempts) == (S.QUEUED, 0)
        assert [lease.job_id for lease in await claim(rig.leases)] == [second.id]

    @scenario()
    async def test_a_page_filtered_by_type_is_bounded_and_paging_still_reaches_every_match(
        self, rig: Rig
    ) -> None:
        wanted = [new_job(type="email", n=n) for n in range(3)]
        for job in wanted:  # the oldest
            await enqueue(rig.submitter, job)
        others = [new_job(n=n) for n in range(2500)]
        for start in range(0, len(others), 250):
            batch = others[start : start + 250]
            await asyncio.gather(*(enqueue(rig.submitter, j) for j in batch))

        first = await rig.store.list_jobs(JobQuery(type="email", limit=10))
        assert first.jobs == []  # the scan stopped at its bound, 2000 newer jobs in
        assert first.next_cursor is not None
        query = JobQuery(type="email", limit=10, cursor=first.next_cursor)
        assert await all_pages(rig.store, query) == [[job.id for job in reversed(wanted)]]

    @scenario(LeaseQueue)
    async def test_a_corrupt_history_does_not_fail_the_reclaim_of_the_jobs_around_it(
        self, rig: Rig
    ) -> None:
        factory = factory_of(rig)
        planted, sound = new_job(), new_job()
        await enqueue(rig.submitter, planted)
        await enqueue(rig.submitter, sound)
        await claim(rig.leases, limit=2, lease_seconds=0.2)
        async with factory.raw() as client:
            await client.hset(f"{factory.tag()}:job:{planted.id}", "history", "{not json")
        assert await rig.store.get(planted.id) is None  # unreadable, so never shown as a Job
        await asyncio.sleep(0.4)
        # One script run reclaims both: the planted history must not abort it.
        assert await rig.leases.recover(["default"]) == 2
        for job in (planted, sound):
            found = await stored(rig.store, job.id)
            assert found.status == S.QUEUED
            assert [r.outcome for r in found.history] == [AttemptOutcome.WORKER_LOST]

    @scenario(LeaseQueue)
    async def test_a_retained_result_keeps_the_compact_hash_encoding(self, rig: Rig) -> None:
        factory = factory_of(rig)
        job = new_job()
        await enqueue(rig.submitter, job)
        lease = await claim_one(rig.leases)
        assert await rig.leases.settle(lease, Ending.succeeded({"ok": True})) == S.SUCCEEDED
        async with factory.raw() as client:
            key = f"{factory.tag()}:job:{job.id}"
            assert await client.hexists(key, "history") == 0  # the record is implied
            assert await client.object("encoding", key) in (b"listpack", b"ziplist")
        found = await stored(rig.store, job.id)
        assert [r.outcome for r in found.history] == [AttemptOutcome.SUCCEEDED]

    @scenario(LeaseQueue, JobControl)
    async def test_a_new_prefix_stores_job_hashes_without_what_their_key_says(
        self, rig: Rig
    ) -> None:
        factory = factory_of(rig)
        async with factory.raw() as client:
            assert await client.get(f"{factory.prefix}:layout") == b"compact"
        waiting, taken, dropped = new_job(n=0), new_job(n=1), new_job(n=2, priority=3)
        for job in (waiting, taken, dropped):
            await enqueue(rig.submitter, job)
        async with factory.raw() as client:
            fields = await client.hgetall(f"{factory.tag()}:job:{waiting.id}")
            prioritised = await client.hgetall(f"{factory.tag()}:job:{dropped.id}")
        # No id, no queue (the key says both), no priority or attempts of 0.
        assert set(fields) == {
            b"status",
            b"type",
            b"payload",
            b"max_attempts",
            b"timeout",
            b"created_at",
        }
        assert prioritised[b"priority"] == b"3"
        # Every reader has them back: a GET, a listing, a job's situation, a claim, a cancel
        # and a requeue.
        assert await stored(rig.store, waiting.id) == waiting
        page = await rig.store.list_jobs(JobQuery(status=S.QUEUED))
        assert {(j.id, j.queue) for j in page.jobs} == {
            (job.id, "default") for job in (waiting, taken, dropped)
        }
        situation = await rig.store.situation(waiting.id)
        assert situation is not None
        assert situation.job == waiting
        lease = await claim_one(rig.leases)
        assert (lease.job.id, lease.job.queue) == (dropped.id, "default")
        cancelled = await rig.control.cancel(taken.id)
        assert (cancelled.id, cancelled.queue, cancelled.status) == (
            taken.id,
            "default",
            S.CANCELLED,
        )
        requeued = await rig.control.requeue(taken.id)
        assert (requeued.id, requeued.queue, requeued.status) == (taken.id, "default", S.QUEUED)
        lease = await claim_one(rig.leases)
        assert (lease.job.id, lease.job.queue, lease.job.attempts) == (waiting.id, "default", 1)

    @scenario()
    async def test_an_unreadable_compact_hash_is_reported_by_the_id_its_key_says(
        self, rig: Rig
    ) -> None:
        factory = factory_of(rig)
        job = new_job()
        await enqueue(rig.submitter, job)
        async with factory.raw() as client:
            await client.hset(f"{factory.tag()}:job:{job.id}", "payload", "{not json")
        said: list[str] = []
        handler = logging.Handler()
        handler.emit = lambda record: said.append(record.getMessage())  # type: ignore[method-assign]
        logger = logging.getLogger("conveyor.redis_queue")
        logger.addHandler(handler)
        try:
            assert await rig.store.get(job.id) is None
        finally:
            logger.removeHandler(handler)
        [line] = [line for line in said if "cannot be read" in line]
        assert line.startswith(f"job {job.id!r} is stored in a form that cannot be read: ")

    @scenario(LeaseQueue)
    async def test_a_prefix_in_use_keeps_full_job_hashes_until_its_layout_says_compact(
        self, rig: Rig
    ) -> None:
        factory = factory_of(rig)
        first = new_job(n=0)
        await enqueue(rig.submitter, first)
        # As on a prefix an older version used: queues, and no layout said.
        async with factory.raw() as client:
            await client.delete(f"{factory.prefix}:layout")
        async with factory.open() as upgraded:
            full = new_job(n=1)
            await enqueue(upgraded.submitter, full)
            async with factory.raw() as client:
                assert await client.get(f"{factory.prefix}:layout") == b"full"
                fields = await client.hgetall(f"{factory.tag()}:job:{full.id}")
            # Every start says so, with what to do once the upgrade is over.
            said = [w for w in await upgraded.connection.verify() if "full layout" in w]
            assert len(said) == 1
            assert f"SET {factory.prefix}:layout compact" in said[0]
            # What a version before the compact layout needs to read the job.
            assert {b"id", b"queue", b"type", b"status", b"payload"} <= set(fields)
            assert {b"max_attempts", b"timeout", b"created_at"} <= set(fields)
            assert (fields[b"id"], fields[b"queue"]) == (full.id.encode(), b"default")
            # Once every process runs a version that reads it, an operator says compact.
            async with factory.raw() as client:
                await client.set(f"{factory.prefix}:layout", "compact")
            async with factory.open() as switched:
                compact = new_job(n=2)
                await enqueue(switched.submitter, compact)
                async with factory.raw() as client:
                    assert await client.hexists(f"{factory.tag()}:job:{compact.id}", "id") == 0
                assert not [w for w in await switched.connection.verify() if "layout" in w]
                # Hashes of both layouts, in one queue, read and claimed alike.
                for job in (first, full, compact):
                    assert await stored(switched.store, job.id) == job
                assert switched.leases is not None
                claimed = await claim(switched.leases, limit=3)
                assert {(lease.job.id, lease.job.queue) for lease in claimed} == {
                    (job.id, "default") for job in (first, full, compact)
                }

    @scenario(options=BackendOptions(idempotency_ttl=5.0))
    async def test_idempotency_keys_are_stored_hashed_and_expire_after_their_retention(
        self, rig: Rig
    ) -> None:
        factory = factory_of(rig)
        async with factory.raw() as client:
            key = "order {42}: caf\u00e9 *\r\n"
            job = new_job()
            first = NewJob(job=job, idempotency_key=key, fingerprint="a b")
            assert list(await rig.submitter.submit([first])) == [Submitted(job.id, created=True)]
            name = f"{factory.tag()}:idem:{hashlib.sha256(key.encode()).hexdigest()}"
            assert await client.get(name) == f"a b {job.id}".encode()
            assert 4000 < await client.pttl(name) <= 5000
            again = NewJob(job=new_job(), idempotency_key=key, fingerprint="a b")
            assert list(await rig.submitter.submit([again])) == [Submitted(job.id, created=False)]
            other = NewJob(job=new_job(), idempotency_key=key, fingerprint="a")
            with pytest.raises(IdempotencyConflictError):
                await rig.submitter.submit([other])

    @scenario()
    async def test_older_prefix_wide_keys_are_read_only_while_one_may_still_live(
        self, rig: Rig
    ) -> None:
        factory = factory_of(rig)
        digest = hashlib.sha256(b"order-9").hexdigest()
        async with factory.raw() as client:
            await client.set(f"{factory.prefix}:idem:{digest}", "fp 0123456789abcdef", px=5000)
        # The first process to start on a prefix nobody used: no older key can be there.
        await rig.backend.connection.verify()
        async with factory.raw() as client:
            until = int(_text(await client.get(f"{factory.prefix}:idem-legacy-until")))
        assert until <= time.time_ns() // 1_000_000
        fresh = NewJob(job=new_job(), idempotency_key="order-9", fingerprint="fp")
        assert list(await rig.submitter.submit([fresh])) == [Submitted(fresh.job.id, True)]
        # A prefix in use when this version first starts: read for twice the retention.
        async with factory.raw() as client:
            await client.delete(f"{factory.prefix}:idem-legacy-until")
        async with factory.open(BackendOptions(idempotency_ttl=60.0)) as upgraded:
            await upgraded.connection.verify()
            async with factory.raw() as client:
                until = int(_text(await client.get(f"{factory.prefix}:idem-legacy-until")))
            assert until >= time.time_ns() // 1_000_000 + 110_000
            repeat = NewJob(job=new_job(queue="other"), idempotency_key="order-9", fingerprint="fp")
            assert list(await upgraded.submitter.submit([repeat])) == [
                Submitted("0123456789abcdef", created=False)
            ]

    @scenario()
    async def test_an_idempotency_key_an_older_version_held_prefix_wide_still_answers(
        self, rig: Rig
    ) -> None:
        factory = factory_of(rig)
        digest = hashlib.sha256(b"order-7").hexdigest()
        async with factory.raw() as client:
            # As an older Conveyor wrote it: for every queue of the prefix.
            await client.set(f"{factory.prefix}:idem:{digest}", "fp 0123456789abcdef", px=5000)
        for queue in ("default", "other"):
            repeat = NewJob(job=new_job(queue=queue), idempotency_key="order-7", fingerprint="fp")
            assert list(await rig.submitter.submit([repeat])) == [
                Submitted("0123456789abcdef", created=False)
            ]
        other = NewJob(job=new_job(), idempotency_key="order-7", fingerprint="another")
        with pytest.raises(IdempotencyConflictError):
            await rig.submitter.submit([other])
        # A new key is held per queue: the same key on two queues is two keys.
        first, second = new_job(queue="a"), new_job(queue="b")
        for job in (first, second):
            new = NewJob(job=job, idempotency_key="order-8", fingerprint="fp")
            assert list(await rig.submitter.submit([new])) == [Submitted(job.id, created=True)]

    @scenario(options=BackendOptions(admission=AdmissionPolicy(max_memory=1, retry_after=2.5)))
    async def test_memory_admission_reads_used_memory_in_the_submitting_script(
        self, rig: Rig
    ) -> None:
        job = new_job()
        with pytest.raises(AdmissionRefusedError) as refusal:
            await rig.submitter.submit([NewJob(job=job)])
        assert (refusal.value.queue, refusal.value.retry_after) == (None, 2.5)
        assert "bytes of memory, over the limit of 1" in refusal.value.reason
        assert await rig.store.get(job.id) is None
        # INFO answers: no warning about it.
        assert not any("memory" in w for w in await rig.backend.connection.verify())
        roomy = BackendOptions(admission=AdmissionPolicy(max_memory=2**50))
        async with factory_of(rig).open(roomy) as spacious:
            job = new_job()
            assert list(await spacious.submitter.submit([NewJob(job=job)])) == [
                Submitted(job.id, True)
            ]

    @scenario(
        options=BackendOptions(
            admission=AdmissionPolicy(queues={"tight": QueueLimits(max_depth=0)})
        )
    )
    async def test_calls_coalesced_in_one_tick_each_get_their_own_answer_or_refusal(
        self, rig: Rig
    ) -> None:
        submitter = rig.submitter
        held = new_job(n=0)
        await submitter.submit([NewJob(job=held, idempotency_key="k", fingerprint="1")])
        fine, clash, twin = new_job(n=1), new_job(n=2), new_job(n=4)
        refused = new_job(n=3, queue="tight")
        await enqueue(submitter, twin)
        outcomes = await asyncio.gather(
            submitter.submit([NewJob(job=fine)]),
            submitter.submit([NewJob(job=clash, idempotency_key="k", fingerprint="2")]),
            submitter.submit([NewJob(job=refused)]),
            enqueue(submitter, twin),
            submitter.submit([NewJob(job=new_job(n=5), idempotency_key="k", fingerprint="1")]),
            return_exceptions=True,
        )
        assert outcomes[0] == [Submitted(fine.id, True)]
        assert isinstance(outcomes[1], IdempotencyConflictError)
        assert isinstance(outcomes[2], AdmissionRefusedError)
        assert outcomes[2].queue == "tight"
        assert isinstance(outcomes[3], ValueError)
        assert outcomes[4] == [Submitted(held.id, False)]
        assert await rig.store.get(fine.id) is not None
        assert await rig.store.get(clash.id) is None
        assert await rig.store.get(refused.id) is None

    @scenario(LeaseQueue, QueuePauser)
    async def test_a_claimer_waiting_on_a_paused_queue_with_work_in_it_does_not_spin(
        self, rig: Rig
    ) -> None:
        await rig.pauser.pause("default")
        for n in range(5):
            await enqueue(rig.submitter, new_job(n=n))
        async with factory_of(rig).raw() as client:
            before = await _script_calls(client)
            started = time.monotonic()
            assert await claim(rig.leases, wait_seconds=1.5) == []
            assert time.monotonic() - started >= 1.4
            # One claim at first, one after the marker the enqueues left, one per 1 s slice.
            assert await _script_calls(client) - before <= 6

    @scenario(LeaseQueue, JobControl)
    async def test_cancel_requested_answers_only_for_the_lease_currently_held(
        self, rig: Rig
    ) -> None:
        job = new_job()
        await enqueue(rig.submitter, job)
        lease = await claim_one(rig.leases)
        await rig.control.cancel(job.id)
        stale = Lease(lease.job, lease.token + "-old")
        assert await rig.leases.cancel_requested([stale]) == set()
        assert await rig.leases.cancel_requested([lease, stale]) == {job.id}

    @scenario(LeaseQueue)
    async def test_settlements_of_one_tick_run_one_script_call_per_queue(self, rig: Rig) -> None:
        for n in range(30):
            await enqueue(rig.submitter, new_job(n=n, queue="mail" if n % 2 else "sms"))
        leases = [
            *await claim(rig.leases, ["mail"], limit=15),
            *await claim(rig.leases, ["sms"], limit=15),
        ]
        async with factory_of(rig).raw() as client:
            before = await _script_calls(client)
            endings = [Ending.succeeded(n) if n % 4 else Ending.released() for n in range(30)]
            await asyncio.gather(
                *(rig.leases.settle(lease, e) for lease, e in zip(leases, endings, strict=True))
            )
            assert await _script_calls(client) - before == 2

    @scenario()
    async def test_verify_refuses_a_maxmemory_policy_that_evicts(self, rig: Rig) -> None:
        connection = connection_of(rig)
        async with factory_of(rig).raw() as client:
            previous = await _config(client, "maxmemory-policy")
            await client.config_set("maxmemory-policy", "allkeys-lru")
            try:
                with pytest.raises(UnsafeBackendError, match=r"maxmemory-policy.*allkeys-lru"):
                    await connection.verify()
            finally:
                await client.config_set("maxmemory-policy", previous)
            if previous == "noeviction":
                await connection.verify()  # accepted again (warnings aside)

    @scenario()
    async def test_verify_warns_when_aof_is_off(self, rig: Rig) -> None:
        connection = connection_of(rig)
        async with factory_of(rig).raw() as client:
            if await _config(client, "maxmemory-policy") != "noeviction":
                pytest.skip("this server's maxmemory-policy is refused before AOF is looked at")
            previous = await _config(client, "appendonly")
            await client.config_set("appendonly", "no")
            try:
                warnings = await connection.verify()
            finally:
                await client.config_set("appendonly", previous)
            assert warnings == [
                "AOF is off (appendonly no): a Redis restart loses jobs answered 202"
            ]
            if previous == "yes":
                assert await connection.verify() == []

    def test_an_unreachable_server_raises_queue_unavailable_quickly(self) -> None:
        async def main() -> None:
            url = f"redis://127.0.0.1:{_free_port()}/0"
            backend = redis_backend(create_redis(url, connect_timeout=0.5, socket_timeout=1.0))
            assert backend.leases is not None
            started = time.monotonic()
            try:
                for call in (
                    backend.connection.ping(),
                    enqueue(backend.submitter, new_job()),
                    backend.store.get(new_job().id),
                    claim(backend.leases, wait_seconds=1.0),
                    backend.store.list_jobs(JobQuery()),
                ):
                    with pytest.raises(QueueUnavailableError):
                        await call
            finally:
                await backend.connection.close()
            assert time.monotonic() - started < 5.0

        asyncio.run(main())


def _text(value: bytes | str | None) -> str:
    assert value is not None, "the key is not there"
    return value.decode() if isinstance(value, bytes) else value


def test_a_user_whose_acl_rule_lacks_hgetall_still_claims_and_cancels(redis_url: str) -> None:
    """A job's hash is read with one HGETALL (`lua/lib/fields.lua`). The ACL rule of
    "Deploying safely" grants it, but a deployment that set up its user by an older rule
    may not: its scripts then look each field up, as every version before did, instead of
    failing every claim."""

    async def run() -> None:
        admin = create_redis(redis_url, connect_timeout=2.0, socket_timeout=10.0)
        user, password = f"no-hgetall-{random.randrange(10**9)}", "pw-for-tests"
        await admin.acl_setuser(
            user,
            enabled=True,
            passwords=[f"+{password}"],
            keys=["*"],
            channels=["*"],
            commands=["+@all", "-hgetall"],
        )
        scheme, rest = redis_url.split("://", 1)
        client = create_redis(
            f"{scheme}://{user}:{password}@{rest.split('@')[-1]}",
            connect_timeout=2.0,
            socket_timeout=10.0,
        )
        backend = redis_backend(client, prefix=f"acl-{random.randrange(10**9)}")
        try:
            with pytest.raises(redis.exceptions.NoPermissionError):
                await client.hgetall("anything")  # the user is refused it
            first, second = new_job(n=1), new_job(n=2)
            for job in (first, second):
                await enqueue(backend.submitter, job)
            assert backend.leases is not None
            lease = await claim_one(backend.leases)
            assert lease.job.id == first.id
            assert (lease.job.type, lease.job.payload, lease.job.queue) == (
                first.type,
                first.payload,
                first.queue,
            )
            assert (lease.job.status, lease.job.attempts) == (S.ACTIVE, 1)
            assert backend.control is not None
            cancelled = await backend.control.cancel(second.id)
            assert (cancelled.id, cancelled.status) == (second.id, S.CANCELLED)
        finally:
            await client.aclose()
            await admin.acl_deluser(user)
            await admin.aclose()

    asyncio.run(run())


def test_active_and_its_index_are_skiplists_whatever_their_size(redis_url: str) -> None:
    """Every job enters `active` and its index and leaves them again. Redis keeps a zset of up
    to 128 entries as a listpack, where each ZADD and ZREM scans it whole; the claim makes
    both skiplists as it creates them (`zadd_churning` in `lua/lib/batch.lua`), and leaves
    nothing else in them."""

    async def run() -> None:
        client = create_redis(redis_url, connect_timeout=2.0, socket_timeout=10.0)
        prefix = f"skiplist-{random.randrange(10**9)}"
        backend = redis_backend(client, prefix=prefix)
        keys = QueueKeys.of(prefix, "default")
        try:
            job = new_job()
            await enqueue(backend.submitter, job)
            assert backend.leases is not None
            await claim_one(backend.leases)
            for key in (keys.active, keys.index(S.ACTIVE)):
                assert await client.object("encoding", key) == b"skiplist"
                assert await client.zrange(key, 0, -1) == [job.id.encode()]
        finally:
            async for key in client.scan_iter(match=f"*{prefix}*"):
                await client.unlink(key)
            await client.aclose()

    asyncio.run(run())
