"""The port contracts on the Redis adapter over fakeredis (Lua through lupa): no server needed."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from datetime import UTC, datetime

import fakeredis
import pytest

from adapters.redis_queue import RedisJobQueue
from domain.errors import AdmissionRefusedError
from domain.ports import AdmissionPolicy, JobQueue, NewJob
from tests.queue_contract import (
    DEFAULTS,
    FOREVER,
    QueueContract,
    QueueFactory,
    QueueOptions,
    claim_one,
    new_job,
)
from tests.queue_contract_lifecycle import LifecycleContract


class FakeRedisFactory(QueueFactory):
    """Each test gets its own FakeServer; leases and delays run on real (short) time."""

    def __init__(self) -> None:
        self.server = fakeredis.FakeServer(version=(7,))

    def __call__(self) -> AbstractAsyncContextManager[JobQueue]:
        return self.configured(DEFAULTS)

    def configured(self, options: QueueOptions) -> AbstractAsyncContextManager[JobQueue]:
        return self._open(options)

    def client(self) -> fakeredis.FakeAsyncRedis:
        return fakeredis.FakeAsyncRedis(server=self.server, version=(7,))

    @asynccontextmanager
    async def _open(self, options: QueueOptions) -> AsyncIterator[JobQueue]:
        queue = RedisJobQueue(self.client(), prefix="test", **options.kwargs())
        try:
            yield queue
        finally:
            await queue.close()

    async def now(self, queue: JobQueue) -> datetime:
        client = self.client()
        try:
            seconds, micros = await client.time()
        finally:
            await client.aclose()
        return datetime.fromtimestamp(seconds + micros / 1e6, UTC)

    async def stale_writes(self, queue: JobQueue) -> int | None:
        assert isinstance(queue, RedisJobQueue)
        return await queue.stale_writes()


class TestRedisJobQueueOnFakeRedis(QueueContract):
    @pytest.fixture
    def queue_factory(self) -> QueueFactory:
        return FakeRedisFactory()

    def test_scripts_the_server_lost_are_loaded_again(self) -> None:
        async def main() -> None:
            factory = FakeRedisFactory()
            async with factory() as queue:
                job = new_job()
                await queue.enqueue(job)  # a pipelined script call
                flusher = factory.client()
                await flusher.script_flush()
                lease = await claim_one(queue)  # a single script call
                await flusher.script_flush()
                assert await queue.renew([lease], FOREVER) == {job.id}  # pipelined again
                await flusher.script_flush()
                assert await queue.complete(lease, "ok") is True
                await flusher.aclose()

        asyncio.run(main())

    def test_verify_warns_when_the_server_refuses_config(self) -> None:
        async def main() -> None:
            async with FakeRedisFactory()() as queue:  # fakeredis has no CONFIG command
                assert isinstance(queue, RedisJobQueue)
                warnings = await queue.verify()
                assert len(warnings) == 1
                assert "could not check" in warnings[0]
                assert "maxmemory-policy" in warnings[0]

        asyncio.run(main())

    def test_a_memory_limit_a_server_cannot_report_refuses_new_jobs_and_verify_says_so(
        self,
    ) -> None:
        """fakeredis has no INFO: the limit cannot be checked, so nothing is admitted."""

        async def main() -> None:
            policy = AdmissionPolicy(max_memory=10**12, retry_after=3.0)
            factory = FakeRedisFactory()
            async with factory.configured(QueueOptions(admission=policy)) as queue:
                assert isinstance(queue, RedisJobQueue)
                job = new_job()
                with pytest.raises(AdmissionRefusedError) as refusal:
                    await queue.submit([NewJob(job=job)])
                assert (refusal.value.queue, refusal.value.retry_after) == (None, 3.0)
                assert "INFO" in refusal.value.reason
                assert await queue.get(job.id) is None
                warnings = await queue.verify()
                assert any("memory cannot be checked" in w for w in warnings), warnings

        asyncio.run(main())


class TestRedisJobQueueLifecycleOnFakeRedis(LifecycleContract):
    @pytest.fixture
    def queue_factory(self) -> QueueFactory:
        return FakeRedisFactory()
