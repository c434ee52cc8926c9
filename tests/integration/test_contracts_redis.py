"""Every contract on the Redis backend over a real Redis.

Each backend opened uses its own key prefix (``test-<uuid>``) and deletes that prefix's keys
when closed, so a developer's REDIS_URL is never flushed.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime

import pytest
import redis.asyncio

from adapters.redis_client import create_redis
from adapters.redis_queue import redis_backend, stale_writes
from adapters.redis_queue.connection import RedisConnection
from adapters.redis_queue.keys import layout_key
from domain.ports import Backend
from tests.contracts.all import AllContracts
from tests.contracts.base import DEFAULTS, QUEUE_GRACE, BackendFactory, BackendOptions


class RedisFactory(BackendFactory):
    name = "redis"

    def __init__(self, url: str, *, layout: str | None = None) -> None:
        self.url = url
        self.prefix = f"test-{uuid.uuid4().hex}"
        # The job layout the prefix says (`keys.layout_key`), learned as every process does
        # at start-up: None leaves it to the prefix (compact on a new one).
        self.layout = layout

    def client(self) -> redis.asyncio.Redis:
        return create_redis(self.url, connect_timeout=2.0, socket_timeout=5.0)

    @asynccontextmanager
    async def open(self, options: BackendOptions = DEFAULTS) -> AsyncIterator[Backend]:
        # Sweeps of idle queues as often as asked, and a short grace: scenarios see idle
        # queues forgotten soon.
        backend = redis_backend(
            self.client(),
            prefix=self.prefix,
            sweep_interval=0.0,
            queue_grace=QUEUE_GRACE,
            **options.kwargs(),
        )
        if self.layout is not None:
            async with self.raw() as client:
                await client.set(layout_key(self.prefix), self.layout)
        connection = backend.connection
        assert isinstance(connection, RedisConnection)
        await connection.learn_layout()
        try:
            yield backend
        finally:
            await backend.connection.close()
            await self.delete_keys()

    async def now(self, backend: Backend) -> datetime:
        async with self.raw() as client:
            seconds, micros = await client.time()
        return datetime.fromtimestamp(seconds + micros / 1e6, UTC)

    async def stale_writes(self, backend: Backend) -> int | None:
        return await stale_writes(backend)

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
        async with self.raw() as client:
            found: set[str] = set()
            for pattern in (f"{{{self.prefix}:*", f"{{{self.prefix}}}:*", f"{self.prefix}:*"):
                async for key in client.scan_iter(match=pattern, count=1000):
                    found.add(key.decode())
            return found

    async def delete_keys(self) -> None:
        keys = sorted(await self.keys())
        async with self.raw() as client:
            for start in range(0, len(keys), 500):
                await client.unlink(*keys[start : start + 500])


class TestRedisBackend(AllContracts):
    @pytest.fixture
    def backend_factory(self, redis_url: str) -> BackendFactory:
        return RedisFactory(redis_url)


class TestRedisBackendFullLayout(AllContracts):
    """The same contracts on a prefix whose job hashes keep their id and queue: one that an
    older version used (`keys.layout_key`)."""

    @pytest.fixture
    def backend_factory(self, redis_url: str) -> BackendFactory:
        return RedisFactory(redis_url, layout="full")
