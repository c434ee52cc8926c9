"""Every contract on the Redis backend over fakeredis (Lua through lupa): no server needed.

Leases and delays run on real (short) time: the backend reads the Redis clock.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime

import fakeredis
import pytest

from adapters.redis_queue import RedisConnection, redis_backend, stale_writes
from domain.ports import Backend
from tests.contracts.all import AllContracts
from tests.contracts.base import DEFAULTS, QUEUE_GRACE, BackendFactory, BackendOptions


class FakeRedisFactory(BackendFactory):
    """Each factory has its own FakeServer, so each test starts from an empty one."""

    name = "redis on fakeredis"

    def __init__(self) -> None:
        self.server = fakeredis.FakeServer(version=(7,))

    def client(self) -> fakeredis.FakeAsyncRedis:
        return fakeredis.FakeAsyncRedis(server=self.server, version=(7,))

    @asynccontextmanager
    async def open(self, options: BackendOptions = DEFAULTS) -> AsyncIterator[Backend]:
        # Sweeps of idle queues as often as asked, and a short grace: scenarios see idle
        # queues forgotten soon.
        backend = redis_backend(
            self.client(),
            prefix="test",
            sweep_interval=0.0,
            queue_grace=QUEUE_GRACE,
            **options.kwargs(),
        )
        # As every process does at start-up: a new prefix's job hashes are compact.
        connection = backend.connection
        assert isinstance(connection, RedisConnection)
        await connection.learn_layout()
        try:
            yield backend
        finally:
            await backend.connection.close()

    async def now(self, backend: Backend) -> datetime:
        client = self.client()
        try:
            seconds, micros = await client.time()
        finally:
            await client.aclose()
        return datetime.fromtimestamp(seconds + micros / 1e6, UTC)

    async def stale_writes(self, backend: Backend) -> int | None:
        return await stale_writes(backend)


class TestRedisBackendOnFakeRedis(AllContracts):
    @pytest.fixture
    def backend_factory(self) -> BackendFactory:
        return FakeRedisFactory()
