"""The port contract on the Redis adapter over fakeredis (Lua through lupa): no server needed."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager

import fakeredis
import pytest

from adapters.redis_queue import RedisJobQueue
from domain.ports import JobQueue
from tests.queue_contract import FOREVER, QueueContract, QueueFactory, claim_one, new_job


class FakeRedisFactory(QueueFactory):
    """Each test gets its own FakeServer; leases and delays run on real (short) time."""

    def __init__(self) -> None:
        self.server = fakeredis.FakeServer(version=(7,))

    def __call__(self) -> AbstractAsyncContextManager[JobQueue]:
        return self._open()

    @asynccontextmanager
    async def _open(self) -> AsyncIterator[JobQueue]:
        client = fakeredis.FakeAsyncRedis(server=self.server, version=(7,))
        queue = RedisJobQueue(client, prefix="test")
        try:
            yield queue
        finally:
            await queue.close()

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
                flusher = fakeredis.FakeAsyncRedis(server=factory.server, version=(7,))
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
